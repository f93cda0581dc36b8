//! The segment store on disk: one file per (file id, segment index) under
//! `STORAGE/segments/`, with capacity accounting and strict id validation.
//!
//! A STORE's whole body is received before a byte is written, so a connection cut
//! mid-transfer leaves nothing behind; the write is then made durable (fdatasync)
//! before the node acknowledges it. A machine crash in the middle of a write can still
//! tear it, which is why every shard is checksummed by the client's manifest.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::proto::SegmentRef;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no space: {need} more bytes needed, {free} of {capacity} free")]
    NoSpace { need: u64, free: u64, capacity: u64 },
    #[error("invalid file id {0:?}")]
    BadId(String),
    #[error("segment {0} not found")]
    NotFound(String),
    #[error("range {offset}+{len} is beyond the end ({size}) of segment {segment}")]
    OutOfRange {
        segment: String,
        offset: u64,
        len: u32,
        size: u64,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Accepts only short ids made of letters, digits, '-' and '_': nothing that a path
/// could interpret ('/', '.', NUL) can reach the filesystem.
pub fn validate_file_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadId(id.chars().take(80).collect()))
    }
}

/// Segment files of this node and the bytes they use.
pub struct SegmentStore {
    root: PathBuf,
    capacity: u64,
    // Held only while sizes are checked and reserved, never across a data write.
    usage: Mutex<Usage>,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    bytes: u64,
    segments: u64,
}

impl SegmentStore {
    /// Opens (creating if needed) the store under `storage/segments` and measures it.
    pub fn open(storage: &Path, capacity: u64) -> Result<Self, StoreError> {
        let root = storage.join("segments");
        fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
        let mut usage = Usage::default();
        for dir in fs::read_dir(&root).map_err(io_err(format!("read {}", root.display())))? {
            let dir = dir.map_err(io_err("read segment dir"))?;
            if !dir.path().is_dir() {
                continue;
            }
            for seg in fs::read_dir(dir.path()).map_err(io_err("read segment dir"))? {
                let meta = seg
                    .and_then(|s| s.metadata())
                    .map_err(io_err("stat segment"))?;
                usage.bytes += meta.len();
                usage.segments += 1;
            }
        }
        Ok(SegmentStore {
            root,
            capacity,
            usage: Mutex::new(usage),
        })
    }

    /// Bytes the store may hold.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes in use and number of segment files.
    pub fn usage(&self) -> (u64, u64) {
        let u = *self.usage.lock().unwrap_or_else(|p| p.into_inner());
        (u.bytes, u.segments)
    }

    fn dir_of(&self, file: &str) -> Result<PathBuf, StoreError> {
        validate_file_id(file)?;
        Ok(self.root.join(file))
    }

    fn path_of(&self, seg: &SegmentRef) -> Result<PathBuf, StoreError> {
        Ok(self.dir_of(&seg.file)?.join(format!("{}.seg", seg.index)))
    }

    /// Writes `data` at `offset` of the segment, durably.
    pub fn store(&self, seg: &SegmentRef, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(seg)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| StoreError::BadId("offset overflows".into()))?;
        let file = {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(format!("open {}", path.display())))?;
            let len = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?
                .len();
            let need = end.saturating_sub(len);
            let free = self.capacity.saturating_sub(usage.bytes);
            if need > free {
                if len == 0 {
                    // Do not leave an empty segment file behind for a refused store.
                    let _ = fs::remove_file(&path);
                }
                return Err(StoreError::NoSpace {
                    need,
                    free,
                    capacity: self.capacity,
                });
            }
            if need > 0 {
                // Reserve the space now so concurrent stores cannot overcommit.
                file.set_len(end)
                    .map_err(io_err(format!("extend {}", path.display())))?;
            }
            if len == 0 {
                usage.segments += 1;
            }
            usage.bytes += need;
            file
        };
        file.write_all_at(data, offset)
            .map_err(io_err(format!("write {}", path.display())))?;
        file.sync_data()
            .map_err(io_err(format!("sync {}", path.display())))?;
        Ok(())
    }

    /// Reads `len` bytes at `offset` of the segment; a range past its end is an error,
    /// never a short answer.
    pub fn fwd(&self, seg: &SegmentRef, offset: u64, len: u32) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(seg)?;
        let name = format!("{}/{}", seg.file, seg.index);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name))
            }
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        let size = file.metadata().map_err(io_err("stat segment"))?.len();
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|end| end > size)
        {
            return Err(StoreError::OutOfRange {
                segment: name,
                offset,
                len,
                size,
            });
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(io_err(format!("read {}", path.display())))?;
        Ok(buf)
    }

    /// Removes every segment of `file`; returns the bytes freed. Unknown files free 0.
    pub fn delete(&self, file: &str) -> Result<u64, StoreError> {
        let dir = self.dir_of(file)?;
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
        };
        let mut freed = 0;
        for entry in entries {
            let entry = entry.map_err(io_err("read segment dir"))?;
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path())
                .map_err(io_err(format!("remove {}", entry.path().display())))?;
            freed += len;
            usage.bytes = usage.bytes.saturating_sub(len);
            usage.segments = usage.segments.saturating_sub(1);
        }
        fs::remove_dir(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(file: &str, index: u32) -> SegmentRef {
        SegmentRef {
            file: file.into(),
            index,
        }
    }

    #[test]
    fn store_fwd_delete_and_accounting() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1000).unwrap();
        store.store(&seg("f1", 0), 0, b"hello").unwrap();
        store.store(&seg("f1", 0), 5, b" world").unwrap();
        store.store(&seg("f1", 0), 0, b"J").unwrap();
        assert_eq!(store.fwd(&seg("f1", 0), 0, 11).unwrap(), b"Jello world");
        assert_eq!(store.usage(), (11, 1));
        assert!(matches!(
            store.fwd(&seg("f1", 0), 5, 7),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(matches!(
            store.fwd(&seg("f2", 0), 0, 1),
            Err(StoreError::NotFound(_))
        ));
        // Reopening measures the same usage.
        let again = SegmentStore::open(dir.path(), 1000).unwrap();
        assert_eq!(again.usage(), (11, 1));
        assert_eq!(store.delete("f1").unwrap(), 11);
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(store.delete("f1").unwrap(), 0);
    }

    #[test]
    fn capacity_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 10).unwrap();
        store.store(&seg("a", 0), 0, &[1; 8]).unwrap();
        assert!(matches!(
            store.store(&seg("a", 1), 0, &[1; 3]),
            Err(StoreError::NoSpace {
                need: 3,
                free: 2,
                ..
            })
        ));
        // Rewriting in place needs no new space.
        store.store(&seg("a", 0), 0, &[2; 8]).unwrap();
        assert_eq!(store.usage(), (8, 1));
    }

    #[test]
    fn traversal_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(&dir.path().join("s"), 100).unwrap();
        for bad in ["../x", "..", "a/b", "", "x\0", &"a".repeat(65)] {
            assert!(
                matches!(
                    store.store(&seg(bad, 0), 0, b"x"),
                    Err(StoreError::BadId(_))
                ),
                "{bad:?}"
            );
            assert!(matches!(
                store.fwd(&seg(bad, 0), 0, 1),
                Err(StoreError::BadId(_))
            ));
            assert!(matches!(store.delete(bad), Err(StoreError::BadId(_))));
        }
        assert!(!dir.path().join("x").exists());
    }
}
