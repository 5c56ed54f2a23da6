//! Moving framed messages over any async byte stream: a QUIC stream or the admin socket.
//! The framing itself is [`crate::wire`]'s; this only does the I/O.

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::LinkError;
use crate::wire::{self, Message, WireError, HEADER_LEN};

/// Writes an already encoded frame.
pub async fn send_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), LinkError> {
    w.write_all(frame).await.map_err(LinkError::Io)
}

/// Writes one message as a frame to any byte stream (QUIC stream or admin socket).
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), LinkError> {
    w.write_all(&wire::encode(msg)).await.map_err(LinkError::Io)
}

/// Reads one frame and decodes it; `Ok(None)` at a clean end of stream before any byte.
/// The length is checked against the message's limit ([`Message::MAX`]) before the payload
/// is allocated.
pub async fn recv<R: AsyncRead + Unpin, T: Message>(r: &mut R) -> Result<Option<T>, LinkError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await.map_err(LinkError::Io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated.into())
            };
        }
        got += n;
    }
    let len = wire::frame_len(header, T::MAX)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => LinkError::Wire(WireError::Truncated),
            _ => LinkError::Io(e),
        })?;
    Ok(Some(wire::decode(&payload)?))
}
