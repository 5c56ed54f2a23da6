//! Framing: a 4-byte big-endian length, then the message encoded with bincode 2 through
//! serde. The only place that knows the encoding; swapping it touches this file alone.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame accepted (a manifest of about a million entries).
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("truncated frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    // Encoding into a Vec cannot fail for our plain data types.
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .expect("encoding plain data into a Vec cannot fail");
    let len = (out.len() - HEADER_LEN) as u32;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reads the payload length from a frame header, refusing oversized frames.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one message payload (without the length prefix); the whole payload must be used.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| match e {
            bincode::error::DecodeError::UnexpectedEnd { .. } => WireError::Truncated,
            other => WireError::Malformed(other.to_string()),
        })?;
    if used != payload.len() {
        return Err(WireError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes one whole frame (prefix + payload) from a buffer.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let header: [u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let len = frame_len(header)?;
    let payload = &frame[HEADER_LEN..];
    if payload.len() < len {
        return Err(WireError::Truncated);
    }
    if payload.len() > len {
        return Err(WireError::Trailing(payload.len() - len));
    }
    decode(payload)
}
