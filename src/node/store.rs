//! The segment store on disk: one file per (owner, file id, segment index) under
//! `STORAGE/segments/OWNER/FILE/INDEX.seg`, with capacity and per-owner quota accounting
//! and strict id validation.
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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::handles::{Handles, SegKey, DEFAULT_OPEN_SEGMENTS};
use super::segfile::SegFile;
use crate::proto::{Identity, SegmentRef};
use crate::util::{decode_hex, encode_hex};

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
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
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
    // Taken only inside `usage` (STORE, DELETE) or alone for a count.
    handles: Mutex<Handles>,
    /// fdatasyncs run so far.
    syncs: AtomicU64,
}

#[derive(Default, Clone)]
struct Usage {
    bytes: u64,
    segments: u64,
    owners: HashMap<Identity, u64>,
}

/// The directory name of an owner: its identity in hex.
fn owner_dir_name(owner: &Identity) -> String {
    encode_hex(&owner.0)
}

/// The owner a directory under `segments/` belongs to, if its name is one.
fn owner_of_dir(name: &str) -> Option<Identity> {
    let bytes = decode_hex(name)?;
    Some(Identity(bytes.try_into().ok()?))
}

/// Bytes and number of the segment files under `dir/*/` (a directory per file).
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

/// Bytes and number of the segment files in one file's directory.
fn measure_file(dir: &Path) -> Result<(u64, u64), StoreError> {
    let (mut bytes, mut segments) = (0, 0);
    for seg in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let meta = seg
            .and_then(|s| s.metadata())
            .map_err(io_err("stat segment"))?;
        bytes += meta.len();
        segments += 1;
    }
    Ok((bytes, segments))
}

impl SegmentStore {
    /// Opens (creating if needed) the store under `storage/segments` and measures it,
    /// in total and per owner. `quota` bounds what one owner may hold here.
    pub fn open(storage: &Path, capacity: u64, quota: Option<u64>) -> Result<Self, StoreError> {
        let root = storage.join("segments");
        fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
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

    /// Bytes the store may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes one owner may hold, if bounded.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    fn usage_lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes in use and number of segment files.
    pub fn usage(&self) -> (u64, u64) {
        let u = self.usage_lock();
        (u.bytes, u.segments)
    }

    /// Bytes `owner` holds here.
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

    /// Writes `data` at `offset` of `owner`'s segment, durably. A store over the
    /// owner's quota or the capacity is refused before anything is created.
    pub fn store(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.path_of(owner, seg)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| StoreError::BadId("offset overflows".into()))?;
        let key = SegKey::new(owner, seg);
        let segfile = {
            let mut usage = self.usage_lock();
            // Sizes change only under this lock, so the length seen here stays true
            // until the reservation below. DELETE also runs under it, so a handle found
            // or opened here is of the file at `path` until the data write below.
            let cached = self.handles_lock().get(&key);
            let existing = match cached {
                Some(segfile) => Some(segfile),
                None => match Self::open_rw(&path) {
                    Ok(file) => Some(
                        self.handles_lock()
                            .insert(key.clone(), Arc::new(SegFile::new(file))),
                    ),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
                },
            };
            let len = match &existing {
                Some(segfile) => segfile
                    .file()
                    .metadata()
                    .map_err(io_err(format!("stat {}", path.display())))?
                    .len(),
                None => 0,
            };
            let need = end.saturating_sub(len);
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
                None => {
                    if let Some(dir) = path.parent() {
                        fs::create_dir_all(dir)
                            .map_err(io_err(format!("create {}", dir.display())))?;
                    }
                    let file = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .read(true)
                        .write(true)
                        .open(&path)
                        .map_err(io_err(format!("open {}", path.display())))?;
                    self.handles_lock()
                        .insert(key, Arc::new(SegFile::new(file)))
                }
            };
            if need > 0 {
                // Reserve the space now so concurrent stores cannot overcommit.
                segfile
                    .file()
                    .set_len(end)
                    .map_err(io_err(format!("extend {}", path.display())))?;
            }
            // Counted when created (not by length: an empty segment is one too, as the
            // measure at start counts it).
            if created {
                usage.segments += 1;
            }
            usage.bytes += need;
            *usage.owners.entry(*owner).or_default() += need;
            segfile
        };
        segfile
            .file()
            .write_all_at(data, offset)
            .map_err(io_err(format!("write {}", path.display())))?;
        segfile
            .sync_writes(|| {
                self.syncs.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(io_err(format!("sync {}", path.display())))?;
        Ok(())
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

    /// Removes every segment `owner` holds of `file`; returns the bytes freed. Unknown
    /// files (and other owners' files) free 0.
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
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
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
        usage.bytes = usage.bytes.saturating_sub(freed);
        if let Some(held) = usage.owners.get_mut(owner) {
            *held = held.saturating_sub(freed);
            if *held == 0 {
                usage.owners.remove(owner);
            }
        }
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

    #[test]
    fn store_fwd_delete_and_accounting() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
        store.store(&A, &seg("f1", 0), 0, b"hello").unwrap();
        store.store(&A, &seg("f1", 0), 5, b" world").unwrap();
        store.store(&A, &seg("f1", 0), 0, b"J").unwrap();
        assert_eq!(store.fwd(&A, &seg("f1", 0), 0, 11).unwrap(), b"Jello world");
        assert_eq!(store.usage(), (11, 1));
        assert_eq!(store.owner_usage(&A), 11);
        assert!(matches!(
            store.fwd(&A, &seg("f1", 0), 5, 7),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            store.fwd(&A, &seg("f2", 0), 0, 1),
            Err(StoreError::NotFound(_))
        ));
        // Reopening measures the same usage, per owner too.
        let again = SegmentStore::open(dir.path(), 1000, None).unwrap();
        assert_eq!(again.usage(), (11, 1));
        assert_eq!(again.owner_usage(&A), 11);
        assert_eq!(store.delete(&A, "f1").unwrap(), 11);
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
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
        store.store(&A, &seg("f", 0), 0, b"mine").unwrap();
        // B asking for A's file learns what it would for a file that does not exist.
        let theirs = store.fwd(&B, &seg("f", 0), 0, 4).unwrap_err().to_string();
        let nothing = store.fwd(&B, &seg("g", 0), 0, 4).unwrap_err().to_string();
        assert_eq!(theirs.replace("f/0", "g/0"), nothing);
        // B's delete frees nothing of A's; B's store of the same id is B's own segment.
        assert_eq!(store.delete(&B, "f").unwrap(), 0);
        store.store(&B, &seg("f", 0), 0, b"XXXXXXXX").unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 4).unwrap(), b"mine");
        assert_eq!(store.fwd(&B, &seg("f", 0), 0, 8).unwrap(), b"XXXXXXXX");
        assert_eq!((store.owner_usage(&A), store.owner_usage(&B)), (4, 8));
        assert_eq!(store.delete(&B, "f").unwrap(), 8);
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 4).unwrap(), b"mine");
        assert_eq!(store.usage(), (4, 1));
    }

    #[test]
    fn quota_is_per_owner_and_refusals_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000, Some(10)).unwrap();
        store.store(&A, &seg("a", 0), 0, &[1; 8]).unwrap();
        let err = store.store(&A, &seg("b", 0), 0, &[1; 3]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Quota {
                    owner: A,
                    used: 8,
                    need: 3,
                    quota: 10
                }
            ),
            "{err}"
        );
        assert!(!dir
            .path()
            .join("segments")
            .join(owner_dir_name(&A))
            .join("b")
            .exists());
        // Growing past the quota is refused too; rewriting in place is not.
        assert!(matches!(
            store.store(&A, &seg("a", 0), 6, &[1; 6]),
            Err(StoreError::Quota { .. })
        ));
        store.store(&A, &seg("a", 0), 0, &[2; 8]).unwrap();
        store.store(&A, &seg("a", 0), 8, &[2; 2]).unwrap();
        // Another owner still has its own quota.
        store.store(&B, &seg("b", 0), 0, &[3; 10]).unwrap();
        assert_eq!(store.usage(), (20, 2));
        // A delete gives the quota back; a reopened store measures the same.
        store.delete(&A, "a").unwrap();
        let again = SegmentStore::open(dir.path(), 1000, Some(10)).unwrap();
        assert_eq!((again.owner_usage(&A), again.owner_usage(&B)), (0, 10));
        again.store(&A, &seg("c", 0), 0, &[4; 10]).unwrap();
    }

    #[test]
    fn capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 10, None).unwrap();
        store.store(&A, &seg("a", 0), 0, &[1; 8]).unwrap();
        assert!(matches!(
            store.store(&B, &seg("a", 1), 0, &[1; 3]),
            Err(StoreError::NoSpace {
                need: 3,
                free: 2,
                ..
            })
        ));
        // Rewriting in place needs no new space.
        store.store(&A, &seg("a", 0), 0, &[2; 8]).unwrap();
        assert_eq!(store.usage(), (8, 1));
    }

    #[test]
    fn segments_from_before_owners_count_but_are_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("segments").join("oldfile");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("0.seg"), [9; 5]).unwrap();
        let store = SegmentStore::open(dir.path(), 100, None).unwrap();
        assert_eq!(store.usage(), (5, 1));
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
        assert_eq!(store.usage(), (stores * chunk as u64, 1));
    }

    #[test]
    fn an_empty_segment_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
        store.store(&A, &seg("e", 0), 0, b"").unwrap();
        store.store(&A, &seg("e", 0), 0, b"").unwrap();
        assert_eq!(store.usage(), (0, 1));
        let again = SegmentStore::open(dir.path(), 1000, None).unwrap();
        assert_eq!(again.usage(), (0, 1));
        assert_eq!(store.delete(&A, "e").unwrap(), 0);
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn a_lone_store_still_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
        for i in 0..3 {
            store.store(&A, &seg("f", 0), i, b"x").unwrap();
            assert_eq!(store.sync_count(), i + 1);
        }
    }

    #[test]
    fn ranges_come_back_in_order_and_a_stored_segment_is_read_without_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
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
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
        assert_eq!(store.open_segments(), 0);
        assert_eq!(store.fwd(&A, &seg("f", 0), 2, 3).unwrap(), b"234");
    }

    #[test]
    fn reads_after_delete_and_recreate_get_the_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
        store.store(&A, &seg("f", 0), 0, b"old bytes").unwrap();
        assert_eq!(store.fwd(&A, &seg("f", 0), 0, 9).unwrap(), b"old bytes");
        assert!(store.open_segments() > 0);
        assert_eq!(store.delete(&A, "f").unwrap(), 9);
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
        assert_eq!(store.usage(), (3, 1));
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
        let store = SegmentStore::open(dir.path(), 1000, None).unwrap();
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
        assert_eq!(store.usage(), (400, 100));
    }
}
