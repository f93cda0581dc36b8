//! The pool's risk as this mount sees it (computed inside the mount, served as JSON by
//! the root's `user.poolfs.risk` attribute): how many machines may be off at once with
//! every file still readable, which files are degraded, why and when they will be whole
//! again, and per node the bytes held against the bytes of live data.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{placement, Manifest, StripeRecord};
use crate::fs::meta::{Kind, ROOT};
use crate::fs::repair::{needs_repair, reencode_gains, repair_view};
use crate::fs::vfs::Vfs;
use crate::fs::FsError;
use crate::proto::{NodeId, PoolView};

/// Degraded files listed by name; past this many only their number is given.
pub const DEGRADED_LIMIT: usize = 20;

/// The pool's risk for one mount's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRisk {
    /// Machines that may be off at once, whichever they are, with every stored stripe
    /// still readable; `None` when no stripe is stored. 0 with a file unreadable now.
    pub machines_off: Option<usize>,
    /// Nodes that may be off at once, whichever they are, with every stored stripe still
    /// readable: more than `machines_off` when nodes share a machine (a pool started
    /// with `poolfs up` runs every node on this one).
    #[serde(default)]
    pub nodes_off: Option<usize>,
    /// Files with data on the pool.
    pub files: usize,
    /// Of those, files with a shard away from its place or on a node that is not up.
    pub degraded: usize,
    /// The first `DEGRADED_LIMIT` degraded files, by path.
    pub degraded_files: Vec<DegradedFile>,
    /// Per member of the pool, by id.
    pub nodes: Vec<NodeSpace>,
    /// The id of the node that runs in the mount's process (`None` from a mount that
    /// does not say, or before the controller gave it one).
    #[serde(default)]
    pub own_node: Option<NodeId>,
}

/// A degraded file and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedFile {
    /// Path relative to the mount point.
    pub path: String,
    /// Why it is degraded and when it will be whole again, one clause per cause.
    pub why: String,
}

/// One node's space as this mount sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpace {
    /// The node's pool id.
    pub id: NodeId,
    /// Its state in the pool view.
    pub state: String,
    /// Bytes this mount's segments take on the node (allocated, from LIST: see
    /// `fs::sweep::held_and_live`); `None` when the node could not be listed (not up).
    pub held: Option<u64>,
    /// Bytes of shards this mount's manifests place on the node.
    pub live: u64,
}

impl PoolRisk {
    /// The report for a person: the machines line, the degraded files with their
    /// causes (then how many more), and one line per node of bytes held and live.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.risk_line());
        out.push_str(&format!(
            "  {} of {} with data on the pool degraded\n",
            self.degraded,
            crate::util::count(self.files as u64, "file", "files")
        ));
        for f in &self.degraded_files {
            out.push_str(&format!("    {}: {}\n", f.path, f.why));
        }
        let more = self.degraded.saturating_sub(self.degraded_files.len());
        if more > 0 {
            let files = if more == 1 { "file" } else { "files" };
            out.push_str(&format!("    and {more} more degraded {files}\n"));
        }
        for n in &self.nodes {
            let held = n
                .held
                .map_or_else(|| "an unknown number of".to_owned(), |b| b.to_string());
            let own = match self.own_node == Some(n.id) {
                true => " (this mount's own node)",
                false => "",
            };
            out.push_str(&format!(
                "  node {:>3} {:<7} holds {held} bytes for {} bytes of live data{own}\n",
                n.id, n.state, n.live
            ));
        }
        out
    }

    /// The risk line: how many machines may be off at once with every file still
    /// readable, and, when nodes share machines (a pool of `poolfs up` runs every node
    /// on this one), how many nodes, in one sentence so that the two do not read as a
    /// contradiction.
    fn risk_line(&self) -> String {
        let machines = |n: usize| crate::util::count(n as u64, "machine", "machines");
        let nodes = |n: usize| crate::util::count(n as u64, "node", "nodes");
        match (self.machines_off, self.nodes_off) {
            (None, _) => "  risk: no file data on the pool\n".to_string(),
            (Some(0), Some(n)) if n > 0 => format!(
                "  risk: any {} may be off at once with every file still readable, but no \
                 machine: nodes share machines, and one machine holds too many of a file's \
                 segments\n",
                nodes(n)
            ),
            (Some(0), _) => {
                "  risk: nothing may be off: one more loss makes a file unreadable\n".to_string()
            }
            (Some(m), Some(n)) if n > m => format!(
                "  risk: any {} may be off at once with every file still readable, or any {} \
                 as long as their machines stay up\n",
                machines(m),
                nodes(n)
            ),
            (Some(m), _) => format!(
                "  risk: any {} may be off at once with every file still readable\n",
                machines(m)
            ),
        }
    }
}

/// The machine node `id` runs on, as it named itself (`placement::machine_of`); a node
/// that named none counts as a machine of its own.
pub fn machine_of(view: &PoolView, id: NodeId) -> String {
    placement::machine_of(view, id).map_or_else(|| format!("node {id}"), str::to_owned)
}

/// How many machines may be off at once with a stripe still readable: `shards` are the
/// counts of its shards on live nodes per machine, `k` how many it needs. Machines are
/// removed most shards first (the worst case). `None` when fewer than `k` are live.
pub fn stripe_tolerance(k: usize, shards: &[usize]) -> Option<usize> {
    let mut counts = shards.to_vec();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let mut left: usize = counts.iter().sum();
    if left < k {
        return None;
    }
    let mut off = 0;
    for c in counts {
        if left - c < k {
            break;
        }
        left -= c;
        off += 1;
    }
    Some(off)
}

/// The risk for the files of the mount behind `vfs`, over the pool as it is now.
/// Errors: no pool view, or the metadata store failing.
pub fn pool_risk(vfs: &Vfs) -> Result<PoolRisk, FsError> {
    let view = vfs.run(vfs.client().view())?;
    let grace = vfs.repair.lock().unwrap_or_else(|p| p.into_inner()).grace;
    let mut risk = PoolRisk {
        own_node: vfs.own_node(),
        ..PoolRisk::default()
    };
    let mut live: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut degraded: Vec<(u64, String)> = Vec::new();
    // A page of files at a time: the report keeps per-node sums and at most
    // `DEGRADED_LIMIT` files, whatever the file count.
    vfs.meta().each_file(|inode| {
        let Some(m) = &inode.manifest else {
            return Ok(());
        };
        if !m.stores_anything() {
            return Ok(());
        }
        risk.files += 1;
        let (machines, nodes) = file_tolerance(m, &view, &mut live);
        risk.machines_off = Some(risk.machines_off.map_or(machines, |t| t.min(machines)));
        risk.nodes_off = Some(risk.nodes_off.map_or(nodes, |t| t.min(nodes)));
        let why = if is_degraded(m, &view) {
            Some(why_degraded(vfs, m, &view, grace, vfs.is_open(inode.ino)))
        } else {
            None
        };
        if let Some(why) = why {
            risk.degraded += 1;
            if degraded.len() < DEGRADED_LIMIT {
                degraded.push((inode.ino, why));
            }
        }
        Ok(())
    })?;
    let paths = paths_of(vfs, degraded.iter().map(|(ino, _)| *ino).collect())?;
    risk.degraded_files = degraded
        .into_iter()
        .map(|(ino, why)| DegradedFile {
            path: paths
                .get(&ino)
                .cloned()
                .unwrap_or_else(|| format!("(inode {ino}, no name)")),
            why,
        })
        .collect();
    risk.degraded_files.sort_by(|a, b| a.path.cmp(&b.path));
    // What each reachable node holds for this mount, from its LIST; a failed listing
    // leaves every node unknown rather than failing the report.
    let held: HashMap<NodeId, u64> = match crate::fs::sweep::held_and_live(vfs) {
        Ok(spaces) => spaces.into_iter().map(|s| (s.node, s.held)).collect(),
        Err(e) => {
            log::warn!("status: cannot list the nodes' segments: {e}");
            HashMap::new()
        }
    };
    risk.nodes = view
        .nodes
        .iter()
        .map(|n| NodeSpace {
            id: n.id,
            state: n.state.to_string(),
            held: held.get(&n.id).copied(),
            live: live.get(&n.id).copied().unwrap_or(0),
        })
        .collect();
    Ok(risk)
}

/// How many machines may be off at once with the stripe recorded as `rec` of the file
/// `m` still readable in `view` (`stripe_tolerance` over its shards on up nodes, per
/// machine); `None` when it is unreadable now.
pub fn stripe_machines_off(m: &Manifest, rec: &StripeRecord, view: &PoolView) -> Option<usize> {
    stripe_off(m, rec, view, |id| machine_of(view, id))
}

/// How many nodes may be off at once with the stripe recorded as `rec` of the file `m`
/// still readable in `view` (as `stripe_machines_off`, each node its own domain).
pub fn stripe_nodes_off(m: &Manifest, rec: &StripeRecord, view: &PoolView) -> Option<usize> {
    stripe_off(m, rec, view, |id| format!("node {id}"))
}

/// `stripe_tolerance` of the stripe recorded as `rec` of `m`, its shards on up nodes
/// grouped by `domain` (the machine, or the node itself).
fn stripe_off(
    m: &Manifest,
    rec: &StripeRecord,
    view: &PoolView,
    domain: impl Fn(NodeId) -> String,
) -> Option<usize> {
    let n = m.place.layout.segments() as usize;
    let missing: Vec<usize> = rec.missing(&m.place).collect();
    let mut per_domain: HashMap<String, usize> = HashMap::new();
    for i in (0..n).filter(|i| !missing.contains(i)) {
        let at = rec.holder(&m.place, i).node_id;
        if view.is_up(at) {
            *per_domain.entry(domain(at)).or_default() += 1;
        }
    }
    let counts: Vec<usize> = per_domain.into_values().collect();
    stripe_tolerance(m.place.layout.k as usize, &counts)
}

/// The least machine tolerance over the stored stripes of `m` (0 when one is
/// unreadable); adds each stored shard's bytes to `live` under the node that holds it.
fn file_tolerance(
    m: &Manifest,
    view: &PoolView,
    live: &mut BTreeMap<NodeId, u64>,
) -> (usize, usize) {
    let layout = m.place.layout;
    let n = layout.segments() as usize;
    let (mut machines, mut nodes) = (usize::MAX, usize::MAX);
    for (j, rec) in m.records() {
        let missing: Vec<usize> = rec.missing(&m.place).collect();
        let shard = rec.stored_len(layout.shard_len(m.stripe_len(j)) as usize) as u64;
        for i in (0..n).filter(|i| !missing.contains(i)) {
            *live.entry(rec.holder(&m.place, i).node_id).or_default() += shard;
        }
        machines = machines.min(stripe_machines_off(m, rec, view).unwrap_or(0));
        nodes = nodes.min(stripe_nodes_off(m, rec, view).unwrap_or(0));
    }
    let none_if_max = |t: usize| if t == usize::MAX { 0 } else { t };
    (none_if_max(machines), none_if_max(nodes))
}

/// Has `m` a shard away from its place, stored nowhere, or on a node that is not up?
fn is_degraded(m: &Manifest, view: &PoolView) -> bool {
    m.has_moved() || m.all_holders().iter().any(|h| !view.is_up(h.node_id))
}

/// Why `m` is degraded and when it will be whole again, one clause per cause.
fn why_degraded(
    vfs: &Vfs,
    m: &Manifest,
    view: &PoolView,
    grace: Option<Duration>,
    open: bool,
) -> String {
    let mut why: Vec<String> = Vec::new();
    if open {
        why.push("open: repaired after close".into());
    }
    // Before the first repair pass the grace is not known: only gone nodes are past it.
    let grace_or_max = grace.unwrap_or(Duration::MAX);
    let rview = repair_view(view, grace_or_max);
    for (i, h) in m.place.holders.iter().enumerate() {
        if view.is_up(h.node_id) {
            continue;
        }
        let node = view.node(h.node_id);
        let state = node.map_or("gone".to_string(), |n| n.state.to_string());
        let away = node.map_or(0, |n| n.last_seen_ms / 1000);
        if needs_repair(view, h, grace_or_max) {
            match placement::rebuild_target(&rview, &m.place, i) {
                Some(to) => why.push(format!(
                    "node {} {state}: segment {i} being rebuilt on node {}",
                    h.node_id, to.node_id
                )),
                None => {
                    let shape = vfs
                        .client()
                        .placement_for(&rview, m.place.layout.shard_size)
                        .map(|p| (p.layout.k, p.layout.m));
                    why.push(match shape {
                        Some((k, p)) if reencode_gains(m, &rview, p) => {
                            format!("no node holds none of it: re-encoding to {k}+{p} queued")
                        }
                        Some(_) => format!(
                            "node {} {state}: no node holds none of it and a narrower shape \
                             would not add parity: waits for a node to join",
                            h.node_id
                        ),
                        None => "no node holds none of it and none is live: waits for nodes".into(),
                    });
                }
            }
        } else {
            let when = match grace {
                Some(g) => {
                    let left = g.as_secs().saturating_sub(away);
                    format!("rebuilt after the grace (in {left} s)")
                }
                None => "rebuilt after the grace".into(),
            };
            why.push(format!("node {} {state} {away} s, {when}", h.node_id));
        }
    }
    // Shards stored nowhere (a degraded write), and shards on stand-ins.
    let mut waiting_for: Vec<NodeId> = Vec::new();
    let mut missing_up = 0;
    let mut away_up = 0;
    for (_, rec) in m.records() {
        let missing: Vec<usize> = rec.missing(&m.place).collect();
        for mv in &rec.moved {
            let holder = m.place.holders[mv.shard as usize].node_id;
            let up = view.is_up(holder);
            if missing.contains(&(mv.shard as usize)) {
                if up {
                    missing_up += 1;
                } else if !waiting_for.contains(&holder) {
                    waiting_for.push(holder);
                }
            } else if up {
                away_up += 1;
            }
        }
    }
    if !waiting_for.is_empty() {
        why.push(format!(
            "written degraded: waits for {} more live nodes",
            waiting_for.len()
        ));
    }
    if missing_up > 0 {
        why.push(format!(
            "written degraded: {missing_up} missing shards stored by the next repair pass"
        ));
    }
    if away_up > 0 {
        why.push(format!(
            "{away_up} shards on stand-ins: moved home by the next repair pass"
        ));
    }
    let stand_ins_down: Vec<NodeId> = m
        .all_holders()
        .iter()
        .filter(|h| !m.place.holders.iter().any(|x| x.node_id == h.node_id))
        .filter(|h| !view.is_up(h.node_id))
        .map(|h| h.node_id)
        .collect();
    for id in stand_ins_down {
        why.push(format!(
            "stand-in node {id} not up: its shards are rebuilt on their holders"
        ));
    }
    why.join("; ")
}

/// The paths (relative to the mount point) of the inodes `want`, found by walking the
/// namespace from the root; an inode with several names gets the first one found.
fn paths_of(vfs: &Vfs, mut want: Vec<u64>) -> Result<HashMap<u64, String>, FsError> {
    let mut found = HashMap::new();
    let mut dirs = vec![(ROOT, String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        if want.is_empty() {
            break;
        }
        for (name, ino, kind) in vfs.meta().readdir(dir)? {
            if name == b"." || name == b".." {
                continue;
            }
            let path = format!("{prefix}{}", String::from_utf8_lossy(&name));
            if kind == Kind::Dir {
                dirs.push((ino, format!("{path}/")));
            } else if let Some(pos) = want.iter().position(|w| *w == ino) {
                want.swap_remove(pos);
                found.insert(ino, path);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_risk_line_says_machines_and_nodes_in_one_sentence() {
        // (machines off, nodes off) -> the line
        let table: &[(Option<usize>, Option<usize>, &str)] = &[
            (None, None, "no file data on the pool"),
            (
                Some(0),
                Some(0),
                "nothing may be off: one more loss makes a file unreadable",
            ),
            (
                Some(0),
                Some(1),
                "any 1 node may be off at once with every file still readable, but no \
                 machine: nodes share machines, and one machine holds too many of a file's \
                 segments",
            ),
            (
                Some(1),
                Some(2),
                "any 1 machine may be off at once with every file still readable, or any 2 \
                 nodes as long as their machines stay up",
            ),
            (
                Some(2),
                Some(2),
                "any 2 machines may be off at once with every file still readable",
            ),
            (
                Some(1),
                None,
                "any 1 machine may be off at once with every file still readable",
            ),
        ];
        for (machines_off, nodes_off, want) in table {
            let risk = PoolRisk {
                machines_off: *machines_off,
                nodes_off: *nodes_off,
                ..Default::default()
            };
            assert_eq!(risk.risk_line(), format!("  risk: {want}\n"));
        }
    }

    #[test]
    fn machines_with_most_shards_are_counted_off_first() {
        // (k, shards per machine) -> machines that may be off
        let table: &[(usize, &[usize], Option<usize>)] = &[
            (2, &[1, 1, 1], Some(1)),
            (3, &[1, 1, 1, 1], Some(1)),
            (4, &[1, 1, 1, 1, 1, 1, 1, 1], Some(4)),
            // One machine with two shards: losing it costs two.
            (2, &[2, 1, 1], Some(1)),
            (2, &[2, 2], Some(1)),
            (3, &[2, 1, 1], Some(0)),
            (3, &[2, 1, 1, 1], Some(1)),
            (3, &[3], Some(0)),
            (2, &[1, 1], Some(0)),
            (3, &[1, 1], None),
            (1, &[], None),
        ];
        for (k, shards, want) in table {
            assert_eq!(stripe_tolerance(*k, shards), *want, "k={k} {shards:?}");
        }
    }
}
