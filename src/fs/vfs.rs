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
//!
//! This file holds the `Vfs` itself (its state, start, the kernel-cache invalidation
//! and what repair reaches); the operations are split by concern: `namespace`,
//! `handles` (open files and their data), `lifetimes` (references and removal),
//! `xattrs`, and `background` (walks of every file for repair, sweep and scrub).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::file::FileData;
use super::meta::{MetaStore, Time};
use super::FsError;
use crate::client::{Manifest, PoolClient};

mod background;
mod handles;
pub use background::Walk;
pub use handles::{READ_IO_SIZE, WRITE_IO_SIZE};
mod lifetimes;
mod namespace;
mod xattrs;

/// Attribute changes requested by setattr; `None` leaves a field alone.
#[derive(Default, Debug, Clone)]
pub struct SetAttr {
    /// New permission bits (the low 12 bits of `st_mode`: rwx, setuid, setgid, sticky).
    pub mode: Option<u32>,
    /// New owner (uid).
    pub uid: Option<u32>,
    /// New group (gid).
    pub gid: Option<u32>,
    /// New size in bytes: a truncate or an extension with zeros.
    pub size: Option<u64>,
    /// New access time, to the nanosecond.
    pub atime: Option<Time>,
    /// New modification time, to the nanosecond.
    pub mtime: Option<Time>,
    /// The change comes through an open handle (`ftruncate`, or the kernel's
    /// truncation of an `open` with `O_TRUNC`): a shrink is then committed with the
    /// file's next close or fsync, like the writes around it, so a crash (or the
    /// namespace's copy in the pool) shows the file before them or after, never
    /// emptied in between; and a program that shrinks a file often (fsx, a database's
    /// journal) pays for the stripe holding the new end once, at the commit, not once
    /// per shrink. A growth commits at once: it must find its quota or space now, and
    /// a later write that fails for want of space must not take it back (a mapping of
    /// the grown file would fault past the end). A truncation by path
    /// (`truncate(2)`) has no close to wait for and commits at once.
    pub through_handle: bool,
}

/// Capacity of the pool as `statfs` reports it.
#[derive(Debug, Clone, Copy)]
pub struct PoolSpace {
    /// Bytes the live nodes can hold, a disk they share counted once
    /// (`PoolView::room`).
    pub total: u64,
    /// Bytes of that not yet allocated on them.
    pub free: u64,
    /// Inodes in use: the namespace's records (`MetaStore::inode_count`).
    pub inodes: u64,
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
    /// Handles open for writing (`Vfs::io_size`).
    writers: AtomicU64,
}

#[derive(Clone, Copy)]
struct OpenHandle {
    ino: u64,
    /// Opened for writing: counted in the inode's `writers`.
    writes: bool,
}

/// The mounted filesystem's logic.
pub struct Vfs {
    meta: Arc<MetaStore>,
    /// The namespace's copy in the pool, when the mount keeps one (set once).
    journal: std::sync::OnceLock<Arc<super::journal::Journal>>,
    /// Set when the mount stops: background walks end (`stop_background`).
    stopping: std::sync::atomic::AtomicBool,
    /// The mount's own node (set once, by the mount), for `own_node`.
    own_node: std::sync::OnceLock<crate::node::OwnSegments>,
    client: Arc<PoolClient>,
    rt: Handle,
    open: Mutex<HashMap<u64, Arc<OpenInode>>>,
    /// References the kernel holds on each inode (FUSE's lookup count); taken after
    /// `open` when both are held.
    lookups: Mutex<HashMap<u64, u64>>,
    /// Files whose record went with their last name (`unlink`) while the kernel still
    /// refers to them: their attributes with no links and no manifest, for a GETATTR
    /// (an `fstat` of an `O_PATH` descriptor) until the kernel forgets them. Taken
    /// after `lookups`; bounded as `lookups` is.
    ghosts: Mutex<HashMap<u64, super::meta::Inode>>,
    /// Held for reading by a first open (`acquire`) from its read of the record to its
    /// entry in `open`, and for writing by what decides on a record by whether its file
    /// is open (`unlink`, `swap_manifest`): such a decision never falls in between.
    first_open: std::sync::RwLock<()>,
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
            meta: Arc::new(meta),
            journal: std::sync::OnceLock::new(),
            own_node: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            client,
            rt,
            open: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            ghosts: Mutex::new(HashMap::new()),
            first_open: std::sync::RwLock::new(()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            max_uploads: 4,
            last_scrub: Mutex::new(None),
            repair: Mutex::new(Default::default()),
            invalidator: std::sync::OnceLock::new(),
            invalidating: Mutex::new(Vec::new()),
        };
        vfs.purge_orphans()?;
        vfs.meta.start_group_commit();
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

    /// The metadata store, shared with the namespace journal.
    pub fn meta_store(&self) -> Arc<MetaStore> {
        self.meta.clone()
    }

    /// Keeps the namespace in the pool through `journal` from now on (set once, by the
    /// mount): fsync waits for it, and segments a change frees wait for its flush.
    pub fn set_journal(&self, journal: Arc<super::journal::Journal>) {
        let _ = self.journal.set(journal);
    }

    /// The namespace journal, if the mount keeps the namespace in the pool.
    pub fn journal(&self) -> Option<&Arc<super::journal::Journal>> {
        self.journal.get()
    }

    /// Waits until every change made so far is durable on this disk and in the pool's
    /// copy of the namespace (fsync, fsyncdir; the latter only when the mount keeps one).
    ///
    /// Errors: `MetaIo`/`NoSpace` when the store cannot be flushed; `MetaIo` when the
    /// change could not be stored in the pool (see `Journal::sync`).
    pub fn sync_namespace(&self) -> Result<(), FsError> {
        self.meta.persist()?;
        match self.journal.get() {
            Some(j) => j.sync(),
            None => Ok(()),
        }
    }

    /// The node that runs in this mount's process (set once, by the mount).
    pub fn set_own_node(&self, node: crate::node::OwnSegments) {
        let _ = self.own_node.set(node);
    }

    /// The pool id of the node in this mount's process, once the controller gave it
    /// one; `None` without one (tests over an in-memory pool).
    pub fn own_node(&self) -> Option<crate::proto::NodeId> {
        self.own_node.get().and_then(|n| n.node_id())
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
        // Holding the first-open gate keeps `acquire` from loading the old manifest
        // between the check and the write (holding `open` alone did not: `acquire`
        // reads the record before it takes `open`).
        let _gate = self.first_open.write().unwrap_or_else(|p| p.into_inner());
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

    /// The file ids of every open file, as last committed and as being written (a
    /// truncation to zero gives an open file a new one): the sweep keeps all their
    /// segments. Waits for each file's data, as a stat of an open file does.
    pub(super) fn open_file_ids(&self) -> Vec<String> {
        let open: Vec<Arc<OpenInode>> = lock(&self.open).values().cloned().collect();
        let mut ids = Vec::new();
        for inode in open {
            let data = self.block_on(inode.data.lock());
            ids.push(data.manifest.place.file_id.clone());
            ids.push(data.committed.place.file_id.clone());
        }
        ids
    }

    /// Total and free bytes of the live nodes (free as the nodes count it: the bytes
    /// really stored, so sparse files take only what was written), and the inodes in
    /// use.
    pub fn statfs(&self) -> Result<PoolSpace, FsError> {
        let room = self.block_on(self.client.view())?.room();
        Ok(PoolSpace {
            total: room.size,
            free: room.free,
            inodes: self.meta.inode_count()?,
        })
    }
}
