//! Extended attributes kept in the inode record: get, list, set and remove.

use super::{xattr_flags, Vfs};
use crate::fs::meta::{Time, XATTRS_MAX};
use crate::fs::FsError;

impl Vfs {
    /// The value of extended attribute `name` of `ino`. Errors: ENODATA if it has none.
    /// (The kernel asks for `security.capability` before every write: the record is
    /// read without its manifest.)
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        self.meta
            .get_head(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(FsError::NoData)
    }

    /// Names of the extended attributes of `ino`, each followed by a NUL, as
    /// listxattr(2) gives them; `trusted.*` ones only if `trusted` (a privileged
    /// caller).
    pub fn listxattr(&self, ino: u64, trusted: bool) -> Result<Vec<u8>, FsError> {
        let inode = self.meta.get_head(ino)?;
        let mut out = Vec::new();
        for name in inode.xattrs.keys() {
            if !trusted && name.starts_with(b"trusted.") {
                continue;
            }
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets extended attribute `name` of `ino` (`flags`: `xattr_flags`). Errors:
    /// EEXIST or ENODATA as the flags ask; ENOSPC past `XATTRS_MAX` bytes per inode.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<(), FsError> {
        self.meta.update(ino, false, |inode| {
            let exists = inode.xattrs.contains_key(name);
            if flags & xattr_flags::CREATE != 0 && exists {
                return Err(FsError::Exists);
            }
            if flags & xattr_flags::REPLACE != 0 && !exists {
                return Err(FsError::NoData);
            }
            let old = inode.xattrs.get(name).map_or(0, |v| name.len() + v.len());
            if inode.xattr_bytes() - old + name.len() + value.len() > XATTRS_MAX {
                return Err(FsError::XattrsFull {
                    ino,
                    max: XATTRS_MAX,
                });
            }
            inode.xattrs.insert(name.to_vec(), value.to_vec());
            inode.ctime = Time::now();
            Ok(())
        })?;
        Ok(())
    }

    /// Removes extended attribute `name` of `ino`. Errors: ENODATA if it has none.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), FsError> {
        self.meta.update(ino, false, |inode| {
            inode.xattrs.remove(name).ok_or(FsError::NoData)?;
            inode.ctime = Time::now();
            Ok(())
        })?;
        Ok(())
    }
}
