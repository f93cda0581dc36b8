//! Filesystem operations over the namespace store and open-file data, with no FUSE
//! types: callable from tests and from the thin fuser adapter alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::file::{FileData, ReadBytes};
use super::meta::{Inode, Kind, MetaStore, Time};
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

struct OpenInode {
    data: tokio::sync::Mutex<FileData>,
    users: AtomicU64,
}

#[derive(Clone, Copy)]
struct OpenHandle {
    ino: u64,
    append: bool,
}

/// The mounted filesystem's logic.
pub struct Vfs {
    meta: MetaStore,
    client: Arc<PoolClient>,
    rt: Handle,
    open: Mutex<HashMap<u64, Arc<OpenInode>>>,
    handles: Mutex<HashMap<u64, OpenHandle>>,
    next_fh: AtomicU64,
    max_uploads: usize,
    /// The outcome of the last scrub pass, for `user.poolfs.scrub` on the root.
    pub(super) last_scrub: Mutex<Option<String>>,
    /// Repair passes so far, for `user.poolfs.repair` on the root.
    pub(super) repair: Mutex<super::repair::RepairProgress>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vfs {
    /// The filesystem over `meta`, storing data through `client` on runtime `rt`.
    /// Files unlinked while open when the mount last stopped are removed now.
    pub fn new(meta: MetaStore, client: Arc<PoolClient>, rt: Handle) -> Result<Self, FsError> {
        let vfs = Vfs {
            meta,
            client,
            rt,
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            max_uploads: 4,
            last_scrub: Mutex::new(None),
            repair: Mutex::new(Default::default()),
        };
        for orphan in vfs.meta.orphans()? {
            vfs.remove_inode(&orphan);
        }
        Ok(vfs)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Deletes an inode with no links left, and its segments on the peers.
    fn remove_inode(&self, inode: &Inode) {
        if let Some(m) = &inode.manifest {
            self.delete_segments(m);
        }
        if let Err(e) = self.meta.purge(inode.ino) {
            log::error!("cannot forget inode {}: {e}", inode.ino);
        }
    }

    fn delete_segments(&self, m: &Manifest) {
        if m.inline.is_some() && !m.stores_anything() {
            return; // a small file kept in its record: nothing on the pool
        }
        if let Err(e) = self.block_on(self.client.delete(m)) {
            // The bytes stay on that peer until it is cleaned; nothing is lost.
            log::warn!("cannot delete segments of file {}: {e}", m.place.file_id);
        }
    }

    fn opened(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).cloned()
    }

    /// The inode with the live size of an open file.
    fn live(&self, mut inode: Inode) -> Inode {
        if let Some(open) = self.opened(inode.ino) {
            let data = self.block_on(open.data.lock());
            inode.size = data.size();
        }
        inode
    }

    /// Takes a reference on the open data of `ino`, loading it the first time.
    fn acquire(&self, ino: u64) -> Result<Arc<OpenInode>, FsError> {
        if let Some(open) = lock(&self.open).get(&ino) {
            open.users.fetch_add(1, Ordering::SeqCst);
            return Ok(open.clone());
        }
        let mut inode = self.meta.get(ino)?;
        match inode.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid),
            Kind::File => {}
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
    /// file unlinked meanwhile, deletes it.
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
            if let Ok(inode) = self.meta.get(ino) {
                if inode.nlink == 0 {
                    self.remove_inode(&inode);
                }
            }
        }
    }

    /// Stores buffered data and records the manifest, so the file survives a crash.
    fn commit(&self, ino: u64, data: &mut FileData) -> Result<(), FsError> {
        self.block_on(data.flush())?;
        if !data.changed {
            return Ok(());
        }
        let mut inode = self.meta.get(ino)?;
        inode.size = data.size();
        inode.manifest = Some(data.manifest.clone());
        inode.mtime = Time::now();
        inode.ctime = inode.mtime;
        self.meta.put_durable(&inode)?;
        data.changed = false;
        for old in std::mem::take(&mut data.retired) {
            self.delete_segments(&old);
        }
        Ok(())
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

    /// Looks up `name` in `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        self.meta.lookup(parent, name).map(|i| self.live(i))
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Inode, FsError> {
        self.meta.get(ino).map(|i| self.live(i))
    }

    /// Changes attributes; a size change truncates or extends the file's data.
    pub fn setattr(&self, ino: u64, set: SetAttr) -> Result<Inode, FsError> {
        let needs_data = set.size.is_some() || (set.mtime.is_some() && self.opened(ino).is_some());
        if needs_data {
            self.with_data(ino, |vfs, data| {
                if let Some(size) = set.size {
                    vfs.block_on(data.resize(size))?;
                }
                vfs.commit(ino, data)
            })?;
        }
        let mut inode = self.meta.get(ino)?;
        let now = Time::now();
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
        inode.ctime = now;
        self.meta.put(&inode)?;
        Ok(self.live(inode))
    }

    /// Makes a directory.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Inode, FsError> {
        self.meta.create(
            parent,
            name,
            Inode::new(Kind::Dir, (mode & 0o7777) as u16, uid, gid),
        )
    }

    /// Makes an empty regular file (mknod); other node types are not supported.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Inode, FsError> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return Err(FsError::NotSupported);
        }
        self.meta.create(
            parent,
            name,
            Inode::new(Kind::File, (mode & 0o7777) as u16, uid, gid),
        )
    }

    /// Makes a symbolic link to `target`.
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
        self.meta.create(parent, name, inode)
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.meta.get(ino)?;
        if inode.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(inode.target)
    }

    /// A hard link.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        self.meta.link(ino, parent, name).map(|i| self.live(i))
    }

    fn dropped_link(&self, inode: Inode) {
        if inode.nlink == 0 && self.opened(inode.ino).is_none() {
            self.remove_inode(&inode);
        }
    }

    /// Removes a file name; the file goes when its last name and last opener do.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let inode = self.meta.unlink(parent, name)?;
        self.dropped_link(inode);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.meta.rmdir(parent, name)
    }

    /// Renames, replacing a compatible target (`RENAME_NOREPLACE` refuses to).
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(FsError::Invalid);
        }
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        if let Some(replaced) = self
            .meta
            .rename(parent, name, new_parent, new_name, no_replace)?
        {
            self.dropped_link(replaced);
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

    fn new_handle(&self, ino: u64, flags: i32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let append = flags & libc::O_APPEND != 0;
        lock(&self.handles).insert(fh, OpenHandle { ino, append });
        fh
    }

    fn handle(&self, fh: u64) -> Result<OpenHandle, FsError> {
        lock(&self.handles)
            .get(&fh)
            .copied()
            .ok_or(FsError::BadHandle)
    }

    /// Creates and opens a regular file, placed on the pool's current live nodes.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Result<(Inode, u64), FsError> {
        let mut inode = Inode::new(Kind::File, (mode & 0o7777) as u16, uid, gid);
        inode.manifest = Some(self.block_on(self.client.new_file())?);
        // Not synced here: the file's close (or fsync) commits it durably, so a small
        // file costs one metadata flush, not two.
        let inode = self.meta.create_unsynced(parent, name, inode)?;
        let open = self.acquire(inode.ino)?;
        // Even an empty file's close must commit, to make its name durable.
        self.block_on(open.data.lock()).changed = true;
        Ok((inode.clone(), self.new_handle(inode.ino, flags)))
    }

    /// Opens a file; `O_TRUNC` empties it.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let open = self.acquire(ino)?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let mut data = self.block_on(open.data.lock());
            let truncated = self
                .block_on(data.resize(0))
                .and_then(|_| self.commit(ino, &mut data));
            if let Err(e) = truncated {
                drop(data);
                self.relinquish(ino);
                return Err(e);
            }
        }
        Ok(self.new_handle(ino, flags))
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

    /// Writes at `offset` (at the end for `O_APPEND` handles); returns bytes taken.
    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> Result<u32, FsError> {
        let (h, open) = self.data_of(fh)?;
        self.block_on(async {
            let mut data = open.data.lock().await;
            let at = if h.append { data.size() } else { offset };
            data.write(at, bytes).await
        })?;
        Ok(bytes.len() as u32)
    }

    /// Stores everything written through any handle of this file and records it.
    pub fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (h, open) = self.data_of(fh)?;
        let mut data = self.block_on(open.data.lock());
        self.commit(h.ino, &mut data)
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let result = self.flush(fh);
        if let Some(h) = lock(&self.handles).remove(&fh) {
            self.relinquish(h.ino);
        }
        result
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
        let mut inode = self.meta.get(ino)?;
        if inode.manifest.as_ref() != Some(old) {
            return Ok(false);
        }
        inode.manifest = Some(new);
        self.meta.put_durable(&inode)?;
        drop(open);
        Ok(true)
    }

    /// Is `ino` open right now?
    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.opened(ino).is_some()
    }

    /// Total and free bytes of the live nodes.
    pub fn statfs(&self) -> Result<PoolSpace, FsError> {
        let view = self.block_on(self.client.view())?;
        let live = view.live();
        Ok(PoolSpace {
            total: live.iter().map(|n| n.capacity).sum(),
            free: live.iter().map(|n| n.capacity.saturating_sub(n.used)).sum(),
        })
    }
}
