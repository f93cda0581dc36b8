//! Wire protocol: typed messages (one request enum per service), the limits of frames
//! and bodies, and the one codec every process speaks. Frames travel in the Noise
//! channel (`net::noise`), which reads and writes them.

mod codec;
mod frame;
mod messages;
mod rpc;

pub use codec::{
    decode, decode_record, decode_request, encode, encode_record, encode_request, MessageError,
};
pub use frame::FrameError;
pub use messages::*;
pub use rpc::{ControllerRequest, NodeRequest, SegmentRead, Service, ServiceRequest};

/// Bumped whenever a message or the framing changes shape; bound into the handshake.
/// 3: Noise channel instead of the plaintext `Hello`.
/// 4: `ErrorKind::Quota`; segments are kept per owner.
/// 7: `FwdParts`, for reading one chunk of a sealed shard with its tag; `FwdSealed`.
/// 8: `Reserve` and `Punch`; a node's `used` is the bytes allocated on its disk.
/// 9: one request enum per service, each request tagged with its service; `Fwd`,
///    `FwdParts` and `FwdSealed` folded into one `Fwd { segment, what }`.
/// 10: `machine` in `Join`, `Heartbeat` and `NodeInfo`; `List` and `DeleteSegment`
///     (the owner's sweep of its segments, whole or all but the ranges it keeps).
/// 11: `id` in `Join`, the id the node had, so a fresh controller gives it back.
/// 12: `disk` in `Join`, `Heartbeat` and `NodeInfo`, so the pool's size counts a disk
///     that several nodes share once.
pub const PROTOCOL_VERSION: u16 = 12;
/// Most segments one LIST answer may carry: an entry is at most about 100 bytes (a
/// 64-byte id, an index, two varints), so a full page stays far under `MAX_FRAME`.
pub const MAX_LIST_PAGE: u32 = 1024;
/// Most ranges one DELETE-SEGMENT may keep: 16 bytes each, far under `MAX_FRAME`. A
/// segment whose live slots need more is left whole (its file is deleted some day).
pub const MAX_KEEP_RANGES: usize = 4096;
/// Most ranges one FWD of `SegmentRead::Parts` may ask for.
pub const MAX_PARTS: usize = 8;
/// Bound into every handshake's prologue with the version.
pub const MAGIC: [u8; 4] = *b"POOL";
/// Largest control frame (a header or a small message). Bulk bytes never travel in frames.
pub const MAX_FRAME: u32 = 256 * 1024;
/// Largest byte body that may follow one STORE header or one FWD answer.
pub const MAX_BODY: u32 = 16 * 1024 * 1024;
