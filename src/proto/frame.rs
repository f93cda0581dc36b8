//! Why a frame or a body could not be read or written. Frames (a u32 big-endian
//! length, then the message, at most `MAX_FRAME` bytes) and bodies travel inside the
//! Noise channel, whose reader and writer (`net::noise::Channel`) are the only ones.

use super::{MAX_BODY, MAX_FRAME};

/// Why a frame or body could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection before a frame began.
    #[error("connection closed")]
    Closed,
    /// A frame announced more than `MAX_FRAME` bytes.
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge(u32),
    /// A body announced more than `MAX_BODY` bytes.
    #[error("body of {0} bytes exceeds the maximum of {MAX_BODY}")]
    BodyTooLarge(u32),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
