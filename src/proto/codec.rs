//! The single place that turns messages and stored records into bytes and back
//! (bincode 2 via serde), kept behind a few functions so the codec can be swapped
//! without touching callers.

use serde::{de::DeserializeOwned, Serialize};

use super::{Service, ServiceRequest, MAX_FRAME};

/// A message or record could not be encoded, or the bytes were not a valid one.
/// (Not `client::stripe::ErasureError`, the erasure code's.)
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The value cannot be encoded (bincode's reason).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The bytes are not a value of the expected type (bincode's reason).
    #[error("malformed message: {0}")]
    Decode(String),
    /// The bytes hold a whole message followed by this many more.
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
    /// A request for another service: a node sent a controller verb, or the reverse.
    #[error("a {serving} does not answer {sent} requests")]
    WrongService {
        /// The service that received the request.
        serving: Service,
        /// The service the request is for.
        sent: Service,
    },
}

// A byte limit on decoding means a hostile length field inside a frame cannot make the
// decoder allocate more than a frame's worth.
const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_FRAME as usize }>,
> = bincode::config::standard().with_limit::<{ MAX_FRAME as usize }>();

/// Encodes one message (bincode 2, standard config: little-endian varints).
///
/// Errors: `MessageError::Encode` if serde or bincode refuses the value.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, MessageError> {
    bincode::serde::encode_to_vec(msg, CONFIG).map_err(|e| MessageError::Encode(e.to_string()))
}

/// Decodes one message that must fill `bytes` exactly.
///
/// Errors: `MessageError::Decode` for bytes that are not such a message (or would
/// claim more than `MAX_FRAME` bytes), `Trailing` for bytes left over.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, CONFIG)
        .map_err(|e| MessageError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(MessageError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

/// Encodes one request with its service tag before it (see `Service`). Errors as
/// `encode`.
pub fn encode_request<R: ServiceRequest>(req: &R) -> Result<Vec<u8>, MessageError> {
    encode(&(R::SERVICE, req))
}

/// Decodes one request written by `encode_request` that must fill `bytes` exactly; a
/// request for another service than `R`'s is `WrongService`, whatever follows its tag.
/// Other errors as `decode`.
pub fn decode_request<R: ServiceRequest>(bytes: &[u8]) -> Result<R, MessageError> {
    let (sent, used): (Service, usize) = bincode::serde::decode_from_slice(bytes, CONFIG)
        .map_err(|e| MessageError::Decode(e.to_string()))?;
    if sent != R::SERVICE {
        return Err(MessageError::WrongService {
            serving: R::SERVICE,
            sent,
        });
    }
    decode(&bytes[used..])
}

// Records kept on our own disk (metadata) may exceed a frame; they are not hostile input
// from the network, so they are decoded without the frame limit.
const RECORD_CONFIG: bincode::config::Configuration = bincode::config::standard();

/// Encodes a record for local storage (no size limit).
///
/// Errors: `MessageError::Encode` if serde or bincode refuses the value.
pub fn encode_record<T: Serialize>(msg: &T) -> Result<Vec<u8>, MessageError> {
    bincode::serde::encode_to_vec(msg, RECORD_CONFIG)
        .map_err(|e| MessageError::Encode(e.to_string()))
}

/// Decodes a record written by `encode_record`; bytes after it are ignored.
///
/// Errors: `MessageError::Decode` for bytes that are not such a record.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    let (msg, _) = bincode::serde::decode_from_slice(bytes, RECORD_CONFIG)
        .map_err(|e| MessageError::Decode(e.to_string()))?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ControllerRequest, NodeRequest, SegmentRead, SegmentRef};

    #[test]
    fn round_trips_a_request() {
        let req = NodeRequest::Fwd {
            segment: SegmentRef {
                file: "ab12".into(),
                index: 3,
            },
            what: SegmentRead::Range {
                offset: 7,
                len: 9,
                sealed: false,
            },
        };
        let bytes = encode_request(&req).unwrap();
        let back: NodeRequest = decode_request(&bytes).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert!(decode::<NodeRequest>(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut bytes = encode_request(&ControllerRequest::Pool).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode_request::<ControllerRequest>(&bytes),
            Err(MessageError::Trailing(1))
        ));
    }

    #[test]
    fn a_request_for_the_other_service_is_refused_by_its_tag() {
        // STAT and POOL take no fields: without the tag, either could pass for a verb
        // of the other service.
        let stat = encode_request(&NodeRequest::Stat).unwrap();
        assert!(matches!(
            decode_request::<ControllerRequest>(&stat),
            Err(MessageError::WrongService {
                serving: Service::Controller,
                sent: Service::Node
            })
        ));
        let pool = encode_request(&ControllerRequest::Pool).unwrap();
        let err = decode_request::<NodeRequest>(&pool).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a node does not answer controller requests"
        );
    }

    #[test]
    fn a_huge_length_inside_a_frame_does_not_allocate() {
        // Variant Delete with a string claiming u64::MAX bytes.
        let bytes = [3u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode::<NodeRequest>(&bytes),
            Err(MessageError::Decode(_))
        ));
    }
}
