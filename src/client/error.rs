//! `ClientError`, why a pool operation failed, and `refused`, the one place a holder's
//! refusal kind is classified (the error rules of the crate are in `fs/error.rs`).

use crate::net::NetError;
use crate::proto::{ErrorKind, NodeId};

use super::{Holder, SegmentError};

/// Why a pool operation failed, naming the node, file (its id, hex), stripe and segment
/// it failed on. `NoSpace` and `Quota` are a holder's refusals, kept apart from
/// failures by `refused`: the filesystem reports them as ENOSPC and EDQUOT, the rest
/// as EIO.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The pool view lists no node that is up.
    #[error("the pool has no live nodes")]
    NoNodes,
    /// The pool view could not be had from the controller.
    #[error("cannot reach the controller: {0}")]
    Controller(NetError),
    /// A holder has no room for the segment (its `--capacity`, or its disk, is full).
    #[error("node {node} has no space for segment {segment} of file {file}: {message}")]
    NoSpace {
        /// The holder that refused.
        node: NodeId,
        /// The file id.
        file: String,
        /// The segment index (with `SHADOW_SEGMENT` for slot 1).
        segment: u32,
        /// The holder's description.
        message: String,
    },
    /// The owner holds its whole quota on a holder (`--quota`).
    #[error("node {node} refuses segment {segment} of file {file}: {message}")]
    Quota {
        /// The holder that refused.
        node: NodeId,
        /// The file id.
        file: String,
        /// The segment index (with `SHADOW_SEGMENT` for slot 1).
        segment: u32,
        /// The holder's description.
        message: String,
    },
    /// A STORE, RESERVE or PUNCH on one holder failed for another reason than room.
    #[error("storing segment {segment} of file {file} on node {node} failed: {source}")]
    Store {
        /// The holder asked.
        node: NodeId,
        /// The file id.
        file: String,
        /// The segment index (with `SHADOW_SEGMENT` for slot 1).
        segment: u32,
        /// What the segment call reported.
        source: SegmentError,
    },
    /// A DELETE of a file's segments on one node failed (the node unreachable, or
    /// failing on its side): those segments stay until a later delete or repair.
    #[error("deleting the segments of file {file} on node {node} failed: {source}")]
    Delete {
        /// The node asked.
        node: NodeId,
        /// The file id.
        file: String,
        /// What the segment call reported.
        source: SegmentError,
    },
    /// Fewer than `need` (k) shards of a stripe could be read or stored.
    #[error(
        "stripe {stripe} of file {file} needs {need} shards, only {have} could be read: {missing}"
    )]
    Unavailable {
        /// The file id.
        file: String,
        /// The stripe number.
        stripe: u64,
        /// Shards needed (k to read, the write quorum to store).
        need: usize,
        /// Shards had.
        have: usize,
        /// Why each of the others failed.
        missing: String,
    },
    /// The erasure code refused the shards (`stripe::ErasureError`).
    #[error("stripe {stripe} of file {file}: {message}")]
    Erasure {
        /// The file id.
        file: String,
        /// The stripe number.
        stripe: u64,
        /// The erasure code's reason.
        message: String,
    },
    /// The file's shards are sealed and this client was given no owner key.
    #[error("file {file} is encrypted and this client has no owner key to read it")]
    NoOwnerKey {
        /// The file id.
        file: String,
    },
    /// A stored stripe's record has neither sealing salt nor checksums.
    #[error("file {file} has no checksums for stripe {stripe}: the manifest is incomplete")]
    Incomplete {
        /// The file id.
        file: String,
        /// The stripe number.
        stripe: u64,
    },
    /// Reading or writing the local side of a `put` or `get`.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The error of a segment request (STORE, RESERVE, PUNCH) to `holder` that failed:
/// a node without space (`NoSpace`) or an owner over its quota (`Quota`) are refusals,
/// anything else a failed store.
pub(super) fn refused(
    holder: &Holder,
    file: &str,
    segment: u32,
    source: SegmentError,
) -> ClientError {
    match source.kind() {
        Some(ErrorKind::NoSpace) => ClientError::NoSpace {
            node: holder.node_id,
            file: file.into(),
            segment,
            message: source.to_string(),
        },
        Some(ErrorKind::Quota) => ClientError::Quota {
            node: holder.node_id,
            file: file.into(),
            segment,
            message: source.to_string(),
        },
        _ => ClientError::Store {
            node: holder.node_id,
            file: file.into(),
            segment,
            source,
        },
    }
}
