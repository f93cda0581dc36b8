//! The segment store on disk: one file per (owner, file id, segment index) under
//! `STORAGE/segments/OWNER/FILE/INDEX.seg`, with capacity and per-owner quota accounting
//! and strict id validation. Its parts: `error` (what fails, and how ranges are
//! checked), `paths` (ids and owner directories, measured at open), `alloc` (making and
//! freeing room: STORE's allocation, RESERVE, PUNCH), `read` (FWD), `reclaim` (LIST
//! and the conditional per-segment DELETE of an owner's sweep).
//!
//! Usage is the bytes really allocated on the disk (`st_blocks * 512`), not apparent
//! lengths: a shard written far into a sparse segment costs its own blocks. A STORE
//! allocates its range (`fallocate`) under the usage lock before writing it, having
//! checked that the bytes not yet allocated there fit the capacity and quota; so
//! concurrent stores cannot overcommit, an overwrite needs no room, and a full disk
//! refuses a store before any byte of it is written. RESERVE allocates a range without
//! writing it, PUNCH frees one.
//!
//! The owner is the identity of the static key of the connection that stored a segment;
//! every operation resolves segments inside its caller's own directory, so one member
//! can neither read, overwrite nor delete another's segments, nor learn that they exist.
//!
//! A STORE's whole body is received before a byte is written, so a connection cut
//! mid-transfer leaves nothing behind; the write is then made durable (fdatasync)
//! before the node acknowledges it. A machine crash in the middle of a write can still
//! tear it, which is why every shard is checksummed by the client's manifest.
//!
//! Segment files recently stored into stay open (`handles`), and concurrent stores into
//! one segment share their fdatasyncs (`segfile`'s group commit).

mod alloc;
mod error;
mod paths;
mod read;
mod reclaim;
#[cfg(test)]
mod reclaim_tests;
#[cfg(test)]
mod space_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::handles::{Handles, DEFAULT_OPEN_SEGMENTS};
use super::segfile::SegFile;
use super::space::{self, ExtentMap};
use crate::proto::{Identity, SegmentRef};

use error::{disk_err, io_err};
pub use error::{StoreError, MAX_SEGMENT_END};
pub use paths::validate_file_id;
use paths::{measure_file, measure_owner, owner_dir_name, owner_of_dir};

/// Segment files of this node and the bytes they use, in total and per owner.
pub struct SegmentStore {
    root: PathBuf,
    capacity: u64,
    /// Bytes one owner may hold here; `None`: up to the capacity.
    quota: Option<u64>,
    // Held only while sizes are checked and reserved, never across a data write.
    usage: Mutex<Usage>,
    // Taken only inside `usage` (STORE, RESERVE, PUNCH, DELETE) or alone for a count.
    handles: Mutex<Handles>,
    /// fdatasyncs run so far.
    syncs: AtomicU64,
    /// Which bytes of a segment are allocated already.
    extents: ExtentMap,
}

/// How `allocate` allocates a range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grow {
    /// For a STORE: the segment grows to the range's end, as the write would make it.
    Write,
    /// For a RESERVE: the segment's length stays (FALLOC_FL_KEEP_SIZE).
    Reserve,
}

/// A range `allocate` made room for.
struct Allocated {
    segfile: Arc<SegFile>,
    /// Bytes counted on estimate because the filesystem cannot preallocate (the write
    /// allocates them): given back if the write fails.
    estimated: u64,
}

#[derive(Default, Clone)]
struct Usage {
    /// Allocated bytes of every segment file.
    bytes: u64,
    segments: u64,
    /// Allocated bytes per owner.
    owners: HashMap<Identity, u64>,
}

impl Usage {
    fn add(&mut self, owner: &Identity, bytes: u64) {
        self.bytes += bytes;
        *self.owners.entry(*owner).or_default() += bytes;
    }

    /// The owner holds no segment here any more (its directory is gone): whatever its
    /// count still says is drift (the filesystem may free extent-tree blocks of a file
    /// on its own, after they were counted), and goes from both counts.
    fn owner_emptied(&mut self, owner: &Identity) {
        if let Some(residue) = self.owners.remove(owner) {
            if residue > 0 {
                log::debug!("usage of {owner:?} was {residue} bytes off; reset");
            }
            self.bytes = self.bytes.saturating_sub(residue);
        }
    }

    fn sub(&mut self, owner: &Identity, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(held) = self.owners.get_mut(owner) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.owners.remove(owner);
            }
        }
    }
}

impl SegmentStore {
    /// Opens (creating if needed) the store under `storage/segments` and measures the
    /// bytes its segment files take on the disk, in total and per owner. `capacity` and
    /// `quota` (what one owner may hold here) are in bytes allocated on that disk.
    pub fn open(storage: &Path, capacity: u64, quota: Option<u64>) -> Result<Self, StoreError> {
        let root = storage.join("segments");
        fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
        let block = fs::metadata(&root)
            .map_err(io_err(format!("stat {}", root.display())))?
            .blksize();
        let mut usage = Usage::default();
        for dir in fs::read_dir(&root).map_err(io_err(format!("read {}", root.display())))? {
            let dir = dir.map_err(io_err("read segment dir"))?;
            if !dir.path().is_dir() {
                continue;
            }
            let name = dir.file_name().to_string_lossy().into_owned();
            match owner_of_dir(&name) {
                Some(owner) => {
                    let (bytes, segments) = measure_owner(&dir.path())?;
                    usage.bytes += bytes;
                    usage.segments += segments;
                    *usage.owners.entry(owner).or_default() += bytes;
                }
                None => {
                    // A file directory from before segments had owners: nobody can
                    // prove it stored them, so they stay unreachable, but they still
                    // take space on this disk.
                    let (bytes, segments) = measure_file(&dir.path())?;
                    log::warn!(
                        "{} holds {bytes} bytes stored before segments had owners; no \
                         member can reach them (remove the directory to free the space)",
                        dir.path().display()
                    );
                    usage.bytes += bytes;
                    usage.segments += segments;
                }
            }
        }
        Ok(SegmentStore {
            root,
            capacity,
            quota,
            usage: Mutex::new(usage),
            handles: Mutex::new(Handles::new(DEFAULT_OPEN_SEGMENTS)),
            syncs: AtomicU64::new(0),
            extents: ExtentMap::new(block),
        })
    }

    /// Keeps at most `cap` segment files open instead of the default.
    pub fn with_open_segments(mut self, cap: usize) -> Self {
        self.handles = Mutex::new(Handles::new(cap));
        self
    }

    /// fdatasyncs run since the store was opened (fewer than stores when concurrent
    /// stores into one segment share them).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Segment files held open now.
    pub fn open_segments(&self) -> usize {
        self.handles_lock().len()
    }

    fn handles_lock(&self) -> std::sync::MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the store may hold (allocated on its disk).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes one owner may hold (allocated), if bounded.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    fn usage_lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the segment files take on the disk, and their number.
    pub fn usage(&self) -> (u64, u64) {
        let u = self.usage_lock();
        (u.bytes, u.segments)
    }

    /// Bytes `owner`'s segment files take on the disk.
    pub fn owner_usage(&self, owner: &Identity) -> u64 {
        self.usage_lock().owners.get(owner).copied().unwrap_or(0)
    }

    fn dir_of(&self, owner: &Identity, file: &str) -> Result<PathBuf, StoreError> {
        validate_file_id(file)?;
        Ok(self.root.join(owner_dir_name(owner)).join(file))
    }

    fn path_of(&self, owner: &Identity, seg: &SegmentRef) -> Result<PathBuf, StoreError> {
        Ok(self
            .dir_of(owner, &seg.file)?
            .join(format!("{}.seg", seg.index)))
    }

    /// Writes `data` at `offset` of `owner`'s segment, durably. The bytes of the range
    /// not yet allocated in the segment must fit the owner's quota and the capacity,
    /// else the store is refused (`Quota`, `NoSpace`) before anything is created; a full
    /// disk refuses it too (`DiskFull`), with nothing counted. An overwrite of allocated
    /// bytes needs no room. A range ending past `MAX_SEGMENT_END` is `BadRange`.
    pub fn store(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.path_of(owner, seg)?;
        let len = data.len() as u64;
        let Allocated { segfile, estimated } =
            self.allocate(owner, seg, &path, offset, len, Grow::Write)?;
        if let Err(e) = segfile.file().write_all_at(data, offset) {
            if estimated > 0 {
                self.usage_lock().sub(owner, estimated);
            }
            return Err(disk_err(format!("write {}", path.display()))(e));
        }
        segfile
            .sync_writes(|| {
                self.syncs.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(disk_err(format!("sync {}", path.display())))?;
        Ok(())
    }

    /// Removes every segment `owner` holds of `file`; returns the bytes freed on the
    /// disk. Unknown files (and other owners' files) free 0.
    pub fn delete(&self, owner: &Identity, file: &str) -> Result<u64, StoreError> {
        let dir = self.dir_of(owner, file)?;
        let mut usage = self.usage_lock();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed behind our back, perhaps: its handles must not outlive it.
                self.handles_lock().forget_file(owner, file);
                return Ok(0);
            }
            Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
        };
        let mut freed = 0;
        let result = (|| {
            for entry in entries {
                let entry = entry.map_err(io_err("read segment dir"))?;
                let len = entry.metadata().map(|m| space::allocated(&m)).unwrap_or(0);
                fs::remove_file(entry.path())
                    .map_err(io_err(format!("remove {}", entry.path().display())))?;
                freed += len;
                usage.segments = usage.segments.saturating_sub(1);
            }
            fs::remove_dir(&dir).map_err(io_err(format!("remove {}", dir.display())))
        })();
        // Under the usage lock, like every STORE's open: no handle of a removed segment
        // survives in the cache, nor gets in later.
        self.handles_lock().forget_file(owner, file);
        // Account for what was removed even when a later removal failed.
        usage.sub(owner, freed);
        if let Some(owner_dir) = dir.parent() {
            // Gone once the owner holds nothing here; fails harmlessly otherwise.
            if fs::remove_dir(owner_dir).is_ok() {
                usage.owner_emptied(owner);
            }
        }
        result.map(|()| freed)
    }
}
