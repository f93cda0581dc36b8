//! Wire protocol: typed messages, framing and the one codec every process speaks.

mod codec;
mod frame;
mod messages;

pub use codec::{decode, decode_record, encode, encode_record, CodecError};
pub use frame::FrameError;
pub use messages::*;

/// Bumped whenever a message or the framing changes shape; bound into the handshake.
/// 3: Noise channel instead of the plaintext `Hello`.
/// 4: `ErrorKind::Quota`; segments are kept per owner.
/// 7: `FwdParts`, for reading one chunk of a sealed shard with its tag; `FwdSealed`.
/// 8: `Reserve` and `Punch`; a node's `used` is the bytes allocated on its disk.
pub const PROTOCOL_VERSION: u16 = 8;
/// Most ranges one `FwdParts` may ask for.
pub const MAX_PARTS: usize = 8;
/// Bound into every handshake's prologue with the version.
pub const MAGIC: [u8; 4] = *b"POOL";
/// Largest control frame (a header or a small message). Bulk bytes never travel in frames.
pub const MAX_FRAME: u32 = 256 * 1024;
/// Largest byte body that may follow one STORE header or one FWD answer.
pub const MAX_BODY: u32 = 16 * 1024 * 1024;
