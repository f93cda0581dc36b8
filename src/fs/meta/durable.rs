//! Group commit: every change commits without a disk flush (`Durability::None`); one
//! durable commit then carries every earlier change to disk, shared by all who wait for
//! it (closes and fsyncs of several files at once, the journal before it frees
//! segments, a background pass every `GROUP_COMMIT`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redb::Durability;

use super::{db_err, MetaStore};
use crate::fs::FsError;

/// The longest a committed change waits before it is on disk, unless a close, fsync or
/// journal flush makes it durable sooner: what a crash of the machine (or a kill -9 of
/// the mount) may lose, like ext4's default 5 s commit interval, only shorter.
pub const GROUP_COMMIT: Duration = Duration::from_millis(500);

/// How far the commits of one store are on disk. Commits are numbered in the order redb
/// runs them (one write transaction at a time), under the store's commit lock.
#[derive(Default)]
pub(super) struct Durable {
    /// Number of the last commit.
    committed: AtomicU64,
    /// Every commit numbered up to this one is on disk.
    synced: AtomicU64,
    /// One durable commit at a time: who waited here finds theirs done by it.
    flushing: Mutex<()>,
}

impl Durable {
    /// Numbers a commit just made (called under the commit lock); a durable one also
    /// carried every commit before it to disk.
    pub(super) fn committed(&self, durability: Durability) {
        let n = self.committed.fetch_add(1, Ordering::AcqRel) + 1;
        if matches!(durability, Durability::Immediate) {
            self.synced.fetch_max(n, Ordering::AcqRel);
        }
    }

    /// The right to make the next durable commit, if nobody is making one: a close
    /// that gets it commits its own change durably (one transaction, not two); one that
    /// does not commits without a flush and waits for the flush under way (`persist`).
    /// Taken before a write transaction begins, as `persist` does (one lock order).
    pub(super) fn try_lead(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        match self.flushing.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Is a commit not yet on disk?
    fn behind(&self, upto: u64) -> bool {
        self.synced.load(Ordering::Acquire) < upto
    }
}

impl MetaStore {
    /// Makes every change committed before this call durable: at once if a durable
    /// commit already carried it, else one durable commit (shared with every caller that
    /// waits meanwhile: a group commit). Costs one disk flush at most.
    ///
    /// Errors: `MetaIo`/`NoSpace` when the disk refuses the flush (the store is then
    /// reopened before its next operation, and the changes not yet durable are lost, as
    /// in a crash).
    pub fn persist(&self) -> Result<(), FsError> {
        let want = self.durable.committed.load(Ordering::Acquire);
        if !self.durable.behind(want) {
            return Ok(());
        }
        let _one = self
            .durable
            .flushing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.durable.behind(want) {
            return Ok(());
        }
        let r = self.with_db(|db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::Immediate);
            // An empty durable commit writes the header naming the last commit's tables
            // and flushes the file: every earlier commit's pages are already written.
            let _cut = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            txn.commit().map_err(db_err)?;
            self.durable.committed(Durability::Immediate);
            Ok(())
        });
        if r.is_err() {
            // Whatever the failure, commits that may not be on disk must not stay
            // visible (a close reports the failure and frees what its record names):
            // the store is reopened before its next operation, which drops them.
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// Are changes committed but not yet on disk?
    pub fn unsynced(&self) -> bool {
        self.durable
            .behind(self.durable.committed.load(Ordering::Acquire))
    }

    /// Starts the background group commit: every `GROUP_COMMIT`, the changes not yet
    /// durable are made so. The thread ends once the store is dropped.
    pub fn start_group_commit(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("meta-commit".into())
            .spawn(move || loop {
                std::thread::sleep(GROUP_COMMIT);
                let Some(meta) = weak.upgrade() else {
                    return;
                };
                if meta.unsynced() {
                    if let Err(e) = meta.persist() {
                        log::warn!("cannot make namespace changes durable: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            // Closes, fsyncs and journal flushes still make changes durable.
            log::warn!("cannot start the metadata group commit: {e}");
        }
    }
}

impl Drop for MetaStore {
    fn drop(&mut self) {
        if self.unsynced() {
            if let Err(e) = self.persist() {
                log::warn!("cannot make the last namespace changes durable: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Inode, Kind, ROOT};
    use super::*;

    fn file() -> Inode {
        Inode::new(Kind::File, 0o644, 0, 0)
    }

    #[test]
    fn persist_makes_unsynced_changes_durable_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("meta.redb"), 0, 0).unwrap();
        m.persist().unwrap();
        assert!(!m.unsynced());
        m.create(ROOT, b"a", file()).unwrap();
        assert!(m.unsynced(), "a create is not flushed by itself");
        m.persist().unwrap();
        assert!(!m.unsynced());
        let f = m.lookup(ROOT, b"a").unwrap();
        // A durable update carries itself and everything before it.
        m.create(ROOT, b"b", file()).unwrap();
        m.update(f.ino, true, |i| {
            i.size = 7;
            Ok(())
        })
        .unwrap();
        assert!(!m.unsynced());
    }

    #[test]
    fn group_commit_makes_changes_durable_within_its_period() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(MetaStore::open(&dir.path().join("meta.redb"), 0, 0).unwrap());
        m.start_group_commit();
        m.create(ROOT, b"a", file()).unwrap();
        let start = std::time::Instant::now();
        while m.unsynced() && start.elapsed() < GROUP_COMMIT * 20 {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !m.unsynced(),
            "still not durable after {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn concurrent_durable_updates_all_end_durable_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(MetaStore::open(&dir.path().join("meta.redb"), 0, 0).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..20u64 {
                        let f = m.create(ROOT, &[b'f', t, i as u8], file()).unwrap();
                        m.update(f.ino, true, |f| {
                            f.size = i;
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!m.unsynced());
        let path = dir.path().join("meta.redb");
        let Ok(m) = Arc::try_unwrap(m) else {
            panic!("the store has other owners");
        };
        drop(m);
        let m = MetaStore::open(&path, 0, 0).unwrap();
        assert_eq!(m.readdir(ROOT).unwrap().len(), 80);
        assert_eq!(m.lookup(ROOT, &[b'f', 3, 19]).unwrap().size, 19);
    }
}
