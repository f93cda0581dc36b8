//! The filesystem: a namespace with manifests (meta), open-file stripe buffers (file),
//! the operations on both (vfs), the thin fuser adapter (fuse) and the mount command;
//! `FsError` and the error rules of the crate (error).

pub mod caller;
mod error;
pub mod file;
pub mod fuse;
pub mod journal;
mod legacy;
pub mod meta;
pub mod mount;
pub mod repair;
pub mod status;
pub mod sweep;
pub mod vfs;
#[cfg(test)]
mod vfs_tests;

pub use error::FsError;
