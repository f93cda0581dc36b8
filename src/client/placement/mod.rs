//! Placement: the shape of a new file (`policy`), which nodes hold its segments
//! (weighted rendezvous hashing over machines and nodes, `rendezvous`), where a shard
//! goes when its holder fails during a write, where a lost segment is rebuilt, and when
//! an empty file is placed again. Pure functions of the pool view: no I/O, no async, no
//! clock, so any client computes the same answer from the same view.

mod policy;
mod rendezvous;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

pub use policy::{shape, Redundancy, RedundancyError, AUTO_DATA_SHARDS, MAX_SEGMENTS};
use rendezvous::{pick, ranked, Machine};

use crate::client::{Holder, Layout, Placement, StripeRecord};
use crate::proto::{NodeId, NodeInfo, NodeState, PoolView};

/// Members of `view` that count for the shape: nodes up or down (a down node may come
/// back; leaving and gone ones will not).
pub fn pool_size(view: &PoolView) -> usize {
    view.nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Up | NodeState::Down))
        .count()
}

/// The placement of a new file with id `file_id`, striped with `shard_size`-byte
/// shards in the shape `shape(policy, pool_size(view))`: k + m holders, segment i on
/// holder i.
///
/// Holders are chosen by weighted rendezvous hashing of `file_id` over the live nodes
/// (weight: free bytes), one per machine first, then one per node. When fewer nodes
/// are live than k + m, the remaining holders are the best down members (their shards
/// go to stand-ins at write time and come home when they return), and when the pool
/// has fewer members than k + m (an `Exact` shape), segments wrap around the holders
/// chosen. Holders are listed live ones first, each group in id order, so that down
/// holders get the parity segments whenever m allows and data stays on live nodes.
/// `None` when no node is live.
pub fn place_new(
    view: &PoolView,
    policy: Redundancy,
    shard_size: u32,
    file_id: String,
) -> Option<Placement> {
    let live = view.live();
    if live.is_empty() {
        return None;
    }
    let (k, m) = shape(policy, pool_size(view));
    let width = (k + m) as usize;
    let mut machines = HashSet::new();
    let mut chosen = pick(&ranked(&file_id, live), width, &mut machines);
    chosen.sort_by_key(|n| n.id);
    if chosen.len() < width {
        let down = view.nodes.iter().filter(|n| n.state == NodeState::Down);
        let mut stand_by = pick(&ranked(&file_id, down), width - chosen.len(), &mut machines);
        stand_by.sort_by_key(|n| n.id);
        chosen.extend(stand_by);
    }
    let holders = (0..width)
        .map(|i| holder(chosen[i % chosen.len()]))
        .collect();
    Some(Placement {
        file_id,
        layout: Layout { k, m, shard_size },
        holders,
    })
}

/// Is `place`, the placement of a file that holds nothing yet, stale in `view`: is a
/// holder not live (or named twice) while a live node holding no segment of the file
/// could take its place? Such a file is placed again before its first byte is written.
/// (A file whose shape no longer fits the pool is `reshaped`.)
pub fn is_stale(place: &Placement, view: &PoolView) -> bool {
    let holds = |id: NodeId| place.holders.iter().any(|h| h.node_id == id);
    let spare = view.live().into_iter().any(|n| !holds(n.id));
    let lost = place.holders.iter().any(|h| !view.is_up(h.node_id));
    let doubled = place
        .holders
        .iter()
        .enumerate()
        .any(|(i, h)| place.holders[..i].iter().any(|o| o.node_id == h.node_id));
    spare && (lost || doubled)
}

/// Does the shape of `place` differ from the one `policy` gives on the pool of `view`
/// now (the pool grew or shrank since an empty file was placed)?
pub fn reshaped(place: &Placement, view: &PoolView, policy: Redundancy) -> bool {
    shape(policy, pool_size(view)) != (place.layout.k, place.layout.m)
}

/// Where shard `i` of a stripe recorded as `record` may go when its holder cannot take
/// it, best first: live nodes on machines holding no shard of the stripe, then other
/// live nodes holding no shard of it, then nodes already holding one (fewest first);
/// by rendezvous score within each group. Never its segment's holder.
pub fn stand_ins(
    view: &PoolView,
    place: &Placement,
    record: &StripeRecord,
    i: usize,
) -> Vec<Holder> {
    let n = place.layout.segments() as usize;
    let others: Vec<NodeId> = (0..n)
        .filter(|&s| s != i)
        .map(|s| record.holder(place, s).node_id)
        .collect();
    let busy = machines_of(view, &others);
    let failed = [place.holders[i].node_id, record.holder(place, i).node_id];
    let candidates = view
        .live()
        .into_iter()
        .filter(|node| !failed.contains(&node.id));
    let mut ranked = ranked(&place.file_id, candidates);
    // Stable: the rendezvous order stays within each group.
    ranked.sort_by_key(|node| {
        let shards = others.iter().filter(|&&o| o == node.id).count();
        let tier = match (shards, busy.contains(&Machine::of(node))) {
            (0, false) => 0,
            (0, true) => 1,
            _ => 2,
        };
        (tier, shards)
    });
    ranked.into_iter().map(holder).collect()
}

/// Where segment `i` of the file placed as `place` is rebuilt when its holder is lost:
/// the best live node, by rendezvous score, that holds no segment of the file,
/// preferring machines that hold none of its other segments. `None` when every live
/// node holds one already.
pub fn rebuild_target(view: &PoolView, place: &Placement, i: usize) -> Option<Holder> {
    let holds = |id: NodeId| place.holders.iter().any(|h| h.node_id == id);
    let others: Vec<NodeId> = place
        .holders
        .iter()
        .enumerate()
        .filter(|&(s, _)| s != i)
        .map(|(_, h)| h.node_id)
        .collect();
    let busy = machines_of(view, &others);
    let candidates = view.live().into_iter().filter(|n| !holds(n.id));
    let mut ranked = ranked(&place.file_id, candidates);
    ranked.sort_by_key(|node| busy.contains(&Machine::of(node)));
    ranked.first().map(|n| holder(n))
}

/// The machine node `node_id` runs on, as it named it; `None` for a node not in `view`
/// or one that named none (a node older than machine names).
pub fn machine_of(view: &PoolView, node_id: NodeId) -> Option<&str> {
    view.node(node_id)
        .map(|n| n.machine.as_str())
        .filter(|m| !m.is_empty())
}

/// The machines of `ids` in `view` (a node missing from the view counts as a machine of
/// its own).
fn machines_of<'a>(view: &'a PoolView, ids: &[NodeId]) -> HashSet<Machine<'a>> {
    ids.iter()
        .map(|&id| view.node(id).map_or(Machine::Alone(id), Machine::of))
        .collect()
}

fn holder(node: &NodeInfo) -> Holder {
    Holder {
        node_id: node.id,
        addr: node.addr,
    }
}
