//! Directory listings for the kernel: one snapshot of a directory's entries per open
//! directory handle, taken when a listing starts (offset 0, so `rewinddir` sees the
//! directory as it is then), served in pieces by READDIR or READDIRPLUS. Each piece is
//! a slice of the snapshot, so listing a directory of n entries costs O(n), not one
//! scan of the whole directory per piece. READDIRPLUS gives each entry's attributes
//! too, so `find`, `ls -l` or `rm -r` need no LOOKUP per name.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::convert::kind;
use super::errno::errno;
use super::{PoolFs, TTL};
use crate::fs::meta::Kind;
use crate::fs::FsError;

/// A directory's entries at one moment: (inode, kind, name), `.` and `..` first.
type Listing = Arc<Vec<(u64, Kind, Vec<u8>)>>;

/// Snapshots of the directories the kernel has open, by handle.
#[derive(Default)]
pub(super) struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Listing>>,
}

impl DirHandles {
    /// A handle for a directory just opened (its snapshot is taken by the first read).
    pub(super) fn open(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Forgets the snapshot of a closed directory.
    pub(super) fn release(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Listing>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PoolFs {
    /// The snapshot of handle `fh` on directory `ino` from `offset` on: taken afresh at
    /// offset 0 (or for a handle that has none, such as one opened before the mount
    /// kept snapshots).
    fn listing(&self, ino: u64, fh: u64, offset: u64) -> Result<Listing, FsError> {
        if offset != 0 {
            if let Some(l) = self.dirs.lock().get(&fh) {
                return Ok(l.clone());
            }
        }
        let listing: Listing = Arc::new(self.vfs.readdir(ino)?);
        self.dirs.lock().insert(fh, listing.clone());
        Ok(listing)
    }

    /// READDIR: names, inode numbers and kinds from `offset` (the index of the next
    /// entry) on, as many as fit.
    pub(super) fn read_dir(&self, ino: u64, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let listing = match self.listing(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(&e)),
        };
        for (i, (child, k, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*child),
                (i + 1) as u64,
                kind(*k),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok()
    }

    /// READDIRPLUS: as READDIR, each entry with its attributes (read in one
    /// transaction per piece). Every entry but `.` and `..` that reaches the kernel is a
    /// reference it holds until FORGET, taken before the reply is sent. An entry removed
    /// or renamed since the snapshot is left out: the kernel makes a name it is given
    /// here a cached entry, which must not name what is gone (the kernel holds the
    /// directory's lock while it reads, so nothing changes between check and reply).
    pub(super) fn read_dir_plus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(ino, fh, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(&e)),
        };
        // The kernel's buffer holds a few hundred entries with attributes at most.
        const PIECE: usize = 256;
        let mut start = (offset as usize).min(listing.len());
        let mut sent = Vec::new();
        let mut added = 0;
        // A piece whose inodes all went meanwhile must not end the listing early (an
        // empty reply is its end): the next piece is tried.
        while added == 0 && start < listing.len() {
            let piece = &listing[start..(start + PIECE).min(listing.len())];
            let asked: Vec<(&[u8], u64)> = piece
                .iter()
                .map(|(child, _, name)| (name.as_slice(), *child))
                .collect();
            let attrs = match self.vfs.listed(ino, &asked) {
                Ok(a) => a,
                // Nothing was added yet, so no reference is owed.
                Err(e) => return reply.error(errno(&e)),
            };
            for (j, ((child, _, name), attr)) in piece.iter().zip(attrs).enumerate() {
                let Some(inode) = attr else { continue };
                if reply.add(
                    INodeNo(*child),
                    (start + j + 1) as u64,
                    OsStr::from_bytes(name),
                    &TTL,
                    &self.attr(&inode),
                    Generation(0),
                ) {
                    break;
                }
                added += 1;
                if name.as_slice() != b"." && name.as_slice() != b".." {
                    sent.push(*child);
                }
            }
            start += piece.len();
        }
        self.vfs.referenced_all(&sent);
        reply.ok()
    }
}
