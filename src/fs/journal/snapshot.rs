//! Snapshots, stored part by part between the log's flushes, so that a namespace of
//! any size costs bounded memory and never holds up a flush.
//!
//! A snapshot is read from one cut (`MetaStore::snapshot_reader`) in parts of
//! `PART_BYTES`, each stored as a blob, paced at `SNAPSHOT_RATE`. The log goes on
//! meanwhile: deltas flushed after the cut are appended to the current root's log as
//! usual. Once every part is stored, one root write switches over: the first part is
//! the snapshot, the other parts begin the log, followed by the deltas cut after the
//! snapshot's cut; the old snapshot and the deltas before the cut are then deleted.
//! Applying that chain in order rebuilds the store: the parts give the store at the
//! cut, and each later delta carries the current values of every key changed since
//! the delta before it (a key changed before the cut and again after is in a later
//! delta; one changed only before it is in the parts). A snapshot that fails, or is
//! abandoned at unmount, leaves the old chain whole; its stored parts are deleted.

use std::time::{Duration, Instant};

use super::{fold, lock, Journal, MAX_LOG, MIN_LOG_BYTES};
use crate::client::{Holder, Manifest};
use crate::fs::meta::SnapshotReader;

/// Bytes of records per snapshot part: a part is built in memory, so this bounds the
/// memory a snapshot takes (about twice this, with its encoding), whatever the number
/// of files; at 8 MiB a million files take about 20 parts.
pub const PART_BYTES: usize = 8 << 20;
/// Pace of a snapshot in record bytes per second: a mount of a large namespace takes
/// a snapshot in the background without taking the disk and the network from the
/// user (8 MiB parts every half second). A leaving node's hand-off waits for the
/// snapshot, so then it goes unpaced.
pub const SNAPSHOT_RATE: u64 = 16 << 20;
/// How snapshots are cut and paced.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPace {
    /// Bytes of records per part (`PART_BYTES`).
    pub part_bytes: usize,
    /// Record bytes per second (`SNAPSHOT_RATE`).
    pub rate: u64,
}

impl Default for SnapshotPace {
    fn default() -> Self {
        SnapshotPace {
            part_bytes: PART_BYTES,
            rate: SNAPSHOT_RATE,
        }
    }
}

/// Wait after a failed snapshot part before the next try.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);

/// A snapshot under way (owned by the journal's thread; locked before `State` when
/// both are).
pub(super) struct SnapshotJob {
    reader: SnapshotReader,
    /// Parts stored so far, in order, with their bytes.
    parts: Vec<(Manifest, u64)>,
    /// The root's log length and bytes at the cut: the log entries from there on are
    /// deltas cut after the snapshot's, and stay in the log after it.
    log_at_cut: usize,
    log_bytes_at_cut: u64,
    /// Leaving nodes when the snapshot began: none of its parts is on them, so their
    /// root copies can go once it is in place.
    leaving: Vec<Holder>,
    /// No part before this (pacing).
    next_at: Instant,
}

impl Journal {
    /// Should the thread work on a snapshot now: one is under way or asked for (at
    /// mount, for a leaving node), or the log has grown past `MAX_LOG` deltas that
    /// cannot be folded, or outweighs the snapshot; not before the pace or a retry allows.
    pub(super) fn snapshot_due(&self) -> bool {
        let job = lock(&self.job);
        let st = lock(&self.state);
        if st.fenced {
            return false;
        }
        if let Some(job) = job.as_ref() {
            return st.restart_snapshot
                || st.hurry
                || !st.leaving.is_empty()
                || Instant::now() >= job.next_at;
        }
        if st.snapshot_retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let r = &st.root;
        let deltas = r.log.len().saturating_sub(st.snapshot_parts);
        // A log of `MAX_LOG` deltas is folded while its newest blobs are small enough
        // (`fold`); a snapshot waits until the log outweighs it.
        let unfoldable = deltas >= MAX_LOG && fold::foldable(&r.log, st.snapshot_parts).is_none();
        st.need_snapshot || unfoldable || r.log_bytes >= MIN_LOG_BYTES.max(r.snapshot_bytes)
    }

    /// One step of a snapshot: begin it (the cut), store its next part, or put it in
    /// place once every part is stored.
    pub(super) fn snapshot_step(&self) {
        let mut slot = lock(&self.job);
        if std::mem::take(&mut lock(&self.state).restart_snapshot) {
            if let Some(job) = slot.take() {
                self.abandon(job);
            }
        }
        if slot.is_none() {
            let reader = match self.meta.snapshot_reader() {
                Ok(r) => r,
                Err(e) => return self.snapshot_failed(format!("cannot read the store: {e}")),
            };
            let mut st = lock(&self.state);
            st.need_snapshot = false;
            *slot = Some(SnapshotJob {
                reader,
                parts: Vec::new(),
                log_at_cut: st.root.log.len(),
                log_bytes_at_cut: st.root.log_bytes,
                leaving: st.leaving.clone(),
                next_at: Instant::now(),
            });
        }
        let Some(job) = slot.as_mut() else {
            return;
        };
        let part = match job.reader.next_part(self.cfg.pace.part_bytes) {
            Ok(p) => p,
            Err(e) => {
                let job = slot.take();
                drop(slot);
                job.into_iter().for_each(|j| self.abandon(j));
                return self.snapshot_failed(format!("cannot read the store: {e}"));
            }
        };
        let Some(part) = part else {
            let job = slot.take();
            drop(slot);
            if let Some(job) = job {
                self.put_in_place(job);
            }
            return;
        };
        match self.store_blob(&part) {
            Ok((m, len)) => {
                job.parts.push((m, len));
                let mut st = lock(&self.state);
                st.snapshot_progress = Some(job.reader.progress());
                let unpaced = st.hurry || !st.leaving.is_empty();
                drop(st);
                let pause = Duration::from_secs_f64(
                    part.weight() as f64 / self.cfg.pace.rate.max(1) as f64,
                );
                job.next_at = Instant::now() + if unpaced { Duration::ZERO } else { pause };
            }
            Err(why) => {
                let job = slot.take();
                drop(slot);
                job.into_iter().for_each(|j| self.abandon(j));
                self.snapshot_failed(why);
            }
        }
    }

    /// Writes the root that names the finished snapshot, then deletes what it replaces.
    fn put_in_place(&self, job: SnapshotJob) {
        let (next, superseded) = {
            let st = lock(&self.state);
            let mut next = st.root.clone();
            let after_cut = next.log.split_off(job.log_at_cut.min(next.log.len()));
            let mut superseded: Vec<Manifest> = next.snapshot.take().into_iter().collect();
            superseded.append(&mut next.log);
            let mut parts = job.parts.iter().map(|(m, _)| m.clone());
            next.snapshot = parts.next();
            next.log = parts.chain(after_cut).collect();
            next.snapshot_bytes = job.parts.iter().map(|(_, len)| len).sum();
            next.log_bytes = st.root.log_bytes.saturating_sub(job.log_bytes_at_cut);
            next.seq += 1;
            next.store_id = self.store_id;
            next.lease = Some(self.lease());
            next.written_ms = super::root::now_ms();
            (next, superseded)
        };
        // The local store first (`durable_first`): the copy is never ahead of it.
        if let Err(why) = self.durable_first().and_then(|()| self.write_root(&next)) {
            self.abandon(job);
            return self.snapshot_failed(why);
        }
        let mut st = lock(&self.state);
        st.snapshot_progress = None;
        st.caught_up = true;
        st.hurry = false;
        st.snapshot_parts = job.parts.len().saturating_sub(1);
        st.root = next;
        st.last_root = Some(Instant::now());
        st.snapshot_retry_at = None;
        st.leaving
            .retain(|h| !job.leaving.iter().any(|l| l.node_id == h.node_id));
        st.cleared.extend(job.leaving.iter().map(|h| h.node_id));
        drop(st);
        log::debug!(
            "namespace snapshot in place: {} parts, {} B",
            job.parts.len(),
            job.parts.iter().map(|(_, len)| len).sum::<u64>()
        );
        for m in superseded {
            if let Err(e) = self.cfg.rt.block_on(self.cfg.ns.delete(&m)) {
                log::debug!("cannot remove an old namespace blob: {e}");
            }
        }
        for holder in job.leaving {
            if let Err(e) = self
                .cfg
                .rt
                .block_on(self.cfg.ns.delete_on(&holder, super::root::ROOT_FILE))
            {
                log::debug!("cannot remove the namespace root on a leaving node: {e}");
            }
        }
    }

    /// Deletes the parts of a snapshot that will not be put in place (no root names
    /// them; `tidy` would remove them later anyway).
    pub(super) fn abandon(&self, job: SnapshotJob) {
        for (m, _) in job.parts {
            if let Err(e) = self.cfg.rt.block_on(self.cfg.ns.delete(&m)) {
                log::debug!("cannot remove a part of an abandoned snapshot: {e}");
            }
        }
    }

    /// Abandons any snapshot under way (at unmount: the log carries every change).
    pub(super) fn abandon_snapshot(&self) {
        let job = lock(&self.job).take();
        if let Some(job) = job {
            lock(&self.state).snapshot_progress = None;
            self.abandon(job);
        }
    }

    fn snapshot_failed(&self, why: String) {
        let mut st = lock(&self.state);
        st.snapshot_progress = None;
        st.need_snapshot = true;
        st.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
        if st.last_error.as_deref() != Some(why.as_str()) {
            log::warn!("cannot store a snapshot of the namespace in the pool (will retry): {why}");
        }
        st.last_error = Some(why);
    }
}
