//! Filesystem operations over the namespace store and open-file data, with no FUSE
//! types: callable from tests and from the thin fuser adapter alike.
//!
//! Access checks are the kernel's (the mount uses `default_permissions`, so mode bits,
//! owners, groups, supplementary groups and sticky directories are enforced before a
//! request gets here, and the kernel asks for setuid/setgid to be cleared when a
//! non-owner writes or truncates); what is left here is the namespace itself.
//!
//! An inode lives while anything refers to it: a name (its link count), an open
//! handle, or the kernel (every inode handed to the kernel counts one reference until
//! the kernel forgets it). So a name replaced by `rename` keeps resolving to its old
//! inode for a reader that looked it up an instant before, as on a local filesystem.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::caller::Caller;
use super::file::{unused_slots, FileData, ReadBytes};
use super::meta::{Inode, Kind, MetaStore, Time, ROOT, XATTRS_MAX};
use super::FsError;
use crate::client::{Manifest, PoolClient};

/// Attribute changes requested by setattr; `None` leaves a field alone.
#[derive(Default, Debug, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

/// Capacity of the pool as `statfs` reports it.
#[derive(Debug, Clone, Copy)]
pub struct PoolSpace {
    pub total: u64,
    pub free: u64,
}

/// What `fallocate(2)` may ask (its mode bits, from linux/falloc.h).
pub mod falloc {
    /// Reserve without changing the size.
    pub const KEEP_SIZE: i32 = 0x01;
    /// Make a range read as zeros and free it (with `KEEP_SIZE` only).
    pub const PUNCH_HOLE: i32 = 0x02;
    /// Make a range read as zeros, reserved.
    pub const ZERO_RANGE: i32 = 0x10;
}

/// Where `setxattr` may put an attribute (its flags, from linux/xattr.h).
pub mod xattr_flags {
    /// Fail with EEXIST if the attribute exists.
    pub const CREATE: i32 = 1;
    /// Fail with ENODATA unless the attribute exists.
    pub const REPLACE: i32 = 2;
}

struct OpenInode {
    data: tokio::sync::Mutex<FileData>,
    users: AtomicU64,
}

#[derive(Clone, Copy)]
struct OpenHandle {
    ino: u64,
}

/// The mounted filesystem's logic.
pub struct Vfs {
    meta: MetaStore,
    client: Arc<PoolClient>,
    rt: Handle,
    open: Mutex<HashMap<u64, Arc<OpenInode>>>,
    /// References the kernel holds on each inode (FUSE's lookup count); taken after
    /// `open` when both are held.
    lookups: Mutex<HashMap<u64, u64>>,
    handles: Mutex<HashMap<u64, OpenHandle>>,
    next_fh: AtomicU64,
    max_uploads: usize,
    /// The outcome of the last scrub pass, for `user.poolfs.scrub` on the root.
    pub(super) last_scrub: Mutex<Option<String>>,
    /// Repair passes so far, for `user.poolfs.repair` on the root.
    pub(super) repair: Mutex<super::repair::RepairProgress>,
    /// Tells the kernel to drop what it caches of an inode (its attributes and pages),
    /// set by the mount once the FUSE session exists.
    invalidator: std::sync::OnceLock<Invalidator>,
    /// Invalidations running on their own threads (`Invalidate::Later`).
    invalidating: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// When a roll-back may tell the kernel to drop its cache of the file.
#[derive(Clone, Copy)]
enum Invalidate {
    /// Before the request returns, by its caller once it has let go of the file's
    /// data (a concurrent WRITE may hold page locks while it waits for that): only
    /// from requests the kernel sends holding no page lock (FLUSH, FSYNC, RELEASE).
    Now,
    /// From another thread: the request being handled (a WRITE, a SETATTR) may hold
    /// the very page locks the invalidation waits for.
    Later,
}

/// Drops the kernel's cached attributes and pages of an inode (FUSE's
/// `notify_inval_inode`).
pub type Invalidator = Arc<dyn Fn(u64) -> std::io::Result<()> + Send + Sync>;

/// An inode the kernel refers to is missing: its handle is stale (ESTALE), not the
/// name (ENOENT); the kernel then walks the path again.
fn stale(e: FsError) -> FsError {
    match e {
        FsError::NotFound => FsError::Stale,
        e => e,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vfs {
    /// The filesystem over `meta`, storing data through `client` on runtime `rt`.
    /// Inodes left without links when the mount last stopped are removed now.
    pub fn new(meta: MetaStore, client: Arc<PoolClient>, rt: Handle) -> Result<Self, FsError> {
        let vfs = Vfs {
            meta,
            client,
            rt,
            open: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            max_uploads: 4,
            last_scrub: Mutex::new(None),
            repair: Mutex::new(Default::default()),
            invalidator: std::sync::OnceLock::new(),
            invalidating: Mutex::new(Vec::new()),
        };
        vfs.purge_orphans()?;
        Ok(vfs)
    }

    /// Removes every inode with no links left (and its segments): at mount, and at
    /// unmount once the kernel holds nothing any more.
    pub fn purge_orphans(&self) -> Result<(), FsError> {
        for orphan in self.meta.orphans()? {
            self.remove_inode(&orphan);
        }
        Ok(())
    }

    /// How to make the kernel forget its cache of an inode (set once, by the mount).
    pub fn set_invalidator(&self, invalidate: Invalidator) {
        let _ = self.invalidator.set(invalidate);
    }

    /// Makes the kernel drop its cache of `ino` (after a roll-back, its pages and size
    /// are no longer the file's), now or from another thread a moment later.
    fn invalidate(&self, ino: u64, when: Invalidate) {
        let Some(invalidate) = self.invalidator.get() else {
            return;
        };
        let invalidate = invalidate.clone();
        let run = move || {
            if let Err(e) = invalidate(ino) {
                log::debug!("cannot invalidate the kernel's cache of inode {ino}: {e}");
            }
        };
        match when {
            Invalidate::Now => {
                // One still pending would reach the kernel later and make it drop the
                // fresh attributes of a GETATTR then in flight (the kernel ignores a
                // reply older than its last invalidation), leaving the stale size: it
                // goes first. With no page lock held here, it cannot wait long.
                let pending = std::mem::take(&mut *lock(&self.invalidating));
                for thread in pending {
                    let _ = thread.join();
                }
                run();
            }
            Invalidate::Later => {
                let mut pending = lock(&self.invalidating);
                pending.retain(|t| !t.is_finished());
                pending.push(std::thread::spawn(run));
            }
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Deletes an inode with no links left: its segments on the peers first, so a
    /// crash in between leaves an orphan record that the next mount cleans, never
    /// segments nobody knows about.
    fn remove_inode(&self, inode: &Inode) {
        if let Some(m) = &inode.manifest {
            self.delete_segments(m);
        }
        if let Err(e) = self.meta.purge(inode.ino) {
            log::error!("cannot forget inode {}: {e}", inode.ino);
        }
    }

    fn delete_segments(&self, m: &Manifest) {
        if m.inline.is_some() && !m.stores_anything() && m.reserved.is_empty() {
            return; // a small file kept in its record: nothing on the pool
        }
        if let Err(e) = self.block_on(self.client.delete(m)) {
            // The bytes stay on that peer until it is cleaned; nothing is lost.
            log::warn!("cannot delete segments of file {}: {e}", m.place.file_id);
        }
    }

    /// Frees on the nodes the slots of the stripes and reservations `gone` lists.
    fn free_slots(&self, gone: &Manifest) {
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
    fn reap(&self, ino: u64) {
        if ino == ROOT {
            return;
        }
        {
            let open = lock(&self.open);
            if open.contains_key(&ino) || lock(&self.lookups).contains_key(&ino) {
                return;
            }
        }
        // Nothing can take a new reference now: the inode has no name to be looked up
        // by, and the kernel, holding none, cannot open it.
        match self.meta.get(ino) {
            Ok(inode) if inode.nlink == 0 => self.remove_inode(&inode),
            Ok(_) => {}
            Err(FsError::NotFound) => {}
            Err(e) => log::warn!("cannot check inode {ino} for removal: {e}"),
        }
    }

    /// One more reference of the kernel on `inode` (every inode a lookup, create,
    /// mknod, mkdir, symlink or link hands to it), released by `forget`.
    fn referenced(&self, inode: Inode) -> Inode {
        *lock(&self.lookups).entry(inode.ino).or_default() += 1;
        inode
    }

    /// The kernel drops `n` of its references to `ino`; an inode with no name, no
    /// opener and no reference left is removed.
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
                    true
                }
                None => false,
            }
        };
        if last {
            self.reap(ino);
        }
    }

    fn opened(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).cloned()
    }

    /// The inode with the live size and times of an open file.
    fn live(&self, mut inode: Inode) -> Inode {
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
    fn acquire(&self, ino: u64) -> Result<Arc<OpenInode>, FsError> {
        if let Some(open) = lock(&self.open).get(&ino) {
            open.users.fetch_add(1, Ordering::SeqCst);
            return Ok(open.clone());
        }
        let mut inode = self.meta.get(ino).map_err(stale)?;
        match inode.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File => {}
            _ => return Err(FsError::Invalid),
        }
        let manifest = match inode.manifest.take() {
            Some(m) => m,
            None => self.block_on(self.client.new_file())?,
        };
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
                })
            })
            .clone();
        open.users.fetch_add(1, Ordering::SeqCst);
        Ok(open)
    }

    /// Drops a reference taken by `acquire`; the last one forgets the data and, for a
    /// file nothing else refers to, removes it.
    fn relinquish(&self, ino: u64) {
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

    /// Stores buffered data and records the manifest, so the file survives a crash.
    /// On failure the open file goes back to what was last committed (a failed write
    /// changes nothing), what the failed attempt stored is freed on the nodes, and the
    /// error is reported by every later flush until the file is closed.
    fn commit(&self, ino: u64, data: &mut FileData, when: Invalidate) -> Result<(), FsError> {
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
    fn roll_back(&self, ino: u64, data: &mut FileData, when: Invalidate) {
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

    fn with_data<T>(
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

    /// Looks up `name` in `parent` (a reference for the kernel).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        let inode = self.meta.lookup(parent, name)?;
        Ok(self.referenced(self.live(inode)))
    }

    /// Attributes of `ino`. An inode the kernel holds but the store no longer has (a
    /// create lost when the store was reopened after a full disk) is ESTALE, so the
    /// kernel looks its name up again.
    pub fn getattr(&self, ino: u64) -> Result<Inode, FsError> {
        self.meta.get(ino).map(|i| self.live(i)).map_err(stale)
    }

    /// Changes attributes; a size change truncates or extends the file's data. Times
    /// set here win over the time of writes made before (a `touch -d` or `cp -p` of an
    /// open file holds), and a later write moves them again.
    pub fn setattr(&self, ino: u64, set: SetAttr) -> Result<Inode, FsError> {
        if let Some(size) = set.size {
            self.with_data(ino, |vfs, data| {
                vfs.block_on(data.resize(size))?;
                vfs.commit(ino, data, Invalidate::Later)
            })?;
        }
        let apply = |inode: &mut Inode| {
            if let Some(mode) = set.mode {
                inode.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = set.uid {
                inode.uid = uid;
            }
            if let Some(gid) = set.gid {
                inode.gid = gid;
            }
            if let Some(t) = set.atime {
                inode.atime = t;
            }
            if let Some(t) = set.mtime {
                inode.mtime = t;
            }
            inode.ctime = Time::now();
            Ok(())
        };
        let inode = match self.opened(ino) {
            Some(open) => {
                // Under the data lock, so a commit cannot slip the write time in
                // between: the times set here are the file's from now on.
                let mut data = self.block_on(open.data.lock());
                let (mut inode, ()) = self.meta.update(ino, false, apply)?;
                if set.mtime.is_some() {
                    data.touched = None;
                } else if let Some(t) = data.touched {
                    inode.mtime = t;
                }
                inode.size = data.size();
                inode
            }
            None => self.meta.update(ino, false, apply)?.0,
        };
        Ok(inode)
    }

    /// Makes a directory (a reference for the kernel).
    pub fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Inode, FsError> {
        let inode = self.meta.create(
            parent,
            name,
            Inode::new(Kind::Dir, (mode & 0o7777) as u16, uid, gid),
        )?;
        Ok(self.referenced(inode))
    }

    /// Makes a regular file, FIFO, socket or device node (the type in `mode`'s
    /// `S_IFMT` bits; device nodes get `rdev`). Only the name and attributes are
    /// kept: the kernel carries a FIFO's or socket's bytes, and a device node is
    /// opened (where the mount allows devices) as the device itself. A reference for
    /// the kernel.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Inode, FsError> {
        let kind = Kind::from_mode(mode).ok_or(FsError::Invalid)?;
        let mut inode = Inode::new(kind, (mode & 0o7777) as u16, uid, gid);
        if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            inode.rdev = rdev;
        }
        let inode = self.meta.create(parent, name, inode)?;
        Ok(self.referenced(inode))
    }

    /// Makes a symbolic link to `target` (a reference for the kernel).
    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Inode, FsError> {
        let mut inode = Inode::new(Kind::Symlink, 0o777, uid, gid);
        inode.size = target.len() as u64;
        inode.target = target.to_vec();
        let inode = self.meta.create(parent, name, inode)?;
        Ok(self.referenced(inode))
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.meta.get(ino)?;
        if inode.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(inode.target)
    }

    /// A hard link (a reference for the kernel).
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        let inode = self.meta.link(ino, parent, name)?;
        Ok(self.referenced(self.live(inode)))
    }

    /// Removes a file name; the file goes when nothing refers to it any more.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let inode = self.meta.unlink(parent, name)?;
        self.reap(inode.ino);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let inode = self.meta.rmdir(parent, name)?;
        self.reap(inode.ino);
        Ok(())
    }

    /// Renames, replacing a compatible target (`RENAME_NOREPLACE` refuses to), or swaps
    /// two names (`RENAME_EXCHANGE`).
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        if flags & libc::RENAME_EXCHANGE != 0 {
            if flags != libc::RENAME_EXCHANGE {
                return Err(FsError::Invalid);
            }
            return self.meta.exchange(parent, name, new_parent, new_name);
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(FsError::Invalid); // RENAME_WHITEOUT: for overlayfs only
        }
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        if let Some(replaced) = self
            .meta
            .rename(parent, name, new_parent, new_name, no_replace)?
        {
            self.reap(replaced.ino);
        }
        Ok(())
    }

    /// Entries of a directory, with `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> Result<Vec<(u64, Kind, Vec<u8>)>, FsError> {
        let dir = self.meta.get(ino)?;
        let mut out = vec![
            (ino, Kind::Dir, b".".to_vec()),
            (dir.parent, Kind::Dir, b"..".to_vec()),
        ];
        out.extend(
            self.meta
                .readdir(ino)?
                .into_iter()
                .map(|(name, i, kind)| (i, kind, name)),
        );
        Ok(out)
    }

    fn new_handle(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        lock(&self.handles).insert(fh, OpenHandle { ino });
        fh
    }

    fn handle(&self, fh: u64) -> Result<OpenHandle, FsError> {
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
        let inode = self.referenced(self.meta.create_unsynced(parent, name, inode)?);
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
        Ok((inode.clone(), self.new_handle(inode.ino)))
    }

    /// Opens a file; `O_TRUNC` empties it.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let open = self.acquire(ino)?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let mut data = self.block_on(open.data.lock());
            let truncated = self
                .block_on(data.resize(0))
                .and_then(|_| self.commit(ino, &mut data, Invalidate::Later));
            if let Err(e) = truncated {
                drop(data);
                self.relinquish(ino);
                return Err(e);
            }
        }
        Ok(self.new_handle(ino))
    }

    fn data_of(&self, fh: u64) -> Result<(OpenHandle, Arc<OpenInode>), FsError> {
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

    /// Closes a handle.
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let result = self.flush(fh);
        if let Some(h) = lock(&self.handles).remove(&fh) {
            self.relinquish(h.ino);
        }
        result
    }

    /// After a write, truncate or fallocate by `caller`: clears the file's
    /// set-group-ID bit if it has no group-execute bit and the caller is outside the
    /// file's group without `CAP_FSETID` (Linux 6.x `setattr_should_drop_sgid`; with
    /// group-execute, and for set-user-ID, the kernel asks for it itself with a
    /// SETATTR of the mode).
    pub fn drop_setgid_for(
        &self,
        ino: u64,
        caller: impl FnOnce() -> Caller,
    ) -> Result<(), FsError> {
        let sgid = libc::S_ISGID as u16;
        let xgrp = libc::S_IXGRP as u16;
        let inode = self.meta.get(ino)?;
        if inode.perm & (sgid | xgrp) != sgid {
            return Ok(());
        }
        let caller = caller();
        if caller.in_group_or_capable(inode.gid) {
            return Ok(());
        }
        self.meta.update(ino, false, |inode| {
            inode.perm &= !sgid;
            inode.ctime = Time::now();
            Ok(())
        })?;
        Ok(())
    }

    /// The value of extended attribute `name` of `ino`. Errors: ENODATA if it has none.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        self.meta
            .get(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(FsError::NoData)
    }

    /// Names of the extended attributes of `ino`, each followed by a NUL, as
    /// listxattr(2) gives them; `trusted.*` ones only if `trusted` (a privileged
    /// caller).
    pub fn listxattr(&self, ino: u64, trusted: bool) -> Result<Vec<u8>, FsError> {
        let inode = self.meta.get(ino)?;
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

    /// The namespace store (for repair).
    pub(super) fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The pool client (for repair and health).
    pub(super) fn client(&self) -> &PoolClient {
        &self.client
    }

    /// Runs a future on the mount's runtime from a non-runtime thread.
    pub(super) fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.block_on(f)
    }

    /// Replaces the manifest of a closed file if it is still `old`: a file opened or
    /// changed meanwhile keeps its own (the rebuilt shard is then simply unused).
    pub(super) fn swap_manifest(
        &self,
        ino: u64,
        old: &Manifest,
        new: Manifest,
    ) -> Result<bool, FsError> {
        // Holding the open-files lock keeps `acquire` from loading the old manifest
        // between the check and the write.
        let open = lock(&self.open);
        if open.contains_key(&ino) {
            return Ok(false);
        }
        let (_, swapped) = self.meta.update(ino, true, |inode| {
            if inode.manifest.as_ref() != Some(old) {
                return Ok(false);
            }
            inode.manifest = Some(new);
            Ok(true)
        })?;
        drop(open);
        Ok(swapped)
    }

    /// Is `ino` open right now?
    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.opened(ino).is_some()
    }

    /// Total and free bytes of the live nodes (free as the nodes count it: the bytes
    /// really stored, so sparse files take only what was written).
    pub fn statfs(&self) -> Result<PoolSpace, FsError> {
        let view = self.block_on(self.client.view())?;
        let live = view.live();
        Ok(PoolSpace {
            total: live.iter().map(|n| n.capacity).sum(),
            free: live.iter().map(|n| n.capacity.saturating_sub(n.used)).sum(),
        })
    }
}
