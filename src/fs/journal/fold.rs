//! Folding the log: once the root names `MAX_LOG` deltas, the newest of them (up to
//! `FOLD_BYTES` of blobs) are read back, merged into one delta and stored as one blob
//! that takes their place in the root. A fold costs what the folded blobs weigh, not
//! what the namespace weighs, so a large namespace under steady changes is no longer
//! snapshotted whole every `MAX_LOG` flushes: a snapshot waits until the log outweighs
//! it (`Journal::snapshot_due`).

use super::{lock, Journal, MAX_LOG};
use crate::client::Manifest;
use crate::fs::meta::Delta;
use crate::proto::decode_record;

/// Most bytes of log blobs one fold reads and merges: what it holds in memory at once
/// (the blobs' records, decoded), the size of a snapshot part (`PART_BYTES`).
pub const FOLD_BYTES: u64 = 8 << 20;

/// Which log entries to fold: the newest run (after the snapshot's parts, `from`) whose
/// blobs weigh at most `FOLD_BYTES` together, if it has two entries or more. Returns
/// its first index; the run goes to the end of the log.
pub(super) fn foldable(log: &[Manifest], from: usize) -> Option<usize> {
    let mut weight = 0;
    let mut start = log.len();
    while start > from && weight + log[start - 1].size <= FOLD_BYTES {
        weight += log[start - 1].size;
        start -= 1;
    }
    (log.len() - start >= 2).then_some(start)
}

impl Journal {
    /// Is a fold due: no snapshot under way or asked for, the log holds `MAX_LOG`
    /// deltas, and at least two of the newest fit in `FOLD_BYTES`?
    pub(super) fn fold_due(&self) -> bool {
        let job = lock(&self.job);
        let st = lock(&self.state);
        if job.is_some() || st.fenced || st.need_snapshot {
            return false;
        }
        let deltas = st.root.log.len().saturating_sub(st.snapshot_parts);
        deltas >= MAX_LOG && foldable(&st.root.log, st.snapshot_parts).is_some()
    }

    /// Folds the newest log blobs into one (see the module doc): reads and merges
    /// them in order, stores the merged delta, writes the root that names it in their
    /// place, then deletes them. A failure changes nothing in the pool (the merged
    /// blob, if stored, is removed again) and is retried at the next fold.
    pub(super) fn fold_log(&self) {
        let (base, start) = {
            let st = lock(&self.state);
            match foldable(&st.root.log, st.snapshot_parts) {
                Some(start) => (st.root.clone(), start),
                None => return,
            }
        };
        let folded = &base.log[start..];
        let merged = match self.read_and_merge(folded) {
            Ok(d) => d,
            Err(why) => return self.fold_failed(why),
        };
        let (m, len) = match self.store_blob(&merged) {
            Ok(stored) => stored,
            Err(why) => return self.fold_failed(why),
        };
        drop(merged);
        let mut next = base.clone();
        next.log.truncate(start);
        next.log.push(m.clone());
        let weight: u64 = folded.iter().map(|b| b.size).sum();
        next.log_bytes = base.log_bytes.saturating_sub(weight) + len;
        next.seq += 1;
        next.store_id = self.store_id;
        next.lease = Some(self.lease());
        next.written_ms = super::root::now_ms();
        // Only this thread writes the root, so `base` is still the root in place.
        if let Err(why) = self.write_root(&next) {
            let _ = self.cfg.rt.block_on(self.cfg.ns.delete(&m));
            return self.fold_failed(why);
        }
        {
            let mut st = lock(&self.state);
            st.root = next;
            st.last_root = Some(std::time::Instant::now());
        }
        log::debug!(
            "namespace log: {} blobs ({weight} B) folded into one of {len} B",
            folded.len()
        );
        for old in folded {
            if let Err(e) = self.cfg.rt.block_on(self.cfg.ns.delete(old)) {
                log::debug!("cannot remove a folded namespace blob: {e}");
            }
        }
    }

    /// The deltas of `blobs`, read from the pool and merged oldest first.
    fn read_and_merge(&self, blobs: &[Manifest]) -> Result<Delta, String> {
        let mut merged = Delta::default();
        for m in blobs {
            let mut bytes = Vec::with_capacity(m.size as usize);
            self.cfg
                .rt
                .block_on(self.cfg.ns.get(m, &mut bytes, |_| {}))
                .map_err(|e| format!("cannot read a namespace blob to fold: {e}"))?;
            let delta: Delta = decode_record(&bytes)
                .map_err(|e| format!("a namespace blob does not decode: {e}"))?;
            merged.merge(delta);
        }
        Ok(merged)
    }

    /// A fold that failed: the log stays as it is, and a snapshot (which replaces the
    /// whole log, and is retried at its own pace) is asked for instead.
    fn fold_failed(&self, why: String) {
        let mut st = lock(&self.state);
        if st.last_error.as_deref() != Some(why.as_str()) {
            log::warn!("cannot fold the namespace's log in the pool (will retry): {why}");
        }
        st.last_error = Some(why);
        st.need_snapshot = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(size: u64) -> Manifest {
        let mut m = Manifest::new(crate::client::Placement {
            file_id: "blob".into(),
            layout: crate::client::Layout {
                k: 2,
                m: 1,
                shard_size: 1 << 20,
            },
            holders: Vec::new(),
        });
        m.size = size;
        m
    }

    #[test]
    fn the_newest_run_of_blobs_that_fits_is_folded() {
        let mb = 1 << 20;
        let log: Vec<Manifest> = [5 * mb, 3 * mb, 2 * mb, mb, 1000, 2000]
            .into_iter()
            .map(blob)
            .collect();
        // 2000 + 1000 + 1 MiB + 2 MiB + 3 MiB fit in 8 MiB; 5 MiB more does not.
        assert_eq!(foldable(&log, 0), Some(1));
        // The snapshot's parts are never folded.
        assert_eq!(foldable(&log, 3), Some(3));
        // One blob alone is not a fold.
        assert_eq!(foldable(&log, 5), None);
        let big: Vec<Manifest> = [7 * mb, 6 * mb, 5 * mb].into_iter().map(blob).collect();
        assert_eq!(foldable(&big, 0), None);
    }
}
