//! Placement: which nodes hold a new file's segments, where a shard goes when its
//! holder fails during a write, where a lost segment is rebuilt, and when an empty
//! file is placed again. Pure functions of the pool view: no I/O, no async, no clock.
//!
//! Today's policy (issue 14 changes it here): a file is as wide as the pool, every live
//! node holds one segment, in id order, with one parity segment on pools of 3 or more.

use crate::client::{Holder, Layout, Placement, StripeRecord};
use crate::proto::{NodeInfo, PoolView};

/// The placement of a new file with id `file_id`: one segment on every live node of
/// `view`, in id order, striped with `shard_size`-byte shards and `parity` parity
/// shards (`None`: 1 on pools of 3 or more nodes, else 0), at most n - 1 of them.
/// `None` when no node is live.
pub fn place_new(
    view: &PoolView,
    parity: Option<u32>,
    shard_size: u32,
    file_id: String,
) -> Option<Placement> {
    let live = view.live();
    if live.is_empty() {
        return None;
    }
    let n = live.len() as u32;
    let m = parity.unwrap_or(if n >= 3 { 1 } else { 0 }).min(n - 1);
    Some(Placement {
        file_id,
        layout: Layout {
            k: n - m,
            m,
            shard_size,
        },
        holders: live.into_iter().map(holder).collect(),
    })
}

/// Is `place`, the placement of a file that holds nothing yet, stale in `view`: are its
/// holders not exactly the live nodes (one died, or nodes joined since it was placed)?
/// Such a file is placed again before its first byte is written.
pub fn is_stale(place: &Placement, view: &PoolView) -> bool {
    let live = view.live().into_iter().map(|n| n.id);
    !live.eq(place.holders.iter().map(|h| h.node_id))
}

/// Where shard `i` of a stripe recorded as `record` may go when its holder cannot take
/// it, best first: live nodes other than that holder, those holding the fewest other
/// shards of the stripe first (spreading the risk), then those with the most free space.
pub fn stand_ins(
    view: &PoolView,
    place: &Placement,
    record: &StripeRecord,
    i: usize,
) -> Vec<Holder> {
    let n = place.layout.segments() as usize;
    let shards_on = |node: &NodeInfo| {
        (0..n)
            .filter(|&s| s != i && record.holder(place, s).node_id == node.id)
            .count()
    };
    let mut candidates: Vec<&NodeInfo> = view
        .live()
        .into_iter()
        .filter(|node| node.id != place.holders[i].node_id)
        .collect();
    candidates.sort_by_key(|node| (shards_on(node), std::cmp::Reverse(free(node))));
    candidates.into_iter().map(holder).collect()
}

/// Where a segment of the file placed as `place` is rebuilt when its holder is lost:
/// the live node with the most free space (the highest id among equals) that holds no
/// segment of the file yet. `None` when every live node already holds one. `_i` is the
/// segment being rebuilt (unused by this policy).
pub fn rebuild_target(view: &PoolView, place: &Placement, _i: usize) -> Option<Holder> {
    view.live()
        .into_iter()
        .filter(|n| !place.holders.iter().any(|h| h.node_id == n.id))
        .max_by_key(|n| free(n))
        .map(holder)
}

fn free(node: &NodeInfo) -> u64 {
    node.capacity.saturating_sub(node.used)
}

fn holder(node: &NodeInfo) -> Holder {
    Holder {
        node_id: node.id,
        addr: node.addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Moved;
    use crate::proto::{NodeId, NodeState};

    /// A view of nodes `(id, state, free bytes)`.
    fn view(nodes: &[(NodeId, NodeState, u64)]) -> PoolView {
        PoolView {
            epoch: 1,
            nodes: nodes
                .iter()
                .map(|&(id, state, free)| NodeInfo {
                    id,
                    addr: ([10, 0, 0, id as u8], 2001).into(),
                    state,
                    capacity: 1000,
                    used: 1000 - free,
                    last_seen_ms: 0,
                })
                .collect(),
        }
    }

    use NodeState::{Down, Gone, Leaving, Up};

    /// Nodes of a test view: `(id, state, free bytes)`.
    type Nodes = &'static [(NodeId, NodeState, u64)];
    /// A new file's expected `(k, m, holders)`.
    type Shape = Option<(u32, u32, &'static [NodeId])>;

    fn ids(holders: &[Holder]) -> Vec<NodeId> {
        holders.iter().map(|h| h.node_id).collect()
    }

    #[test]
    fn a_new_file_spans_every_live_node_with_parity_on_three_or_more() {
        // (nodes, parity asked) -> (k, m, holders)
        let table: &[(Nodes, Option<u32>, Shape)] = &[
            (&[], None, None),
            (&[(1, Down, 9)], None, None),
            (&[(1, Up, 9)], None, Some((1, 0, &[1]))),
            (&[(2, Up, 9), (1, Up, 9)], None, Some((2, 0, &[1, 2]))),
            (
                &[(1, Up, 9), (2, Up, 9), (3, Up, 9)],
                None,
                Some((2, 1, &[1, 2, 3])),
            ),
            (
                &[(1, Up, 9), (2, Down, 9), (3, Up, 9), (4, Up, 9)],
                None,
                Some((2, 1, &[1, 3, 4])),
            ),
            (
                &[(1, Up, 9), (2, Leaving, 9), (3, Gone, 9)],
                None,
                Some((1, 0, &[1])),
            ),
            (
                &[(1, Up, 9), (2, Up, 9), (3, Up, 9)],
                Some(0),
                Some((3, 0, &[1, 2, 3])),
            ),
            (&[(1, Up, 9), (2, Up, 9)], Some(1), Some((1, 1, &[1, 2]))),
            // Parity is capped at n - 1: one data shard at least.
            (&[(1, Up, 9), (2, Up, 9)], Some(5), Some((1, 1, &[1, 2]))),
            (&[(1, Up, 9)], Some(2), Some((1, 0, &[1]))),
        ];
        for (nodes, parity, want) in table {
            let got = place_new(&view(nodes), *parity, 4096, "f".into());
            let got = got.map(|p| (p.layout.k, p.layout.m, ids(&p.holders)));
            let want = want.map(|(k, m, h)| (k, m, h.to_vec()));
            assert_eq!(got, want, "nodes {nodes:?}, parity {parity:?}");
        }
    }

    #[test]
    fn an_empty_file_is_placed_again_when_the_live_nodes_changed() {
        let place = place_new(&view(&[(1, Up, 9), (2, Up, 9)]), None, 4096, "f".into())
            .expect("two live nodes");
        let table: &[(Nodes, bool)] = &[
            (&[(1, Up, 9), (2, Up, 9)], false),
            (&[(2, Up, 9), (1, Up, 9)], false),
            (&[(1, Up, 9), (2, Down, 9)], true),
            (&[(1, Up, 9), (2, Up, 9), (3, Up, 9)], true),
            (&[(1, Up, 9), (2, Up, 9), (3, Down, 9)], false),
            (&[(1, Up, 9)], true),
        ];
        for (nodes, stale) in table {
            assert_eq!(is_stale(&place, &view(nodes)), *stale, "nodes {nodes:?}");
        }
    }

    #[test]
    fn a_failed_shard_goes_first_to_nodes_with_fewest_shards_of_its_stripe_then_most_room() {
        let three = [(1, Up, 5), (2, Up, 5), (3, Up, 5)];
        let place = place_new(&view(&three), None, 4096, "f".into()).expect("live nodes");
        let plain = StripeRecord::default();
        // Shard 1 moved to node 4 in this stripe: node 4 holds one shard of it already.
        let moved = StripeRecord {
            moved: vec![Moved {
                shard: 1,
                to: holder(&view(&[(4, Up, 0)]).nodes[0]),
            }],
            ..Default::default()
        };
        // (view, record, failed shard) -> stand-ins in order
        let table: &[(Nodes, &StripeRecord, usize, &[NodeId])] = &[
            // Nodes 4 and 5 hold nothing of the stripe; 5 has more room.
            (
                &[(1, Up, 5), (2, Up, 5), (3, Up, 5), (4, Up, 1), (5, Up, 7)],
                &plain,
                0,
                &[5, 4, 2, 3],
            ),
            // Equal room: id order.
            (
                &[(1, Up, 5), (2, Up, 5), (3, Up, 5), (4, Up, 5)],
                &plain,
                2,
                &[4, 1, 2],
            ),
            // Down, leaving and gone nodes never stand in.
            (
                &[
                    (1, Up, 5),
                    (2, Down, 5),
                    (3, Up, 5),
                    (4, Leaving, 9),
                    (5, Gone, 9),
                ],
                &plain,
                0,
                &[3],
            ),
            // Shard 1 of this stripe went from node 2 to node 4: node 2 now holds nothing
            // of it and comes first, node 4 holds a shard and comes after node 5.
            (
                &[(1, Up, 5), (2, Up, 5), (3, Up, 5), (4, Up, 9), (5, Up, 1)],
                &moved,
                0,
                &[2, 5, 4, 3],
            ),
            // The failed holder itself is never a stand-in; one live node: nowhere.
            (&[(1, Up, 5)], &plain, 0, &[]),
        ];
        for (nodes, record, i, want) in table {
            let got = ids(&stand_ins(&view(nodes), &place, record, *i));
            assert_eq!(got, want.to_vec(), "nodes {nodes:?}, shard {i}");
        }
    }

    #[test]
    fn a_lost_segment_is_rebuilt_on_the_emptiest_live_node_not_yet_holding_the_file() {
        let place = place_new(&view(&[(1, Up, 5), (2, Up, 5)]), None, 4096, "f".into())
            .expect("live nodes");
        let table: &[(Nodes, Option<NodeId>)] = &[
            (&[(1, Up, 5), (2, Down, 5)], None),
            (&[(1, Up, 5), (2, Gone, 5), (3, Up, 2), (4, Up, 8)], Some(4)),
            (&[(1, Up, 5), (2, Gone, 5), (3, Up, 8), (4, Up, 8)], Some(4)),
            (
                &[(1, Up, 5), (2, Gone, 5), (3, Up, 8), (4, Down, 9)],
                Some(3),
            ),
        ];
        for (nodes, want) in table {
            let got = rebuild_target(&view(nodes), &place, 1).map(|h| h.node_id);
            assert_eq!(got, *want, "nodes {nodes:?}");
        }
    }
}
