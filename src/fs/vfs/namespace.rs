//! Namespace operations: names, directories, links, renames and attributes of inodes.

use super::{Invalidate, SetAttr, Vfs};
use crate::fs::caller::Caller;
use crate::fs::meta::{Inode, Kind, Time};
use crate::fs::FsError;

impl Vfs {
    /// Looks up `name` in `parent` (a reference for the kernel).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, FsError> {
        let inode = self.meta.lookup(parent, name)?;
        Ok(self.referenced(self.live(inode)))
    }

    /// Attributes of `ino`. An inode the kernel holds but the store no longer has (a
    /// create lost when the store was reopened after a full disk) is ESTALE, so the
    /// kernel looks its name up again.
    pub fn getattr(&self, ino: u64) -> Result<Inode, FsError> {
        match self.meta.get(ino) {
            Ok(i) => Ok(self.live(i)),
            Err(FsError::NotFound) => self.ghost(ino).ok_or(FsError::Stale),
            Err(e) => Err(e),
        }
    }

    /// Changes attributes; a size change truncates or extends the file's data. Times
    /// set here win over the time of writes made before (a `touch -d` or `cp -p` of an
    /// open file holds), and a later write moves them again.
    pub fn setattr(&self, ino: u64, set: SetAttr) -> Result<Inode, FsError> {
        if let Some(size) = set.size {
            self.with_data(ino, |vfs, data| {
                let shrinks = size < data.size();
                vfs.resize(data, size)?;
                match set.through_handle && shrinks {
                    // Committed by the handle's close or fsync (`SetAttr::through_handle`).
                    true => Ok(()),
                    false => vfs.commit(ino, data, Invalidate::Later),
                }
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

    /// Removes a file name; the file goes when nothing refers to it any more. The last
    /// name of a file this mount has no handle on goes with the file's record, in the
    /// unlink's one transaction: the kernel's references alone do not keep it (`Vfs::
    /// ghosts` answers a GETATTR until the kernel forgets it; an OPEN, which only an
    /// `O_PATH` descriptor's reopen through /proc could still send, is ESTALE), so its
    /// FORGET commits nothing. A file open here stays recorded until its last release.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        let (inode, purged) = {
            // No first open reads the record between the check and the commit.
            let _gate = self.first_open.write().unwrap_or_else(|p| p.into_inner());
            self.meta
                .unlink_purging(parent, name, |inode| self.let_go(inode))?
        };
        match purged {
            true => {
                if let Some(m) = &inode.manifest {
                    // After the journal's next flush, which persists first.
                    self.delete_segments(m);
                }
            }
            false => self.reap(inode.ino),
        }
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

    /// The attributes of entries `(name, ino)` of directory `parent` listed a moment
    /// ago (READDIRPLUS), open files' with their live size and times; `None` for an
    /// entry gone or renamed meanwhile. Takes no reference: `referenced_all` does, for
    /// the entries that reach the kernel.
    pub fn listed(
        &self,
        parent: u64,
        entries: &[(&[u8], u64)],
    ) -> Result<Vec<Option<Inode>>, FsError> {
        Ok(self
            .meta
            .listed(parent, entries)?
            .into_iter()
            .map(|i| i.map(|i| self.live(i)))
            .collect())
    }

    /// One more reference of the kernel on each of `inos` (entries READDIRPLUS gave it,
    /// `.` and `..` excepted: the kernel takes none for those), released by `forget`.
    pub fn referenced_all(&self, inos: &[u64]) {
        let mut lookups = super::lock(&self.lookups);
        for &ino in inos {
            *lookups.entry(ino).or_default() += 1;
        }
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
        let inode = self.meta.get_head(ino)?;
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
}
