//! The filesystem: a namespace with manifests (meta), open-file stripe buffers (file),
//! the operations on both (vfs), the thin fuser adapter (fuse) and the mount command.

pub mod caller;
pub mod file;
pub mod fuse;
mod legacy;
pub mod meta;
pub mod mount;
pub mod repair;
pub mod status;
pub mod vfs;
#[cfg(test)]
mod vfs_tests;

use crate::client::ClientError;

/// Why a filesystem operation failed; turned into an errno at the FUSE edge only.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument")]
    Invalid,
    #[error("operation not permitted")]
    Permission,
    #[error("bad file handle")]
    BadHandle,
    #[error("not supported")]
    NotSupported,
    #[error("no such attribute")]
    NoData,
    #[error("stale file handle: the inode is gone")]
    Stale,
    #[error("no data or hole at or after that offset")]
    NoSuchOffset,
    #[error("file too large")]
    FileTooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("attribute value too large")]
    TooBig,
    /// The disk (of the metadata store, or of a node) has no room: ENOSPC.
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("metadata store: {0}")]
    Meta(String),
    /// The metadata store failed an I/O; it is reopened before the next operation.
    #[error("metadata store i/o: {0}")]
    MetaIo(String),
    #[error(transparent)]
    Pool(Box<ClientError>),
    /// An earlier failure reported again (a write that could not be stored is reported
    /// by every later flush of that file).
    #[error("{message}")]
    Again { errno: i32, message: String },
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> Self {
        // Boxed: pool errors are large and every metadata call returns this type.
        FsError::Pool(Box::new(e))
    }
}

impl FsError {
    /// The errno reported to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::IsDir => libc::EISDIR,
            FsError::NotDir => libc::ENOTDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::Permission => libc::EPERM,
            FsError::BadHandle => libc::EBADF,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::NoData => libc::ENODATA,
            FsError::Stale => libc::ESTALE,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::FileTooBig => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::TooBig => libc::E2BIG,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::Meta(_) | FsError::MetaIo(_) => libc::EIO,
            FsError::Pool(e) => e.errno(),
            FsError::Again { errno, .. } => *errno,
        }
    }

    /// A copy of this error to report again later.
    pub fn again(&self) -> FsError {
        FsError::Again {
            errno: self.errno(),
            message: self.to_string(),
        }
    }
}
