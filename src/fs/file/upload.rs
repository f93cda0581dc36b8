//! Uploads and their outcome: stripes stored in the background (a bounded number in
//! flight, copy-on-write slots), the flush that waits for them, the roll-back of a
//! failed one, and the slots a commit frees.

use std::sync::Arc;

use rangemap::RangeSet;

use super::{FileData, Upload};
use crate::client::layout::LOG_SLOT;
use crate::client::{Manifest, StripeRecord};
use crate::fs::FsError;

impl FileData {
    /// Sends dirty stripe `j` to the pool, after any earlier upload of the same stripe
    /// (so the segment ends with the newest bytes), waiting while too many are in flight.
    pub(super) async fn start_upload(&mut self, j: u64) -> Result<(), FsError> {
        let Some(mut buf) = self.dirty.remove(&j) else {
            return Ok(());
        };
        if self.uploads.contains_key(&j) {
            self.finish_upload(j).await;
        }
        let len = self.manifest.stripe_len(j) as usize;
        if len == 0 {
            return Ok(()); // wholly past the end after a truncation
        }
        // A stripe of zeros is stored as a hole: nothing to send, nothing to keep, and
        // its old shards (if any) are freed once the manifest without them commits.
        if buf.iter().all(|&b| b == 0) {
            self.manifest.clear_stripe(j);
            self.manifest.drop_patches(j);
            return Ok(());
        }
        // Exactly the stripe's bytes: zeros where nothing was written.
        buf.resize(len, 0);
        let data = Arc::new(buf);
        let client = self.client.clone();
        let place = self.manifest.place.clone();
        let bytes = data.clone();
        let slot = self.upload_slot(j);
        let task =
            tokio::spawn(async move { client.write_stripe(&place, (j, slot), &bytes).await });
        self.uploads.insert(j, Upload { data, task });
        while self.uploads.len() > self.max_uploads {
            if let Some(&oldest) = self.uploads.keys().next() {
                self.finish_upload(oldest).await;
            }
        }
        self.check_failed()
    }

    /// The slot stripe `j` is written into: the one its committed record does not use
    /// (copy-on-write), slot 0 for a stripe the committed file does not have.
    pub(super) fn upload_slot(&self, j: u64) -> u8 {
        if self.committed.place.file_id != self.manifest.place.file_id {
            return 0; // a placement begun since the commit: nothing of it is committed
        }
        match self.committed.stripes.get(&j) {
            Some(r) => 1 - r.slot.min(1),
            None => 0,
        }
    }

    pub(super) async fn finish_upload(&mut self, j: u64) {
        let Some(up) = self.uploads.remove(&j) else {
            return;
        };
        let result = match up.task.await {
            Ok(r) => r.map_err(FsError::from),
            Err(e) => Err(FsError::task("upload", e)),
        };
        match result {
            Ok(record) => {
                self.written.push((j, record.clone()));
                self.manifest.set_stripe(j, record);
                // Its bytes came with every patch of it (`dirty_stripe`), and no new
                // one is made while it is buffered or being stored.
                self.manifest.drop_patches(j);
            }
            Err(e) => {
                log::error!(
                    "cannot store stripe {j} of file {}: {e}",
                    self.manifest.place.file_id
                );
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
            }
        }
    }

    /// Stores every buffered stripe and waits for all acknowledgements. Afterwards the
    /// manifest describes exactly the stored bytes, or an error says they are not.
    pub async fn flush(&mut self) -> Result<(), FsError> {
        if self.keep_inline() {
            return Ok(());
        }
        self.compact().await?;
        self.write_slice().await?;
        let dirty: Vec<u64> = self.dirty.keys().copied().collect();
        for j in dirty {
            self.start_upload(j).await?;
        }
        let pending: Vec<u64> = self.uploads.keys().copied().collect();
        for j in pending {
            self.finish_upload(j).await;
        }
        // Slices no extent names any more are freed once this manifest is committed.
        self.manifest.log.prune();
        self.check_failed()
    }

    /// Waits for every upload in flight, recording what each stored.
    pub async fn settle(&mut self) {
        let pending: Vec<u64> = self.uploads.keys().copied().collect();
        for j in pending {
            self.finish_upload(j).await;
        }
    }

    /// After a failed flush: forgets every change since the last commit (the file is
    /// back to what was committed) and returns what the failed attempt left on the
    /// nodes: the manifest it had and the stripes it stored, for their slots to be
    /// freed. The failure stays, reported by every later flush and write of this file
    /// until it is closed.
    pub async fn roll_back(&mut self) -> (Manifest, Vec<(u64, StripeRecord)>) {
        self.settle().await;
        // Something the kernel may have cached is gone (not when a roll-back finds the
        // file as committed already, such as the next flush after a failed write).
        self.discarded |= self.changed || !self.written.is_empty() || !self.dirty.is_empty();
        self.dirty.clear();
        self.take_patches(0..u64::MAX);
        self.forget_all_cached();
        self.changed = false;
        self.touched = None;
        let abandoned = std::mem::replace(&mut self.manifest, self.committed.clone());
        (abandoned, std::mem::take(&mut self.written))
    }
}

/// The slots that `candidates` (stripe records, and slices: records of slot
/// `LOG_SLOT`, numbered by slice) and `reserved` (reserved stripes, slot 0) take on the
/// nodes and that `keep` does not use, as manifests of `keep`'s placement to punch (one
/// per slot, slices as the stripes of the last; empty ones left out): what can be
/// freed once `keep` is the committed manifest.
pub fn unused_slots(
    keep: &Manifest,
    candidates: &[(u64, StripeRecord)],
    reserved: &RangeSet<u64>,
) -> Vec<Manifest> {
    let used = |j: u64, slot: u8| match slot {
        // A slice number `keep` uses holds its slice (a number is reused only once
        // its slice is no longer committed: the same slot, written over).
        LOG_SLOT => keep.log.slices.contains_key(&j),
        _ => {
            keep.stripes.get(&j).is_some_and(|r| r.slot == slot)
                || (slot == 0 && keep.is_reserved(j))
        }
    };
    let mut by_slot = [
        Manifest::new(keep.place.clone()),
        Manifest::new(keep.place.clone()),
        Manifest::new(keep.place.clone()),
    ];
    for (j, record) in candidates {
        if !used(*j, record.slot) {
            let at = match record.slot {
                0 => 0,
                LOG_SLOT => 2,
                _ => 1,
            };
            by_slot[at].stripes.insert(*j, record.clone());
        }
    }
    let mut free = reserved.clone();
    for r in keep.reserved.iter() {
        free.remove(r.clone());
    }
    let kept: Vec<u64> = free
        .iter()
        .flat_map(|r| keep.records_in(r.clone()))
        .filter(|(_, rec)| rec.slot == 0)
        .map(|(j, _)| j)
        .collect();
    for j in kept {
        free.remove(j..j + 1);
    }
    // A reserved slot 0 of a stripe punched anyway needs no second punch.
    for j in by_slot[0].stripes.keys() {
        free.remove(*j..j + 1);
    }
    by_slot[0].reserved = free;
    by_slot
        .into_iter()
        .filter(|m| m.stores_anything() || !m.reserved.is_empty())
        .collect()
}
