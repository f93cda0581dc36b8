//! What the namespace journal (`fs::journal`) copies into the pool: the keys each write
//! transaction changes, collected as it runs, and the `Delta` of their values taken at
//! one consistent cut (`snapshot` reads the whole store in parts); and applying them
//! to a store (the recovery of a namespace from the pool).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Instant;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{db_err, MetaStore, COUNTERS, DIRENTS, INODES};
use crate::fs::FsError;

/// Keys changed by committed transactions that the journal has not taken yet.
#[derive(Default, Debug)]
pub(super) struct Changed {
    inodes: BTreeSet<u64>,
    dirents: BTreeSet<(u64, Vec<u8>)>,
    /// When the set went from empty to not empty: how long a change has waited.
    since: Option<Instant>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.inodes.is_empty() && self.dirents.is_empty()
    }

    fn merge(&mut self, other: Changed) {
        if !other.is_empty() && self.since.is_none() {
            self.since = other.since.or_else(|| Some(Instant::now()));
        }
        self.inodes.extend(other.inodes);
        self.dirents.extend(other.dirents);
    }
}

thread_local! {
    /// The keys the write transaction running on this thread has changed so far. A
    /// write transaction runs its closure on the caller's thread from start to commit
    /// (`MetaStore::write_with`), so the helpers that change a table (`store`,
    /// `unstore`, `put_dirent`, `drop_dirent`) note each key here without every
    /// operation having to pass a collector around.
    static TOUCHED: RefCell<Changed> = RefCell::new(Changed::default());
}

/// Notes that inode `ino` was written or removed by the running transaction.
pub(super) fn touched_inode(ino: u64) {
    TOUCHED.with(|t| {
        t.borrow_mut().inodes.insert(ino);
    });
}

/// Notes that entry `name` of directory `parent` was added or removed.
pub(super) fn touched_dirent(parent: u64, name: &[u8]) {
    TOUCHED.with(|t| {
        t.borrow_mut().dirents.insert((parent, name.to_vec()));
    });
}

/// Forgets what an earlier transaction on this thread noted (one that failed before
/// it committed): called when a write transaction starts.
pub(super) fn begin_tracking() {
    TOUCHED.with(|t| *t.borrow_mut() = Changed::default());
}

/// What the transaction that just committed on this thread changed.
pub(super) fn end_tracking() -> Changed {
    TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// A directory entry's key: (directory's inode number, name).
pub type DirentKey = (u64, Vec<u8>);

/// The values of some keys of the store at one moment: a change set (`full == false`:
/// keys not listed are unchanged) or a whole store (`full == true`, a snapshot). A
/// value of `None` means the key is gone. Inode values are the stored records as they
/// are (tagged, see `record`), so a delta needs no decoding to be applied.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// The whole store: applying it first empties the store.
    pub full: bool,
    /// Inode number and its record, or `None` for an inode removed.
    pub inodes: Vec<(u64, Option<Vec<u8>>)>,
    /// (directory, name) and the inode it names, or `None` for an entry removed.
    pub dirents: Vec<(DirentKey, Option<u64>)>,
    /// Every counter of the store (the next inode number, the format).
    pub counters: Vec<(String, u64)>,
}

impl Delta {
    /// Does it change nothing?
    pub fn is_empty(&self) -> bool {
        !self.full && self.inodes.is_empty() && self.dirents.is_empty()
    }

    /// Bytes of records it carries (for deciding when to take a snapshot).
    pub fn weight(&self) -> usize {
        let inodes: usize = self
            .inodes
            .iter()
            .map(|(_, v)| 8 + v.as_ref().map_or(0, Vec::len))
            .sum();
        let dirents: usize = self.dirents.iter().map(|((_, n), _)| 16 + n.len()).sum();
        inodes + dirents
    }

    /// `later` on top of this one: a key in both takes `later`'s value.
    pub fn merge(&mut self, later: Delta) {
        if later.full {
            *self = later;
            return;
        }
        let mut inodes: std::collections::BTreeMap<u64, Option<Vec<u8>>> =
            std::mem::take(&mut self.inodes).into_iter().collect();
        inodes.extend(later.inodes);
        self.inodes = inodes.into_iter().collect();
        let mut dirents: std::collections::BTreeMap<(u64, Vec<u8>), Option<u64>> =
            std::mem::take(&mut self.dirents).into_iter().collect();
        dirents.extend(later.dirents);
        self.dirents = dirents.into_iter().collect();
        self.counters = later.counters;
    }
}

impl MetaStore {
    /// Starts collecting the keys every later transaction changes, for `take_delta`.
    /// Until this is called nothing is collected (a store without a journal keeps no
    /// growing set).
    pub fn track_changes(&self) {
        self.tracking
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Adds what a committed transaction changed to the set `take_delta` takes (called
    /// with the commit lock held, so a cut sees all of a transaction or none of it).
    pub(super) fn note_committed(&self, changed: Changed) {
        if changed.is_empty() || !self.tracking.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut set = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = changed;
        changed.since = Some(Instant::now());
        set.merge(changed);
    }

    /// How long the oldest change not yet taken by `take_delta` has waited; `None`
    /// when there is none.
    pub fn pending_since(&self) -> Option<Instant> {
        let set = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        match set.is_empty() {
            true => None,
            false => set.since,
        }
    }

    /// The current values of every key changed since the last call, read at one cut:
    /// exactly the transactions committed before it. `None` when nothing changed.
    ///
    /// Errors: `MetaIo`/`Meta` when the store cannot be read; the changed keys are
    /// kept for the next call.
    pub fn take_delta(&self) -> Result<Option<Delta>, FsError> {
        let (changed, txn) = self.cut()?;
        if changed.is_empty() {
            return Ok(None);
        }
        let read = (|| {
            let inodes = txn.open_table(INODES).map_err(db_err)?;
            let dirents = txn.open_table(DIRENTS).map_err(db_err)?;
            let mut delta = Delta::default();
            for &ino in &changed.inodes {
                let value = inodes.get(ino).map_err(db_err)?.map(|g| g.value().to_vec());
                delta.inodes.push((ino, value));
            }
            for (parent, name) in &changed.dirents {
                let value = dirents
                    .get((*parent, name.as_slice()))
                    .map_err(db_err)?
                    .map(|g| g.value());
                delta.dirents.push(((*parent, name.clone()), value));
            }
            delta.counters = read_counters(&txn)?;
            Ok(delta)
        })();
        match read {
            Ok(delta) => Ok(Some(delta)),
            Err(e) => {
                self.give_back(changed);
                Err(e)
            }
        }
    }

    /// Takes the changed keys and begins a read transaction under the commit lock, so
    /// the transaction sees exactly the commits whose keys were taken.
    ///
    /// Errors: the read transaction cannot begin (the keys are given back).
    fn cut(&self) -> Result<(Changed, redb::ReadTransaction), FsError> {
        let _cut = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let changed = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()));
        match self.begin_read() {
            Ok(txn) => Ok((changed, txn)),
            Err(e) => {
                self.give_back(changed);
                Err(e)
            }
        }
    }

    /// Puts taken keys back for the next cut (its read failed).
    fn give_back(&self, changed: Changed) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(changed);
    }

    /// Applies `deltas` in order in one durable transaction (a namespace recovered
    /// from the pool: its snapshot, then its log). Records are checked to decode
    /// before anything is written.
    ///
    /// Errors: `Meta` for a record that does not decode (nothing is written);
    /// `MetaIo`/`NoSpace` when the store cannot be written.
    pub fn apply(&self, deltas: &[Delta]) -> Result<(), FsError> {
        for d in deltas {
            for (_, v) in &d.inodes {
                if let Some(bytes) = v {
                    super::record::decode_inode(bytes)?;
                }
            }
        }
        self.write_with(redb::Durability::Immediate, |inodes, dirents, counters| {
            for d in deltas {
                if d.full {
                    inodes.retain(|_, _| false).map_err(db_err)?;
                    dirents.retain(|_, _| false).map_err(db_err)?;
                    super::scan::note_cleared();
                }
                // Records go in as they are; the orphan index, which the pool's copy
                // does not hold, is rebuilt from them as they arrive.
                for (ino, v) in &d.inodes {
                    match v {
                        Some(bytes) => {
                            inodes.insert(*ino, bytes.as_slice()).map_err(db_err)?;
                            super::scan::note_stored(&super::record::decode_inode(bytes)?);
                        }
                        None => {
                            inodes.remove(*ino).map_err(db_err)?;
                            super::scan::note_removed(*ino);
                        }
                    }
                }
                for ((parent, name), v) in &d.dirents {
                    match v {
                        Some(ino) => {
                            dirents
                                .insert((*parent, name.as_slice()), *ino)
                                .map_err(db_err)?;
                        }
                        None => {
                            dirents.remove((*parent, name.as_slice())).map_err(db_err)?;
                        }
                    }
                }
                for (name, value) in &d.counters {
                    counters.insert(name.as_str(), *value).map_err(db_err)?;
                }
            }
            Ok(())
        })
    }
}

pub(super) fn read_counters(txn: &redb::ReadTransaction) -> Result<Vec<(String, u64)>, FsError> {
    let counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let mut out = Vec::new();
    for item in counters.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        out.push((k.value().to_string(), v.value()));
    }
    Ok(out)
}

impl MetaStore {
    /// The seq of the root in the pool that held every change of this store, as the
    /// last clean unmount left it; `None` after any mount began (a crash, or a mount
    /// that kept no copy in the pool, may change the store past that root).
    ///
    /// Errors: `MetaIo`/`Meta` when the store cannot be read.
    pub fn synced_seq(&self) -> Result<Option<u64>, FsError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(super::JOURNAL) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let seq = table.get("synced_seq").map_err(db_err)?.map(|g| g.value());
        Ok(seq)
    }

    /// Records (or, with `None`, forgets) the root seq that holds every change of
    /// this store (`synced_seq`), durably. The table is not tracked: it is this copy's
    /// bookkeeping, not part of the namespace.
    ///
    /// Errors: `MetaIo`/`NoSpace` when the store cannot be written.
    pub fn set_synced_seq(&self, seq: Option<u64>) -> Result<(), FsError> {
        self.write_untracked(|txn| {
            let mut table = txn.open_table(super::JOURNAL).map_err(db_err)?;
            match seq {
                Some(s) => table.insert("synced_seq", s).map(|_| ()),
                None => table.remove("synced_seq").map(|_| ()),
            }
            .map_err(db_err)
        })
    }
}
