//! One repair pass over the mount's closed files: a segment whose holder is away past
//! the grace is rebuilt on a node holding none of the file (`placement::rebuild_target`),
//! committed every few stripes so a killed mount resumes where it was; when no such node
//! exists the file is re-encoded onto the live nodes in a narrower shape; shards stored
//! away from their holders (or not at all, by a degraded write) are brought home.

use std::time::Duration;

use super::compact::{self, Compaction};
use super::{needs_repair, pace, repair_view, RepairReport};
use crate::client::{adopt_holder, placement, Holder, Manifest, Pace, PoolClient, StripeRecord};
use crate::fs::meta::Inode;
use crate::fs::status::{stripe_machines_off, stripe_nodes_off};
use crate::fs::vfs::Vfs;
use crate::fs::FsError;
use crate::proto::{NodeState, PoolView};

/// Stripes rebuilt between two commits of the file's manifest: what a mount killed in
/// the middle of a rebuild does again at most (8 stripes of 4 MiB shards: 32 MiB).
pub const COMMIT_EVERY: usize = 8;

/// The pool as it concerns repair (`PassView::signature`): each node's id and class
/// (0 up, 1 down within the grace, 2 given up on), and the parity the policy gives.
pub(super) type Signature = (Vec<(u32, u8)>, Option<u32>);

/// What a repair pass knows of the pool while it visits files: the view, the view
/// with every node repair gives up on marked gone, the parity the policy gives now.
pub(super) struct PassView {
    view: PoolView,
    rview: PoolView,
    widen_to: Option<u32>,
    grace: Duration,
}

impl PassView {
    /// The pool as the client sees it now. Errors: no pool view.
    pub(super) fn new(vfs: &Vfs, grace: Duration) -> Result<Self, FsError> {
        let view = vfs.run(vfs.client().view())?;
        let rview = repair_view(&view, grace);
        let widen_to = policy_parity(vfs, &rview);
        Ok(PassView {
            view,
            rview,
            widen_to,
            grace,
        })
    }

    /// What decides which files a pass has work on: each node's state as repair sees
    /// it (up; down within the grace; given up on) and the parity the policy gives.
    /// While it stays the same, a file that needed nothing still needs nothing unless
    /// it was written since (`incremental`).
    pub(super) fn signature(&self) -> Signature {
        let mut nodes: Vec<(u32, u8)> = self
            .view
            .nodes
            .iter()
            .map(|n| {
                let holder = Holder {
                    node_id: n.id,
                    addr: n.addr,
                };
                let class = match n.state {
                    _ if needs_repair(&self.view, &holder, self.grace) => 2,
                    NodeState::Up => 0,
                    _ => 1,
                };
                (n.id, class)
            })
            .collect();
        nodes.sort_unstable();
        (nodes, self.widen_to)
    }
}

/// Repairs every closed file that needs it: segments of holders that left (or are down
/// longer than `grace`) rebuilt onto a live node that holds no segment of that file, or
/// the file re-encoded onto the live nodes when there is none; shards stored away from
/// (or missing on) holders that are up brought home. Open files wait for a later pass
/// (they are repaired after they close). A patched file (random writes kept as slices)
/// is compacted first, or once idle (`compact`). The files are read a page at a time
/// (`MetaStore::each_file`), so the pass holds no list of them all. Errors: only when
/// there is no pool view or no metadata; a file that cannot be repaired now counts as
/// pending.
pub fn repair_pass(vfs: &Vfs, grace: Duration) -> Result<RepairReport, FsError> {
    let pv = PassView::new(vfs, grace)?;
    let mut report = RepairReport::default();
    vfs.meta().each_file(|inode| {
        repair_file(vfs, &pv, inode, &mut report);
        Ok(())
    })?;
    Ok(report)
}

/// Repairs the file `inode` (as last read from the store) if it needs it, counting
/// what it did, and what is left pending or waiting, into `report`. Returns whether it
/// is worth another look at the next pass: work left pending, or work it could not
/// start because the file is open (its shards away from holders that are up).
pub(super) fn repair_file(
    vfs: &Vfs,
    pv: &PassView,
    inode: Inode,
    report: &mut RepairReport,
) -> bool {
    let (view, rview, grace) = (&pv.view, &pv.rview, pv.grace);
    let Some(mut m) = inode.manifest else {
        return false;
    };
    if m.inline.is_some() && !m.stores_anything() {
        return false; // a small file kept in its record: nothing on the pool to repair
    }
    let pending_before = report.pending;
    let broken: Vec<usize> = (0..m.place.holders.len())
        .filter(|&i| needs_repair(view, &m.place.holders[i], grace))
        .collect();
    let slices_moved = m.log.slices.values().any(|s| !s.record.moved.is_empty());
    let narrower = pv.widen_to.is_some_and(|parity| parity > m.place.layout.m);
    let needed = !broken.is_empty() || m.has_moved() || slices_moved || narrower;
    // A patched file that is not compacted now is visited again until it is.
    let compact_later = match compact::before_repair(vfs, inode.ino, &inode.ctime, &m, needed) {
        Compaction::Done(compacted) => {
            m = *compacted;
            false
        }
        Compaction::Later => true,
        Compaction::NotNeeded => false,
        Compaction::Failed => {
            report.pending += broken.len().max(1);
            return true;
        }
    };
    report.waiting += m
        .place
        .holders
        .iter()
        .filter(|h| {
            view.node(h.node_id)
                .is_some_and(|n| n.state == NodeState::Down)
                && !needs_repair(view, h, grace)
        })
        .count();
    if broken.is_empty() && !m.has_moved() {
        // Whole, but perhaps narrower than the policy now gives: re-encoded while
        // nodes were away for good, or written on a smaller pool. Widened once
        // enough nodes are live, so an outage does not lower the pool's tolerance
        // for good.
        // (An empty file is placed again at its first write instead.)
        if narrower && m.stores_anything() && !vfs.is_open(inode.ino) {
            let mut file = FileRepair::new(vfs, inode.ino, &m, report);
            if let Err(e) = file.reencode(rview) {
                log::info!("repair: widening file {}: {e}", m.place.file_id);
            }
        }
        return report.pending > pending_before || compact_later;
    }
    if vfs.is_open(inode.ino) {
        report.pending += broken.len();
        return true;
    }
    let mut file = FileRepair::new(vfs, inode.ino, &m, report);
    match file.run(&broken, rview) {
        Ok(()) => delete_handed_off(vfs, view, &m, &file.committed),
        Err(Stop::Changed) => log::info!("repair: file {}: {}", m.place.file_id, Stop::Changed),
        Err(e) => log::warn!("repair: file {}: {e}", m.place.file_id),
    }
    report.pending > pending_before || compact_later
}

/// The repair of one closed file, committing its manifest as it goes.
struct FileRepair<'a> {
    vfs: &'a Vfs,
    ino: u64,
    /// The manifest as last committed (by the writer or by this repair).
    committed: Manifest,
    report: &'a mut RepairReport,
    pace: Pace,
}

/// Why a file's repair stopped early.
#[derive(Debug)]
enum Stop {
    /// The file changed (or was opened) meanwhile: a later pass looks again.
    Changed,
    /// The metadata store failed.
    Meta(FsError),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Changed => f.write_str("changed meanwhile; it will be looked at again"),
            Stop::Meta(e) => write!(f, "cannot commit its manifest: {e}"),
        }
    }
}

impl<'a> FileRepair<'a> {
    /// The repair of the file `ino`, committed as `m`, at repair's pace.
    fn new(vfs: &'a Vfs, ino: u64, m: &Manifest, report: &'a mut RepairReport) -> Self {
        FileRepair {
            vfs,
            ino,
            committed: m.clone(),
            report,
            pace: pace(),
        }
    }

    fn client(&self) -> &PoolClient {
        self.vfs.client()
    }

    fn file_id(&self) -> &str {
        &self.committed.place.file_id
    }

    /// Commits `next` in place of the manifest last committed, unless the file changed.
    fn commit(&mut self, next: Manifest) -> Result<(), Stop> {
        match self
            .vfs
            .swap_manifest(self.ino, &self.committed, next.clone())
        {
            Ok(true) => {
                self.committed = next;
                Ok(())
            }
            Ok(false) => Err(Stop::Changed),
            Err(e) => Err(Stop::Meta(e)),
        }
    }

    fn run(&mut self, broken: &[usize], rview: &PoolView) -> Result<(), Stop> {
        let mut incomplete = false;
        for &i in broken {
            let target = resume_target(rview, &self.committed, i)
                .or_else(|| placement::rebuild_target(rview, &self.committed.place, i));
            let Some(to) = target else {
                // Every live node holds a segment of the file already: no rebuild can
                // give it back its redundancy, a narrower shape over the live nodes can.
                return self.reencode(rview);
            };
            if !self.rebuild(i, &to)? {
                self.report.pending += 1;
                incomplete = true;
            }
        }
        // Shards of a segment still being rebuilt are recorded as moved to the new
        // node: they are not to be brought "home" to the lost holder.
        if !incomplete && self.committed.has_moved() {
            self.bring_home()?;
        }
        Ok(())
    }

    /// Rebuilds segment `i` onto `to`, `COMMIT_EVERY` stripes per commit, then makes
    /// `to` its holder. False if a stripe could not be rebuilt (left for a later pass).
    fn rebuild(&mut self, i: usize, to: &Holder) -> Result<bool, Stop> {
        let lost = self.committed.place.holders[i].node_id;
        let m = &self.committed;
        let js: Vec<u64> = m
            .records()
            .filter(|(_, r)| r.holder(&m.place, i).node_id == lost)
            .map(|(j, _)| j)
            .collect();
        for chunk in js.chunks(COMMIT_EVERY) {
            let rebuilt =
                self.vfs.run(
                    self.client()
                        .rebuild_onto(&self.committed, i, to, chunk, self.pace),
                );
            let (next, bytes) = match rebuilt {
                Ok(done) => done,
                Err(e) => {
                    log::warn!(
                        "repair: cannot rebuild segment {i} of file {} on node {}: {e}",
                        self.file_id(),
                        to.node_id
                    );
                    return Ok(false);
                }
            };
            self.report.bytes += bytes;
            self.commit(next)?;
        }
        self.commit(adopt_holder(&self.committed, i, to))?;
        log::info!(
            "repair: segment {i} of the file of inode {} (segments {}) rebuilt from node \
             {lost} onto node {}",
            self.ino,
            self.file_id(),
            to.node_id
        );
        self.report.rebuilt += 1;
        Ok(true)
    }

    /// Re-encodes the file onto a new placement over the live nodes of `rview`, swaps
    /// the manifest, and deletes the old segments; the new copy is dropped if the file
    /// changed meanwhile.
    fn reencode(&mut self, rview: &PoolView) -> Result<(), Stop> {
        let old = self.committed.clone();
        let Some(place) = self
            .client()
            .placement_for(rview, old.place.layout.shard_size)
        else {
            self.report.pending += 1;
            return Ok(());
        };
        // What the new placement really survives: fewer live nodes than shards put two
        // shards on one node, which counts double when it goes.
        let (machines, nodes) = placed_tolerance(&place, rview);
        if !gains(&old, rview, machines, nodes) {
            // A narrower shape with no more parity than the file has left would cost
            // the traffic and keep a later joiner from restoring the shape it has.
            self.report.pending += 1;
            return Ok(());
        }
        let shape = (place.layout.k, place.layout.m);
        let done = self.vfs.run(self.client().reencode(&old, place, self.pace));
        let (new, bytes) = match done {
            Ok(done) => done,
            Err(e) => {
                log::warn!("repair: cannot re-encode file {}: {e}", old.place.file_id);
                self.report.pending += 1;
                return Ok(());
            }
        };
        self.report.bytes += bytes;
        if let Err(stop) = self.commit(new.clone()) {
            if let Err(e) = self.vfs.run(self.client().delete(&new)) {
                log::warn!(
                    "repair: cannot delete the unused copy {} of file {}: {e}",
                    new.place.file_id,
                    old.place.file_id
                );
            }
            return Err(stop);
        }
        // The inode names the file for a user (`find MOUNT -inum N`); the ids name its
        // segments on the nodes.
        let holders: Vec<_> = new.place.holders.iter().map(|h| h.node_id).collect();
        let (ino, id, new_id) = (self.ino, &old.place.file_id, &new.place.file_id);
        match shape.1 {
            0 => log::warn!(
                "repair: file of inode {ino} (segments {id}, now {new_id}) re-encoded as \
                 {}+0 onto nodes {holders:?}: no parity is left, so it cannot be read while \
                 one of those nodes is off, until more nodes join",
                shape.0
            ),
            m => log::info!(
                "repair: file of inode {ino} (segments {id}, now {new_id}) re-encoded as \
                 {}+{m} onto nodes {holders:?}",
                shape.0
            ),
        }
        self.report.reencoded += 1;
        // Nodes that are away keep their old segments until the space sweep finds
        // that no manifest names them.
        if let Err(e) = self.vfs.run(self.client().delete(&old)) {
            log::info!(
                "repair: old segments of file {} not all deleted yet: {e}",
                old.place.file_id
            );
        }
        Ok(())
    }

    /// Stores shards kept away from their holders (or missing on them) on those of
    /// their holders that are up.
    fn bring_home(&mut self) -> Result<(), Stop> {
        let m = self.committed.clone();
        let shard = m.place.layout.shard_size as u64;
        let pause = self.pace.after(shard);
        let home = match self.vfs.run(self.client().bring_home(&m, pause)) {
            Ok(home) => home,
            Err(e) => {
                log::warn!(
                    "repair: cannot move shards of file {} home: {e}",
                    self.file_id()
                );
                self.report.pending += m.moved_count();
                return Ok(());
            }
        };
        let before = m.moved_count();
        let after = home.moved_count();
        self.report.pending += after;
        if after >= before {
            return Ok(());
        }
        self.report.bytes += moved_home_bytes(&m, &home);
        self.report.rebuilt += before - after;
        self.commit(home)?;
        log::info!(
            "repair: {} shards of file {} moved back to their holders",
            before - after,
            self.file_id()
        );
        Ok(())
    }
}

/// The parity the mount's policy gives new files on the pool of `rview` now, when
/// enough nodes are live to hold that shape: a whole file with less is re-encoded in it
/// (an `Exact` policy never widens a file: its shape does not depend on the pool).
/// `None` when too few nodes are live.
fn policy_parity(vfs: &Vfs, rview: &PoolView) -> Option<u32> {
    let policy = vfs.client().config().redundancy;
    let (k, parity) = placement::shape(policy, placement::pool_size(rview));
    (rview.live().len() >= (k + parity) as usize).then_some(parity)
}

/// How many machines, and how many nodes, may go with every stripe of `place` still
/// readable: the most holders whose shards, taken from the fullest, number at most the
/// parity (`m` when every shard has a machine, or a node, of its own).
fn placed_tolerance(place: &crate::client::Placement, view: &PoolView) -> (usize, usize) {
    let parity = place.layout.m as usize;
    let tolerance = |mut counts: Vec<usize>| {
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let mut lost = 0;
        counts
            .iter()
            .take_while(|&&c| {
                lost += c;
                lost <= parity
            })
            .count()
    };
    let mut by_node: std::collections::HashMap<u32, usize> = Default::default();
    let mut by_machine: std::collections::HashMap<String, usize> = Default::default();
    for h in &place.holders {
        *by_node.entry(h.node_id).or_default() += 1;
        let machine = placement::machine_of(view, h.node_id)
            .map_or_else(|| format!("node {}", h.node_id), str::to_string);
        *by_machine.entry(machine).or_default() += 1;
    }
    (
        tolerance(by_machine.into_values().collect()),
        tolerance(by_node.into_values().collect()),
    )
}

/// Does re-encoding `m` with `m_new` parity shards (on as many machines, all live)
/// leave it more redundant than it is in `view`: may more machines be off then than
/// its weakest stripe allows now (`status::stripe_machines_off`, which counts a machine
/// holding two shards of a stripe, on a stand-in, as two), and more nodes too
/// (`status::stripe_nodes_off`)? The second keeps a pool whose nodes share one machine
/// (`poolfs up`) from re-encoding a file that already survives as many nodes off as
/// the narrower shape would.
pub fn reencode_gains(m: &Manifest, view: &PoolView, m_new: u32) -> bool {
    gains(m, view, m_new as usize, m_new as usize)
}

/// For a placement known to survive `machines` machines and `nodes` nodes off
/// (`placed_tolerance`): does it survive no less than the file does now on either
/// count, and more on at least one? (On a pool whose nodes share one machine, `up`'s,
/// no placement survives a machine off: nodes decide.)
fn gains(m: &Manifest, view: &PoolView, machines: usize, nodes: usize) -> bool {
    let least = |off: fn(&Manifest, &StripeRecord, &PoolView) -> Option<usize>| {
        m.records()
            .map(|(_, rec)| off(m, rec, view).map_or(-1, |t| t as i64))
            .min()
            .unwrap_or(0)
    };
    let (machines, nodes) = (machines as i64, nodes as i64);
    let (machines_now, nodes_now) = (least(stripe_machines_off), least(stripe_nodes_off));
    machines >= machines_now && nodes >= nodes_now && (machines > machines_now || nodes > nodes_now)
}

/// The node segment `i` of `m` was being rebuilt on when a repair stopped part way:
/// the live node most of its stripes' shard i are recorded as moved to, if it holds
/// no segment of the file. `None` when there is none.
fn resume_target(view: &PoolView, m: &Manifest, i: usize) -> Option<Holder> {
    let mut counts: Vec<(Holder, usize)> = Vec::new();
    for (_, rec) in m.records() {
        for mv in rec.moved.iter().filter(|mv| mv.shard as usize == i) {
            match counts.iter_mut().find(|(h, _)| h.node_id == mv.to.node_id) {
                Some((_, n)) => *n += 1,
                None => counts.push((mv.to.clone(), 1)),
            }
        }
    }
    counts
        .into_iter()
        .filter(|(h, _)| {
            view.is_up(h.node_id) && !m.place.holders.iter().any(|x| x.node_id == h.node_id)
        })
        .max_by_key(|(_, n)| *n)
        .map(|(h, _)| h)
}

/// Bytes stored by a bring-home that turned `before` into `after`: one shard for each
/// moved record that is gone.
fn moved_home_bytes(before: &Manifest, after: &Manifest) -> u64 {
    let layout = before.place.layout;
    before
        .records()
        .map(|(j, rec)| {
            let left = after.stripe(j);
            let home = rec
                .moved
                .iter()
                .filter(|mv| !left.moved.contains(mv))
                .count() as u64;
            let shard = layout.shard_len(before.stripe_len(j)) as usize;
            home * rec.stored_len(shard) as u64
        })
        .sum()
}

/// The hand-off of a leaving node ends with its copy deleted: it may go once it holds
/// nothing the pool still needs (`before` → `after` is what repair committed).
fn delete_handed_off(vfs: &Vfs, view: &PoolView, before: &Manifest, after: &Manifest) {
    if before == after {
        return;
    }
    let kept = after.all_holders();
    let same_file = before.place.file_id == after.place.file_id;
    for old in before.all_holders() {
        let leaving = view
            .node(old.node_id)
            .is_some_and(|n| n.state == NodeState::Leaving);
        // A re-encoded file has new segment names: its old ones all go.
        let still_used = same_file && kept.iter().any(|h| h.node_id == old.node_id);
        if leaving && !still_used {
            if let Err(e) = vfs.run(vfs.client().delete_on(&old, &before.place.file_id)) {
                log::warn!(
                    "repair: cannot delete the handed-off segments of file {} on node {}: {e}",
                    before.place.file_id,
                    old.node_id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::placed_tolerance;
    use crate::client::{Holder, Layout, Placement};
    use crate::proto::{NodeInfo, NodeState, PoolView};

    fn view(machines: &[&str]) -> PoolView {
        PoolView {
            epoch: 1,
            nodes: machines
                .iter()
                .enumerate()
                .map(|(i, m)| NodeInfo {
                    id: i as u32 + 1,
                    addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                    state: NodeState::Up,
                    capacity: 1 << 30,
                    used: 0,
                    last_seen_ms: 0,
                    machine: m.to_string(),
                    disk: crate::proto::Disk::default(),
                })
                .collect(),
        }
    }

    fn place(k: u32, m: u32, on: &[u32]) -> Placement {
        Placement {
            file_id: "f".into(),
            layout: Layout {
                k,
                m,
                shard_size: 4096,
            },
            holders: on
                .iter()
                .map(|&id| Holder {
                    node_id: id,
                    addr: ([127, 0, 0, 1], 9000).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_placement_that_doubles_shards_on_a_node_survives_less_than_its_parity() {
        let v = view(&["a", "b", "c", "d"]);
        assert_eq!(placed_tolerance(&place(2, 2, &[1, 2, 3, 4]), &v), (2, 2));
        // The re-encode the recovery test caught: 2+2 on three nodes, node 2 twice.
        assert_eq!(placed_tolerance(&place(2, 2, &[2, 3, 4, 2]), &v), (1, 1));
        // Two nodes on one machine count as one machine, and as two nodes.
        let shared = view(&["a", "a", "b", "c"]);
        assert_eq!(
            placed_tolerance(&place(2, 2, &[1, 2, 3, 4]), &shared),
            (1, 2)
        );
        // A loopback pool: every node on one machine.
        let one = view(&["a", "a", "a", "a"]);
        assert_eq!(placed_tolerance(&place(2, 1, &[1, 2, 3]), &one), (0, 1));
    }
}
