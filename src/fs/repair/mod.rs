//! Keeping files whole: per-file health, the repair passes' record (`user.poolfs.repair`)
//! and which holders repair gives up on; the pass itself (rebuild, re-encode, bring
//! home) is in `pass`, the scrub that verifies every shard in `scrub`.

use crate::util::count;
use std::time::{Duration, Instant};

use super::meta::Kind;
use super::vfs::Vfs;
use super::FsError;
use crate::client::{Holder, Pace};
use crate::proto::{NodeState, PoolView};

mod compact;
mod incremental;
mod pass;
mod scrub;

pub use compact::{COMPACT_BATCH, COMPACT_IDLE};
pub use incremental::{Repairer, RETRY_MAX, RETRY_WALK_EVERY, ROLLING_PAGE};
pub use pass::{reencode_gains, repair_pass, COMMIT_EVERY};
pub use scrub::{last_scrub, scrub_and_record, scrub_pass, ScrubReport};

/// Least pause between two stores of repair, so it leaves turns to users' requests.
pub const STRIPE_PAUSE: Duration = Duration::from_millis(5);

/// Repair's bandwidth budget: 32 MiB/s, about a quarter of a gigabit link, so a node
/// rebuilding a large file leaves most of its link and disk to users. A 1 GiB segment
/// takes some 32 s to rebuild at this rate.
pub const REPAIR_BYTES_PER_SEC: u64 = 32 << 20;

/// How repair paces its stores: `REPAIR_BYTES_PER_SEC`, at least `STRIPE_PAUSE` apart.
pub fn pace() -> Pace {
    Pace {
        bytes_per_sec: REPAIR_BYTES_PER_SEC,
        floor: STRIPE_PAUSE,
    }
}

/// One-line health of a file: how many of its segments sit on live nodes and whether
/// that is enough to read it (`getfattr -n user.poolfs.health FILE`).
pub fn health(vfs: &Vfs, ino: u64) -> Result<String, FsError> {
    let inode = vfs.meta().get(ino)?;
    if inode.kind != Kind::File {
        return Err(FsError::NoData);
    }
    let Some(m) = inode.manifest else {
        return Ok("empty: no data in the pool".into());
    };
    if m.inline.is_some() && !m.stores_anything() {
        return Ok("healthy: a small file kept in this mount's metadata".into());
    }
    let view = vfs.run(vfs.client().view())?;
    let layout = m.place.layout;
    let n = layout.segments() as usize;
    let up = |h: &Holder| view.is_up(h.node_id);
    let mut lost = Vec::new();
    for h in m.all_holders() {
        if !up(&h) {
            let state = view.node(h.node_id).map(|node| node.state);
            lost.push(format!(
                "node {} {}",
                h.node_id,
                state.map_or("unknown".into(), |s| s.to_string())
            ));
        }
    }
    // The weakest stored stripe decides: how many of its shards sit on live nodes
    // (moved ones where they were moved). A file with none stored yet is judged by
    // its holders, where its first write goes.
    let mut live = if m.stores_anything() {
        n
    } else {
        m.place.holders.iter().filter(|h| up(h)).count()
    };
    let mut away = 0;
    for (_, rec) in m.records() {
        away += rec.moved.len();
        live = live.min((0..n).filter(|&i| up(rec.holder(&m.place, i))).count());
    }
    let verdict = if live == n && away == 0 {
        "healthy"
    } else if live >= layout.k as usize {
        "degraded (readable, repair pending)"
    } else {
        "unavailable (not enough segments)"
    };
    let mut text = format!(
        "{verdict}: {live} of {n} segments on live nodes (k={}, m={})",
        layout.k, layout.m
    );
    if away > 0 {
        text.push_str(&format!("; {away} shards stored away from their holders"));
    }
    if !m.log.is_empty() {
        // Random writes kept as slices until repair compacts the file (`COMPACT_IDLE`).
        let bytes: u64 = m.log.slices.values().map(|s| s.len).sum();
        text.push_str(&format!(
            "; {} bytes of random writes in {} slices, compacted once the file is idle",
            bytes,
            m.log.slices.len()
        ));
    }
    if !lost.is_empty() {
        text.push_str(&format!("; missing: {}", lost.join(", ")));
    }
    Ok(text)
}

/// `view` with every node repair gives up on (`needs_repair`) marked gone: what new
/// placements and rebuild targets are chosen over, so a node away for good counts
/// neither as a place for shards nor in the pool's size.
pub fn repair_view(view: &PoolView, grace: Duration) -> PoolView {
    let mut out = view.clone();
    for node in &mut out.nodes {
        let holder = Holder {
            node_id: node.id,
            addr: node.addr,
        };
        if needs_repair(view, &holder, grace) {
            node.state = NodeState::Gone;
        }
    }
    out
}

/// Is this holder's node gone, or down for longer than `grace`?
pub fn needs_repair(view: &PoolView, holder: &Holder, grace: Duration) -> bool {
    match view.node(holder.node_id) {
        None => true,
        Some(n) => match n.state {
            NodeState::Up => false,
            NodeState::Gone | NodeState::Leaving => true,
            NodeState::Down => Duration::from_millis(n.last_seen_ms) > grace,
        },
    }
}

/// What one repair pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairReport {
    /// Segments rebuilt onto a live node in this pass, and shards brought home.
    pub rebuilt: usize,
    /// Files re-encoded in a narrower shape (no live node held none of them).
    pub reencoded: usize,
    /// Bytes repair stored on nodes in this pass.
    pub bytes: u64,
    /// Segments that need rebuilding but could not be (file open, no spare node, error).
    pub pending: usize,
    /// Segments on nodes that are down but still within the grace period.
    pub waiting: usize,
}

/// Repair as the mount has run it so far, for `user.poolfs.repair` on the root.
#[derive(Debug, Default, Clone)]
pub struct RepairProgress {
    /// Passes run since the mount started.
    pub passes: u64,
    /// Segments rebuilt since the mount started.
    pub rebuilt_total: u64,
    /// Files re-encoded since the mount started.
    pub reencoded_total: u64,
    /// Bytes repair stored on nodes since the mount started (its traffic).
    pub bytes_total: u64,
    /// The grace the passes run with (`None` before the first): how long a holder
    /// may stay down before its segments are rebuilt elsewhere.
    pub grace: Option<Duration>,
    /// When the last pass ended, and what it did (or why it could not run).
    pub last: Option<(Instant, Result<RepairReport, String>)>,
}

impl RepairProgress {
    /// What the rebuilt count counts, for a person: a segment is a file's part on one
    /// node, rebuilt from the other parts onto another node when its node was lost.
    fn rebuilt(n: u64) -> String {
        format!(
            "{} rebuilt on other nodes (a segment is a file's part on one node)",
            count(n, "segment", "segments")
        )
    }

    /// One line for a person, with the last pass's age as of now.
    pub fn describe(&self) -> String {
        let Some((at, outcome)) = &self.last else {
            return "repair: no pass yet".into();
        };
        let ago = at.elapsed().as_secs_f64();
        match outcome {
            Ok(r) => {
                let mut text = format!(
                    "repair: {} since the mount started, {} pending",
                    Self::rebuilt(self.rebuilt_total),
                    r.pending
                );
                if self.reencoded_total > 0 {
                    text.push_str(&format!(
                        ", {} re-encoded (narrower while nodes were away, wider once back)",
                        count(self.reencoded_total, "file", "files")
                    ));
                }
                if r.waiting > 0 {
                    text.push_str(&format!(
                        ", {} waiting for their node (down, within the grace period)",
                        r.waiting
                    ));
                }
                text.push_str(&format!(
                    "; last pass {ago:.1}s ago rebuilt {} ({}); {} bytes written by repair",
                    r.rebuilt,
                    count(self.passes, "pass", "passes"),
                    self.bytes_total
                ));
                text
            }
            Err(e) => format!(
                "repair: {} since the mount started; last pass {ago:.1}s ago failed: {e} \
                 ({}); {} bytes written by repair",
                Self::rebuilt(self.rebuilt_total),
                count(self.passes, "pass", "passes"),
                self.bytes_total
            ),
        }
    }
}

/// Runs a repair pass over every file and records its outcome for
/// `user.poolfs.repair` (the mount runs `Repairer::pass`, which walks every file only
/// when the pool changed).
pub fn repair_and_record(vfs: &Vfs, grace: Duration) -> Result<RepairReport, FsError> {
    let result = repair_pass(vfs, grace);
    record(vfs, grace, &result);
    result
}

/// Records the outcome of a repair pass for `user.poolfs.repair`.
fn record(vfs: &Vfs, grace: Duration, result: &Result<RepairReport, FsError>) {
    let mut progress = vfs.repair.lock().unwrap_or_else(|p| p.into_inner());
    progress.passes += 1;
    progress.grace = Some(grace);
    if let Ok(r) = result {
        progress.rebuilt_total += r.rebuilt as u64;
        progress.reencoded_total += r.reencoded as u64;
        progress.bytes_total += r.bytes;
    }
    let outcome = match result {
        Ok(r) => Ok(*r),
        Err(e) => Err(e.to_string()),
    };
    progress.last = Some((Instant::now(), outcome));
}

/// Repair progress as one line (`getfattr -n user.poolfs.repair MOUNTPOINT`).
pub fn repair_progress(vfs: &Vfs) -> String {
    vfs.repair
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .describe()
}
