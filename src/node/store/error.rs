//! Why a store operation fails, and the checks and conversions that say so.

use std::io;

use crate::proto::{Identity, SegmentRef};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes not yet allocated in the range exceed the free capacity.
    #[error("no space: {need} more bytes needed, {free} of {capacity} free")]
    NoSpace {
        /// Bytes the request would allocate.
        need: u64,
        /// Bytes of the capacity not allocated.
        free: u64,
        /// The node's capacity in bytes.
        capacity: u64,
    },
    #[error(
        "over quota: owner {owner:?} holds {used} bytes here and needs {need} more, \
         its quota is {quota}"
    )]
    /// The owner's allocated bytes here would exceed its quota.
    Quota {
        /// The owner (identity of the static key that stores).
        owner: Identity,
        /// Bytes it has allocated here.
        used: u64,
        /// More bytes the request would allocate.
        need: u64,
        /// Its quota in bytes.
        quota: u64,
    },
    /// A file id that is not 1 to 64 letters, digits, '-' or '_' (cut to 80 chars).
    #[error("invalid file id {0:?}")]
    BadId(String),
    /// No such segment of the caller's (another owner's counts as missing).
    #[error("segment {0} not found")]
    NotFound(String),
    /// A read past the end (`size` bytes) of the segment.
    #[error("range {offset}+{len} is beyond the end ({size}) of segment {segment}")]
    OutOfRange {
        /// The segment, as `FILE/INDEX`.
        segment: String,
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u32,
        /// The segment's length in bytes.
        size: u64,
    },
    #[error(
        "range {offset}+{len} of segment {segment} ends past the largest segment a node \
         keeps ({MAX_SEGMENT_END} bytes)"
    )]
    /// A range ending past `MAX_SEGMENT_END`, or whose end overflows a u64.
    BadRange {
        /// The segment, as `FILE/INDEX`.
        segment: String,
        /// First byte of the range.
        offset: u64,
        /// Bytes in the range.
        len: u64,
    },
    /// A DELETE-SEGMENT asking to keep more ranges than `proto::MAX_KEEP_RANGES`.
    #[error(
        "{count} ranges to keep in segment {segment}: at most {}",
        crate::proto::MAX_KEEP_RANGES
    )]
    TooManyRanges {
        /// The segment, as `FILE/INDEX`.
        segment: String,
        /// Ranges asked for.
        count: usize,
    },
    /// The disk under the store is full (ENOSPC or EDQUOT), whatever the capacity says.
    #[error("{context}: the node's disk is full ({source})")]
    DiskFull {
        /// What was being done, and to which file.
        context: String,
        /// The ENOSPC or EDQUOT.
        source: io::Error,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and to which file.
        context: String,
        /// The failure.
        source: io::Error,
    },
}

/// Largest end (offset + length, in bytes) of a range a segment may hold: 2^50 bytes
/// (1 PiB), far past any real segment (a slot per stripe of about a MiB), and bounded so
/// that a hostile offset fails as a bad request rather than deep in the filesystem.
pub const MAX_SEGMENT_END: u64 = 1 << 50;

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// As `io_err`, but a full disk (ENOSPC, or EDQUOT from a quota on the node's own
/// filesystem) becomes `DiskFull`: a refusal the client maps to ENOSPC, not a failure.
pub(super) fn disk_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| {
        // By kind too: a shared sync's error is rebuilt from its kind (`segfile`).
        let full = matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            || matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            );
        if full {
            StoreError::DiskFull { context, source }
        } else {
            StoreError::Io { context, source }
        }
    }
}

/// The end of `offset..offset+len` of `seg`, if within `MAX_SEGMENT_END`.
pub(super) fn checked_end(seg: &SegmentRef, offset: u64, len: u64) -> Result<u64, StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_SEGMENT_END => Ok(end),
        _ => Err(StoreError::BadRange {
            segment: format!("{}/{}", seg.file, seg.index),
            offset,
            len,
        }),
    }
}
