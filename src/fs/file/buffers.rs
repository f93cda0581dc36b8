//! Stripe buffers: writes and truncations collected in dirty stripes (and small files
//! kept inline) before they go to the pool.

use super::{put_at, FileData, INLINE_MAX};
use crate::client::Manifest;
use crate::fs::FsError;

impl FileData {
    /// Makes stripe `j` dirty, holding its current bytes unless the caller is about to
    /// overwrite all of it. A stripe buffer is only as long as the bytes put in it (the
    /// rest of the stripe reads as zeros), so a small file never fills a whole stripe.
    pub(super) async fn dirty_stripe(
        &mut self,
        j: u64,
        overwrite_all: bool,
    ) -> Result<&mut Vec<u8>, FsError> {
        if !self.dirty.contains_key(&j) {
            let mut buf = Vec::new();
            let base = j * self.stripe_size();
            if !overwrite_all {
                if let Some(up) = self.uploads.get(&j) {
                    buf.extend_from_slice(&up.data);
                } else if !self.manifest.is_hole(j) {
                    let data = self.pooled_stripe(j).await?;
                    data.copy_to(&mut buf, 0, data.len);
                    // With what was patched since it was stored: the buffer is the
                    // stripe's newest bytes, its extents go when it is stored whole.
                    let range = base..base + buf.len() as u64;
                    self.overlay(range, &mut buf).await?;
                }
            }
            // The buffer holds (or is about to overwrite) the stripe's patches.
            self.take_patches(base..base + self.stripe_size());
            self.forget_cached(j);
            self.dirty.insert(j, buf);
        }
        self.dirty
            .get_mut(&j)
            .ok_or_else(|| FsError::Meta("stripe buffer vanished".into()))
    }

    /// Does this file hold nothing yet (no bytes, nothing stored or reserved, nothing
    /// buffered)? Its placement may then still change at no cost: the caller places it
    /// again, before a write, if the pool changed since (`PoolClient::place_again`).
    pub fn holds_nothing(&self) -> bool {
        self.size() == 0
            && !self.manifest.stores_anything()
            && self.manifest.reserved.is_empty()
            && self.dirty.is_empty()
    }

    /// Takes `fresh` (a new placement, from `PoolClient::place_again`) as the placement
    /// of this file, which `holds_nothing`.
    pub fn replace_placement(&mut self, fresh: Manifest) {
        self.manifest = fresh;
        self.changed = true;
    }

    /// A small file's bytes kept in its record become its (dirty) first stripe again,
    /// for a change; the flush that follows decides where they go.
    pub(super) fn spill_inline(&mut self) {
        if let Some(bytes) = self.manifest.inline.take() {
            if !bytes.is_empty() {
                self.dirty.insert(0, bytes);
            }
            self.changed = true;
        }
    }

    /// At a flush: keeps a small file's bytes in its record rather than on the pool, if
    /// nothing of it is on the pool (a file that was stored stays stored).
    pub(super) fn keep_inline(&mut self) -> bool {
        let small = self.size() <= INLINE_MAX
            && self.uploads.is_empty()
            && self.failed.is_none()
            && !self.manifest.stores_anything()
            && self.dirty.keys().all(|&j| j == 0);
        if !small {
            return false;
        }
        if let Some(mut bytes) = self.dirty.remove(&0) {
            bytes.resize(self.size() as usize, 0);
            self.manifest.inline = Some(bytes);
        }
        self.manifest.inline.is_some()
    }

    /// Writes `data` at `offset`; full stripes start uploading at once.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.check_failed()?;
        self.spill_inline();
        let stripe_size = self.stripe_size();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooBig)?;
        if end > self.manifest.place.layout.max_written_size() {
            return Err(FsError::FileTooBig);
        }
        if end > self.size() {
            self.prepare_growth().await?;
        }
        let mut pos = offset;
        while pos < end {
            let j = pos / stripe_size;
            let base = j * stripe_size;
            let upto = end.min(base + stripe_size);
            let overwrite_all = pos == base && upto == base + stripe_size;
            let src = &data[(pos - offset) as usize..(upto - offset) as usize];
            if !overwrite_all && self.patchable(j, upto) {
                // A stored stripe is not fetched for a part of it: a patch.
                self.patch(j, pos, src).await?;
                pos = upto;
                continue;
            }
            let buf = self.dirty_stripe(j, overwrite_all).await?;
            put_at(buf, (pos - base) as usize, src, stripe_size as usize);
            if upto > self.manifest.size {
                self.manifest.size = upto;
            }
            if upto == base + stripe_size {
                self.start_upload(j).await?;
            }
            pos = upto;
        }
        self.touch();
        Ok(())
    }

    /// Before the size grows: the last stripe's shards were cut for its old, shorter
    /// length, so it must be rewritten with the new one.
    pub(super) async fn prepare_growth(&mut self) -> Result<(), FsError> {
        let tail = self.size() % self.stripe_size();
        if tail != 0 {
            self.dirty_stripe(self.size() / self.stripe_size(), false)
                .await?;
        }
        Ok(())
    }

    /// Truncates to zero onto `fresh`, a new placement on the pool as it is now
    /// (`PoolClient::new_file`, chosen by the caller before the data path): the old
    /// placement is deleted once the empty file is committed, or now if it was begun
    /// since the last commit. Errors: the failure of an earlier store of this file.
    pub async fn start_afresh(&mut self, fresh: Manifest) -> Result<(), FsError> {
        if !self.size_changes(0)? {
            return Ok(());
        }
        let pending: Vec<u64> = self.uploads.keys().copied().collect();
        for j in pending {
            self.finish_upload(j).await;
        }
        self.dirty.clear();
        self.take_patches(0..u64::MAX);
        let old = std::mem::replace(&mut self.manifest, fresh);
        // The committed placement is deleted once the new one is committed; one
        // begun since the commit was never committed and goes now.
        self.written.clear();
        if old.place.file_id != self.committed.place.file_id {
            if let Err(e) = self.client.delete(&old).await {
                log::warn!("cannot delete file {}: {e}", old.place.file_id);
            }
        }
        Ok(())
    }

    /// The start of every size change: an earlier failure is reported, a small file's
    /// bytes come out of its record, and the times move (a truncate sets mtime and
    /// ctime even when the size stays, as ext4 does). False if the size is already
    /// `new_size`.
    fn size_changes(&mut self, new_size: u64) -> Result<bool, FsError> {
        self.check_failed()?;
        self.spill_inline();
        let old_size = self.size();
        self.touch();
        if new_size == old_size {
            return Ok(false);
        }
        self.forget_all_cached();
        Ok(true)
    }

    /// Changes the size: shrinking forgets what lies beyond, growing leaves a hole that
    /// reads as zeros. The stripe holding the new end is rewritten so its shards match
    /// its new length. A file emptied here keeps its placement; the `Vfs` starts a
    /// truncation to zero on a fresh placement instead (`start_afresh`).
    pub async fn resize(&mut self, new_size: u64) -> Result<(), FsError> {
        if !self.size_changes(new_size)? {
            return Ok(());
        }
        let old_size = self.size();
        let stripe_size = self.stripe_size();
        if new_size < old_size {
            let keep = new_size.div_ceil(stripe_size);
            self.dirty.retain(|j, _| *j < keep);
            let tail = new_size % stripe_size;
            if tail != 0 {
                let j = new_size / stripe_size;
                let buf = self.dirty_stripe(j, false).await?;
                buf.truncate(tail as usize);
            }
            let pending: Vec<u64> = self
                .uploads
                .keys()
                .copied()
                .filter(|j| *j >= keep)
                .collect();
            for j in pending {
                self.finish_upload(j).await;
            }
            // What the shrink cuts off is freed on the nodes once it is committed
            // (slices no extent names any more at the next flush).
            self.take_patches(new_size..u64::MAX);
            self.manifest.size = new_size;
            self.manifest.trim_stripes();
        } else {
            self.prepare_growth().await?;
            self.manifest.size = new_size;
        }
        Ok(())
    }
}
