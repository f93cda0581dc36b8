//! Holes and reserved space: which stripes are data, `SEEK_DATA`/`SEEK_HOLE`, the bytes
//! a file takes, and fallocate's reserve and punch.

use std::ops::Range;

use super::FileData;
use crate::fs::FsError;

impl FileData {
    /// Is stripe `j` data rather than a hole: stored, reserved, or holding written
    /// bytes here? Holes read as zeros and take no space.
    pub(super) fn is_data(&self, j: u64) -> bool {
        !self.manifest.is_hole(j)
            || self.manifest.is_reserved(j)
            || self.dirty.contains_key(&j)
            || self.uploads.contains_key(&j)
            || (j == 0 && self.manifest.inline.as_ref().is_some_and(|b| !b.is_empty()))
    }

    /// The first stripe at or after `j` that is data, if any.
    pub(super) fn next_data_stripe(&self, j: u64) -> Option<u64> {
        let stored = self.manifest.records_in(j..u64::MAX).next().map(|(s, _)| s);
        let reserved = self
            .manifest
            .reserved
            .overlapping(&(j..u64::MAX))
            .next()
            .map(|r| r.start.max(j));
        let dirty = self.dirty.range(j..).next().map(|(s, _)| *s);
        let uploading = self.uploads.range(j..).next().map(|(s, _)| *s);
        let inline = (j == 0 && self.is_data(0)).then_some(0);
        [stored, reserved, dirty, uploading, inline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The maximal runs of hole stripes in `range` (walking only its data stripes, so
    /// a range of any length costs what was written in it).
    pub(super) fn hole_runs(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut j = range.start;
        while j < range.end {
            match self.next_data_stripe(j) {
                Some(d) if d < range.end => {
                    if d > j {
                        out.push(j..d);
                    }
                    j = d;
                    while j < range.end && self.is_data(j) {
                        j += 1;
                    }
                }
                _ => {
                    out.push(j..range.end);
                    break;
                }
            }
        }
        out
    }

    /// `lseek(SEEK_DATA)` (`data`) or `lseek(SEEK_HOLE)` from `offset`, at the
    /// granularity of stripes (a stripe with any byte written is data). `None` is
    /// ENXIO: `offset` at or past the end, or no data after it.
    pub fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        let size = self.size();
        if offset >= size {
            return None;
        }
        let stripe = self.stripe_size();
        let j = offset / stripe;
        if data {
            let at = self.next_data_stripe(j)?.saturating_mul(stripe).max(offset);
            (at < size).then_some(at)
        } else {
            // Runs of data are as long as what was written: walk them.
            let mut h = j;
            while h.saturating_mul(stripe) < size && self.is_data(h) {
                h += 1;
            }
            Some(h.saturating_mul(stripe).max(offset).min(size))
        }
    }

    /// Bytes of the file that take space: stored, reserved, or written here and not yet
    /// stored (what `st_blocks` counts).
    pub fn allocated_bytes(&self) -> u64 {
        if let Some(bytes) = &self.manifest.inline {
            return bytes.len() as u64;
        }
        let pending: u64 = self
            .dirty
            .keys()
            .chain(self.uploads.keys())
            .filter(|j| self.manifest.is_hole(**j) && !self.manifest.is_reserved(**j))
            .map(|j| self.manifest.stripe_len(*j))
            .sum();
        self.manifest.allocated_bytes().saturating_add(pending)
    }

    /// `fallocate` without `FALLOC_FL_PUNCH_HOLE`: reserves room on the holders for
    /// every stripe of `offset..offset+len` that is a hole (all of them or none: a
    /// refusal leaves the file as it was), so later writes there cannot run out of
    /// space; unless `keep_size`, grows the file to cover the range. The reserved
    /// stripes read as zeros. Errors: ENOSPC or EDQUOT when the pool cannot hold it.
    pub async fn allocate(
        &mut self,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<(), FsError> {
        self.check_failed()?;
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > self.manifest.place.layout.max_written_size() {
            return Err(FsError::FileTooBig);
        }
        self.spill_inline();
        let stripe = self.stripe_size();
        let holes = self.hole_runs(offset / stripe..end.div_ceil(stripe));
        let mut done = Vec::new();
        for run in holes {
            if let Err(e) = self.client.reserve(&self.manifest, run.clone()).await {
                // All or nothing: free what this call reserved before the refusal.
                for run in done {
                    if let Err(e) = self.client.punch(&self.manifest, run).await {
                        log::warn!("cannot free a reservation: {e}");
                    }
                }
                return Err(e.into());
            }
            done.push(run);
        }
        for run in done {
            self.manifest.reserved.insert(run);
        }
        if !keep_size && end > self.size() {
            self.resize(end).await?;
        }
        self.touch();
        Ok(())
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE)`: bytes `offset..offset+len` (within the file)
    /// read as zeros from now on. Stripes wholly inside become holes (their slots are
    /// freed on the nodes after the commit); the parts of the stripes at either edge are
    /// overwritten with zeros.
    pub async fn punch(&mut self, offset: u64, len: u64) -> Result<(), FsError> {
        self.check_failed()?;
        let end = offset.saturating_add(len).min(self.size());
        if offset >= end {
            return Ok(());
        }
        let stripe = self.stripe_size();
        let mut pos = offset;
        while pos < end {
            let j = pos / stripe;
            let base = j * stripe;
            let stripe_end = (base + stripe).min(self.size());
            let upto = end.min(stripe_end);
            if pos == base && upto == stripe_end {
                // The whole stripe: it becomes a hole.
                if self.uploads.contains_key(&j) {
                    self.finish_upload(j).await;
                }
                self.dirty.remove(&j);
                self.take_patches(base..base + stripe);
                self.forget_cached(j);
                // Its slots are freed once the manifest without it is committed (its
                // slices once no extent names them).
                self.manifest.clear_stripe(j);
                self.manifest.drop_patches(j);
                self.manifest.reserved.remove(j..j + 1);
            } else if self.is_data(j) {
                let zeros = vec![0u8; (upto - pos) as usize];
                self.write(pos, &zeros).await?;
            }
            pos = upto;
        }
        self.check_failed()?;
        self.touch();
        Ok(())
    }
}
