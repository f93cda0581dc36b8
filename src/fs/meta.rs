//! The namespace and every file's manifest in an embedded crash-safe store (redb): one
//! transaction per operation, so a crash leaves either the old or the new state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::legacy::InodeV3;
use super::FsError;
use crate::client::Manifest;
use crate::proto::{decode_record, encode_record};

/// Inode number of the root directory (FUSE's convention).
pub const ROOT: u64 = 1;
/// Longest name in a directory, as on most Linux filesystems.
pub const NAME_MAX: usize = 255;
/// Most bytes of extended attributes (names and values) one inode may carry: twice the
/// largest single value Linux allows (`XATTR_SIZE_MAX`, 64 KiB), so the largest one
/// fits with its name and others, while an inode's record stays small enough to
/// rewrite on every change.
pub const XATTRS_MAX: usize = 128 * 1024;

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<(u64, &[u8]), u64> = TableDefinition::new("dirents");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// What an inode is. The order is part of the stored format: new kinds go last.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A named pipe: the kernel carries its bytes; the pool stores none.
    Fifo,
    /// A unix socket's name: as for a FIFO, only the name and attributes are kept.
    Socket,
    /// A character device node (`rdev` names the device).
    CharDev,
    /// A block device node (`rdev` names the device).
    BlockDev,
}

impl Kind {
    /// The kind a `mknod` mode asks for (its `S_IFMT` bits; none means a regular
    /// file, as mknod(2) says), or `None` for a type that cannot be made that way.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Some(Kind::File),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDev),
            libc::S_IFBLK => Some(Kind::BlockDev),
            _ => None,
        }
    }
}

/// Seconds and nanoseconds since the epoch, as the kernel's timespec: `secs` may be
/// negative, `nanos` is always in `0..1_000_000_000` and counts forward from `secs`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    /// The current time.
    pub fn now() -> Time {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Time {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Time {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                // `d` before the epoch: -d = -(s + n/1e9) = -(s + 1) + (1e9 - n)/1e9.
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s);
                match d.subsec_nanos() {
                    0 => Time { secs, nanos: 0 },
                    n => Time {
                        secs: secs.saturating_sub(1),
                        nanos: 1_000_000_000 - n,
                    },
                }
            }
        }
    }
}

impl From<Time> for SystemTime {
    /// Saturates at the ends of what `SystemTime` holds (the whole i64 range of
    /// seconds on Linux, so in practice never).
    fn from(t: Time) -> SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(t.nanos));
        let base = if t.secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t.secs as u64))
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(std::time::Duration::from_secs(t.secs.unsigned_abs()))
        };
        base.and_then(|b| b.checked_add(nanos))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// One file, directory, symlink or special file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// For directories: the directory that contains it (to refuse moving a directory
    /// into itself).
    pub parent: u64,
    /// For symlinks: the target.
    pub target: Vec<u8>,
    /// For device nodes: the device number, as `st_rdev` gives it.
    pub rdev: u32,
    /// Extended attributes set by programs (name, with its namespace, to value).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For files: where the bytes live.
    pub manifest: Option<Manifest>,
}

impl Inode {
    /// A fresh inode of `kind` (its number is given by the store).
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = Time::now();
        Inode {
            ino: 0,
            kind,
            perm,
            uid,
            gid,
            nlink: 1,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            parent: 0,
            target: Vec::new(),
            rdev: 0,
            xattrs: BTreeMap::new(),
            manifest: None,
        }
    }

    /// Bytes its extended attributes take (names and values).
    pub fn xattr_bytes(&self) -> usize {
        self.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Turns a redb failure into the filesystem's error: a full disk is ENOSPC; any other
/// I/O failure leaves redb refusing every later transaction until the database is
/// reopened (`MetaStore` then reopens it); the rest is an internal error.
fn db_err(e: impl Into<redb::Error>) -> FsError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io)
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) =>
        {
            FsError::NoSpace(format!("metadata store: {io}"))
        }
        redb::Error::Io(_) | redb::Error::PreviousIo => FsError::MetaIo(e.to_string()),
        _ => FsError::Meta(e.to_string()),
    }
}

/// A record that does not encode or decode: the store holds something this version
/// does not understand.
fn rec_err(e: impl std::fmt::Display) -> FsError {
    FsError::Meta(format!("inode record: {e}"))
}

fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid);
    }
    Ok(())
}

type Inodes<'t> = redb::Table<'t, u64, &'static [u8]>;
type Dirents<'t> = redb::Table<'t, (u64, &'static [u8]), u64>;
type Counters<'t> = redb::Table<'t, &'static str, u64>;

fn load(inodes: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Inode, FsError> {
    let guard = inodes.get(ino).map_err(db_err)?.ok_or(FsError::NotFound)?;
    decode_record(guard.value()).map_err(rec_err)
}

fn store(inodes: &mut Inodes<'_>, inode: &Inode) -> Result<(), FsError> {
    let bytes = encode_record(inode).map_err(rec_err)?;
    inodes.insert(inode.ino, bytes.as_slice()).map_err(db_err)?;
    Ok(())
}

fn dir(inodes: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Inode, FsError> {
    let d = load(inodes, ino)?;
    if d.kind != Kind::Dir {
        return Err(FsError::NotDir);
    }
    if d.nlink == 0 {
        // A removed directory that a process still has as its cwd: nothing can be
        // made in it (ENOENT, as on Linux filesystems).
        return Err(FsError::NotFound);
    }
    Ok(d)
}

fn entry(
    dirents: &impl ReadableTable<(u64, &'static [u8]), u64>,
    parent: u64,
    name: &[u8],
) -> Result<Option<u64>, FsError> {
    Ok(dirents
        .get((parent, name))
        .map_err(db_err)?
        .map(|g| g.value()))
}

fn is_empty_dir(dirents: &Dirents<'_>, ino: u64) -> Result<bool, FsError> {
    let mut range = dirents.range((ino, &[][..])..).map_err(db_err)?;
    Ok(match range.next() {
        Some(item) => item.map_err(db_err)?.0.value().0 != ino,
        None => true,
    })
}

/// Version of the records kept here; bumped whenever `Inode` or `Manifest` change
/// (2: per-stripe records with moved shards and encryption; 3: shards sealed in chunks
/// with their tags on the nodes, segment slots sized for them; 4: special files, device
/// numbers, extended attributes, sparse stripe records and reservations). A store of
/// format 3 is migrated when opened; older ones are refused.
const META_FORMAT: u64 = 4;

/// The metadata database of one mount.
///
/// An I/O failure inside redb (a full disk, typically) makes it refuse every later
/// transaction until it is reopened; the store then reopens it before its next
/// operation, so service resumes by itself once the disk has room again. Changes that
/// were committed without a sync (`create_unsynced`) and not yet carried to disk by a
/// later synced commit are lost when that happens, as they would be in a crash.
pub struct MetaStore {
    path: PathBuf,
    db: RwLock<Option<Database>>,
    broken: AtomicBool,
}

fn open_db(path: &Path) -> Result<Database, FsError> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => FsError::Meta(format!(
            "{}: in use by another process (is this storage already mounted?)",
            path.display()
        )),
        e => match db_err(e) {
            FsError::NoSpace(m) => FsError::NoSpace(format!("{}: {m}", path.display())),
            other => FsError::Meta(format!("{}: {other}", path.display())),
        },
    })
}

impl MetaStore {
    /// Opens (or creates) the store at `path`, with a root directory owned by `uid:gid`.
    /// A store of the previous format is migrated in one transaction.
    pub fn open(path: &Path, uid: u32, gid: u32) -> Result<Self, FsError> {
        let db = open_db(path)?;
        let meta = MetaStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
        };
        meta.write(|inodes, _dirents, counters| {
            if inodes.get(ROOT).map_err(db_err)?.is_none() {
                let mut root = Inode::new(Kind::Dir, 0o755, uid, gid);
                root.ino = ROOT;
                root.nlink = 2;
                root.parent = ROOT;
                store(inodes, &root)?;
                counters.insert("next_ino", ROOT + 1).map_err(db_err)?;
                counters.insert("format", META_FORMAT).map_err(db_err)?;
            }
            // Records are bincode: a store written by another format cannot be read.
            let format = counters.get("format").map_err(db_err)?.map(|g| g.value());
            match format {
                Some(META_FORMAT) => Ok(()),
                Some(3) => {
                    migrate_v3(inodes)?;
                    counters.insert("format", META_FORMAT).map_err(db_err)?;
                    log::info!(
                        "{}: metadata migrated to format {META_FORMAT}",
                        path.display()
                    );
                    Ok(())
                }
                _ => Err(FsError::Meta(format!(
                    "{} holds metadata of format {}, this poolfs reads formats 3 and \
                     {META_FORMAT}; mount it with the poolfs that made it",
                    path.display(),
                    format.map_or("1".into(), |f| f.to_string())
                ))),
            }
        })?;
        Ok(meta)
    }

    /// The open database, reopened first if an I/O failure left it refusing
    /// transactions.
    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, FsError> {
        if self.broken.load(Ordering::Acquire) {
            let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
            if self.broken.load(Ordering::Acquire) {
                // The old handle must go first: it holds the file's lock.
                drop(slot.take());
                *slot = Some(open_db(&self.path)?);
                self.broken.store(false, Ordering::Release);
                log::info!("{}: metadata store reopened", self.path.display());
            }
        }
        Ok(self.db.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Notes a failure that needs the database reopened before the next operation.
    fn noted<T>(&self, r: Result<T, FsError>) -> Result<T, FsError> {
        if let Err(FsError::NoSpace(_) | FsError::MetaIo(_)) = &r {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// Runs `f` in one read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(
            &redb::ReadOnlyTable<u64, &'static [u8]>,
            &redb::ReadOnlyTable<(u64, &'static [u8]), u64>,
        ) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let r = (|| {
            let guard = self.db()?;
            let db = guard
                .as_ref()
                .ok_or_else(|| FsError::MetaIo("metadata store is closed".into()))?;
            let txn = db.begin_read().map_err(db_err)?;
            let inodes = txn.open_table(INODES).map_err(db_err)?;
            let dirents = txn.open_table(DIRENTS).map_err(db_err)?;
            f(&inodes, &dirents)
        })();
        self.noted(r)
    }

    /// Runs `f` in one write transaction. Namespace changes commit with
    /// `Durability::Eventual` (on Linux redb syncs those too, so they survive the
    /// process dying); `Durability::Immediate` is for committing the data of a closed or
    /// fsynced file; either also makes every earlier unsynced change durable.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Inodes<'_>, &mut Dirents<'_>, &mut Counters<'_>) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        self.write_with(Durability::Eventual, f)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut Inodes<'_>, &mut Dirents<'_>, &mut Counters<'_>) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let r = (|| {
            let guard = self.db()?;
            let db = guard
                .as_ref()
                .ok_or_else(|| FsError::MetaIo("metadata store is closed".into()))?;
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(durability);
            let out = {
                let mut inodes = txn.open_table(INODES).map_err(db_err)?;
                let mut dirents = txn.open_table(DIRENTS).map_err(db_err)?;
                let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
                f(&mut inodes, &mut dirents, &mut counters)?
            };
            // Dropping an uncommitted transaction on error aborts it: all or nothing.
            txn.commit().map_err(db_err)?;
            Ok(out)
        })();
        self.noted(r)
    }

    /// The inode `ino`.
    pub fn get(&self, ino: u64) -> Result<Inode, FsError> {
        self.read(|inodes, _| load(inodes, ino))
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        self.read(|inodes, dirents| {
            let d = load(inodes, parent)?;
            if d.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let ino = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            load(inodes, ino)
        })
    }

    /// Entries of directory `ino`: (name, inode number, kind).
    pub fn readdir(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64, Kind)>, FsError> {
        self.read(|inodes, dirents| {
            let d = load(inodes, ino)?;
            if d.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            let mut out = Vec::new();
            for item in dirents.range((ino, &[][..])..).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let (parent, name) = k.value();
                if parent != ino {
                    break;
                }
                let child = v.value();
                out.push((name.to_vec(), child, load(inodes, child)?.kind));
            }
            Ok(out)
        })
    }

    /// Adds `inode` as `name` in `parent`; fails with `Exists` if the name is taken.
    /// A directory with the setgid bit passes its group on to what is made in it, and
    /// the bit itself to subdirectories (as Linux filesystems do; the kernel has
    /// already cleared a requested setgid bit the creator may not set).
    pub fn create(&self, parent: u64, name: &[u8], inode: Inode) -> Result<Inode, FsError> {
        self.create_with(Durability::Eventual, parent, name, inode)
    }

    /// `create` without syncing: for a file created open, whose close or fsync commits
    /// it durably (with every change before it). Until then a crash of the mount may
    /// forget it, as a local filesystem may forget a new name whose directory was not
    /// fsynced; but it is visible at once and costs no disk flush.
    pub fn create_unsynced(
        &self,
        parent: u64,
        name: &[u8],
        inode: Inode,
    ) -> Result<Inode, FsError> {
        self.create_with(Durability::None, parent, name, inode)
    }

    fn create_with(
        &self,
        durability: Durability,
        parent: u64,
        name: &[u8],
        mut inode: Inode,
    ) -> Result<Inode, FsError> {
        check_name(name)?;
        self.write_with(durability, |inodes, dirents, counters| {
            let mut d = dir(inodes, parent)?;
            if entry(dirents, parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let ino = counters
                .get("next_ino")
                .map_err(db_err)?
                .map(|g| g.value())
                .unwrap_or(ROOT + 1);
            counters.insert("next_ino", ino + 1).map_err(db_err)?;
            inode.ino = ino;
            if d.perm & libc::S_ISGID as u16 != 0 {
                inode.gid = d.gid;
                if inode.kind == Kind::Dir {
                    inode.perm |= libc::S_ISGID as u16;
                }
            }
            if inode.kind == Kind::Dir {
                inode.parent = parent;
                inode.nlink = 2;
                d.nlink += 1;
            }
            d.mtime = Time::now();
            d.ctime = d.mtime;
            store(inodes, &d)?;
            store(inodes, &inode)?;
            dirents.insert((parent, name), ino).map_err(db_err)?;
            Ok(inode)
        })
    }

    /// A new name `name` in `parent` for the file `ino` (hard link).
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        check_name(name)?;
        self.write(|inodes, dirents, _| {
            let mut d = dir(inodes, parent)?;
            let mut inode = load(inodes, ino)?;
            if inode.kind == Kind::Dir {
                return Err(FsError::Permission);
            }
            if inode.nlink == 0 {
                return Err(FsError::NotFound); // linkat of an unlinked file
            }
            if entry(dirents, parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            inode.nlink = inode.nlink.checked_add(1).ok_or(FsError::TooManyLinks)?;
            inode.ctime = Time::now();
            d.mtime = inode.ctime;
            d.ctime = inode.ctime;
            store(inodes, &inode)?;
            store(inodes, &d)?;
            dirents.insert((parent, name), ino).map_err(db_err)?;
            Ok(inode)
        })
    }

    /// Removes the non-directory entry `name`; returns the inode with its link count
    /// lowered. An inode left with no links stays recorded (an orphan) until `purge`.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        self.write(|inodes, dirents, _| {
            let mut d = dir(inodes, parent)?;
            let ino = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            let mut inode = load(inodes, ino)?;
            if inode.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            dirents.remove((parent, name)).map_err(db_err)?;
            inode.nlink = inode.nlink.saturating_sub(1);
            inode.ctime = Time::now();
            d.mtime = inode.ctime;
            d.ctime = inode.ctime;
            store(inodes, &inode)?;
            store(inodes, &d)?;
            Ok(inode)
        })
    }

    /// Removes the empty directory `name`; returns it with no links left. Like a file,
    /// it stays recorded (an orphan) until `purge`, for a process that has it open or
    /// as its working directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        self.write(|inodes, dirents, _| {
            let mut d = dir(inodes, parent)?;
            let ino = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            let mut inode = load(inodes, ino)?;
            if inode.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            if !is_empty_dir(dirents, ino)? {
                return Err(FsError::NotEmpty);
            }
            dirents.remove((parent, name)).map_err(db_err)?;
            inode.nlink = 0;
            inode.ctime = Time::now();
            store(inodes, &inode)?;
            d.nlink = d.nlink.saturating_sub(1);
            d.mtime = inode.ctime;
            d.ctime = inode.ctime;
            store(inodes, &d)?;
            Ok(inode)
        })
    }

    /// Moves `parent/name` to `new_parent/new_name`, replacing a compatible target.
    /// Returns the replaced inode (its link count lowered), if any.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
    ) -> Result<Option<Inode>, FsError> {
        check_name(new_name)?;
        self.write(|inodes, dirents, _| {
            dir(inodes, parent)?;
            dir(inodes, new_parent)?;
            let ino = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            let mut moved = load(inodes, ino)?;
            if moved.kind == Kind::Dir {
                // Refuse to move a directory below itself.
                let mut up = new_parent;
                loop {
                    if up == ino {
                        return Err(FsError::Invalid);
                    }
                    if up == ROOT {
                        break;
                    }
                    up = load(inodes, up)?.parent;
                }
            }
            let now = Time::now();
            let mut replaced = None;
            if let Some(target_ino) = entry(dirents, new_parent, new_name)? {
                if target_ino == ino {
                    return Ok(None); // same file: rename(2) does nothing
                }
                if no_replace {
                    return Err(FsError::Exists);
                }
                let mut target = load(inodes, target_ino)?;
                match (moved.kind == Kind::Dir, target.kind == Kind::Dir) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) => {
                        if !is_empty_dir(dirents, target_ino)? {
                            return Err(FsError::NotEmpty);
                        }
                        target.nlink = 0;
                        target.ctime = now;
                        store(inodes, &target)?;
                        let mut np = load(inodes, new_parent)?;
                        np.nlink = np.nlink.saturating_sub(1);
                        store(inodes, &np)?;
                        replaced = Some(target);
                    }
                    (false, false) => {
                        target.nlink = target.nlink.saturating_sub(1);
                        target.ctime = now;
                        store(inodes, &target)?;
                        replaced = Some(target);
                    }
                }
            }
            dirents.remove((parent, name)).map_err(db_err)?;
            dirents
                .insert((new_parent, new_name), ino)
                .map_err(db_err)?;
            if moved.kind == Kind::Dir && parent != new_parent {
                moved.parent = new_parent;
                let mut old = load(inodes, parent)?;
                old.nlink = old.nlink.saturating_sub(1);
                store(inodes, &old)?;
                let mut new = load(inodes, new_parent)?;
                new.nlink += 1;
                store(inodes, &new)?;
            }
            moved.ctime = now;
            store(inodes, &moved)?;
            for p in [parent, new_parent] {
                let mut d = load(inodes, p)?;
                d.mtime = now;
                d.ctime = now;
                store(inodes, &d)?;
            }
            Ok(replaced)
        })
    }

    /// Swaps `parent/name` and `new_parent/new_name`, which must both exist
    /// (`RENAME_EXCHANGE`): each name then refers to the other's inode.
    pub fn exchange(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<(), FsError> {
        self.write(|inodes, dirents, _| {
            dir(inodes, parent)?;
            dir(inodes, new_parent)?;
            let a = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            let b = entry(dirents, new_parent, new_name)?.ok_or(FsError::NotFound)?;
            if a == b {
                return Ok(());
            }
            let mut ia = load(inodes, a)?;
            let mut ib = load(inodes, b)?;
            // Neither directory may end up below itself.
            for (moved, dest) in [(&ia, new_parent), (&ib, parent)] {
                if moved.kind != Kind::Dir {
                    continue;
                }
                let mut up = dest;
                loop {
                    if up == moved.ino {
                        return Err(FsError::Invalid);
                    }
                    if up == ROOT {
                        break;
                    }
                    up = load(inodes, up)?.parent;
                }
            }
            dirents.insert((parent, name), b).map_err(db_err)?;
            dirents.insert((new_parent, new_name), a).map_err(db_err)?;
            let now = Time::now();
            if parent != new_parent {
                let (a_dir, b_dir) = (ia.kind == Kind::Dir, ib.kind == Kind::Dir);
                if a_dir {
                    ia.parent = new_parent;
                }
                if b_dir {
                    ib.parent = parent;
                }
                // A directory's ".." counts as a link of its parent.
                let mut p = load(inodes, parent)?;
                p.nlink = p.nlink + u32::from(b_dir) - u32::from(a_dir);
                store(inodes, &p)?;
                let mut np = load(inodes, new_parent)?;
                np.nlink = np.nlink + u32::from(a_dir) - u32::from(b_dir);
                store(inodes, &np)?;
            }
            ia.ctime = now;
            ib.ctime = now;
            store(inodes, &ia)?;
            store(inodes, &ib)?;
            for p in [parent, new_parent] {
                let mut d = load(inodes, p)?;
                d.mtime = now;
                d.ctime = now;
                store(inodes, &d)?;
            }
            Ok(())
        })
    }

    /// Reads, changes and writes back inode `ino` in one transaction, so concurrent
    /// changes of different fields never undo each other. `durable` syncs it before it
    /// returns (for the manifest of a file whose close or fsync is about to succeed).
    /// Fails with `NotFound` if the inode is gone; `f`'s error aborts the change.
    pub fn update<T>(
        &self,
        ino: u64,
        durable: bool,
        f: impl FnOnce(&mut Inode) -> Result<T, FsError>,
    ) -> Result<(Inode, T), FsError> {
        let durability = match durable {
            true => Durability::Immediate,
            false => Durability::Eventual,
        };
        self.write_with(durability, |inodes, _, _| {
            let mut inode = load(inodes, ino)?;
            let out = f(&mut inode)?;
            store(inodes, &inode)?;
            Ok((inode, out))
        })
    }

    /// Forgets an inode that has no links left.
    pub fn purge(&self, ino: u64) -> Result<(), FsError> {
        self.write(|inodes, _, _| {
            inodes.remove(ino).map_err(db_err)?;
            Ok(())
        })
    }

    /// Every regular file that has data in the pool.
    pub fn files(&self) -> Result<Vec<Inode>, FsError> {
        self.scan(|i| i.kind == Kind::File && i.manifest.is_some())
    }

    /// Inodes with no links (unlinked while open when the mount stopped).
    pub fn orphans(&self) -> Result<Vec<Inode>, FsError> {
        self.scan(|i| i.nlink == 0)
    }

    fn scan(&self, keep: impl Fn(&Inode) -> bool) -> Result<Vec<Inode>, FsError> {
        self.read(|inodes, _| {
            let mut out = Vec::new();
            for item in inodes.iter().map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
                let inode: Inode = decode_record(v.value()).map_err(rec_err)?;
                if keep(&inode) {
                    out.push(inode);
                }
            }
            Ok(out)
        })
    }
}

/// Rewrites every inode of a format-3 store in the current format.
fn migrate_v3(inodes: &mut Inodes<'_>) -> Result<(), FsError> {
    let mut all = Vec::new();
    for item in inodes.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        let old: InodeV3 = decode_record(v.value()).map_err(rec_err)?;
        all.push((k.value(), Inode::from(old)));
    }
    for (_, inode) in &all {
        store(inodes, inode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(&dir.path().join("meta.redb"), 0, 0).unwrap();
        (dir, meta)
    }

    fn file() -> Inode {
        Inode::new(Kind::File, 0o644, 0, 0)
    }

    fn dir_inode() -> Inode {
        Inode::new(Kind::Dir, 0o755, 0, 0)
    }

    #[test]
    fn create_lookup_readdir_unlink() {
        let (_d, m) = store();
        let a = m.create(ROOT, b"a", file()).unwrap();
        assert!(matches!(m.create(ROOT, b"a", file()), Err(FsError::Exists)));
        assert_eq!(m.lookup(ROOT, b"a").unwrap().ino, a.ino);
        assert!(matches!(m.lookup(ROOT, b"zz"), Err(FsError::NotFound)));
        assert!(matches!(m.lookup(a.ino, b"x"), Err(FsError::NotDir)));
        assert!(matches!(
            m.create(ROOT, &[b'x'; 256], file()),
            Err(FsError::NameTooLong)
        ));
        let names: Vec<_> = m.readdir(ROOT).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec![b"a".to_vec()]);
        let gone = m.unlink(ROOT, b"a").unwrap();
        assert_eq!(gone.nlink, 0);
        assert_eq!(m.orphans().unwrap().len(), 1);
        m.purge(a.ino).unwrap();
        assert!(m.orphans().unwrap().is_empty());
    }

    #[test]
    fn directories_rmdir_and_rename_rules() {
        let (_d, m) = store();
        let d1 = m.create(ROOT, b"d1", dir_inode()).unwrap();
        let d2 = m.create(d1.ino, b"d2", dir_inode()).unwrap();
        m.create(d2.ino, b"f", file()).unwrap();
        assert!(matches!(m.rmdir(ROOT, b"d1"), Err(FsError::NotEmpty)));
        assert!(matches!(m.unlink(ROOT, b"d1"), Err(FsError::IsDir)));
        assert!(matches!(
            m.rename(ROOT, b"d1", d2.ino, b"x", false),
            Err(FsError::Invalid)
        ));
        // file over dir, dir over file, dir over non-empty dir
        m.create(ROOT, b"g", file()).unwrap();
        assert!(matches!(
            m.rename(ROOT, b"g", ROOT, b"d1", false),
            Err(FsError::IsDir)
        ));
        assert!(matches!(
            m.rename(ROOT, b"d1", ROOT, b"g", false),
            Err(FsError::NotDir)
        ));
        m.create(ROOT, b"e", dir_inode()).unwrap();
        assert!(matches!(
            m.rename(ROOT, b"e", d1.ino, b"d2", false),
            Err(FsError::NotEmpty)
        ));
        assert!(matches!(
            m.rename(ROOT, b"g", d2.ino, b"f", true),
            Err(FsError::Exists)
        ));
        // file over file replaces it; across directories
        let replaced = m.rename(ROOT, b"g", d2.ino, b"f", false).unwrap().unwrap();
        assert_eq!(replaced.nlink, 0);
        assert!(matches!(m.lookup(ROOT, b"g"), Err(FsError::NotFound)));
        // move a directory and check its parent link
        m.rename(d1.ino, b"d2", ROOT, b"top", false).unwrap();
        assert_eq!(m.lookup(ROOT, b"top").unwrap().parent, ROOT);
        m.unlink(d2.ino, b"f").unwrap();
        assert_eq!(m.rmdir(ROOT, b"top").unwrap().nlink, 0);
        // A removed directory stays recorded until purged, but nothing can be made in it.
        assert!(matches!(
            m.create(d2.ino, b"x", file()),
            Err(FsError::NotFound)
        ));
        m.purge(d2.ino).unwrap();
        assert!(matches!(m.get(d2.ino), Err(FsError::NotFound)));
    }

    #[test]
    fn exchange_swaps_two_names_and_keeps_link_counts() {
        let (_d, m) = store();
        let d1 = m.create(ROOT, b"d1", dir_inode()).unwrap();
        let sub = m.create(d1.ino, b"sub", dir_inode()).unwrap();
        let f = m.create(ROOT, b"f", file()).unwrap();
        m.exchange(d1.ino, b"sub", ROOT, b"f").unwrap();
        assert_eq!(m.lookup(ROOT, b"f").unwrap().ino, sub.ino);
        assert_eq!(m.lookup(d1.ino, b"sub").unwrap().ino, f.ino);
        assert_eq!(m.get(sub.ino).unwrap().parent, ROOT);
        // The root gained a subdirectory and d1 lost one.
        assert_eq!(m.get(ROOT).unwrap().nlink, 4);
        assert_eq!(m.get(d1.ino).unwrap().nlink, 2);
        // A directory cannot be swapped below itself; a missing name is ENOENT.
        let inner = m.create(sub.ino, b"inner", file()).unwrap();
        assert!(matches!(
            m.exchange(ROOT, b"f", sub.ino, b"inner"),
            Err(FsError::Invalid)
        ));
        assert_eq!(m.lookup(sub.ino, b"inner").unwrap().ino, inner.ino);
        assert!(matches!(
            m.exchange(ROOT, b"f", ROOT, b"nothing"),
            Err(FsError::NotFound)
        ));
    }

    #[test]
    fn a_setgid_directory_passes_its_group_and_the_bit_on() {
        let (_d, m) = store();
        let mut shared = dir_inode();
        shared.gid = 77;
        shared.perm = 0o2775;
        let shared = m.create(ROOT, b"shared", shared).unwrap();
        let f = m
            .create(shared.ino, b"f", Inode::new(Kind::File, 0o644, 5, 5))
            .unwrap();
        assert_eq!(
            (f.gid, f.perm),
            (77, 0o644),
            "a file gets the group, not the bit"
        );
        let sub = m
            .create(shared.ino, b"sub", Inode::new(Kind::Dir, 0o755, 5, 5))
            .unwrap();
        assert_eq!(
            (sub.gid, sub.perm),
            (77, 0o2755),
            "a subdirectory gets both"
        );
        let deeper = m
            .create(sub.ino, b"deeper", Inode::new(Kind::Dir, 0o700, 5, 5))
            .unwrap();
        assert_eq!((deeper.gid, deeper.perm), (77, 0o2700));
        let plain = m
            .create(ROOT, b"plain", Inode::new(Kind::Dir, 0o755, 5, 5))
            .unwrap();
        assert_eq!(
            (plain.gid, plain.perm),
            (5, 0o755),
            "no setgid parent: the creator's"
        );
    }

    #[test]
    fn times_round_trip_across_the_whole_timespec_range() {
        for (secs, nanos) in [
            (0, 0),
            (-1, 999_999_999),
            (-2, 800_000_000),
            (-1_000_000_000_000, 1),
            (1_900_000_000, 123_456_789),
            (i64::MAX, 999_999_999),
            (i64::MIN + 1, 0),
            (i64::MIN, 0),
        ] {
            let t = Time { secs, nanos };
            assert_eq!(Time::from(SystemTime::from(t)), t, "{secs}.{nanos:09}");
        }
    }

    #[test]
    fn a_format_3_store_is_migrated_with_every_file_intact() {
        use crate::client::{Layout, Placement, Sealing, StripeRecord};
        use crate::fs::legacy::{InodeV3, ManifestV3, StripeRecordV3};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let sealed_v3 = StripeRecordV3 {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(Sealing { salt: [1; 16] }),
        };
        let sealed = StripeRecord {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(Sealing { salt: [1; 16] }),
            slot: 0,
        };
        let old = InodeV3 {
            ino: 9,
            kind: Kind::File,
            perm: 0o4750,
            uid: 3,
            gid: 4,
            nlink: 2,
            size: 5 << 20,
            atime: Time { secs: -5, nanos: 6 },
            mtime: Time { secs: 7, nanos: 8 },
            ctime: Time { secs: 9, nanos: 10 },
            parent: 0,
            target: Vec::new(),
            manifest: Some(ManifestV3 {
                place: Placement {
                    file_id: "ab".into(),
                    layout: Layout {
                        k: 2,
                        m: 1,
                        shard_size: 1 << 20,
                    },
                    holders: Vec::new(),
                },
                size: 5 << 20,
                stripes: vec![sealed_v3.clone(), StripeRecordV3::default(), sealed_v3],
                inline: None,
            }),
        };
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut inodes = txn.open_table(INODES).unwrap();
                let mut counters = txn.open_table(COUNTERS).unwrap();
                let root = InodeV3 {
                    ino: ROOT,
                    kind: Kind::Dir,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    nlink: 2,
                    size: 0,
                    atime: Time::default(),
                    mtime: Time::default(),
                    ctime: Time::default(),
                    parent: ROOT,
                    target: Vec::new(),
                    manifest: None,
                };
                let bytes = encode_record(&root).unwrap();
                inodes.insert(ROOT, bytes.as_slice()).unwrap();
                let bytes = encode_record(&old).unwrap();
                inodes.insert(9, bytes.as_slice()).unwrap();
                counters.insert("format", 3).unwrap();
                counters.insert("next_ino", 10).unwrap();
                let mut dirents = txn.open_table(DIRENTS).unwrap();
                dirents.insert((ROOT, &b"f"[..]), 9).unwrap();
            }
            txn.commit().unwrap();
        }
        let m = MetaStore::open(&path, 0, 0).unwrap();
        let f = m.lookup(ROOT, b"f").unwrap();
        assert_eq!((f.ino, f.perm, f.uid, f.gid, f.nlink), (9, 0o4750, 3, 4, 2));
        assert_eq!(
            (f.atime, f.mtime),
            (Time { secs: -5, nanos: 6 }, Time { secs: 7, nanos: 8 })
        );
        let man = f.manifest.unwrap();
        assert_eq!(man.size, 5 << 20);
        let stored: Vec<u64> = man.records().map(|(j, _)| j).collect();
        assert_eq!(stored, vec![0, 2], "the hole in between stays a hole");
        assert_eq!(man.stripe(2), &sealed);
        drop(m);
        // Opened again, it is of the current format and reads the same.
        let m = MetaStore::open(&path, 0, 0).unwrap();
        assert_eq!(m.get(9).unwrap().size, 5 << 20);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = MetaStore::open(&path, 0, 0).unwrap();
            let d = m.create(ROOT, b"d", dir_inode()).unwrap();
            let f = m.create(d.ino, b"f", file()).unwrap();
            m.update(f.ino, true, |f| {
                f.size = 42;
                Ok(())
            })
            .unwrap();
        }
        let m = MetaStore::open(&path, 0, 0).unwrap();
        let d = m.lookup(ROOT, b"d").unwrap();
        assert_eq!(m.lookup(d.ino, b"f").unwrap().size, 42);
        let next = m.create(ROOT, b"n", file()).unwrap();
        assert!(next.ino > d.ino, "inode numbers are never reused");
    }
}
