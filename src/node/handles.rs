//! A bounded cache of open segment files, so a STORE skips the path walk and stores into
//! one segment share one group commit.
//!
//! Never holds a deleted file: handles are opened and cached only under the store's usage
//! lock, and DELETE forgets a file's handles under the same lock after removing it.

use std::collections::HashMap;
use std::sync::Arc;

use super::segfile::SegFile;
use crate::proto::{Identity, SegmentRef};

/// Open segment files kept per node by default.
pub const DEFAULT_OPEN_SEGMENTS: usize = 256;

/// One segment of one owner's file.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SegKey {
    owner: Identity,
    file: String,
    index: u32,
}

impl SegKey {
    pub fn new(owner: &Identity, seg: &SegmentRef) -> Self {
        SegKey {
            owner: *owner,
            file: seg.file.clone(),
            index: seg.index,
        }
    }
}

/// Least-recently-used open segment files, at most `cap`.
pub struct Handles {
    cap: usize,
    tick: u64,
    open: HashMap<SegKey, (Arc<SegFile>, u64)>,
}

impl Handles {
    pub fn new(cap: usize) -> Self {
        Handles {
            cap,
            tick: 0,
            open: HashMap::new(),
        }
    }

    /// The cached handle of `key`, now the most recently used.
    pub fn get(&mut self, key: &SegKey) -> Option<Arc<SegFile>> {
        self.tick += 1;
        let tick = self.tick;
        self.open.get_mut(key).map(|(seg, used)| {
            *used = tick;
            seg.clone()
        })
    }

    /// Caches `seg` as `key`'s handle, unless one already is (that one is returned:
    /// both are the same file, as nothing was removed in between), evicting the least
    /// recently used one when full.
    pub fn insert(&mut self, key: SegKey, seg: Arc<SegFile>) -> Arc<SegFile> {
        if let Some(cached) = self.get(&key) {
            return cached;
        }
        if self.cap == 0 {
            return seg;
        }
        if self.open.len() >= self.cap {
            // A linear scan: `cap` is small, and a miss costs an open() anyway.
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.open.remove(&oldest);
            }
        }
        self.open.insert(key, (seg.clone(), self.tick));
        seg
    }

    /// Drops every handle of `owner`'s `file` (after its segments were removed).
    pub fn forget_file(&mut self, owner: &Identity, file: &str) {
        self.open
            .retain(|k, _| !(k.owner == *owner && k.file == file));
    }

    /// Drops the handle of one segment (after it was removed).
    pub fn forget(&mut self, key: &SegKey) {
        self.open.remove(key);
    }

    /// Handles cached now.
    pub fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    const A: Identity = Identity([0xa; 16]);
    const B: Identity = Identity([0xb; 16]);

    fn key(owner: &Identity, file: &str, index: u32) -> SegKey {
        SegKey::new(
            owner,
            &SegmentRef {
                file: file.into(),
                index,
            },
        )
    }

    fn handle(dir: &tempfile::TempDir) -> Arc<SegFile> {
        Arc::new(SegFile::new(File::open(dir.path()).unwrap()))
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Handles::new(2);
        h.insert(key(&A, "f", 0), handle(&dir));
        h.insert(key(&A, "f", 1), handle(&dir));
        assert!(h.get(&key(&A, "f", 0)).is_some());
        h.insert(key(&A, "g", 0), handle(&dir));
        assert_eq!(h.len(), 2);
        assert!(h.get(&key(&A, "f", 1)).is_none(), "the oldest went");
        assert!(h.get(&key(&A, "f", 0)).is_some());
        assert!(h.get(&key(&A, "g", 0)).is_some());
    }

    #[test]
    fn forgetting_a_file_drops_only_its_handles() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Handles::new(8);
        h.insert(key(&A, "f", 0), handle(&dir));
        h.insert(key(&A, "f", 1), handle(&dir));
        h.insert(key(&B, "f", 0), handle(&dir));
        h.forget_file(&A, "f");
        assert_eq!(h.len(), 1);
        assert!(h.get(&key(&B, "f", 0)).is_some());
    }
}
