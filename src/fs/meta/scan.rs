//! Walks over the whole store that stay bounded in memory at any file count: files in
//! pages of inode numbers (one short read transaction per page), the index of inodes
//! kept without links (`orphans`, so a mount does not scan every inode to find them),
//! and the set of inodes written lately (what an incremental repair pass looks at).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, TableDefinition};

use super::{db_err, record, Inode, Kind, MetaStore};
use crate::fs::FsError;

/// Inodes that have no links but are kept (unlinked while open), by inode number: an
/// index derived from `inodes`, kept in the same transactions (`apply_notes`), never
/// copied to the pool (a recovered store rebuilds it as its records arrive, `apply`).
pub(super) const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");

/// Inode records read per page of a walk (`files_page`, `each_file`): one read
/// transaction holds at most this many decoded records, some 256 × a few KiB.
pub const PAGE: usize = 256;

/// Most inode numbers the written set (`take_written`) holds before it gives up naming
/// them and says "everything" instead: 64 Ki × 8 B = 512 KiB at most.
pub const WRITTEN_MAX: usize = 64 * 1024;

/// What became of an inode in the running write transaction (the last change wins).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Stored with links: nothing for the index (an inode never regains links once it
    /// has none, and inode numbers are never reused).
    Linked,
    /// Stored without links: indexed.
    Orphan,
    /// Removed: its index entry, if any, goes too.
    Removed,
    /// Removed together with its last link (`unstore_linked`): it was never indexed,
    /// so the index is left alone.
    Vanished,
}

/// What the running write transaction did to the orphan index: each inode stored or
/// removed, and whether the whole index is to be emptied first (a full snapshot
/// applied).
#[derive(Default)]
struct Notes {
    clear: bool,
    fate: BTreeMap<u64, Fate>,
}

thread_local! {
    /// Notes of the write transaction running on this thread, as `changes::TOUCHED`:
    /// the transaction's closure runs on the caller's thread from start to commit.
    static NOTES: RefCell<Notes> = RefCell::new(Notes::default());
}

/// Forgets the notes of an earlier transaction on this thread that did not commit.
pub(super) fn begin_notes() {
    NOTES.with(|n| *n.borrow_mut() = Notes::default());
}

/// Notes that `inode` was stored by the running transaction.
pub(super) fn note_stored(inode: &Inode) {
    NOTES.with(|n| {
        let fate = match inode.nlink {
            0 => Fate::Orphan,
            _ => Fate::Linked,
        };
        n.borrow_mut().fate.insert(inode.ino, fate);
    });
}

/// Notes that inode `ino` was removed by the running transaction.
pub(super) fn note_removed(ino: u64) {
    NOTES.with(|n| {
        n.borrow_mut().fate.insert(ino, Fate::Removed);
    });
}

/// Notes that inode `ino`, which had links when the running transaction began, was
/// removed by it: nothing to take out of the index, unless this transaction indexed it.
pub(super) fn note_vanished(ino: u64) {
    NOTES.with(|n| {
        let mut n = n.borrow_mut();
        let fate = match n.fate.get(&ino) {
            Some(Fate::Orphan | Fate::Removed) => Fate::Removed,
            _ => Fate::Vanished,
        };
        n.fate.insert(ino, fate);
    });
}

/// Notes that the running transaction emptied the inodes table.
pub(super) fn note_cleared() {
    NOTES.with(|n| {
        let mut n = n.borrow_mut();
        n.clear = true;
        n.fate.clear();
    });
}

/// Brings the orphan index in line with the running transaction's notes (just before
/// it commits, so both change together or not at all); returns the inodes it stored
/// or removed.
pub(super) fn apply_notes(txn: &redb::WriteTransaction) -> Result<Vec<u64>, FsError> {
    let notes = NOTES.with(|n| std::mem::take(&mut *n.borrow_mut()));
    // Most transactions (a create, a write's commit) leave the index alone: it is
    // opened only when an inode lost its last link or went.
    if notes.clear
        || notes
            .fate
            .values()
            .any(|&f| matches!(f, Fate::Orphan | Fate::Removed))
    {
        let mut index = txn.open_table(ORPHANS).map_err(db_err)?;
        if notes.clear {
            index.retain(|_, _| false).map_err(db_err)?;
        }
        for (&ino, &fate) in &notes.fate {
            match fate {
                Fate::Linked | Fate::Vanished => {}
                Fate::Orphan => {
                    index.insert(ino, ()).map_err(db_err)?;
                }
                Fate::Removed => {
                    index.remove(ino).map_err(db_err)?;
                }
            }
        }
    }
    Ok(notes.fate.into_keys().collect())
}

/// Rebuilds the orphan index from every inode record (migrating a store of format 5,
/// made before the index): one pass, in the caller's transaction.
pub(super) fn index_orphans(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<usize, FsError> {
    note_cleared();
    let mut n = 0;
    for item in inodes.iter().map_err(db_err)? {
        let (_, v) = item.map_err(db_err)?;
        let inode = record::decode_inode(v.value())?;
        note_stored(&inode);
        n += 1;
    }
    Ok(n)
}

/// Inodes written since the repair last asked (`MetaStore::take_written`).
#[derive(Debug, Default)]
pub(super) struct Written {
    watching: bool,
    inodes: BTreeSet<u64>,
    overflow: bool,
}

/// What was written since the last `take_written`.
#[derive(Debug, PartialEq, Eq)]
pub enum WrittenSince {
    /// These inodes (stored or removed), and no other.
    Inodes(BTreeSet<u64>),
    /// More than `WRITTEN_MAX` inodes, or writes from before the first call: anything
    /// may have changed.
    Anything,
}

impl MetaStore {
    /// Regular files that have data in the pool, among the inode records numbered
    /// `from` and up: at most `limit` records are read, in one read transaction. Returns
    /// those files and the number the next page starts at (`None`: the walk is over).
    ///
    /// Errors: `Meta`/`MetaIo` when the store cannot be read or a record decoded.
    pub fn files_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Inode>, Option<u64>), FsError> {
        self.read(|inodes, _| {
            let mut out = Vec::new();
            let mut next = None;
            for (read, item) in inodes.range(from..).map_err(db_err)?.enumerate() {
                let (k, v) = item.map_err(db_err)?;
                if read == limit.max(1) {
                    next = Some(k.value());
                    break;
                }
                let inode = record::decode_inode(v.value())?;
                if inode.kind == Kind::File && inode.manifest.is_some() {
                    out.push(inode);
                }
            }
            Ok((out, next))
        })
    }

    /// Calls `f` with every regular file that has data in the pool, in inode order,
    /// `PAGE` records per read transaction (none is held while `f` runs), so memory
    /// stays bounded at any file count. A file created or removed during the walk may
    /// or may not be seen. Stops at the first error, `f`'s or the store's.
    pub fn each_file(
        &self,
        mut f: impl FnMut(Inode) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let mut from = Some(0);
        while let Some(start) = from {
            let (files, next) = self.files_page(start, PAGE)?;
            for inode in files {
                f(inode)?;
            }
            from = next;
        }
        Ok(())
    }

    /// Every regular file that has data in the pool, gathered in memory: for tests and
    /// small stores only (`each_file` walks without holding them all).
    pub fn files(&self) -> Result<Vec<Inode>, FsError> {
        let mut out = Vec::new();
        self.each_file(|inode| {
            out.push(inode);
            Ok(())
        })?;
        Ok(out)
    }

    /// Inodes with no links (unlinked while open when the mount stopped), from their
    /// index: the time taken grows with their number, not with the store's.
    ///
    /// Errors: `Meta`/`MetaIo` when the store cannot be read.
    pub fn orphans(&self) -> Result<Vec<Inode>, FsError> {
        let txn = self.begin_read()?;
        let index = match txn.open_table(ORPHANS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return self.noted(Err(db_err(e))),
        };
        let inodes = txn.open_table(super::INODES).map_err(db_err)?;
        let mut out = Vec::new();
        for item in index.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            match super::load(&inodes, k.value()) {
                Ok(inode) if inode.nlink == 0 => out.push(inode),
                // An index entry is removed with its inode in one transaction: a
                // missing or linked inode here would be a bug, not a reason to fail.
                Ok(_) | Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Starts collecting the inodes every later write changes, for `take_written`
    /// (until then none are kept: a store without an incremental repair grows no set).
    pub fn watch_writes(&self) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if !w.watching {
            w.watching = true;
            w.overflow = true; // what was written before is not known
        }
    }

    /// The inodes written (stored or removed) since the last call, or `Anything` when
    /// they were too many to name or the first call comes before `watch_writes`.
    pub fn take_written(&self) -> WrittenSince {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if !w.watching || w.overflow {
            w.overflow = false;
            w.inodes.clear();
            return WrittenSince::Anything;
        }
        WrittenSince::Inodes(std::mem::take(&mut w.inodes))
    }

    /// Adds the inodes a committed transaction stored or removed to the written set.
    pub(super) fn note_written(&self, inodes: Vec<u64>) {
        if inodes.is_empty() {
            return;
        }
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if !w.watching || w.overflow {
            return;
        }
        w.inodes.extend(inodes);
        if w.inodes.len() > WRITTEN_MAX {
            w.inodes.clear();
            w.overflow = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::meta::{Delta, ROOT};
    use redb::{Database, ReadableTableMetadata};

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = MetaStore::open(&dir.path().join("meta.redb"), 0, 0).expect("open");
        (dir, m)
    }

    fn file() -> Inode {
        Inode::new(Kind::File, 0o644, 0, 0)
    }

    /// A file with data in the pool, as `files_page` counts them.
    fn stored_file() -> Inode {
        use crate::client::{Layout, Manifest, Placement};
        let mut f = file();
        f.manifest = Some(Manifest::new(Placement {
            file_id: "f".into(),
            layout: Layout {
                k: 2,
                m: 1,
                shard_size: 4096,
            },
            holders: Vec::new(),
        }));
        f
    }

    fn orphan_inos(m: &MetaStore) -> Vec<u64> {
        m.orphans()
            .expect("orphans")
            .iter()
            .map(|i| i.ino)
            .collect()
    }

    #[test]
    fn a_walk_in_pages_sees_every_stored_file_once_and_nothing_else() {
        let (_d, m) = store();
        let mut want = Vec::new();
        for i in 0..(2 * PAGE + 7) {
            let name = format!("f{i}");
            let inode = match i % 3 {
                0 => file(), // empty: no data in the pool
                _ => stored_file(),
            };
            let made = m.create(ROOT, name.as_bytes(), inode).expect("create");
            if i % 3 != 0 {
                want.push(made.ino);
            }
        }
        m.create(ROOT, b"d", Inode::new(Kind::Dir, 0o755, 0, 0))
            .expect("mkdir");
        let mut seen = Vec::new();
        m.each_file(|inode| {
            seen.push(inode.ino);
            Ok(())
        })
        .expect("walk");
        assert_eq!(seen, want);
        // A page reads at most `limit` records and says where the next one starts.
        let (page, next) = m.files_page(0, 10).expect("page");
        assert!(page.len() <= 10);
        let next = next.expect("more pages");
        let (rest, _) = m.files_page(next, usize::MAX).expect("rest");
        assert_eq!(page.len() + rest.len(), want.len());
    }

    #[test]
    fn files_unlinked_while_kept_are_found_from_the_index_across_reopens_until_purged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.redb");
        let (a, b) = {
            let m = MetaStore::open(&path, 0, 0).expect("open");
            let a = m.create(ROOT, b"a", file()).expect("a");
            let b = m.create(ROOT, b"b", file()).expect("b");
            m.create(ROOT, b"c", file()).expect("c");
            m.unlink(ROOT, b"a").expect("unlink a");
            m.unlink(ROOT, b"b").expect("unlink b");
            (a.ino, b.ino)
        };
        let m = MetaStore::open(&path, 0, 0).expect("reopen");
        assert_eq!(orphan_inos(&m), vec![a, b]);
        m.purge(a).expect("purge");
        assert_eq!(orphan_inos(&m), vec![b]);
        // A failed transaction leaves the index as it was.
        let failed = m.update(b, false, |_| -> Result<(), FsError> {
            Err(FsError::Invalid)
        });
        assert!(failed.is_err());
        assert_eq!(orphan_inos(&m), vec![b]);
    }

    #[test]
    fn a_format_5_store_gets_its_orphans_indexed_when_opened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meta.redb");
        let kept = {
            let m = MetaStore::open(&path, 0, 0).expect("open");
            m.create(ROOT, b"linked", file()).expect("linked");
            let kept = m.create(ROOT, b"kept", file()).expect("kept");
            m.unlink(ROOT, b"kept").expect("unlink");
            kept.ino
        };
        {
            // What a format-5 poolfs left: no index.
            let db = Database::create(&path).expect("db");
            let txn = db.begin_write().expect("txn");
            txn.delete_table(ORPHANS).expect("drop index");
            txn.open_table(super::super::COUNTERS)
                .expect("counters")
                .insert("format", 5)
                .expect("format");
            txn.commit().expect("commit");
        }
        let m = MetaStore::open(&path, 0, 0).expect("migrate");
        assert_eq!(orphan_inos(&m), vec![kept]);
    }

    #[test]
    fn a_store_recovered_from_the_pool_indexes_its_orphans_from_the_records() {
        let (_d, from) = store();
        let kept = from.create(ROOT, b"kept", file()).expect("kept").ino;
        from.unlink(ROOT, b"kept").expect("unlink");
        let gone = from.create(ROOT, b"gone", file()).expect("gone").ino;
        from.unlink(ROOT, b"gone").expect("unlink");
        let snapshot = from.dump().expect("dump");
        // A later log entry removes one of them.
        let later = Delta {
            inodes: vec![(gone, None)],
            ..Delta::default()
        };
        let (_d2, to) = store();
        to.create(ROOT, b"old", file()).expect("old");
        to.unlink(ROOT, b"old")
            .expect("old orphan, replaced by the snapshot");
        to.apply(&[snapshot, later]).expect("apply");
        assert_eq!(orphan_inos(&to), vec![kept]);
        let txn = to.begin_read().expect("read");
        assert_eq!(
            txn.open_table(ORPHANS).expect("index").len().expect("len"),
            1
        );
    }

    #[test]
    fn the_written_set_names_what_changed_and_says_anything_when_it_cannot() {
        let (_d, m) = store();
        assert_eq!(m.take_written(), WrittenSince::Anything, "not watching yet");
        m.watch_writes();
        assert_eq!(m.take_written(), WrittenSince::Anything, "before the watch");
        let f = m.create(ROOT, b"f", file()).expect("create");
        m.update(f.ino, false, |i| {
            i.size = 1;
            Ok(())
        })
        .expect("update");
        let want: BTreeSet<u64> = [ROOT, f.ino].into();
        assert_eq!(m.take_written(), WrittenSince::Inodes(want));
        assert_eq!(m.take_written(), WrittenSince::Inodes(BTreeSet::new()));
        let mut w = m.written.lock().unwrap();
        w.inodes.extend((1 << 40)..(1 << 40) + WRITTEN_MAX as u64);
        drop(w);
        m.create(ROOT, b"g", file()).expect("create");
        let too_many = m.take_written();
        assert!(
            matches!(too_many, WrittenSince::Anything),
            "too many to name"
        );
    }
}
