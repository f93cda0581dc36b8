//! The segment store on disk: one file per (owner, file id, segment index) under
//! `STORAGE/segments/OWNER/FILE/INDEX.seg`, with capacity and per-owner quota accounting
//! and strict id validation.
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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::handles::{Handles, SegKey, DEFAULT_OPEN_SEGMENTS};
use super::segfile::SegFile;
use super::space::{self, ExtentMap};
use crate::proto::{Identity, SegmentRef};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no space: {need} more bytes needed, {free} of {capacity} free")]
    NoSpace { need: u64, free: u64, capacity: u64 },
    #[error(
        "over quota: owner {owner:?} holds {used} bytes here and needs {need} more, \
         its quota is {quota}"
    )]
    Quota {
        owner: Identity,
        used: u64,
        need: u64,
        quota: u64,
    },
    #[error("invalid file id {0:?}")]
    BadId(String),
    #[error("segment {0} not found")]
    NotFound(String),
    #[error("range {offset}+{len} is beyond the end ({size}) of segment {segment}")]
    OutOfRange {
        segment: String,
        offset: u64,
        len: u32,
        size: u64,
    },
    #[error(
        "range {offset}+{len} of segment {segment} ends past the largest segment a node \
         keeps ({MAX_SEGMENT_END} bytes)"
    )]
    BadRange {
        segment: String,
        offset: u64,
        len: u64,
    },
    #[error("{context}: the node's disk is full ({source})")]
    DiskFull { context: String, source: io::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// Largest end (offset + length, in bytes) of a range a segment may hold: 2^50 bytes
/// (1 PiB), far past any real segment (a slot per stripe of about a MiB), and bounded so
/// that a hostile offset fails as a bad request rather than deep in the filesystem.
pub const MAX_SEGMENT_END: u64 = 1 << 50;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// As `io_err`, but a full disk (ENOSPC, or EDQUOT from a quota on the node's own
/// filesystem) becomes `DiskFull`: a refusal the client maps to ENOSPC, not a failure.
fn disk_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| {
        // By kind too: a shared sync's error is rebuilt from its kind (`segfile`).
        let full = matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            || matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            );
        if full {
            StoreError::DiskFull { context, source }
        } else {
            StoreError::Io { context, source }
        }
    }
}

/// The end of `offset..offset+len` of `seg`, if within `MAX_SEGMENT_END`.
fn checked_end(seg: &SegmentRef, offset: u64, len: u64) -> Result<u64, StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_SEGMENT_END => Ok(end),
        _ => Err(StoreError::BadRange {
            segment: format!("{}/{}", seg.file, seg.index),
            offset,
            len,
        }),
    }
}

/// Appends `len` bytes read at `offset` of `file` to `buf`, without zeroing them first
/// (for a whole shard that memset was a few percent of a cold `cat`).
fn pread_append(file: &File, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
    buf.reserve(len);
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let pos = libc::off_t::try_from(at).map_err(|_| io::Error::other("offset too large"))?;
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel writes at most `len - done` bytes, and at least that many
        // are spare (reserved above, `done` of them filled since).
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), len - done, pos) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: the kernel initialized these `n` bytes just past the old length.
        unsafe { buf.set_len(buf.len() + n as usize) };
        done += n as usize;
    }
    Ok(())
}

/// Accepts only short ids made of letters, digits, '-' and '_': nothing that a path
/// could interpret ('/', '.', NUL) can reach the filesystem.
pub fn validate_file_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadId(id.chars().take(80).collect()))
    }
}

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

/// The directory name of an owner: its identity in hex.
fn owner_dir_name(owner: &Identity) -> String {
    hex::encode(owner.0)
}

/// The owner a directory under `segments/` belongs to, if its name is one.
fn owner_of_dir(name: &str) -> Option<Identity> {
    let bytes = hex::decode(name).ok()?;
    Some(Identity(bytes.try_into().ok()?))
}

/// Allocated bytes and number of the segment files under `dir/*/` (a directory per
/// file).
fn measure_owner(dir: &Path) -> Result<(u64, u64), StoreError> {
    let (mut bytes, mut segments) = (0, 0);
    for file in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let file = file.map_err(io_err("read owner dir"))?;
        if !file.path().is_dir() {
            continue;
        }
        let (b, s) = measure_file(&file.path())?;
        bytes += b;
        segments += s;
    }
    Ok((bytes, segments))
}

/// Allocated bytes and number of the segment files in one file's directory.
fn measure_file(dir: &Path) -> Result<(u64, u64), StoreError> {
    let (mut bytes, mut segments) = (0, 0);
    for seg in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let meta = seg
            .and_then(|s| s.metadata())
            .map_err(io_err("stat segment"))?;
        bytes += space::allocated(&meta);
        segments += 1;
    }
    Ok((bytes, segments))
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
        Ok(freed)
    }

    /// Bytes `file` (at `path`) takes on the disk.
    fn allocated(file: &File, path: &Path) -> Result<u64, StoreError> {
        file.metadata()
            .map(|m| space::allocated(&m))
            .map_err(io_err(format!("stat {}", path.display())))
    }

    /// The open segment file of `key` (at `path`), from the handle cache or opened and
    /// cached now; `None` if it does not exist. Called under the usage lock only: DELETE
    /// runs under it too, so a handle found or opened here is of the file at `path`
    /// until the lock is released and beyond (see `handles`).
    fn cached_or_open(
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
    fn allocate(
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
        Ok(Allocated { segfile, estimated })
    }

    /// Creates the segment file at `path` (and its directories); a full disk is
    /// `DiskFull`. Called under the usage lock.
    fn create(&self, path: &Path) -> Result<File, StoreError> {
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
    fn remove_created(path: &Path) {
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
    fn open_rw(path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }

    /// Reads `len` bytes at `offset` of `owner`'s segment; a range past its end is an
    /// error, never a short answer. Another owner's segment is not found, like one that
    /// does not exist.
    pub fn fwd(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, StoreError> {
        self.read_ranges(owner, seg, &[(offset, len)], false)
    }

    /// `fwd` of several `(offset, len)` ranges of one segment, opened once: their bytes
    /// one after the other. These are small reads (a chunk and its tag) where the first
    /// byte is awaited, so the disk reads no more than asked: no readahead.
    pub fn fwd_parts(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        parts: &[(u64, u32)],
    ) -> Result<Vec<u8>, StoreError> {
        self.read_ranges(owner, seg, parts, true)
    }

    fn read_ranges(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        parts: &[(u64, u32)],
        no_readahead: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(owner, seg)?;
        let name = format!("{}/{}", seg.file, seg.index);
        let file = match self.open_for_read(owner, seg, &path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name))
            }
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        if no_readahead {
            // SAFETY: a valid descriptor we own; the call only sets a hint on it.
            let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        }
        let size = file.metadata().map_err(io_err("stat segment"))?.len();
        let mut total = 0usize;
        for &(offset, len) in parts {
            if offset
                .checked_add(u64::from(len))
                .is_none_or(|end| end > size)
            {
                return Err(StoreError::OutOfRange {
                    segment: name,
                    offset,
                    len,
                    size,
                });
            }
            total += len as usize;
        }
        let mut buf = Vec::with_capacity(total);
        for &(offset, len) in parts {
            pread_append(&file, &mut buf, len as usize, offset)
                .map_err(io_err(format!("read {}", path.display())))?;
        }
        Ok(buf)
    }

    /// A read-only open file of `owner`'s segment, its own (so its own readahead: readers
    /// sharing one open file share its readahead state, and concurrent stripe reads at
    /// scattered offsets then defeat it; cold `cat` measured ~30% slower that way).
    /// When a STORE left the segment open, the new open goes through that handle's
    /// `/proc/self/fd` entry, which reaches the file without walking its directories:
    /// after the page cache is dropped that walk costs more than a first read itself.
    fn open_for_read(&self, owner: &Identity, seg: &SegmentRef, path: &Path) -> io::Result<File> {
        let cached = self.handles_lock().get(&SegKey::new(owner, seg));
        if let Some(handle) = cached {
            // `handle` keeps its descriptor open (so its number cannot be reused) until
            // this open is done.
            let proc = format!("/proc/self/fd/{}", handle.file().as_raw_fd());
            if let Ok(file) = File::open(proc) {
                return Ok(file);
            }
        }
        File::open(path)
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
            let _ = fs::remove_dir(owner_dir);
        }
        result.map(|()| freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Identity = Identity([0xa; 16]);
    const B: Identity = Identity([0xb; 16]);

    fn seg(file: &str, index: u32) -> SegmentRef {
        SegmentRef {
            file: file.into(),
            index,
        }
    }

    /// The allocation unit of the filesystem under `dir`, in bytes: usage is counted in
    /// whole ones.
    fn block(dir: &Path) -> u64 {
        fs::metadata(dir).unwrap().blksize()
    }

    /// Allocated bytes and number of the segment files under `storage`, measured from
    /// outside the store.
    fn measured(storage: &Path) -> (u64, u64) {
        fn walk(dir: &Path, acc: &mut (u64, u64)) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    walk(&e.path(), acc);
                } else {
                    acc.0 += space::allocated(&meta);
                    acc.1 += 1;
                }
            }
        }
        let mut acc = (0, 0);
        walk(&storage.join("segments"), &mut acc);
        acc
    }

    #[test]
    fn store_fwd_delete_and_accounting() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 100 * b, None).unwrap();
        store.store(&A, &seg("f1", 0), 0, b"hello").unwrap();
        store.store(&A, &seg("f1", 0), 5, b" world").unwrap();
        store.store(&A, &seg("f1", 0), 0, b"J").unwrap();
        assert_eq!(store.fwd(&A, &seg("f1", 0), 0, 11).unwrap(), b"Jello world");
        // 11 bytes take a block of the disk.
        assert_eq!(store.usage(), (b, 1));
        assert_eq!(store.owner_usage(&A), b);
        assert!(matches!(
            store.fwd(&A, &seg("f1", 0), 5, 7),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            store.fwd(&A, &seg("f2", 0), 0, 1),
            Err(StoreError::NotFound(_))
        ));
        // Reopening measures the same usage, per owner too.
        let again = SegmentStore::open(dir.path(), 100 * b, None).unwrap();
        assert_eq!(again.usage(), (b, 1));
        assert_eq!(again.owner_usage(&A), b);
        assert_eq!(store.delete(&A, "f1").unwrap(), b);
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(store.owner_usage(&A), 0);
        assert_eq!(store.delete(&A, "f1").unwrap(), 0);
        // Nothing is left of an owner that holds nothing.
        assert!(fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn owners_see_only_their_own_segments() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 100 * b, None).unwrap();
        store.store(&A, &seg("f", 0), 0, b"mine").unwrap();
        // B asking for A's file learns what it would for a file that does not exist.
        let theirs = store.fwd(&B, &seg("f", 0), 0, 4).unwrap_err().to_string();
        let nothing = store.fwd(&B, &seg("g", 0), 0, 4).unwrap_err().to_string();
        assert_eq!(theirs.replace("f/0", "g/0"), nothing);
        // B's delete or punch frees nothing of A's; B's store of the same id is B's own
        // segment.
        assert_eq!(store.delete(&B, "f").unwrap(), 0);
        assert_eq!(store.punch(&B, &seg("f", 0), 0, b).unwrap(), 0);
        store.store(&B, &seg("f", 0), 0, b"XXXXXXXX").unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 4).unwrap(), b"mine");
        assert_eq!(store.fwd(&B, &seg("f", 0), 0, 8).unwrap(), b"XXXXXXXX");
        assert_eq!((store.owner_usage(&A), store.owner_usage(&B)), (b, b));
        assert_eq!(store.delete(&B, "f").unwrap(), b);
        assert_eq!(store.punch(&B, &seg("f", 0), 0, b).unwrap(), 0);
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 4).unwrap(), b"mine");
        assert_eq!(store.usage(), (b, 1));
    }

    #[test]
    fn quota_is_per_owner_and_refusals_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 100 * b, Some(2 * b)).unwrap();
        // b + 8 bytes take two blocks: the whole quota.
        store
            .store(&A, &seg("a", 0), 0, &vec![1; b as usize + 8])
            .unwrap();
        let err = store.store(&A, &seg("b", 0), 0, &[1; 3]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Quota {
                    owner: A,
                    used,
                    need,
                    quota,
                } if (used, need, quota) == (2 * b, b, 2 * b)
            ),
            "{err}"
        );
        assert!(!dir
            .path()
            .join("segments")
            .join(owner_dir_name(&A))
            .join("b")
            .exists());
        // Growing into a third block is refused too; rewriting in place is not, nor is
        // writing into the part of a block already held.
        assert!(matches!(
            store.store(&A, &seg("a", 0), 2 * b - 2, &[1; 6]),
            Err(StoreError::Quota { .. })
        ));
        store
            .store(&A, &seg("a", 0), 0, &vec![2; b as usize + 8])
            .unwrap();
        store.store(&A, &seg("a", 0), 2 * b - 2, &[2; 2]).unwrap();
        // Another owner still has its own quota.
        store
            .store(&B, &seg("b", 0), 0, &vec![3; 2 * b as usize])
            .unwrap();
        assert_eq!(store.usage(), (4 * b, 2));
        // A delete gives the quota back; a reopened store measures the same.
        store.delete(&A, "a").unwrap();
        let again = SegmentStore::open(dir.path(), 100 * b, Some(2 * b)).unwrap();
        assert_eq!((again.owner_usage(&A), again.owner_usage(&B)), (0, 2 * b));
        again
            .store(&A, &seg("c", 0), 0, &vec![4; 2 * b as usize])
            .unwrap();
    }

    #[test]
    fn capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 2 * b + 100, None).unwrap();
        store
            .store(&A, &seg("a", 0), 0, &vec![1; b as usize + 8])
            .unwrap();
        let err = store.store(&B, &seg("a", 1), 0, &[1; 3]).unwrap_err();
        assert!(
            matches!(err, StoreError::NoSpace { need, free: 100, .. } if need == b),
            "{err}"
        );
        // Rewriting in place needs no new space.
        store
            .store(&A, &seg("a", 0), 0, &vec![2; b as usize + 8])
            .unwrap();
        assert_eq!(store.usage(), (2 * b, 1));
    }

    #[test]
    fn segments_from_before_owners_count_but_are_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("segments").join("oldfile");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("0.seg"), [9; 5]).unwrap();
        let held = space::allocated(&fs::metadata(old.join("0.seg")).unwrap());
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(store.usage(), (held, 1));
        assert!(matches!(
            store.fwd(&A, &seg("oldfile", 0), 0, 5),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn traversal_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(&dir.path().join("s"), 100, None).unwrap();
        for bad in ["../x", "..", "a/b", "", "x\0", &"a".repeat(65)] {
            assert!(
                matches!(
                    store.store(&A, &seg(bad, 0), 0, b"x"),
                    Err(StoreError::BadId(_))
                ),
                "{bad:?}"
            );
            assert!(matches!(
                store.fwd(&A, &seg(bad, 0), 0, 1),
                Err(StoreError::BadId(_))
            ));
            assert!(matches!(store.delete(&A, bad), Err(StoreError::BadId(_))));
        }
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn concurrent_stores_into_one_segment_share_syncs_and_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
        let (threads, rounds, chunk) = (8usize, 16usize, 64 * 1024);
        std::thread::scope(|s| {
            for t in 0..threads {
                let store = &store;
                s.spawn(move || {
                    for r in 0..rounds {
                        let i = r * threads + t;
                        store
                            .store(&A, &seg("f", 0), (i * chunk) as u64, &vec![i as u8; chunk])
                            .unwrap();
                    }
                });
            }
        });
        let stores = (threads * rounds) as u64;
        let syncs = store.sync_count();
        assert!(
            syncs > 0 && syncs < stores,
            "{syncs} syncs for {stores} stores"
        );
        let all = store
            .fwd(&A, &seg("f", 0), 0, (stores as usize * chunk) as u32)
            .unwrap();
        for (i, part) in all.chunks(chunk).enumerate() {
            assert!(part.iter().all(|&b| b == i as u8), "chunk {i}");
        }
        // Every byte, and now and then a block of the filesystem's own (an extent
        // tree's): counted as the disk counts it.
        let (held, files) = measured(dir.path());
        let (used, segments) = store.usage();
        assert_eq!(segments, files);
        assert!(used >= stores * chunk as u64, "{used}");
        assert!(
            used.abs_diff(held) <= 4 * block(dir.path()),
            "counted {used}, the disk holds {held}"
        );
    }

    #[test]
    fn an_empty_segment_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        store.store(&A, &seg("e", 0), 0, b"").unwrap();
        store.store(&A, &seg("e", 0), 0, b"").unwrap();
        assert_eq!(store.usage(), (0, 1));
        let again = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(again.usage(), (0, 1));
        assert_eq!(store.delete(&A, "e").unwrap(), 0);
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn a_lone_store_still_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        for i in 0..3 {
            store.store(&A, &seg("f", 0), i, b"x").unwrap();
            assert_eq!(store.sync_count(), i + 1);
        }
    }

    #[test]
    fn ranges_come_back_in_order_and_a_stored_segment_is_read_without_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        store.store(&A, &seg("f", 0), 0, b"0123456789").unwrap();
        let parts = [(7, 3), (0, 2), (4, 0)];
        assert_eq!(store.fwd_parts(&A, &seg("f", 0), &parts).unwrap(), b"78901");
        assert!(matches!(
            store.fwd_parts(&A, &seg("f", 0), &[(0, 1), (9, 2)]),
            Err(StoreError::OutOfRange { size: 10, .. })
        ));
        // The STORE left the segment open: a read reaches it through that handle, even
        // with its directory gone from the path (moved away here to prove it).
        let owner_dir = dir.path().join("segments").join(owner_dir_name(&A));
        let aside = dir.path().join("aside");
        fs::rename(&owner_dir, &aside).unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 2, 3).unwrap(), b"234");
        fs::rename(&aside, &owner_dir).unwrap();
        // Not open any more: read by its path.
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(store.open_segments(), 0);
        assert_eq!(store.fwd(&A, &seg("f", 0), 2, 3).unwrap(), b"234");
    }

    #[test]
    fn reads_after_delete_and_recreate_get_the_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        store.store(&A, &seg("f", 0), 0, b"old bytes").unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 9).unwrap(), b"old bytes");
        assert!(store.open_segments() > 0);
        assert_eq!(store.delete(&A, "f").unwrap(), block(dir.path()));
        assert_eq!(store.open_segments(), 0);
        assert!(matches!(
            store.fwd(&A, &seg("f", 0), 0, 1),
            Err(StoreError::NotFound(_))
        ));
        store.store(&A, &seg("f", 0), 0, b"new").unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 3).unwrap(), b"new");
        assert!(matches!(
            store.fwd(&A, &seg("f", 0), 0, 9),
            Err(StoreError::OutOfRange { size: 3, .. })
        ));
        assert_eq!(store.usage(), (block(dir.path()), 1));
        assert!(dir
            .path()
            .join("segments")
            .join(owner_dir_name(&A))
            .join("f")
            .join("0.seg")
            .exists());
        // Another owner's delete of the same id leaves A's handle and bytes alone.
        assert_eq!(store.delete(&B, "f").unwrap(), 0);
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 3).unwrap(), b"new");
    }

    #[test]
    fn a_delete_after_the_files_vanished_still_drops_their_handles() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        store.store(&A, &seg("f", 0), 0, b"old").unwrap();
        fs::remove_dir_all(dir.path().join("segments").join(owner_dir_name(&A))).unwrap();
        assert_eq!(store.delete(&A, "f").unwrap(), 0);
        assert_eq!(store.open_segments(), 0);
        store.store(&A, &seg("f", 0), 0, b"new").unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 3).unwrap(), b"new");
    }

    #[test]
    fn open_segment_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None)
            .unwrap()
            .with_open_segments(16);
        for i in 0..100u32 {
            store
                .store(&A, &seg(&format!("f{i}"), i % 3), 0, &i.to_le_bytes())
                .unwrap();
            assert!(store.open_segments() <= 16);
        }
        assert_eq!(store.open_segments(), 16);
        // Evicted or not, every segment reads back.
        for i in 0..100u32 {
            let got = store.fwd(&A, &seg(&format!("f{i}"), i % 3), 0, 4).unwrap();
            assert_eq!(got, i.to_le_bytes());
        }
        assert_eq!(store.open_segments(), 16);
        assert_eq!(store.usage(), (100 * block(dir.path()), 100));
    }

    /// A slot of a sealed 1 MiB shard, as the client lays segments out.
    const SLOT: u64 = (1 << 20) + 512;

    #[test]
    fn a_sparse_segment_is_charged_its_allocated_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        // A MiB of capacity, and a byte written at the slot of stripe 70 000 (~73 GB
        // into the segment), as a thin VM image on the mount writes.
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        let far = 70_000 * SLOT;
        store.store(&A, &seg("vm", 0), far, b"X").unwrap();
        assert_eq!(store.usage(), (b, 1));
        assert_eq!(store.owner_usage(&A), b);
        assert_eq!(store.fwd(&A, &seg("vm", 0), far, 1).unwrap(), b"X");
        assert_eq!(measured(dir.path()), (b, 1));
        // Bytes elsewhere cost their own blocks only; a reopened store measures the same.
        store
            .store(&A, &seg("vm", 0), 0, &vec![1; 3 * b as usize])
            .unwrap();
        assert_eq!(store.usage(), (4 * b, 1));
        let again = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(again.usage(), (4 * b, 1));
        assert_eq!(store.delete(&A, "vm").unwrap(), 4 * b);
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn an_overwrite_needs_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
        store
            .store(&A, &seg("f", 0), 0, &vec![1; 4 * b as usize])
            .unwrap();
        assert_eq!(store.usage(), (4 * b, 1));
        // The store is full, and any part of what it holds can be written again.
        store.store(&A, &seg("f", 0), b + 10, &[2; 100]).unwrap();
        store
            .store(&A, &seg("f", 0), 0, &vec![3; 4 * b as usize])
            .unwrap();
        assert_eq!(store.usage(), (4 * b, 1));
        // A byte past it needs a block there is no room for.
        let err = store.store(&A, &seg("f", 0), 4 * b, b"x").unwrap_err();
        assert!(
            matches!(err, StoreError::NoSpace { need, free: 0, .. } if need == b),
            "{err}"
        );
        assert_eq!(store.usage(), (4 * b, 1));
        assert_eq!(measured(dir.path()), (4 * b, 1));
    }

    #[test]
    fn reserve_is_refused_past_the_quota_and_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 100 * b, Some(4 * b)).unwrap();
        let err = store.reserve(&A, &seg("r", 0), 0, 5 * b).unwrap_err();
        assert!(
            matches!(err, StoreError::Quota { used: 0, need, .. } if need == 5 * b),
            "{err}"
        );
        // Nothing was created, nothing is counted.
        assert!(!dir
            .path()
            .join("segments")
            .join(owner_dir_name(&A))
            .exists());
        assert_eq!(store.usage(), (0, 0));
        // Within the quota: allocated and counted, and the segment's length stays.
        store.reserve(&A, &seg("r", 0), b, 3 * b).unwrap();
        assert_eq!(store.usage(), (3 * b, 1));
        assert_eq!(measured(dir.path()), (3 * b, 1));
        let path = dir
            .path()
            .join("segments")
            .join(owner_dir_name(&A))
            .join("r")
            .join("0.seg");
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        // Two more blocks are one too many; one is not, nor is what is held already.
        assert!(matches!(
            store.reserve(&A, &seg("r", 0), 4 * b, 2 * b),
            Err(StoreError::Quota { .. })
        ));
        assert_eq!(store.usage(), (3 * b, 1));
        store.reserve(&A, &seg("r", 0), 0, b).unwrap();
        store.reserve(&A, &seg("r", 0), 0, 4 * b).unwrap();
        store.reserve(&A, &seg("r", 0), 7, 0).unwrap();
        assert_eq!(store.usage(), (4 * b, 1));
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        // Ranges past what a segment may hold are bad requests, before any check.
        for (offset, len) in [(MAX_SEGMENT_END, 1), (u64::MAX, 2), (0, u64::MAX)] {
            assert!(
                matches!(
                    store.reserve(&A, &seg("r", 0), offset, len),
                    Err(StoreError::BadRange { .. })
                ),
                "{offset}+{len}"
            );
        }
        assert!(matches!(
            store.store(&A, &seg("r", 0), MAX_SEGMENT_END, b"x"),
            Err(StoreError::BadRange { .. })
        ));
        assert!(matches!(
            store.reserve(&A, &seg("../r", 0), 0, 1),
            Err(StoreError::BadId(_))
        ));
    }

    #[test]
    fn a_store_into_reserved_space_needs_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let probe = File::create(dir.path().join("probe")).unwrap();
        if !space::maps_extents(&probe) {
            eprintln!(
                "skipped: the filesystem of {} has no FIEMAP, so reserved space looks free",
                dir.path().display()
            );
            return;
        }
        let store = SegmentStore::open(dir.path(), 100 * b, Some(4 * b)).unwrap();
        // The whole quota reserved past the segment's end, then written.
        store.reserve(&A, &seg("r", 0), 0, 4 * b).unwrap();
        store
            .store(&A, &seg("r", 0), 0, &vec![5; 4 * b as usize])
            .unwrap();
        assert_eq!(store.usage(), (4 * b, 1));
        assert_eq!(
            store.fwd(&A, &seg("r", 0), 0, 4 * b as u32).unwrap(),
            vec![5; 4 * b as usize]
        );
        assert!(matches!(
            store.store(&A, &seg("r", 0), 4 * b, b"x"),
            Err(StoreError::Quota { .. })
        ));
    }

    #[test]
    fn punch_frees_space_and_a_missing_segment_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let b = block(dir.path());
        let store = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
        store
            .store(&A, &seg("p", 0), 0, &vec![7; 4 * b as usize])
            .unwrap();
        assert_eq!(store.punch(&A, &seg("p", 0), b, 2 * b).unwrap(), 2 * b);
        assert_eq!(store.usage(), (2 * b, 1));
        assert_eq!(measured(dir.path()), (2 * b, 1));
        // The punched bytes read as zeros, and the segment keeps its length.
        let mut want = vec![7; 4 * b as usize];
        want[b as usize..3 * b as usize].fill(0);
        assert_eq!(store.fwd(&A, &seg("p", 0), 0, 4 * b as u32).unwrap(), want);
        // Part of a block is zeroed, but the block stays.
        assert_eq!(store.punch(&A, &seg("p", 0), 10, 20).unwrap(), 0);
        want[10..30].fill(0);
        assert_eq!(store.fwd(&A, &seg("p", 0), 0, 4 * b as u32).unwrap(), want);
        // What was freed is room again.
        store
            .store(&A, &seg("q", 0), 0, &vec![8; 2 * b as usize])
            .unwrap();
        assert_eq!(store.usage(), (4 * b, 2));
        // A segment that does not exist frees nothing, and is not created.
        assert_eq!(store.punch(&A, &seg("none", 0), 0, b).unwrap(), 0);
        assert_eq!(store.punch(&A, &seg("p", 3), 0, b).unwrap(), 0);
        assert_eq!(store.punch(&A, &seg("p", 0), 0, 0).unwrap(), 0);
        assert!(!dir
            .path()
            .join("segments")
            .join(owner_dir_name(&A))
            .join("none")
            .exists());
        assert!(matches!(
            store.punch(&A, &seg("p", 0), u64::MAX, 1),
            Err(StoreError::BadRange { .. })
        ));
        // A reopened store measures what the punches left.
        let again = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
        assert_eq!(again.usage(), (4 * b, 2));
        store.punch(&A, &seg("q", 0), 0, 2 * b).unwrap();
        assert_eq!(store.usage(), (2 * b, 2));
        // Space reserved past a segment's end is freed too (ext4 punches nothing there
        // by itself), and a reservation before it stays.
        store.reserve(&A, &seg("q", 0), 4 * b, b).unwrap();
        store.reserve(&A, &seg("q", 0), 8 * b, b).unwrap();
        assert_eq!(store.usage(), (4 * b, 2));
        assert_eq!(store.punch(&A, &seg("q", 0), 8 * b, b).unwrap(), b);
        assert_eq!(store.usage(), (3 * b, 2));
        assert_eq!(measured(dir.path()), (3 * b, 2));
        assert_eq!(store.punch(&A, &seg("q", 0), 4 * b, b).unwrap(), b);
        assert_eq!(measured(dir.path()), (2 * b, 2));
        // A range that is not block-aligned, reserved past the end and given back, leaves
        // no block behind (where the filesystem maps extents, to see that no reservation
        // shares them).
        let mut probe = None;
        store.reserve(&A, &seg("q", 0), 20 * b + 10, b).unwrap();
        assert_eq!(store.usage(), (4 * b, 2));
        if let Some(file) = store.handles_lock().get(&SegKey::new(&A, &seg("q", 0))) {
            probe = Some(space::maps_extents(file.file()));
        }
        let freed = store.punch(&A, &seg("q", 0), 20 * b + 10, b).unwrap();
        if probe == Some(true) {
            assert_eq!(freed, 2 * b);
            assert_eq!(store.usage(), (2 * b, 2));
        }
        assert_eq!(store.usage(), measured(dir.path()));
    }

    /// A small tmpfs mounted for one test (root only), unmounted when dropped, panic
    /// or not.
    struct SmallDisk {
        dir: tempfile::TempDir,
    }

    impl SmallDisk {
        /// A tmpfs of `size` (a mount option, "4m") under a new temporary directory;
        /// `None` (with a message) where this process cannot mount.
        fn mount(size: &str) -> Option<SmallDisk> {
            use std::ffi::CString;
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: no arguments, no side effects.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: mounting a small tmpfs needs root");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
            let data = CString::new(format!("size={size}")).unwrap();
            // SAFETY: NUL-terminated strings that outlive the call.
            let r = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            };
            if r != 0 {
                eprintln!(
                    "skipped: cannot mount a tmpfs: {}",
                    io::Error::last_os_error()
                );
                return None;
            }
            Some(SmallDisk { dir })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let target = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
                self.dir.path().as_os_str(),
            ))
            .unwrap();
            // SAFETY: a NUL-terminated path that outlives the call. Lazily: a handle
            // still open in a failed test must not keep the tmpfs mounted.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!(
                    "cannot unmount {}: {}",
                    self.dir.path().display(),
                    io::Error::last_os_error()
                );
            }
        }
    }

    #[test]
    fn a_full_disk_refuses_with_no_space_and_recovers_when_freed() {
        let Some(disk) = SmallDisk::mount("4m") else {
            return;
        };
        // The node believes it has a GiB: its disk is what runs out.
        let store = SegmentStore::open(disk.path(), 1 << 30, None).unwrap();
        let shard = vec![9u8; 1 << 20];
        let mut stored = 0u64;
        let err = loop {
            match store.store(&A, &seg(&format!("f{stored}"), 0), 0, &shard) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 8, "a 4 MiB disk took {stored} MiB");
        };
        assert!(stored >= 2, "only {stored} shards fit");
        let text = err.to_string();
        assert!(matches!(err, StoreError::DiskFull { .. }), "{text}");
        assert!(text.contains("disk is full"), "{text}");
        assert!(
            text.contains(&format!("f{stored}")),
            "names the path: {text}"
        );
        // Nothing is counted for the refused store, and no file is left of it.
        let owner = disk.path().join("segments").join(owner_dir_name(&A));
        assert!(!owner.join(format!("f{stored}")).exists());
        let held = measured(disk.path());
        assert_eq!(held.1, stored);
        assert_eq!(store.usage(), held);
        // Growing a segment and reserving are refused alike, counting nothing.
        assert!(matches!(
            store.store(&A, &seg("f0", 0), 1 << 20, &shard),
            Err(StoreError::DiskFull { .. })
        ));
        assert!(matches!(
            store.reserve(&A, &seg("r", 0), 0, 1 << 20),
            Err(StoreError::DiskFull { .. })
        ));
        assert!(!owner.join("r").exists());
        assert_eq!(store.usage(), measured(disk.path()));
        // Once space is freed, the next store succeeds, on the same store.
        store.delete(&A, "f0").unwrap();
        store.store(&A, &seg("again", 0), 0, &shard).unwrap();
        assert_eq!(store.fwd(&A, &seg("again", 0), 0, 4).unwrap(), [9; 4]);
        assert_eq!(store.usage(), measured(disk.path()));
        drop(store);
    }
}
