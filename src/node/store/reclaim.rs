//! What an owner's sweep asks of the store: LIST of its segments (paged, each with its
//! allocated bytes and age) and the conditional per-segment DELETE.
//!
//! A segment's age is the time since its file's mtime. Every STORE, RESERVE and PUNCH
//! sets that mtime under the usage lock (`touch`), before the lock is released and
//! before its bytes are written; the conditional DELETE checks the age under the same
//! lock. So a segment written after the owner listed it, or being written right now, is
//! never removed by a DELETE decided on that listing.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use super::super::space;
use super::error::io_err;
use super::paths::{owner_dir_name, validate_file_id};
use super::{SegmentStore, StoreError};
use crate::proto::{Identity, Reclaim, SegmentInfo, SegmentPage, SegmentRef};

/// Milliseconds from `then` to `now`; 0 when `then` lies ahead (a clock set back).
fn age_ms(now: SystemTime, then: SystemTime) -> u64 {
    now.duration_since(then)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The segment index a file name `INDEX.seg` stands for.
fn index_of(name: &str) -> Option<u32> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// Names of the entries of `dir`; a missing directory has none.
fn names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

impl SegmentStore {
    /// Marks `file` (a segment of `path`) as written now, so a sweep's conditional
    /// DELETE keeps it. Called under the usage lock by every STORE, RESERVE and PUNCH.
    /// A filesystem that refuses is reported, not fatal: the write itself still sets
    /// the mtime a moment later, and an owner's open files and manifests keep their
    /// segments whatever their age.
    pub(super) fn touch(file: &fs::File, path: &Path) {
        if let Err(e) = file.set_modified(SystemTime::now()) {
            log::warn!("cannot set the mtime of {}: {e}", path.display());
        }
    }

    /// Up to `limit` of `owner`'s segments that come after `after` in (file id, index)
    /// order (from the first when `None`), with their allocated bytes and age, and
    /// whether more follow. Segments removed while listing are left out. Errors:
    /// `BadId` for a cursor with an invalid file id, `Io` for a directory that cannot
    /// be read.
    pub fn list(
        &self,
        owner: &Identity,
        after: Option<&SegmentRef>,
        limit: usize,
    ) -> Result<SegmentPage, StoreError> {
        if let Some(after) = after {
            validate_file_id(&after.file)?;
        }
        let root = self.root.join(owner_dir_name(owner));
        let mut files: Vec<String> = names(&root)?
            .into_iter()
            .filter(|f| validate_file_id(f).is_ok())
            .filter(|f| after.is_none_or(|a| f.as_str() >= a.file.as_str()))
            .collect();
        files.sort();
        let now = SystemTime::now();
        let mut page = SegmentPage::default();
        for file in files {
            let dir = root.join(&file);
            let mut indices: Vec<u32> = names(&dir)?
                .iter()
                .filter_map(|n| index_of(n))
                .filter(|&i| after.is_none_or(|a| file != a.file || i > a.index))
                .collect();
            indices.sort_unstable();
            for index in indices {
                if page.segments.len() == limit {
                    page.more = true;
                    return Ok(page);
                }
                let path = dir.join(format!("{index}.seg"));
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
                };
                let modified = meta
                    .modified()
                    .map_err(io_err(format!("mtime of {}", path.display())))?;
                page.segments.push(SegmentInfo {
                    segment: SegmentRef {
                        file: file.clone(),
                        index,
                    },
                    allocated: space::allocated(&meta),
                    age_ms: age_ms(now, modified),
                });
            }
        }
        Ok(page)
    }

    /// Removes `owner`'s segment `seg` unless it was written (STORE, RESERVE, PUNCH) in
    /// the last `older_than_ms` milliseconds: `Deleted` with the bytes freed, `Young`
    /// with its age, or `Missing`. Checked and done under the usage lock, which every
    /// write takes (and marks the segment under) before writing. Errors: `BadId`, `Io`.
    pub fn delete_segment(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        older_than_ms: u64,
    ) -> Result<Reclaim, StoreError> {
        let path = self.path_of(owner, seg)?;
        let mut usage = self.usage_lock();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Reclaim::Missing),
            Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
        };
        let modified = meta
            .modified()
            .map_err(io_err(format!("mtime of {}", path.display())))?;
        let age = age_ms(SystemTime::now(), modified);
        if age < older_than_ms {
            return Ok(Reclaim::Young { age_ms: age });
        }
        let freed = space::allocated(&meta);
        fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
        // Under the usage lock, as DELETE does: no handle of the removed file stays
        // cached for a later STORE to write into.
        self.handles_lock()
            .forget(&super::super::handles::SegKey::new(owner, seg));
        usage.sub(owner, freed);
        usage.segments = usage.segments.saturating_sub(1);
        // The file's and the owner's directories go once empty; else this fails harmlessly.
        if let Some(file_dir) = path.parent() {
            if fs::remove_dir(file_dir).is_ok() {
                if let Some(owner_dir) = file_dir.parent() {
                    if fs::remove_dir(owner_dir).is_ok() {
                        usage.owner_emptied(owner);
                    }
                }
            }
        }
        Ok(Reclaim::Deleted { freed })
    }
}
