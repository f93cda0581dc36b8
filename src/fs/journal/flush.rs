//! One flush of the journal: take what changed, store it as one log blob, write the
//! root that names it, then free what the change made free. A failure keeps the taken
//! delta for the next flush and loses nothing. (Snapshots are stored part by part
//! between flushes: `snapshot`.)

use std::time::Instant;

use super::root::{self, Root};
use super::{lock, Journal, PENDING_MAX};
use crate::client::Manifest;
use crate::fs::meta::Delta;
use crate::proto::encode_record;

/// Wait after a failed flush before the next try (unless a sync asks).
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Journal {
    /// One flush (see the module doc); records its outcome for `sync`.
    pub(super) fn flush_once(&self) {
        let (ordinal, frees, pending, base) = {
            let mut st = lock(&self.state);
            if st.fenced {
                return;
            }
            st.started += 1;
            st.urgent = false;
            (
                st.started,
                std::mem::take(&mut st.deferred),
                st.pending.take(),
                st.root.clone(),
            )
        };
        let outcome = self.store_and_root(&base, pending);
        let mut st = lock(&self.state);
        match outcome {
            Ok(next) => {
                st.root = next;
                st.last_ok = ordinal;
                st.last_root = Some(Instant::now());
                st.retry_at = None;
                drop(st);
                self.changed.notify_all();
                self.free(frees);
            }
            Err(Failed { why, kept }) => {
                if let Some(d) = kept {
                    match st.pending.as_mut() {
                        Some(p) => {
                            let later = std::mem::take(p);
                            *p = d;
                            p.merge(later);
                        }
                        None => st.pending = Some(d),
                    }
                }
                if st
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.weight() > PENDING_MAX)
                {
                    // The pool has been away long: rather than hold every change in
                    // memory, let a snapshot taken once it is back carry them. A
                    // snapshot begun before these changes would not: begin anew.
                    st.pending = None;
                    st.need_snapshot = true;
                    st.restart_snapshot = true;
                }
                let mut frees = frees;
                frees.append(&mut st.deferred);
                st.deferred = frees;
                st.last_failed = ordinal;
                st.retry_at = Some(Instant::now() + RETRY);
                if st.last_error.as_deref() != Some(why.as_str()) {
                    log::warn!("cannot store the namespace in the pool (will retry): {why}");
                }
                st.last_error = Some(why);
                drop(st);
                self.changed.notify_all();
            }
        }
    }

    /// Stores the changes taken now (with `pending`, a failed flush's) as one log blob
    /// and writes the root naming it; with nothing to store, writes the root alone (it
    /// renews the lease). Returns the root written.
    fn store_and_root(&self, base: &Root, pending: Option<Delta>) -> Result<Root, Failed> {
        let mut next = base.clone();
        let mut stored = None;
        let mut kept = pending;
        let taken = self.meta.take_delta().map_err(|e| Failed {
            why: e.to_string(),
            kept: kept.take(),
        })?;
        let delta = match (kept.take(), taken) {
            (Some(mut p), Some(t)) => {
                p.merge(t);
                Some(p)
            }
            (p, t) => p.or(t),
        };
        if let Err(why) = self.durable_first() {
            return Err(Failed { why, kept: delta });
        }
        if let Some(delta) = delta.filter(|d| !d.is_empty()) {
            let (m, len) = self.store_blob(&delta).map_err(|why| Failed {
                why,
                kept: Some(delta.clone()),
            })?;
            next.log.push(m.clone());
            next.log_bytes += len;
            stored = Some(m);
            kept = Some(delta);
        }
        next.seq += 1;
        next.store_id = self.store_id;
        next.lease = Some(self.lease());
        next.written_ms = root::now_ms();
        if let Err(why) = self.write_root(&next) {
            if let Some(m) = stored {
                // Named by no root: remove it now rather than leave it to nobody.
                let _ = self.cfg.rt.block_on(self.cfg.ns.delete(&m));
            }
            return Err(Failed { why, kept });
        }
        Ok(next)
    }

    /// Makes every change taken so far durable in the local store before the pool's
    /// copy records it, and before the segments this flush frees are deleted (they were
    /// deferred after the commits that removed their files): after a crash the local
    /// store never names a file whose segments are gone, nor is it older than the copy.
    pub(super) fn durable_first(&self) -> Result<(), String> {
        self.meta
            .persist()
            .map_err(|e| format!("cannot make the namespace durable on this disk: {e}"))
    }

    /// Stores one sealed, erasure-coded blob holding `delta`; returns its manifest and
    /// its length in bytes.
    pub(super) fn store_blob(&self, delta: &Delta) -> Result<(Manifest, u64), String> {
        let bytes = encode_record(delta).map_err(|e| e.to_string())?;
        let len = bytes.len() as u64;
        let m = self
            .cfg
            .rt
            .block_on(self.cfg.ns.put(&bytes[..], |_| {}))
            .map_err(|e| format!("cannot store a namespace blob: {e}"))?;
        Ok((m, len))
    }

    /// Writes `next` to every up node; at least `root::required_copies` must take it.
    /// Before it, a mount whose lease may have run out (it slept, or was cut off)
    /// checks that no other mount took the namespace meanwhile, and fences itself if
    /// one did.
    pub(super) fn write_root(&self, next: &Root) -> Result<(), String> {
        let lapsed = {
            let st = lock(&self.state);
            st.lease_until_ms <= root::now_ms() && st.last_root.is_some()
        };
        if lapsed {
            let found = self
                .cfg
                .rt
                .block_on(root::read_latest(&self.cfg.ns, &self.cfg.owner))
                .map_err(|e| e.to_string())?;
            if let Some(theirs) = found.root {
                let ours = lock(&self.state).root.seq;
                let other = theirs
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.instance != self.instance);
                if theirs.seq > ours || other {
                    lock(&self.state).fenced = true;
                    self.changed.notify_all();
                    log::error!(
                        "another mount (machine {}) took this namespace while this one's \
                         lease had run out: this mount stores no more changes; unmount it",
                        theirs.lease.map_or_else(|| "unknown".into(), |l| l.machine)
                    );
                    return Err("the namespace was taken by another mount".into());
                }
            }
        }
        let sealed = root::seal(&self.cfg.owner, next)?;
        let (stored, live) = self
            .cfg
            .rt
            .block_on(root::write_all(&self.cfg.ns, next, sealed))
            .map_err(|e| e.to_string())?;
        let need = root::required_copies(live);
        if stored < need || stored == 0 {
            return Err(format!(
                "the namespace root reached {stored} of {live} up nodes (at least {} needed)",
                need.max(1)
            ));
        }
        if let Some(l) = &next.lease {
            lock(&self.state).lease_until_ms = l.until_ms;
        }
        Ok(())
    }

    /// Deletes the segments of files whose removal a flush has recorded.
    pub(super) fn free(&self, files: Vec<Manifest>) {
        for m in files {
            if let Err(e) = self.cfg.rt.block_on(self.cfg.data.delete(&m)) {
                // The bytes stay until the sweep finds no live file names them.
                log::warn!("cannot free segments after a namespace flush: {e}");
            }
        }
    }
}

/// A flush that failed, with the delta it had taken (stored again by the next).
struct Failed {
    why: String,
    kept: Option<Delta>,
}
