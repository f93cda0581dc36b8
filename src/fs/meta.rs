//! The namespace and every file's manifest in an embedded crash-safe store (redb): one
//! transaction per operation, so a crash leaves either the old or the new state.

use std::path::Path;
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::FsError;
use crate::client::Manifest;
use crate::proto::{decode_record, encode_record};

/// Inode number of the root directory (FUSE's convention).
pub const ROOT: u64 = 1;
/// Longest name in a directory, as on most Linux filesystems.
pub const NAME_MAX: usize = 255;

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<(u64, &[u8]), u64> = TableDefinition::new("dirents");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// What an inode is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// Seconds and nanoseconds since the epoch.
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
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                Time {
                    secs: -(d.as_secs() as i64) - i64::from(d.subsec_nanos() > 0),
                    nanos: if d.subsec_nanos() > 0 {
                        1_000_000_000 - d.subsec_nanos()
                    } else {
                        0
                    },
                }
            }
        }
    }
}

impl From<Time> for SystemTime {
    fn from(t: Time) -> SystemTime {
        let base = if t.secs >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.secs as u64)
        } else {
            SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(t.secs.unsigned_abs())
        };
        base + std::time::Duration::from_nanos(u64::from(t.nanos))
    }
}

/// One file, directory or symlink.
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
            manifest: None,
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> FsError {
    FsError::Meta(e.to_string())
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

fn load(inodes: &Inodes<'_>, ino: u64) -> Result<Inode, FsError> {
    let guard = inodes.get(ino).map_err(db_err)?.ok_or(FsError::NotFound)?;
    decode_record(guard.value()).map_err(db_err)
}

fn store(inodes: &mut Inodes<'_>, inode: &Inode) -> Result<(), FsError> {
    let bytes = encode_record(inode).map_err(db_err)?;
    inodes.insert(inode.ino, bytes.as_slice()).map_err(db_err)?;
    Ok(())
}

fn dir(inodes: &Inodes<'_>, ino: u64) -> Result<Inode, FsError> {
    let d = load(inodes, ino)?;
    if d.kind != Kind::Dir {
        return Err(FsError::NotDir);
    }
    Ok(d)
}

fn entry(dirents: &Dirents<'_>, parent: u64, name: &[u8]) -> Result<Option<u64>, FsError> {
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
/// with their tags on the nodes, segment slots sized for them).
const META_FORMAT: u64 = 3;

/// The metadata database of one mount.
pub struct MetaStore {
    db: Database,
}

impl MetaStore {
    /// Opens (or creates) the store at `path`, with a root directory owned by `uid:gid`.
    pub fn open(path: &Path, uid: u32, gid: u32) -> Result<Self, FsError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => FsError::Meta(format!(
                "{}: in use by another process (is this storage already mounted?)",
                path.display()
            )),
            e => FsError::Meta(format!("{}: {e}", path.display())),
        })?;
        let meta = MetaStore { db };
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
            if format != Some(META_FORMAT) {
                return Err(FsError::Meta(format!(
                    "{} holds metadata of format {}, this poolfs reads format \
                     {META_FORMAT}; mount it with the poolfs that made it",
                    path.display(),
                    format.map_or("1".into(), |f| f.to_string())
                )));
            }
            Ok(())
        })?;
        Ok(meta)
    }

    /// Runs `f` in one write transaction. Namespace changes commit with
    /// `Durability::Eventual` (on Linux redb syncs those too, so they survive the
    /// process dying); `Durability::Immediate` is for committing the data of a closed or
    /// fsynced file; either also makes every earlier unsynced change durable.
    fn write<T>(
        &self,
        f: impl FnOnce(
            &mut Inodes<'_>,
            &mut Dirents<'_>,
            &mut redb::Table<'_, &'static str, u64>,
        ) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        self.write_with(Durability::Eventual, f)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(
            &mut Inodes<'_>,
            &mut Dirents<'_>,
            &mut redb::Table<'_, &'static str, u64>,
        ) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
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
    }

    /// The inode `ino`.
    pub fn get(&self, ino: u64) -> Result<Inode, FsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let inodes = txn.open_table(INODES).map_err(db_err)?;
        let guard = inodes.get(ino).map_err(db_err)?.ok_or(FsError::NotFound)?;
        decode_record(guard.value()).map_err(db_err)
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let inodes = txn.open_table(INODES).map_err(db_err)?;
        let dirents = txn.open_table(DIRENTS).map_err(db_err)?;
        let d: Inode = {
            let g = inodes
                .get(parent)
                .map_err(db_err)?
                .ok_or(FsError::NotFound)?;
            decode_record(g.value()).map_err(db_err)?
        };
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let ino = dirents
            .get((parent, name))
            .map_err(db_err)?
            .map(|g| g.value())
            .ok_or(FsError::NotFound)?;
        let g = inodes.get(ino).map_err(db_err)?.ok_or(FsError::NotFound)?;
        decode_record(g.value()).map_err(db_err)
    }

    /// Entries of directory `ino`: (name, inode number, kind).
    pub fn readdir(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64, Kind)>, FsError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let inodes = txn.open_table(INODES).map_err(db_err)?;
        let dirents = txn.open_table(DIRENTS).map_err(db_err)?;
        let d: Inode = {
            let g = inodes.get(ino).map_err(db_err)?.ok_or(FsError::NotFound)?;
            decode_record(g.value()).map_err(db_err)?
        };
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
            let g = inodes
                .get(child)
                .map_err(db_err)?
                .ok_or(FsError::NotFound)?;
            let inode: Inode = decode_record(g.value()).map_err(db_err)?;
            out.push((name.to_vec(), child, inode.kind));
        }
        Ok(out)
    }

    /// Adds `inode` as `name` in `parent`; fails with `Exists` if the name is taken.
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
            if entry(dirents, parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            inode.nlink += 1;
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

    /// Removes the empty directory `name`.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        self.write(|inodes, dirents, _| {
            let mut d = dir(inodes, parent)?;
            let ino = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            let inode = load(inodes, ino)?;
            if inode.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            if !is_empty_dir(dirents, ino)? {
                return Err(FsError::NotEmpty);
            }
            dirents.remove((parent, name)).map_err(db_err)?;
            inodes.remove(ino).map_err(db_err)?;
            d.nlink = d.nlink.saturating_sub(1);
            d.mtime = Time::now();
            d.ctime = d.mtime;
            store(inodes, &d)
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
                        inodes.remove(target_ino).map_err(db_err)?;
                        let mut np = load(inodes, new_parent)?;
                        np.nlink = np.nlink.saturating_sub(1);
                        store(inodes, &np)?;
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

    /// Replaces the stored record of `inode` (attributes, size, manifest). Fails with
    /// `NotFound` if the inode has been purged meanwhile.
    pub fn put(&self, inode: &Inode) -> Result<(), FsError> {
        self.write(|inodes, _, _| {
            load(inodes, inode.ino)?;
            store(inodes, inode)
        })
    }

    /// `put`, synced to disk before it returns: for the manifest of a file whose
    /// close or fsync is about to report success.
    pub fn put_durable(&self, inode: &Inode) -> Result<(), FsError> {
        self.write_with(Durability::Immediate, |inodes, _, _| {
            load(inodes, inode.ino)?;
            store(inodes, inode)
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
        let txn = self.db.begin_read().map_err(db_err)?;
        let inodes = txn.open_table(INODES).map_err(db_err)?;
        let mut out = Vec::new();
        for item in inodes.iter().map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            let inode: Inode = decode_record(v.value()).map_err(db_err)?;
            if keep(&inode) {
                out.push(inode);
            }
        }
        Ok(out)
    }
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
        m.rmdir(ROOT, b"top").unwrap();
        assert!(matches!(m.get(d2.ino), Err(FsError::NotFound)));
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = MetaStore::open(&path, 0, 0).unwrap();
            let d = m.create(ROOT, b"d", dir_inode()).unwrap();
            let mut f = m.create(d.ino, b"f", file()).unwrap();
            f.size = 42;
            m.put(&f).unwrap();
        }
        let m = MetaStore::open(&path, 0, 0).unwrap();
        let d = m.lookup(ROOT, b"d").unwrap();
        assert_eq!(m.lookup(d.ino, b"f").unwrap().size, 42);
        let next = m.create(ROOT, b"n", file()).unwrap();
        assert!(next.ino > d.ino, "inode numbers are never reused");
    }
}
