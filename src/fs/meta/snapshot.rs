//! A snapshot of the whole store read in parts of bounded size from one cut, so the
//! journal copies a namespace of any size into the pool without holding it in memory.
//!
//! The parts are `Delta`s: the first is `full` (applying it empties the store first),
//! the others add keys, so applying the parts in order rebuilds the store as it was at
//! the cut, whatever the parts' number. Inodes come first in key order, then entries;
//! every part carries the counters.

use redb::ReadableTableMetadata;

use super::changes::{read_counters, DirentKey};
use super::{db_err, Delta, MetaStore, DIRENTS, INODES};
use crate::fs::FsError;

/// Where the next part starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// Inodes after this number (all of them for `None`).
    Inodes(Option<u64>),
    /// Entries after this key (all of them for `None`).
    Dirents(Option<DirentKey>),
    /// Every key has been read.
    Done,
}

/// A snapshot being read: the cut (a read transaction, so later commits do not show)
/// and how far it has been read.
pub struct SnapshotReader {
    txn: redb::ReadTransaction,
    at: Position,
    parts: usize,
    /// Inodes and entries in the store at the cut (what `progress` counts against).
    total: u64,
    read: u64,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotReader({:?}, {} parts)", self.at, self.parts)
    }
}

impl MetaStore {
    /// Begins a snapshot: a read transaction taken under the commit lock, so it sees
    /// whole transactions. Unlike `take_delta` it takes none of the changed keys: the
    /// journal goes on storing deltas while the parts are stored, and the log kept
    /// after the snapshot is the deltas cut after this one.
    ///
    /// Errors: `MetaIo`/`Meta` when the store cannot be read.
    pub fn snapshot_reader(&self) -> Result<SnapshotReader, FsError> {
        let txn = {
            let _cut = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.begin_read()?
        };
        let total = {
            let inodes = txn.open_table(INODES).map_err(db_err)?;
            let dirents = txn.open_table(DIRENTS).map_err(db_err)?;
            inodes.len().map_err(db_err)? + dirents.len().map_err(db_err)?
        };
        Ok(SnapshotReader {
            txn,
            at: Position::Inodes(None),
            parts: 0,
            total,
            read: 0,
        })
    }

    /// The whole store at one cut, as one `Delta` (tests compare stores with it).
    ///
    /// Errors: `MetaIo`/`Meta` when the store cannot be read.
    pub fn dump(&self) -> Result<Delta, FsError> {
        let mut reader = self.snapshot_reader()?;
        let mut whole = Delta {
            full: true,
            ..Delta::default()
        };
        while let Some(part) = reader.next_part(usize::MAX)? {
            whole.inodes.extend(part.inodes);
            whole.dirents.extend(part.dirents);
            whole.counters = part.counters;
        }
        Ok(whole)
    }
}

impl SnapshotReader {
    /// The next part, of about `max_bytes` of records (`Delta::weight`; at least one
    /// record, so a record larger than that is a part of its own); `None` once every
    /// key has been read. The first part is `full`, even for an empty store.
    ///
    /// Errors: `Meta` when the store cannot be read at the cut (a store reopened after
    /// a failure ends its old transactions): begin a new snapshot.
    pub fn next_part(&mut self, max_bytes: usize) -> Result<Option<Delta>, FsError> {
        if self.at == Position::Done && self.parts > 0 {
            return Ok(None);
        }
        let mut part = Delta {
            full: self.parts == 0,
            ..Delta::default()
        };
        let mut weight = 0usize;
        if let Position::Inodes(after) = self.at {
            let inodes = self.txn.open_table(INODES).map_err(db_err)?;
            let range = match after {
                Some(ino) => inodes.range(ino.saturating_add(1)..),
                None => inodes.range(0..),
            }
            .map_err(db_err)?;
            self.at = Position::Dirents(None);
            for item in range {
                let (k, v) = item.map_err(db_err)?;
                let value = v.value().to_vec();
                weight += 8 + value.len();
                part.inodes.push((k.value(), Some(value)));
                if weight >= max_bytes {
                    self.at = Position::Inodes(Some(k.value()));
                    break;
                }
            }
        }
        if let Position::Dirents(after) = &self.at {
            let after = after.clone();
            let dirents = self.txn.open_table(DIRENTS).map_err(db_err)?;
            let range = match &after {
                Some((parent, name)) => dirents.range((*parent, name.as_slice())..),
                None => dirents.range((0u64, &[][..])..),
            }
            .map_err(db_err)?;
            self.at = Position::Done;
            for item in range {
                let (k, v) = item.map_err(db_err)?;
                let (parent, name) = k.value();
                if after
                    .as_ref()
                    .is_some_and(|(p, n)| (*p, n.as_slice()) == (parent, name))
                {
                    continue;
                }
                weight += 16 + name.len();
                part.dirents
                    .push(((parent, name.to_vec()), Some(v.value())));
                if weight >= max_bytes {
                    self.at = Position::Dirents(Some((parent, name.to_vec())));
                    break;
                }
            }
        }
        if !part.full && part.inodes.is_empty() && part.dirents.is_empty() {
            // The last part ended exactly at the last key.
            return Ok(None);
        }
        part.counters = read_counters(&self.txn)?;
        self.parts += 1;
        self.read += (part.inodes.len() + part.dirents.len()) as u64;
        Ok(Some(part))
    }

    /// Parts read so far.
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Keys read so far and keys at the cut, for progress in `status`.
    pub fn progress(&self) -> (u64, u64) {
        (self.read, self.total)
    }
}
