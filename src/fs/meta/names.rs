//! The namespace operations of the metadata store: look up, list, create, link,
//! unlink, remove a directory, rename and exchange, each one transaction.

use std::sync::atomic::Ordering;

use redb::ReadableTable;

use super::{
    check_name, db_err, dir, drop_dirent, entry, is_empty_dir, load, put_dirent, store,
    unstore_linked,
};
use super::{Inode, Kind, MetaStore, Time, NAME_MAX, ROOT};
use crate::fs::FsError;

impl MetaStore {
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

    /// The inodes of entries `(name, ino)` of directory `parent`, as listed a moment
    /// ago, in one read transaction: `None` for an entry whose name no longer names
    /// that inode (removed or renamed since), so a listing with attributes never hands
    /// the kernel a name that is gone. `.` and `..` are given as they are.
    pub fn listed(
        &self,
        parent: u64,
        entries: &[(&[u8], u64)],
    ) -> Result<Vec<Option<Inode>>, FsError> {
        self.read(|inodes, dirents| {
            entries
                .iter()
                .map(|&(name, ino)| {
                    let dot = name == b"." || name == b"..";
                    if !dot && entry(dirents, parent, name)? != Some(ino) {
                        return Ok(None);
                    }
                    match load(inodes, ino) {
                        Ok(inode) => Ok(Some(inode)),
                        Err(FsError::NotFound) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .collect()
        })
    }

    /// Adds `inode` as `name` in `parent`; fails with `Exists` if the name is taken.
    /// A directory with the setgid bit passes its group on to what is made in it, and
    /// the bit itself to subdirectories (as Linux filesystems do; the kernel has
    /// already cleared a requested setgid bit the creator may not set). Like every
    /// namespace change it is durable with the next durable commit (`persist`).
    pub fn create(&self, parent: u64, name: &[u8], mut inode: Inode) -> Result<Inode, FsError> {
        check_name(name)?;
        self.write(|inodes, dirents, counters| {
            let mut d = dir(inodes, parent)?;
            if entry(dirents, parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let stored = counters
                .get("next_ino")
                .map_err(db_err)?
                .map(|g| g.value())
                .unwrap_or(ROOT + 1);
            // Never below a number handed out before a reopen (`MetaStore::issued`).
            let ino = stored.max(self.issued.load(Ordering::Acquire) + 1);
            self.issued.fetch_max(ino, Ordering::AcqRel);
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
            put_dirent(dirents, parent, name, ino)?;
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
            put_dirent(dirents, parent, name, ino)?;
            Ok(inode)
        })
    }

    /// Removes the non-directory entry `name`; returns the inode with its link count
    /// lowered. An inode left with no links stays recorded (an orphan) until `purge`.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        self.unlink_purging(parent, name, |_| false)
            .map(|(inode, _)| inode)
    }

    /// `unlink`, and when the inode has no links left and `purge` says so (it is asked
    /// inside the transaction, with the inode as it is about to be left), its record
    /// goes in the same transaction instead of staying an orphan: one commit for a
    /// file that nothing else refers to (`Vfs::unlink`). Returns the inode, and whether
    /// its record went (its manifest then names the segments to free).
    pub fn unlink_purging(
        &self,
        parent: u64,
        name: &[u8],
        purge: impl FnOnce(&Inode) -> bool,
    ) -> Result<(Inode, bool), FsError> {
        self.write(|inodes, dirents, _| {
            let mut d = dir(inodes, parent)?;
            let ino = entry(dirents, parent, name)?.ok_or(FsError::NotFound)?;
            let mut inode = load(inodes, ino)?;
            if inode.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            drop_dirent(dirents, parent, name)?;
            inode.nlink = inode.nlink.saturating_sub(1);
            inode.ctime = Time::now();
            d.mtime = inode.ctime;
            d.ctime = inode.ctime;
            let purged = inode.nlink == 0 && purge(&inode);
            match purged {
                true => unstore_linked(inodes, ino)?,
                false => store(inodes, &inode)?,
            }
            store(inodes, &d)?;
            Ok((inode, purged))
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
            drop_dirent(dirents, parent, name)?;
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
            drop_dirent(dirents, parent, name)?;
            put_dirent(dirents, new_parent, new_name, ino)?;
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
            put_dirent(dirents, parent, name, b)?;
            put_dirent(dirents, new_parent, new_name, a)?;
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
    fn an_unlink_that_purges_removes_name_and_record_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let (a, b) = {
            let m = MetaStore::open(&path, 0, 0).unwrap();
            let a = m.create(ROOT, b"a", file()).unwrap();
            let b = m.create(ROOT, b"b", file()).unwrap();
            m.link(b.ino, ROOT, b"b2").unwrap();
            m.persist().unwrap();
            let (gone, purged) = m.unlink_purging(ROOT, b"a", |_| true).unwrap();
            assert!(purged && gone.nlink == 0 && gone.ino == a.ino);
            assert!(matches!(m.get(a.ino), Err(FsError::NotFound)));
            assert!(m.orphans().unwrap().is_empty(), "never an orphan");
            // A file with another name keeps its record whatever `purge` says.
            let (kept, purged) = m.unlink_purging(ROOT, b"b", |_| true).unwrap();
            assert!(!purged && kept.nlink == 1);
            // Refused: an orphan, as `unlink` leaves it.
            let (_, purged) = m.unlink_purging(ROOT, b"b2", |_| false).unwrap();
            assert!(!purged);
            assert_eq!(m.orphans().unwrap().len(), 1);
            m.persist().unwrap();
            (a, b)
        };
        let m = MetaStore::open(&path, 0, 0).unwrap();
        assert!(matches!(m.lookup(ROOT, b"a"), Err(FsError::NotFound)));
        assert!(matches!(m.get(a.ino), Err(FsError::NotFound)));
        let orphans: Vec<u64> = m.orphans().unwrap().iter().map(|i| i.ino).collect();
        assert_eq!(orphans, vec![b.ino]);
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
}
