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

use super::super::handles::SegKey;
use super::super::space;
use super::error::{checked_end, io_err};
use super::paths::{owner_dir_name, validate_file_id};
use super::{SegmentStore, StoreError};
use crate::proto::{Identity, Reclaim, SegmentInfo, SegmentPage, SegmentRef};

/// Milliseconds from `then` to `now`; 0 when `then` lies ahead (a clock set back).
fn age_ms(now: SystemTime, then: SystemTime) -> u64 {
    now.duration_since(then)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// `keep` as sorted `start..end` ranges, checked: at most `MAX_KEEP_RANGES`
/// (`TooManyRanges`), none past `MAX_SEGMENT_END` (`BadRange`).
fn kept_ranges(seg: &SegmentRef, keep: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, StoreError> {
    if keep.len() > crate::proto::MAX_KEEP_RANGES {
        return Err(StoreError::TooManyRanges {
            segment: format!("{}/{}", seg.file, seg.index),
            count: keep.len(),
        });
    }
    let mut out = keep
        .iter()
        .map(|&(offset, len)| checked_end(seg, offset, len).map(|end| (offset, end)))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    Ok(out)
}

/// The `(offset, len)` runs of `0..size` outside the sorted `start..end` ranges `keep`.
fn gaps(keep: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(start, end) in keep {
        if start > at {
            out.push((at, start.min(size) - at.min(size)));
        }
        at = at.max(end);
    }
    if at < size {
        out.push((at, size - at));
    }
    out.retain(|&(_, len)| len > 0);
    out
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

    /// Removes `owner`'s segment `seg` (with `keep`: frees every byte of it outside
    /// those `(offset, len)` ranges) unless it was written (STORE, RESERVE, PUNCH) in
    /// the last `older_than_ms` milliseconds: `Deleted` or `Trimmed` with the bytes
    /// freed, `Young` with its age, or `Missing`. Checked and done under the usage
    /// lock, which every write takes (and marks the segment under) before writing.
    /// Errors: `BadId`; `BadRange` for more than `MAX_KEEP_RANGES` ranges or one past
    /// `MAX_SEGMENT_END`; `Io`.
    pub fn delete_segment(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        keep: &[(u64, u64)],
        older_than_ms: u64,
    ) -> Result<Reclaim, StoreError> {
        let path = self.path_of(owner, seg)?;
        let keep = kept_ranges(seg, keep)?;
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
        if !keep.is_empty() {
            // Still under the lock: no STORE can write between the age check and the
            // punches (it would have to take the lock, and mark the segment young).
            let Some(segfile) = self.cached_or_open(&SegKey::new(owner, seg), &path)? else {
                return Ok(Reclaim::Missing);
            };
            let file = segfile.file();
            let before = Self::allocated(file, &path)?;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            for (offset, len) in gaps(&keep, meta.len()) {
                space::fallocate(file, mode, offset, len)
                    .map_err(io_err(format!("punch {}", path.display())))?;
            }
            let freed = before.saturating_sub(Self::allocated(file, &path)?);
            usage.sub(owner, freed);
            return Ok(Reclaim::Trimmed { freed });
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
