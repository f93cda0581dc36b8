//! Inode lifetimes: the references that keep an inode alive (names, open data, the
//! kernel's lookup count) and its removal, with its segments, when the last goes.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{lock, stale, OpenInode, Vfs};
use crate::client::Manifest;
use crate::fs::file::FileData;
use crate::fs::meta::{Inode, Kind, ROOT};
use crate::fs::FsError;

impl Vfs {
    /// Deletes an inode with no links left: its record, then its segments (after the
    /// journal's next flush, which records the removal in the pool's copy; without a
    /// journal once the removal is on this disk). A crash in between leaves segments
    /// nobody names, which the sweep reclaims; never a record naming segments gone.
    pub(super) fn remove_inode(&self, inode: &Inode) {
        if let Err(e) = self.meta.purge(inode.ino) {
            log::error!("cannot forget inode {}: {e}", inode.ino);
            return;
        }
        if let Some(m) = &inode.manifest {
            self.delete_segments(m);
        }
    }

    /// Deletes a file's segments: now, or after the journal's next flush (see
    /// `remove_inode`).
    pub(super) fn delete_segments(&self, m: &Manifest) {
        if m.inline.is_some() && !m.stores_anything() && m.reserved.is_empty() {
            return; // a small file kept in its record: nothing on the pool
        }
        if let Some(j) = self.journal.get() {
            j.defer_delete(m.clone());
            return;
        }
        // The change that let the file go may not be on disk yet: after a crash the
        // store must not name a file whose segments are gone.
        if let Err(e) = self.meta.persist() {
            log::warn!("segments of file {} kept: {e}", m.place.file_id);
            return;
        }
        if let Err(e) = self.block_on(self.client.delete(m)) {
            // The bytes stay on that peer until it is cleaned; nothing is lost.
            log::warn!("cannot delete segments of file {}: {e}", m.place.file_id);
        }
    }

    /// Frees on the nodes the slots of the stripes and reservations `gone` lists, now.
    /// Not deferred to the journal's flush as a deleted file is: the file's next write
    /// of such a stripe may take that very slot again (slots alternate), and a punch
    /// arriving after it would free live bytes. The price: a stripe rewritten in the
    /// last moment before the owner's disk is lost may not read back after recovery
    /// (its old slot is gone; checksums make that an I/O error, never wrong bytes).
    pub(super) fn free_slots(&self, gone: &Manifest) {
        let mut runs: Vec<Range<u64>> = gone.reserved.iter().cloned().collect();
        for (j, _) in gone.records() {
            match runs.last_mut() {
                Some(r) if r.end == j => r.end = j + 1,
                _ => runs.push(j..j + 1),
            }
        }
        for run in runs {
            if let Err(e) = self.block_on(self.client.punch(gone, run)) {
                log::warn!(
                    "cannot free unused slots of file {}: {e}",
                    gone.place.file_id
                );
            }
        }
    }

    /// Removes `ino` if nothing refers to it any more: no name, no open handle, no
    /// reference held by the kernel.
    pub(super) fn reap(&self, ino: u64) {
        self.reap_all(&[ino]);
    }

    /// `reap` of several inodes in one transaction.
    fn reap_all(&self, inos: &[u64]) {
        let unused: Vec<u64> = {
            let open = lock(&self.open);
            let lookups = lock(&self.lookups);
            inos.iter()
                .copied()
                .filter(|ino| *ino != ROOT && !open.contains_key(ino) && !lookups.contains_key(ino))
                .collect()
        };
        if unused.is_empty() {
            return;
        }
        // Nothing can take a new reference now on one without links: it has no name to
        // be looked up by, and the kernel, holding none, cannot open it.
        match self.meta.purge_unlinked(&unused) {
            Ok(gone) => {
                for m in gone.iter().filter_map(|i| i.manifest.as_ref()) {
                    self.delete_segments(m);
                }
            }
            Err(e) => log::warn!("cannot remove unlinked inodes {unused:?}: {e}"),
        }
    }

    /// One more reference of the kernel on `inode` (every inode a lookup, create,
    /// mknod, mkdir, symlink or link hands to it), released by `forget`.
    pub(super) fn referenced(&self, inode: Inode) -> Inode {
        *lock(&self.lookups).entry(inode.ino).or_default() += 1;
        inode
    }

    /// The kernel drops `n` of its references to `ino`; an inode with no name, no
    /// opener and no reference left is removed. One whose record went with its last
    /// name (`unlink`) is only forgotten: no transaction.
    pub fn forget(&self, ino: u64, n: u64) {
        let last = {
            let mut lookups = lock(&self.lookups);
            match lookups.get_mut(&ino) {
                Some(count) if *count > n => {
                    *count -= n;
                    false
                }
                Some(_) => {
                    lookups.remove(&ino);
                    lock(&self.ghosts).remove(&ino).is_none()
                }
                None => false,
            }
        };
        if last {
            self.reap(ino);
        }
    }

    /// Asked by `unlink`, inside its transaction, of a file losing its last name: may
    /// its record go now? Yes unless this mount has it open. When the kernel still
    /// refers to it, its attributes stay in `ghosts` until the kernel forgets it.
    pub(super) fn let_go(&self, inode: &Inode) -> bool {
        if self.is_open(inode.ino) {
            return false;
        }
        let lookups = lock(&self.lookups);
        if lookups.contains_key(&inode.ino) {
            let mut ghost = inode.clone();
            ghost.manifest = None;
            lock(&self.ghosts).insert(inode.ino, ghost);
        }
        true
    }

    /// The attributes of a file whose record went with its last name while the kernel
    /// still refers to it (`let_go`).
    pub(super) fn ghost(&self, ino: u64) -> Option<Inode> {
        lock(&self.ghosts).get(&ino).cloned()
    }

    pub(super) fn opened(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).cloned()
    }

    /// The inode with the live size and times of an open file.
    pub(super) fn live(&self, mut inode: Inode) -> Inode {
        if let Some(open) = self.opened(inode.ino) {
            let data = self.block_on(open.data.lock());
            inode.size = data.size();
            if let Some(t) = data.touched {
                inode.mtime = t;
                inode.ctime = t;
            }
        }
        inode
    }

    /// Bytes of `inode` that take space (`st_blocks` × 512): for a file, the stripes
    /// stored or reserved and the bytes written but not yet stored; holes take none.
    pub fn allocated(&self, inode: &Inode) -> u64 {
        match inode.kind {
            Kind::File => {}
            Kind::Symlink => return inode.size,
            _ => return 0,
        }
        if let Some(open) = self.opened(inode.ino) {
            return self.block_on(open.data.lock()).allocated_bytes();
        }
        match &inode.manifest {
            Some(m) if m.inline.is_some() => inode.size,
            Some(m) => m.allocated_bytes(),
            None => 0,
        }
    }

    /// Takes a reference on the open data of `ino`, loading it the first time.
    pub(super) fn acquire(&self, ino: u64) -> Result<Arc<OpenInode>, FsError> {
        // A placement for a file recorded without one, made outside the gate.
        let mut placed = None;
        loop {
            if let Some(open) = lock(&self.open).get(&ino) {
                open.users.fetch_add(1, Ordering::SeqCst);
                return Ok(open.clone());
            }
            // From the read of the record to the entry in `open`: an unlink deciding
            // whether the record may go with the last name, or a repair swapping the
            // manifest of a closed file, waits (`first_open`).
            let gate = self.first_open.read().unwrap_or_else(|p| p.into_inner());
            let mut inode = self.meta.get(ino).map_err(stale)?;
            match inode.kind {
                Kind::Dir => return Err(FsError::IsDir),
                Kind::File => {}
                _ => return Err(FsError::Invalid),
            }
            let manifest = match inode.manifest.take().or_else(|| placed.take()) {
                Some(m) => m,
                None => {
                    drop(gate);
                    placed = Some(self.block_on(self.client.new_file())?);
                    continue;
                }
            };
            return Ok(self.opened_with(ino, manifest));
        }
    }

    /// The entry of `ino` in `open` (made with `manifest` unless another thread made it
    /// first), with one more user.
    fn opened_with(&self, ino: u64, manifest: Manifest) -> Arc<OpenInode> {
        let mut map = lock(&self.open);
        // Another thread may have opened it meanwhile; its state wins.
        let open = map
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(OpenInode {
                    data: tokio::sync::Mutex::new(FileData::new(
                        self.client.clone(),
                        manifest,
                        self.max_uploads,
                    )),
                    users: AtomicU64::new(0),
                    writers: AtomicU64::new(0),
                })
            })
            .clone();
        open.users.fetch_add(1, Ordering::SeqCst);
        open
    }

    /// Drops a reference taken by `acquire`; the last one forgets the data and, for a
    /// file nothing else refers to, removes it.
    pub(super) fn relinquish(&self, ino: u64) {
        let last = {
            let mut map = lock(&self.open);
            match map.get(&ino) {
                Some(open) if open.users.fetch_sub(1, Ordering::SeqCst) == 1 => {
                    map.remove(&ino);
                    true
                }
                _ => false,
            }
        };
        if last {
            self.reap(ino);
        }
    }
}
