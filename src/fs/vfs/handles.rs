//! Open files and their handles: create and open, reads and writes through a handle,
//! seek, fallocate, and the commit (or roll-back) of a file's data at flush.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{falloc, lock, Invalidate, OpenHandle, OpenInode, Vfs};
use crate::fs::file::{unused_slots, FileData, ReadBytes};
use crate::fs::meta::{Inode, Kind};
use crate::fs::FsError;

/// `st_blksize` of a file being written (bytes): one `max_write` (1 MiB), so a stripe
/// of 2 MiB takes 2 WRITE requests.
pub const WRITE_IO_SIZE: u32 = 1 << 20;

/// `st_blksize` of a file with data and no writer (bytes). A buffered reader's first
/// read asks this much; the kernel turns a read of 64 KiB at offset 0 into one READ of
/// 128 KiB (its first readahead window is twice the request; a read of 128 KiB became
/// two READs of 128 KiB, of 1 MiB eight), so the first byte waits for 4 sealed chunks
/// of one node. `cat` reads at least 128 KiB whatever this says (coreutils'
/// `IO_BUFSIZE`).
pub const READ_IO_SIZE: u32 = 64 << 10;

impl Vfs {
    /// Stores buffered data and records the manifest, so the file survives a crash.
    /// On failure the open file goes back to what was last committed (a failed write
    /// changes nothing), what the failed attempt stored is freed on the nodes, and the
    /// error is reported by every later flush until the file is closed.
    pub(super) fn commit(
        &self,
        ino: u64,
        data: &mut FileData,
        when: Invalidate,
    ) -> Result<(), FsError> {
        if let Err(e) = self.block_on(data.flush()) {
            self.roll_back(ino, data, when);
            return Err(e);
        }
        if !data.changed {
            return Ok(());
        }
        let size = data.size();
        let touched = data.touched;
        let committed = self.meta.update(ino, true, |inode| {
            inode.size = size;
            inode.manifest = Some(data.manifest.clone());
            if let Some(t) = touched {
                inode.mtime = t;
                inode.ctime = t;
            }
            Ok(())
        });
        if let Err(e) = committed {
            data.fail(e.again());
            self.roll_back(ino, data, when);
            return Err(e);
        }
        data.changed = false;
        data.touched = None;
        // The manifest just committed is the file now: free what nothing uses any more.
        let old = std::mem::replace(&mut data.committed, data.manifest.clone());
        let mut candidates = std::mem::take(&mut data.written);
        let mut reserved = rangemap::RangeSet::new();
        if old.place.file_id == data.manifest.place.file_id {
            candidates.extend(old.records().map(|(j, r)| (j, r.clone())));
            // Slices the new log no longer names (compacted, hidden or cut off).
            let slices = old.log.slices.iter();
            candidates.extend(slices.map(|(s, slice)| (*s, slice.record.clone())));
            reserved = old.reserved;
        } else {
            self.delete_segments(&old); // replaced by a truncation to zero
        }
        for gone in unused_slots(&data.manifest, &candidates, &reserved) {
            self.free_slots(&gone);
        }
        Ok(())
    }

    /// Puts an open file whose flush failed back to its committed state, and frees on
    /// the nodes what the failed attempt stored or reserved there (never a slot the
    /// committed manifest uses: rewrites went to the other slot).
    pub(super) fn roll_back(&self, ino: u64, data: &mut FileData, when: Invalidate) {
        let (abandoned, written) = self.block_on(data.roll_back());
        // Only when something was dropped: an invalidation the kernel gets while it
        // waits for a GETATTR makes it ignore the fresh size. One from inside a WRITE
        // may land before the kernel ends that write and grows its cached size again,
        // so the next FLUSH makes sure (`discarded` stays set for it).
        if let (Invalidate::Later, true) = (when, data.discarded) {
            self.invalidate(ino, when);
        }
        let base = &data.committed;
        if abandoned.place.file_id != base.place.file_id {
            // A placement begun by a truncation to zero: none of it was committed.
            self.delete_segments(&abandoned);
            return;
        }
        for gone in unused_slots(base, &written, &abandoned.reserved) {
            self.free_slots(&gone);
        }
    }

    /// Rewrites every patched stripe of file `ino` whole and commits it, so all its
    /// bytes are in its stripes and its log is empty: repair, re-encoding and scrub
    /// move and verify stripes only. Returns the manifest committed. Errors: a failed
    /// read or store (the file stays as it was), the metadata store's.
    pub fn compact_file(&self, ino: u64) -> Result<crate::client::Manifest, FsError> {
        self.compact_file_some(ino, usize::MAX).map(|(m, _)| m)
    }

    /// `compact_file` of the first `most` patched stripes only: the file's lock is held
    /// for their rewrite, so a user who opens the file meanwhile waits for a few
    /// stripes, not the whole file. Returns the manifest committed and whether patched
    /// stripes are left. Errors: as `compact_file`.
    pub fn compact_file_some(
        &self,
        ino: u64,
        most: usize,
    ) -> Result<(crate::client::Manifest, bool), FsError> {
        self.with_data(ino, |vfs, data| {
            let left = match vfs.block_on(data.compact_some(most)) {
                Ok(left) => left,
                Err(e) => {
                    vfs.roll_back(ino, data, Invalidate::Later);
                    return Err(e);
                }
            };
            // Not a change of the file's bytes: its times stay.
            data.changed = true;
            vfs.commit(ino, data, Invalidate::Later)?;
            Ok((data.manifest.clone(), left))
        })
    }

    /// Sets the size of an open file's data. Placement is decided here, before the
    /// data path, as `write` does for an empty file: a truncation to zero starts the
    /// file afresh on the pool as it is now (`FileData::start_afresh`). Errors: an
    /// earlier failed store of the file; no live node to place on.
    pub(super) fn resize(&self, data: &mut FileData, size: u64) -> Result<(), FsError> {
        if size == 0 && data.size() != 0 && !data.has_failed() {
            let fresh = self.block_on(self.client.new_file())?;
            return self.block_on(data.start_afresh(fresh));
        }
        self.block_on(data.resize(size))
    }

    pub(super) fn with_data<T>(
        &self,
        ino: u64,
        f: impl FnOnce(&Self, &mut FileData) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let open = self.acquire(ino)?;
        let result = {
            let mut data = self.block_on(open.data.lock());
            f(self, &mut data)
        };
        self.relinquish(ino);
        result
    }

    /// A new handle on `open` (inode `ino`), counted as a writer when `writes`.
    pub(super) fn new_handle(&self, ino: u64, open: &OpenInode, writes: bool) -> u64 {
        if writes {
            open.writers.fetch_add(1, Ordering::SeqCst);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        lock(&self.handles).insert(fh, OpenHandle { ino, writes });
        fh
    }

    /// The preferred I/O size to report for `inode` (`st_blksize`, bytes): tools size
    /// their buffers by it. `WRITE_IO_SIZE` while the file is empty or open for
    /// writing, so `cp` (which reads it with fstat right after its open with `O_CREAT`
    /// or `O_TRUNC`, when the file is empty) writes a stripe in 2 requests instead of
    /// 16; `READ_IO_SIZE` for a file with data and no writer, so a buffered reader's
    /// first read (Python's `open().read(1)`, stdio) waits for a few sealed chunks of
    /// one node, not for a whole shard.
    pub fn io_size(&self, inode: &Inode) -> u32 {
        let writing = self
            .opened(inode.ino)
            .is_some_and(|open| open.writers.load(Ordering::SeqCst) > 0);
        if inode.size == 0 || writing {
            WRITE_IO_SIZE
        } else {
            READ_IO_SIZE
        }
    }

    pub(super) fn handle(&self, fh: u64) -> Result<OpenHandle, FsError> {
        lock(&self.handles)
            .get(&fh)
            .copied()
            .ok_or(FsError::BadHandle)
    }

    /// Creates and opens a regular file, placed on the pool's current live nodes (a
    /// reference for the kernel).
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Inode, u64), FsError> {
        let mut inode = Inode::new(Kind::File, (mode & 0o7777) as u16, uid, gid);
        inode.manifest = Some(self.block_on(self.client.new_file())?);
        // Not synced here: the file's close (or fsync) commits it durably, so a small
        // file costs one metadata flush, not two.
        let inode = self.referenced(self.meta.create(parent, name, inode)?);
        let open = match self.acquire(inode.ino) {
            Ok(open) => open,
            Err(e) => {
                // The kernel gets an error, not the inode: it holds no reference.
                self.forget(inode.ino, 1);
                return Err(e);
            }
        };
        // Even an empty file's close must commit, to make its name durable.
        self.block_on(open.data.lock()).changed = true;
        Ok((inode.clone(), self.new_handle(inode.ino, &open, true)))
    }

    /// Opens a file; `O_TRUNC` empties it.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let open = self.acquire(ino)?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let mut data = self.block_on(open.data.lock());
            // Committed by this handle's close or fsync, with what it writes: a crash
            // in between leaves the file as it was, never emptied.
            let truncated = self.resize(&mut data, 0);
            if let Err(e) = truncated {
                drop(data);
                self.relinquish(ino);
                return Err(e);
            }
        }
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok(self.new_handle(ino, &open, writes))
    }

    pub(super) fn data_of(&self, fh: u64) -> Result<(OpenHandle, Arc<OpenInode>), FsError> {
        let h = self.handle(fh)?;
        let open = self.opened(h.ino).ok_or(FsError::BadHandle)?;
        Ok((h, open))
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, len: u32) -> Result<ReadBytes, FsError> {
        let (_, open) = self.data_of(fh)?;
        self.block_on(async { open.data.lock().await.read(offset, u64::from(len)).await })
    }

    /// Writes at `offset`; returns bytes taken. The file's mtime and ctime become now.
    /// The offset is the kernel's, `O_APPEND` included (it puts an appending write at
    /// its size, under the inode's lock): the handle a write comes with may be any
    /// writable one of the file (writeback of mmap pages picks one), so the handle's
    /// own flags must not move it.
    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> Result<u32, FsError> {
        let (h, open) = self.data_of(fh)?;
        let mut data = self.block_on(open.data.lock());
        // Placement is decided before the data path: a file that holds nothing yet is
        // placed again on the pool as it is now, if its holders are no longer exactly
        // the live nodes (one died, or nodes joined since it was created).
        if !data.has_failed() && data.holds_nothing() {
            if let Some(fresh) = self.block_on(self.client.place_again(&data.manifest))? {
                data.replace_placement(fresh);
            }
        }
        if let Err(e) = self.block_on(data.write(offset, bytes)) {
            if data.has_failed() {
                // A store failed: the file goes back to what was committed now, so its
                // size does not show bytes that will never be stored.
                self.roll_back(h.ino, &mut data, Invalidate::Later);
            }
            return Err(e);
        }
        Ok(bytes.len() as u32)
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE` (`whence`), at the granularity of
    /// stripes. Errors: ENXIO past the end or when no data follows; EINVAL for any
    /// other `whence` (the kernel answers those itself).
    pub fn seek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, FsError> {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(FsError::Invalid),
        };
        let offset = u64::try_from(offset).map_err(|_| FsError::NoSuchOffset)?;
        let (_, open) = self.data_of(fh)?;
        let data = self.block_on(open.data.lock()).seek(offset, data);
        let at = data.ok_or(FsError::NoSuchOffset)?;
        i64::try_from(at).map_err(|_| FsError::NoSuchOffset)
    }

    /// `fallocate(2)`: mode 0 reserves room on the pool for `offset..offset+len` and
    /// grows the file to cover it; `FALLOC_FL_KEEP_SIZE` reserves without growing;
    /// `FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE` makes the range read as zeros and
    /// frees it; `FALLOC_FL_ZERO_RANGE` makes it read as zeros, reserved. Errors:
    /// EOPNOTSUPP for any other mode (nothing changes), ENOSPC or EDQUOT when the pool
    /// cannot hold the reservation (nothing changes), EINVAL for an empty range.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), FsError> {
        use falloc::{KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE};
        let supported = [
            0,
            KEEP_SIZE,
            PUNCH_HOLE | KEEP_SIZE,
            ZERO_RANGE,
            ZERO_RANGE | KEEP_SIZE,
        ];
        if !supported.contains(&mode) {
            return Err(FsError::NotSupported);
        }
        if len == 0 {
            return Err(FsError::Invalid);
        }
        let (h, open) = self.data_of(fh)?;
        let mut data = self.block_on(open.data.lock());
        let keep_size = mode & KEEP_SIZE != 0;
        let done = self.block_on(async {
            if mode & PUNCH_HOLE != 0 {
                return data.punch(offset, len).await;
            }
            if mode & ZERO_RANGE != 0 {
                data.punch(offset, len).await?;
            }
            data.allocate(offset, len, keep_size).await
        });
        done.and_then(|()| self.commit(h.ino, &mut data, Invalidate::Later))
    }

    /// Stores everything written through any handle of this file and records it.
    pub fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (h, open) = self.data_of(fh)?;
        let mut data = self.block_on(open.data.lock());
        let committed = self.commit(h.ino, &mut data, Invalidate::Now);
        let discarded = std::mem::take(&mut data.discarded);
        drop(data);
        if discarded {
            // FLUSH, FSYNC and RELEASE hold no page lock: the kernel's cache of the
            // rolled-back file is dropped before the close or fsync reports it.
            self.invalidate(h.ino, Invalidate::Now);
        }
        committed
    }

    /// `fsync(2)`: the file's data and record stored, then the change in the pool's
    /// copy of the namespace.
    pub fn fsync(&self, fh: u64) -> Result<(), FsError> {
        self.flush(fh)?;
        self.sync_namespace()
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let result = self.flush(fh);
        let gone = lock(&self.handles).remove(&fh);
        if let Some(h) = gone {
            if h.writes {
                if let Some(open) = self.opened(h.ino) {
                    open.writers.fetch_sub(1, Ordering::SeqCst);
                }
            }
            self.relinquish(h.ino);
        }
        result
    }
}
