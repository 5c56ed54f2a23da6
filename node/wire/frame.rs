//! Framing: a 4-byte big-endian length, then the message encoded with postcard 1 through
//! serde. The only place that knows the encoding; swapping it touches this file alone.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame of any message (a manifest of about a million entries); each message type
/// has its own, smaller or equal limit ([`super::Message::MAX`]).
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {1} for this message")]
    TooLarge(usize, usize),
    #[error("truncated frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail (no maps of unknown length, no I/O).
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN])
        .expect("encoding plain data into a Vec cannot fail");
    let len = (out.len() - HEADER_LEN) as u32;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// [`encode`] into a shared buffer of exactly the frame's size: a large frame (a whole
/// manifest, some 80 bytes a file) is neither grown by doubling while it is encoded nor
/// copied once it is.
pub fn encode_shared<T: Serialize>(msg: &T) -> Arc<[u8]> {
    let len = postcard::experimental::serialized_size(msg).expect("sizing plain data cannot fail");
    // One allocation of a known length, zeroed, then filled in place.
    let mut out: Arc<[u8]> = std::iter::repeat_n(0u8, HEADER_LEN + len).collect();
    let buf = Arc::get_mut(&mut out).expect("not shared yet");
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    postcard::to_slice(msg, &mut buf[HEADER_LEN..]).expect("sized to fit exactly");
    out
}

/// Reads the payload length from a frame header, refusing a frame over `max` bytes before
/// anything is allocated for it.
pub fn frame_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(WireError::TooLarge(len, max.min(MAX_FRAME)));
    }
    Ok(len)
}

/// Decodes one message payload (without the length prefix); the whole payload must be used.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    match postcard::take_from_bytes(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(WireError::Trailing(rest.len())),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Err(WireError::Truncated),
        Err(e) => Err(WireError::Malformed(e.to_string())),
    }
}

/// Decodes one whole frame (prefix + payload) from a buffer.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let header: [u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let len = frame_len(header, MAX_FRAME)?;
    let payload = &frame[HEADER_LEN..];
    if payload.len() < len {
        return Err(WireError::Truncated);
    }
    if payload.len() > len {
        return Err(WireError::Trailing(payload.len() - len));
    }
    decode(payload)
}
