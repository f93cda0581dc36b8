//! `FsError`, why a filesystem operation failed, and the rules every layer follows to
//! make, carry and report errors.
//!
//! # Error rules
//!
//! **Who makes which error.** Each layer has one error type and makes only its own:
//!
//! | layer | type | made from |
//! | --- | --- | --- |
//! | node store (`node/store`) | `StoreError` | the disk (`io::Error`, with what was being done), ids and ranges of requests |
//! | node service (`node/service`) | `Response::Error { kind, .. }` | a `StoreError`, classified once by `store_error` into an `ErrorKind` (`NoSpace`, `Quota`, `NotFound`, `BadRequest`, `Internal`) |
//! | wire (`net`, `proto`) | `NetError`, `MessageError`, `FrameError` | sockets, the handshake, undecodable bytes, a peer's `Response::Error` |
//! | segment I/O (`client/segments`) | `SegmentError` | a holder's refusal (its `ErrorKind` kept), no data, or a `NetError` |
//! | client (`client`) | `ClientError` | a `SegmentError`, named with node, file and segment; `NoSpace` and `Quota` are refusals kept apart from failures (`client::refused`) |
//! | filesystem (`fs`) | `FsError` | the namespace rules (`NotFound`, `Exists`, ...), the metadata store (`Meta`, `MetaIo`, `NoSpace`), a `ClientError` (`Pool`), a failed task (`Task`) |
//!
//! A lower error is wrapped, never turned into text early, while an upper layer may
//! still need its kind (a `ClientError::NoSpace` must stay one up to the FUSE table).
//!
//! **Where context is added.** Where the facts are: the store names the path and the
//! operation, the client the node, file, stripe and segment, the filesystem what a
//! failed task was doing. A layer does not repeat what the error it wraps already says.
//!
//! **Where errno is decided.** Only in the FUSE adapter's table (`fs/fuse/errno.rs`):
//! nothing else in the crate makes an errno, so every errno a user sees can be read off
//! one `match`, and a new variant cannot compile without its entry. Reading the errno
//! of a syscall's `io::Error` (or restoring one a crate folded away, as
//! `status::get_xattr` does) is not making one: what counts is what the mount answers.
//!
//! **What is logged, at which level.** The answers a program expects and probes with
//! (ENOENT, EEXIST, ENODATA, ENOTTY, ...) are not logged. Failures of the pool, the
//! metadata store, the disk or a task are logged once at `warn` by the table when they
//! reach the kernel. A failure that is not returned to anyone is logged where it is
//! dropped: at `error` when bytes are at stake (a stripe that could not be stored), at
//! `warn` when nothing is lost (a delete that leaves segments behind, a clean-up after
//! a failed `put`). A node logs its own failures (`Internal`) at `error` and a full
//! disk at `warn`; its refusals of a request are the caller's to report.

use std::sync::Arc;

use crate::client::ClientError;

/// Why a filesystem operation failed; turned into an errno by the FUSE adapter's table
/// only (`fs/fuse/errno.rs`). `Clone`, so a failure kept by an open file is reported
/// again, as itself, by every later flush.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// No such name in the directory, or no such inode.
    #[error("no such file or directory")]
    NotFound,
    /// The name is taken (create, mkdir, link, rename with `RENAME_NOREPLACE`, ...).
    #[error("file exists")]
    Exists,
    /// A directory to remove or replace still has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// A directory operation on something else.
    #[error("not a directory")]
    NotDir,
    /// A name longer than `NAME_MAX` bytes.
    #[error("name too long")]
    NameTooLong,
    /// An argument the operation does not take (a flag, a whence, a range).
    #[error("invalid argument")]
    Invalid,
    /// The operation is not allowed on this inode or attribute (a hard link to a
    /// directory, setting or removing the pool's own attributes).
    #[error("operation not permitted")]
    Permission,
    /// A file handle that is not open.
    #[error("bad file handle")]
    BadHandle,
    /// The operation or mode is not implemented (`system.*` attributes, fallocate
    /// modes other than those ARCHITECTURE.md lists).
    #[error("not supported")]
    NotSupported,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoData,
    /// An inode the kernel refers to that the store no longer has: the kernel looks
    /// the name up again.
    #[error("stale file handle: the inode is gone")]
    Stale,
    /// `SEEK_DATA`/`SEEK_HOLE` found nothing at or after the offset.
    #[error("no data or hole at or after that offset")]
    NoSuchOffset,
    /// A size or offset past the largest file (2^63 - 1 bytes).
    #[error("file too large")]
    FileTooBig,
    /// A link count would overflow.
    #[error("too many links")]
    TooManyLinks,
    /// An inode's extended attributes would pass `XATTRS_MAX` bytes of names and
    /// values (ENOSPC, as ext4 answers). Not the disk: the store is not reopened.
    #[error("extended attributes of inode {ino} would exceed {max} bytes")]
    XattrsFull {
        /// The inode whose attributes are full.
        ino: u64,
        /// The limit, `XATTRS_MAX`.
        max: usize,
    },
    /// The caller's buffer is smaller than the answer (an attribute's value or list).
    #[error("the answer does not fit the buffer given")]
    BufferTooSmall,
    /// The file takes no ioctls (as a regular file on a local filesystem).
    #[error("inappropriate ioctl for this file")]
    NoIoctl,
    /// The disk of the metadata store has no room (ENOSPC, or EDQUOT of its own
    /// filesystem); the message names the store, which is reopened before the next
    /// operation.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The metadata store refused or failed an operation (a record it cannot read, a
    /// format it does not know, a store in use by another process).
    #[error("metadata store: {0}")]
    Meta(String),
    /// The metadata store failed an I/O; it is reopened before the next operation.
    #[error("metadata store i/o: {0}")]
    MetaIo(String),
    /// The pool failed or refused (its `NoSpace` and `Quota` are kept apart).
    /// Shared: an open file keeps its failure to report again.
    #[error(transparent)]
    Pool(Arc<ClientError>),
    /// A task the operation waited on (a stripe's upload or fetch) panicked or was
    /// cancelled; the message says which task and why.
    #[error("{0}")]
    Task(String),
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> Self {
        // Behind a pointer: pool errors are large and every metadata call returns this
        // type; an `Arc` rather than a `Box` so an open file can keep one to report again.
        FsError::Pool(Arc::new(e))
    }
}

impl FsError {
    /// The failure of the `what` task ("upload", "fetch"), from the join error tokio
    /// gives for a panic or a cancellation.
    pub fn task(what: &str, e: tokio::task::JoinError) -> Self {
        FsError::Task(format!("{what} task failed: {e}"))
    }

    /// This error again, to be reported later as itself (same variant, so the same
    /// errno): a write that could not be stored is reported by every later flush.
    pub fn again(&self) -> FsError {
        self.clone()
    }
}
