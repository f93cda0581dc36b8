//! Making and freeing room in segments under the usage lock: the allocation before a
//! STORE's write, RESERVE (allocate without writing) and PUNCH (free a range).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::super::handles::SegKey;
use super::super::segfile::SegFile;
use super::super::space::{self};
use crate::proto::{Identity, SegmentRef};

use super::error::{checked_end, disk_err, io_err};
use super::{Allocated, Grow, SegmentStore, StoreError, MAX_SEGMENT_END};

impl SegmentStore {
    /// Allocates `len` bytes at `offset` of `owner`'s segment without writing them or
    /// changing its length (creating the segment if missing), so that stores there later
    /// need no room: checked against the quota and the capacity like a STORE (`Quota`,
    /// `NoSpace`, `DiskFull`, `BadRange`), with nothing allocated when refused. On a
    /// filesystem that cannot preallocate, only the check is made.
    pub fn reserve(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        offset: u64,
        len: u64,
    ) -> Result<(), StoreError> {
        let path = self.path_of(owner, seg)?;
        if len == 0 {
            // Nothing to allocate: not worth a segment file.
            return checked_end(seg, offset, len).map(|_| ());
        }
        self.allocate(owner, seg, &path, offset, len, Grow::Reserve)
            .map(|_| ())
    }

    /// Frees `len` bytes at `offset` of `owner`'s segment (they read back as zeros; its
    /// length stays, unless space reserved past it is freed: then it grows to cover the
    /// range); returns the bytes the segment gave back to the disk. A segment that
    /// does not exist frees 0, as does a filesystem that cannot punch holes. A range
    /// ending past `MAX_SEGMENT_END` is `BadRange`.
    pub fn punch(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        offset: u64,
        len: u64,
    ) -> Result<u64, StoreError> {
        let path = self.path_of(owner, seg)?;
        let end = checked_end(seg, offset, len)?;
        if len == 0 {
            return Ok(0);
        }
        let mut usage = self.usage_lock();
        // Under the usage lock, like every allocation: the blocks measured around the
        // punch change by its doing only.
        let Some(segfile) = self.cached_or_open(&SegKey::new(owner, seg), &path)? else {
            return Ok(0);
        };
        let file = segfile.file();
        let meta = file
            .metadata()
            .map_err(io_err(format!("stat {}", path.display())))?;
        let before = space::allocated(&meta);
        let block = meta.blksize().max(512);
        let map_err = || io_err(format!("map {}", path.display()));
        let size = meta.len();
        // The blocks the range shares at its ends go too where their other part lies
        // past the segment's end (it holds nothing there) and no reservation next to the
        // range has them: else a refused reservation given back would leave them.
        let (mut start, mut stop) = (offset, end);
        let head = offset / block * block;
        if head < offset
            && head >= size
            && self
                .extents
                .mapped(file, head.saturating_sub(block), head)
                .map_err(map_err())?
                == Some(0)
        {
            start = head;
        }
        let tail = end.div_ceil(block) * block;
        if tail > end
            && end >= size
            && self
                .extents
                .mapped(file, tail, MAX_SEGMENT_END.max(tail))
                .map_err(map_err())?
                == Some(0)
        {
            stop = tail;
        }
        if stop > size {
            // Blocks reserved past the segment's end: ext4 and btrfs punch nothing there,
            // and a truncate would drop every block past the end, other reservations
            // too. The length grows to the range's end instead (it reads as zeros, as a
            // punched range does), which makes the whole range punchable.
            let past = self
                .extents
                .mapped(file, start.max(size), stop)
                .map_err(map_err())?;
            if past.is_some_and(|held| held > 0) {
                file.set_len(stop)
                    .map_err(io_err(format!("extend {}", path.display())))?;
            }
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match space::fallocate(file, mode, start, stop - start) {
            Ok(()) => {}
            Err(e) if space::unsupported(&e) => {
                // The bytes stay, unreachable: no manifest points at them any more.
                log::debug!("cannot punch {offset}+{len} in {}: {e}", path.display());
                return Ok(0);
            }
            Err(e) => return Err(io_err(format!("punch {}", path.display()))(e)),
        }
        let freed = before.saturating_sub(Self::allocated(file, &path)?);
        usage.sub(owner, freed);
        Self::touch(file, &path);
        Ok(freed)
    }

    /// Bytes `file` (at `path`) takes on the disk.
    pub(super) fn allocated(file: &File, path: &Path) -> Result<u64, StoreError> {
        file.metadata()
            .map(|m| space::allocated(&m))
            .map_err(io_err(format!("stat {}", path.display())))
    }

    /// The open segment file of `key` (at `path`), from the handle cache or opened and
    /// cached now; `None` if it does not exist. Called under the usage lock only: DELETE
    /// runs under it too, so a handle found or opened here is of the file at `path`
    /// until the lock is released and beyond (see `handles`).
    pub(super) fn cached_or_open(
        &self,
        key: &SegKey,
        path: &Path,
    ) -> Result<Option<Arc<SegFile>>, StoreError> {
        if let Some(segfile) = self.handles_lock().get(key) {
            return Ok(Some(segfile));
        }
        match Self::open_rw(path) {
            Ok(file) => Ok(Some(
                self.handles_lock()
                    .insert(key.clone(), Arc::new(SegFile::new(file))),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("open {}", path.display()))(e)),
        }
    }

    /// Makes room for `offset..offset+len` of `owner`'s segment at `path` and counts it:
    /// under the usage lock, checks the bytes of the range not yet allocated against the
    /// quota and the capacity, creates the segment if needed, allocates the range and
    /// counts the blocks the file gained. The caller writes (or not) after the lock is
    /// released. A refused allocation counts nothing and leaves no segment it created.
    pub(super) fn allocate(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        path: &Path,
        offset: u64,
        len: u64,
        grow: Grow,
    ) -> Result<Allocated, StoreError> {
        let end = checked_end(seg, offset, len)?;
        let key = SegKey::new(owner, seg);
        let mut usage = self.usage_lock();
        let existing = self.cached_or_open(&key, path)?;
        let need = match &existing {
            Some(segfile) => self
                .extents
                .unallocated(segfile.file(), offset, end)
                .map_err(io_err(format!("map {}", path.display())))?,
            None => self.extents.span(offset, end),
        };
        let used = usage.owners.get(owner).copied().unwrap_or(0);
        if let Some(quota) = self.quota {
            if used.saturating_add(need) > quota {
                return Err(StoreError::Quota {
                    owner: *owner,
                    used,
                    need,
                    quota,
                });
            }
        }
        let free = self.capacity.saturating_sub(usage.bytes);
        if need > free {
            return Err(StoreError::NoSpace {
                need,
                free,
                capacity: self.capacity,
            });
        }
        let created = existing.is_none();
        let segfile = match existing {
            Some(segfile) => segfile,
            None => Arc::new(SegFile::new(self.create(path)?)),
        };
        let mut counted = 0;
        let mut estimated = 0;
        // Nothing to allocate when every block of the range is already (and so nothing
        // to count: a write there allocates nothing).
        if need > 0 && len > 0 {
            let before = Self::allocated(segfile.file(), path)?;
            let mode = match grow {
                Grow::Write => 0,
                Grow::Reserve => libc::FALLOC_FL_KEEP_SIZE,
            };
            match space::fallocate(segfile.file(), mode, offset, len) {
                // Exactly what the disk gave, whole blocks and any extent-tree block
                // included; nobody else allocates in this file without the lock.
                Ok(()) => counted = Self::allocated(segfile.file(), path)?.saturating_sub(before),
                Err(e) if space::unsupported(&e) => {
                    if grow == Grow::Write {
                        // The write allocates the range itself, unseen: count the estimate.
                        counted = need;
                        estimated = need;
                    }
                }
                Err(e) => {
                    let refused =
                        disk_err(format!("allocate {offset}+{len} of {}", path.display()))(e);
                    if created {
                        Self::remove_created(path);
                    } else {
                        // A filesystem may keep part of a failed allocation (ext4 does):
                        // count what it kept, so the count stays the disk's.
                        let after = Self::allocated(segfile.file(), path)?;
                        usage.add(owner, after.saturating_sub(before));
                    }
                    return Err(refused);
                }
            }
        }
        let segfile = if created {
            // Counted when created (not by length: an empty segment is one too, as the
            // measure at start counts it).
            usage.segments += 1;
            self.handles_lock().insert(key, segfile)
        } else {
            segfile
        };
        usage.add(owner, counted);
        // Marked written now, under the lock and before the caller writes: a sweep's
        // conditional DELETE keeps it (see `reclaim`).
        Self::touch(segfile.file(), path);
        Ok(Allocated { segfile, estimated })
    }

    /// Creates the segment file at `path` (and its directories); a full disk is
    /// `DiskFull`. Called under the usage lock.
    pub(super) fn create(&self, path: &Path) -> Result<File, StoreError> {
        if let Some(dir) = path.parent() {
            if let Err(e) = fs::create_dir_all(dir) {
                Self::remove_created(path);
                return Err(disk_err(format!("create {}", dir.display()))(e));
            }
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                Self::remove_created(path);
                disk_err(format!("create {}", path.display()))(e)
            })
    }

    /// Removes a segment file created for a refused allocation, and its file's and
    /// owner's directories if that left them empty. Called under the usage lock, so no
    /// other segment is being created there meanwhile.
    pub(super) fn remove_created(path: &Path) {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!(
                    "cannot remove {} after a refused store: {e}",
                    path.display()
                );
            }
        }
        // Each fails harmlessly when the directory still holds something.
        let file_dir = path.parent();
        for dir in [file_dir, file_dir.and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Opens an existing segment file for reads and writes.
    pub(super) fn open_rw(path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }
}
