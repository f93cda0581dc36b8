//! Keeping files whole: per-file health, rebuilding the segments of nodes that left or
//! stayed down onto live nodes (in the background and rate-limited), and the scrub that
//! verifies every shard; each pass records its outcome for the pool's attributes
//! (`user.poolfs.repair`, `user.poolfs.scrub`).

use std::time::{Duration, Instant};

use super::meta::Kind;
use super::vfs::Vfs;
use super::FsError;
use crate::client::{placement, Holder};
use crate::proto::{NodeState, PoolView};

/// Pause between rebuilt stripes, so repair leaves bandwidth to users.
const STRIPE_PAUSE: Duration = Duration::from_millis(5);

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
    let up = |h: &Holder| view.node(h.node_id).map(|node| node.state) == Some(NodeState::Up);
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
    // The weakest stripe decides: how many of its shards sit on live nodes. The
    // segment holders count as a stripe too: later writes go there first.
    let mut live = m.place.holders.iter().filter(|h| up(h)).count();
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
    if !lost.is_empty() {
        text.push_str(&format!("; missing: {}", lost.join(", ")));
    }
    Ok(text)
}

/// Is this holder's node gone, or down for longer than `grace`?
fn needs_repair(view: &PoolView, holder: &Holder, grace: Duration) -> bool {
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
    /// Segments rebuilt onto a live node in this pass.
    pub rebuilt: usize,
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
    /// When the last pass ended, and what it did (or why it could not run).
    pub last: Option<(Instant, Result<RepairReport, String>)>,
}

impl RepairProgress {
    /// One line for a person, with the last pass's age as of now.
    pub fn describe(&self) -> String {
        let Some((at, outcome)) = &self.last else {
            return "repair: no pass yet".into();
        };
        let ago = at.elapsed().as_secs_f64();
        match outcome {
            Ok(r) => {
                let mut text = format!(
                    "repair: {} segments rebuilt so far, {} pending",
                    self.rebuilt_total, r.pending
                );
                if r.waiting > 0 {
                    text.push_str(&format!(
                        ", {} waiting for their node (down, within the grace period)",
                        r.waiting
                    ));
                }
                text.push_str(&format!(
                    "; last pass {ago:.1}s ago rebuilt {} ({} passes)",
                    r.rebuilt, self.passes
                ));
                text
            }
            Err(e) => format!(
                "repair: {} segments rebuilt so far; last pass {ago:.1}s ago failed: {e} \
                 ({} passes)",
                self.rebuilt_total, self.passes
            ),
        }
    }
}

/// Runs a repair pass and records its outcome for `user.poolfs.repair`.
pub fn repair_and_record(vfs: &Vfs, grace: Duration) -> Result<RepairReport, FsError> {
    let result = repair_pass(vfs, grace);
    let mut progress = vfs.repair.lock().unwrap_or_else(|p| p.into_inner());
    progress.passes += 1;
    if let Ok(r) = &result {
        progress.rebuilt_total += r.rebuilt as u64;
    }
    let outcome = match &result {
        Ok(r) => Ok(*r),
        Err(e) => Err(e.to_string()),
    };
    progress.last = Some((Instant::now(), outcome));
    result
}

/// Repair progress as one line (`getfattr -n user.poolfs.repair MOUNTPOINT`).
pub fn repair_progress(vfs: &Vfs) -> String {
    vfs.repair
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .describe()
}

/// Rebuilds every segment held by a node that left (or is down longer than `grace`)
/// onto a live node that holds no segment of that file. Open files wait for a later
/// pass; a segment with no spare node to go to stays pending.
pub fn repair_pass(vfs: &Vfs, grace: Duration) -> Result<RepairReport, FsError> {
    let view = vfs.run(vfs.client().view())?;
    let mut report = RepairReport::default();
    for inode in vfs.meta().files()? {
        let Some(mut m) = inode.manifest.clone() else {
            continue;
        };
        if m.inline.is_some() && !m.stores_anything() {
            continue; // a small file kept in its record: nothing on the pool to repair
        }
        let original = m.clone();
        let broken: Vec<usize> = (0..m.place.holders.len())
            .filter(|&i| needs_repair(&view, &m.place.holders[i], grace))
            .collect();
        report.waiting += m
            .place
            .holders
            .iter()
            .filter(|h| {
                view.node(h.node_id)
                    .is_some_and(|n| n.state == NodeState::Down)
                    && !needs_repair(&view, h, grace)
            })
            .count();
        let moved = m.has_moved();
        if broken.is_empty() && !moved {
            continue;
        }
        if vfs.is_open(inode.ino) {
            report.pending += broken.len();
            continue;
        }
        for i in broken {
            // The emptiest live node that holds nothing of this file yet.
            let Some(to) = placement::rebuild_target(&view, &m.place) else {
                report.pending += 1;
                continue;
            };
            let target = to.clone();
            let from = m.place.holders[i].node_id;
            match vfs.run(vfs.client().rebuild_segment(&m, i, to, STRIPE_PAUSE)) {
                Ok(moved) => {
                    log::info!(
                        "repair: segment {i} of file {} rebuilt from node {from} onto node {}",
                        m.place.file_id,
                        target.node_id
                    );
                    m = moved;
                    report.rebuilt += 1;
                }
                Err(e) => {
                    log::warn!(
                        "repair: cannot rebuild segment {i} of file {}: {e}",
                        m.place.file_id
                    );
                    report.pending += 1;
                }
            }
        }
        if m.has_moved() {
            match vfs.run(vfs.client().bring_home(&m, STRIPE_PAUSE)) {
                Ok(home) => {
                    let before = m.moved_count();
                    let after = home.moved_count();
                    if after < before {
                        log::info!(
                            "repair: {} shards of file {} moved back to their holders",
                            before - after,
                            m.place.file_id
                        );
                        report.rebuilt += before - after;
                    }
                    report.pending += after;
                    m = home;
                }
                Err(e) => {
                    log::warn!(
                        "repair: cannot move shards of file {} home: {e}",
                        m.place.file_id
                    );
                }
            }
        }
        if m == original {
            continue;
        }
        let kept = m.all_holders();
        if !vfs.swap_manifest(inode.ino, &original, m)? {
            log::info!(
                "repair: file {} changed meanwhile; it will be looked at again",
                original.place.file_id
            );
            continue;
        }
        // The hand-off of a leaving node ends with its copy deleted: it may go once
        // it holds nothing the pool still needs.
        for old in original.all_holders() {
            let leaving = view
                .node(old.node_id)
                .is_some_and(|n| n.state == NodeState::Leaving);
            if leaving && !kept.iter().any(|h| h.node_id == old.node_id) {
                if let Err(e) = vfs.run(vfs.client().delete_on(&old, &original.place.file_id)) {
                    log::warn!(
                        "repair: cannot delete the handed-off segments of file {} on node {}: {e}",
                        original.place.file_id,
                        old.node_id
                    );
                }
            }
        }
    }
    Ok(report)
}

/// What one scrub pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubReport {
    /// Files walked.
    pub files: usize,
    /// Shards read and verified (checksum or chunk tags).
    pub verified: usize,
    /// Shards found missing or corrupt and stored again.
    pub healed: usize,
    /// Stripes with fewer than `k` good shards: they could not be healed.
    pub unreadable: usize,
}

impl std::fmt::Display for ScrubReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scrubbed {} files: {} shards verified, {} healed, {} stripes unreadable",
            self.files, self.verified, self.healed, self.unreadable
        )
    }
}

/// Runs a scrub pass and records its outcome for `user.poolfs.scrub`.
pub fn scrub_and_record(vfs: &Vfs) -> Result<ScrubReport, FsError> {
    let report = scrub_pass(vfs)?;
    log::info!("{report}");
    *vfs.last_scrub.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.to_string());
    Ok(report)
}

/// The outcome of the last scrub pass.
pub fn last_scrub(vfs: &Vfs) -> String {
    vfs.last_scrub
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| "no scrub yet".into())
}

/// Reads and verifies every shard of every closed file, rewriting the bad ones.
pub fn scrub_pass(vfs: &Vfs) -> Result<ScrubReport, FsError> {
    let mut report = ScrubReport::default();
    for inode in vfs.meta().files()? {
        let Some(m) = &inode.manifest else { continue };
        if vfs.is_open(inode.ino) {
            continue;
        }
        report.files += 1;
        for (j, rec) in m.records() {
            match vfs.run(vfs.client().scrub_stripe(&m.place, j, m.stripe_len(j), rec)) {
                Ok((verified, healed)) => {
                    report.verified += verified;
                    report.healed += healed;
                }
                Err(e) => {
                    log::error!("scrub: {e}");
                    report.unreadable += 1;
                }
            }
            std::thread::sleep(STRIPE_PAUSE);
        }
    }
    Ok(report)
}
