//! The single place that turns messages into bytes and back (bincode 2 via serde), kept
//! behind two functions so the codec can be swapped without touching callers.

use serde::{de::DeserializeOwned, Serialize};

use super::MAX_FRAME;

/// A message could not be encoded or the bytes were not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
}

// A byte limit on decoding means a hostile length field inside a frame cannot make the
// decoder allocate more than a frame's worth.
const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_FRAME as usize }>,
> = bincode::config::standard().with_limit::<{ MAX_FRAME as usize }>();

/// Encodes one message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, CONFIG).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes one message that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, CONFIG)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

// Records kept on our own disk (metadata) may exceed a frame; they are not hostile input
// from the network, so they are decoded without the frame limit.
const RECORD_CONFIG: bincode::config::Configuration = bincode::config::standard();

/// Encodes a record for local storage (no size limit).
pub fn encode_record<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, RECORD_CONFIG).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a record written by `encode_record`.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (msg, _) = bincode::serde::decode_from_slice(bytes, RECORD_CONFIG)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Request, SegmentRef};

    #[test]
    fn round_trips_a_request() {
        let req = Request::Fwd {
            segment: SegmentRef {
                file: "ab12".into(),
                index: 3,
            },
            offset: 7,
            len: 9,
        };
        let bytes = encode(&req).unwrap();
        let back: Request = decode(&bytes).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert!(decode::<Request>(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut bytes = encode(&Request::Pool).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn a_huge_length_inside_a_frame_does_not_allocate() {
        // Variant Delete with a string claiming u64::MAX bytes.
        let bytes = [8u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Request>(&bytes).is_err());
    }
}
