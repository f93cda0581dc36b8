//! The thin fuser adapter: maps kernel requests onto `Vfs`; its errno table
//! (`errno`) is the only place a failure becomes an errno.

mod convert;
mod dirs;
pub(crate) mod errno;
mod xattr;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use super::meta::{Inode, NAME_MAX, ROOT};
use super::repair;
use super::vfs::{SetAttr, Vfs};
use super::FsError;
use convert::{caller, kind, time};
use errno::{errno, errno_of_file};
use xattr::{is_pool_xattr, is_system_xattr};
pub use xattr::{HEALTH_XATTR, NAMESPACE_XATTR, REPAIR_XATTR, RISK_XATTR, SCRUB_XATTR};

/// How long the kernel may keep names (missing ones too), and attributes, without
/// asking again. Only this mount changes its namespace and attributes, each change
/// through a request the kernel sees (it drops what that request changed), and the
/// mount tells it of the one change it makes by itself (a rolled-back file's size,
/// `Vfs::invalidate`); repair changes where shards are, never a file's attributes.
/// Long, then: a stat of a file listed a minute ago costs no round trip.
const TTL: Duration = Duration::from_secs(60);
const BLOCK: u32 = 4096;

/// The filesystem as fuser sees it.
pub struct PoolFs {
    vfs: Arc<Vfs>,
    /// Snapshots of the open directories' entries.
    dirs: dirs::DirHandles,
}

impl PoolFs {
    /// Wraps the filesystem logic for mounting.
    pub fn new(vfs: Arc<Vfs>) -> Self {
        PoolFs {
            vfs,
            dirs: Default::default(),
        }
    }

    /// The attributes the kernel is given for `i`.
    fn attr(&self, i: &Inode) -> FileAttr {
        FileAttr {
            ino: INodeNo(i.ino),
            size: i.size,
            blocks: self.vfs.allocated(i).div_ceil(512),
            atime: i.atime.into(),
            mtime: i.mtime.into(),
            ctime: i.ctime.into(),
            crtime: i.ctime.into(),
            kind: kind(i.kind),
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            // By the file's state: large while written, small for readers.
            blksize: self.vfs.io_size(i),
            flags: 0,
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Inode, FsError>) {
        match r {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// The attributes of a negative entry: inode 0 means "no such name" to the kernel.
fn missing() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for PoolFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: fewer round trips through the kernel per stripe. The kernel
        // clamps these to what it supports.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        // open(O_TRUNC) arrives as one OPEN carrying the flag rather than a SETATTR of
        // the size without the file handle (the kernel sends none for it): the
        // truncation then belongs to the opening handle and is committed with its close
        // or fsync, so a crash shows the file before the rewrite or after it
        // (`Vfs::open`). A kernel without it sends the SETATTR, committed at once.
        if let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC) {
            log::info!("kernel lacks atomic O_TRUNC ({e:?}): a truncating open commits at once");
        }
        // Listings with attributes (READDIRPLUS), when the kernel sees names of the
        // directory being looked up (AUTO): `find | xargs stat`, `ls -l`, `rm -r`
        // then need no LOOKUP per name.
        let plus = fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(e) = config.add_capabilities(plus) {
            log::info!("kernel lacks READDIRPLUS ({e:?}): names are looked up one by one");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.vfs.lookup(parent.0, name.as_bytes()) {
            // A missing name is an entry of inode 0: the kernel keeps it as a negative
            // entry for TTL (a plain ENOENT would be asked again at every access), and
            // forgets it when this mount makes the name.
            Err(FsError::NotFound) => reply.entry(&TTL, &missing(), Generation(0)),
            r => self.entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    // batch_forget: fuser's default calls `forget` for each inode (fuser 0.18 keeps
    // `ForgetOne`, the type of its argument, private, so it cannot be overridden).

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            through_handle: fh.is_some(),
        };
        let mut r = self.vfs.setattr(ino.0, set);
        if size.is_some() && r.is_ok() {
            r = self
                .vfs
                .drop_setgid_for(ino.0, || caller(req))
                .and_then(|()| self.vfs.getattr(ino.0));
        }
        match r {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            self.vfs.mknod(
                parent.0,
                name.as_bytes(),
                mode & !umask,
                rdev,
                req.uid(),
                req.gid(),
            ),
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            reply,
            self.vfs.mkdir(
                parent.0,
                name.as_bytes(),
                mode & !umask,
                req.uid(),
                req.gid(),
            ),
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.unlink(parent.0, name.as_bytes()))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.rmdir(parent.0, name.as_bytes()))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        self.entry(
            reply,
            self.vfs
                .symlink(parent.0, link_name.as_bytes(), target, req.uid(), req.gid()),
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.vfs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        empty(reply, r)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(reply, self.vfs.link(ino.0, newparent.0, newname.as_bytes()))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vfs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno_of_file("read", ino.0, &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let written = self.vfs.write(fh.0, offset, data).and_then(|n| {
            self.vfs.drop_setgid_for(ino.0, || caller(req))?;
            Ok(n)
        });
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno_of_file("write", ino.0, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.flush(fh.0))
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.release(fh.0))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.fsync(fh.0))
    }

    /// A directory's entries are in the namespace: synced means in the pool's copy.
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.sync_namespace())
    }

    /// No ioctls: ENOTTY, as for a regular file on a local filesystem. Programs ask
    /// once per open (Python's `isatty` asks TCGETS), so this must not log.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(&FsError::NoIoctl));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.dirs.open()), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.read_dir(ino.0, fh.0, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        self.read_dir_plus(ino.0, fh.0, offset, reply)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.release(fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok(space) => {
                let blocks = space.total / u64::from(BLOCK);
                let free = space.free / u64::from(BLOCK);
                // Inodes are records in the namespace, limited by room, not by a
                // table: a total of 2^32 - 1 (what a 32-bit statfs can hold), so
                // `df -i` shows plenty free and the records in use as used.
                let total = u64::from(u32::MAX);
                reply.statfs(
                    blocks,
                    free,
                    free,
                    total,
                    total.saturating_sub(space.inodes),
                    BLOCK,
                    NAME_MAX as u32,
                    BLOCK,
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes();
        let value = if ino.0 == ROOT && name == SCRUB_XATTR.as_bytes() {
            Ok(repair::last_scrub(&self.vfs).into_bytes())
        } else if ino.0 == ROOT && name == REPAIR_XATTR.as_bytes() {
            Ok(repair::repair_progress(&self.vfs).into_bytes())
        } else if ino.0 == ROOT && name == RISK_XATTR.as_bytes() {
            crate::fs::status::pool_risk(&self.vfs).and_then(|risk| {
                serde_json::to_vec(&risk)
                    .map_err(|e| FsError::Task(format!("cannot encode the risk report: {e}")))
            })
        } else if ino.0 == ROOT && name == NAMESPACE_XATTR.as_bytes() {
            Ok(match self.vfs.journal() {
                Some(j) => j.describe(),
                None => "namespace kept on this disk only (--no-pool-namespace)".into(),
            }
            .into_bytes())
        } else if name == HEALTH_XATTR.as_bytes() {
            repair::health(&self.vfs, ino.0).map(String::into_bytes)
        } else if is_pool_xattr(name) || is_system_xattr(name) {
            Err(FsError::NoData)
        } else {
            self.vfs.getxattr(ino.0, name)
        };
        match value {
            Ok(v) => xattr::answer(reply, size, &v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        // `trusted.*` attributes are listed to privileged callers only, as local
        // filesystems do (the kernel refuses others their values); uid 0 stands for
        // CAP_SYS_ADMIN here.
        match self.vfs.listxattr(ino.0, req.uid() == 0) {
            Ok(names) => xattr::answer(reply, size, &names),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes();
        if ino.0 == ROOT && name == SCRUB_XATTR.as_bytes() {
            return empty(reply, repair::scrub_and_record(&self.vfs).map(|_| ()));
        }
        if is_pool_xattr(name) {
            return empty(reply, Err(FsError::Permission));
        }
        if is_system_xattr(name) {
            return empty(reply, Err(FsError::NotSupported));
        }
        empty(reply, self.vfs.setxattr(ino.0, name, value, flags))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes();
        if is_pool_xattr(name) {
            return empty(reply, Err(FsError::Permission));
        }
        if is_system_xattr(name) {
            return empty(reply, Err(FsError::NoData));
        }
        empty(reply, self.vfs.removexattr(ino.0, name))
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.vfs.seek(fh.0, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let done = self
            .vfs
            .fallocate(fh.0, offset, length, mode)
            .and_then(|()| self.vfs.drop_setgid_for(ino.0, || caller(req)));
        empty(reply, done)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.vfs.create(
            parent.0,
            name.as_bytes(),
            mode & !umask,
            req.uid(),
            req.gid(),
        ) {
            Ok((inode, fh)) => reply.created(
                &TTL,
                &self.attr(&inode),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
