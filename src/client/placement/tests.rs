//! Table tests of placement: shapes, parsing, new placements, staleness, stand-ins,
//! rebuild targets and machine names.

use std::collections::HashSet;

use super::rendezvous::ranked;
use super::*;
use crate::client::Moved;
use crate::proto::{NodeId, NodeState};

use NodeState::{Down, Gone, Leaving, Up};

/// A member `(id, state, free bytes, machine)` of a test view.
type Member = (NodeId, NodeState, u64, &'static str);

/// A view of `members`, each offering 1000 bytes.
fn view(members: &[Member]) -> PoolView {
    PoolView {
        epoch: 1,
        nodes: members
            .iter()
            .map(|&(id, state, free, machine)| NodeInfo {
                id,
                addr: ([10, 0, 0, id as u8], 2001).into(),
                state,
                capacity: 1000,
                used: 1000 - free,
                last_seen_ms: 0,
                machine: machine.to_string(),
                disk: crate::proto::Disk::default(),
            })
            .collect(),
    }
}

/// Nodes `(id, state)` of a test view, each on a machine of its own.
type Nodes = &'static [(NodeId, NodeState)];

/// `(id, state)` of nodes each on a machine of its own, with 500 bytes free.
fn simple(nodes: &[(NodeId, NodeState)]) -> PoolView {
    let members: Vec<Member> = nodes.iter().map(|&(id, s)| (id, s, 500, "")).collect();
    view(&members)
}

fn ids(holders: &[Holder]) -> Vec<NodeId> {
    holders.iter().map(|h| h.node_id).collect()
}

fn file(j: usize) -> String {
    format!("{j:032x}")
}

#[test]
fn the_automatic_shape_is_one_segment_per_node_up_to_five_then_parity_grows_to_four() {
    let table: &[(usize, (u32, u32))] = &[
        (0, (1, 0)),
        (1, (1, 0)),
        (2, (2, 0)),
        (3, (2, 1)),
        (4, (3, 1)),
        (5, (4, 1)),
        (6, (4, 2)),
        (7, (4, 3)),
        (8, (4, 4)),
        (9, (4, 4)),
        (20, (4, 4)),
        (100, (4, 4)),
    ];
    for &(n, want) in table {
        assert_eq!(shape(Redundancy::Auto, n), want, "pool of {n}");
        // The floor: from 6 nodes on, any 2 machines may be off.
        if n >= 6 {
            assert!(shape(Redundancy::Auto, n).1 >= 2, "pool of {n}");
        }
    }
}

#[test]
fn tolerate_f_gives_f_parity_shards_and_up_to_four_data_shards() {
    let table: &[(u32, usize, (u32, u32))] = &[
        (0, 3, (3, 0)),
        (0, 10, (4, 0)),
        (1, 2, (1, 1)),
        (1, 4, (3, 1)),
        (2, 6, (4, 2)),
        (2, 4, (2, 2)),
        (3, 12, (4, 3)),
        (3, 5, (2, 3)),
        (4, 20, (4, 4)),
        // A pool of F machines or fewer cannot survive F off: every node but one.
        (2, 2, (1, 1)),
        (5, 2, (1, 1)),
        (2, 1, (1, 0)),
    ];
    for &(f, n, want) in table {
        assert_eq!(
            shape(Redundancy::Tolerate(f), n),
            want,
            "tolerate {f} of {n}"
        );
    }
    assert_eq!(shape(Redundancy::Exact { k: 6, m: 3 }, 3), (6, 3));
}

#[test]
fn redundancy_reads_k_plus_m_and_says_what_is_wrong() {
    let ok: &[(&str, Redundancy)] = &[
        ("4+2", Redundancy::Exact { k: 4, m: 2 }),
        (" 1 + 0 ", Redundancy::Exact { k: 1, m: 0 }),
        ("16+16", Redundancy::Exact { k: 16, m: 16 }),
        ("auto", Redundancy::Auto),
    ];
    for (text, want) in ok {
        assert_eq!(text.parse::<Redundancy>().as_ref(), Ok(want), "{text}");
    }
    let bad: &[(&str, &str)] = &[
        ("4", "expected K+M such as 4+2"),
        ("4+", "expected K+M such as 4+2"),
        ("+2", "expected K+M such as 4+2"),
        ("four+2", "expected K+M such as 4+2"),
        ("4-2", "expected K+M such as 4+2"),
        ("0+2", "K must be at least 1"),
        ("30+3", "at most 32 shards"),
        ("4294967295+1", "at most 32 shards"),
    ];
    for (text, want) in bad {
        let err = text.parse::<Redundancy>().expect_err(text).to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    assert!(Redundancy::tolerate(31).is_ok());
    assert!(Redundancy::tolerate(32).is_err());
    for r in [Redundancy::Exact { k: 4, m: 2 }, Redundancy::Auto] {
        assert_eq!(r.to_string().parse::<Redundancy>(), Ok(r));
    }
    assert_eq!(Redundancy::Tolerate(2).to_string(), "tolerate 2");
}

#[test]
fn a_new_file_has_the_policy_shape_on_live_nodes_then_down_ones() {
    // (members, policy) -> (k, m, holders): pools no wider than the file, so every
    // member holds a segment: live ones in id order, then down ones.
    type Want = Option<(u32, u32, &'static [NodeId])>;
    let auto = Redundancy::Auto;
    let table: &[(Nodes, Redundancy, Want)] = &[
        (&[], auto, None),
        (&[(1, Down)], auto, None),
        (&[(1, Up)], auto, Some((1, 0, &[1]))),
        (&[(2, Up), (1, Up)], auto, Some((2, 0, &[1, 2]))),
        (&[(1, Up), (2, Up), (3, Up)], auto, Some((2, 1, &[1, 2, 3]))),
        // A down member counts for the shape and holds the parity segment (its
        // shards go to stand-ins until it is back).
        (
            &[(1, Up), (2, Down), (3, Up), (4, Up)],
            auto,
            Some((3, 1, &[1, 3, 4, 2])),
        ),
        (
            &[(1, Up), (2, Leaving), (3, Gone)],
            auto,
            Some((1, 0, &[1])),
        ),
        (
            &[
                (1, Up),
                (2, Down),
                (3, Up),
                (4, Down),
                (5, Up),
                (6, Up),
                (7, Down),
                (8, Up),
            ],
            auto,
            Some((4, 4, &[1, 3, 5, 6, 8, 2, 4, 7])),
        ),
        (
            &[(1, Up), (2, Up), (3, Up)],
            Redundancy::Tolerate(0),
            Some((3, 0, &[1, 2, 3])),
        ),
        (
            &[(1, Up), (2, Up)],
            Redundancy::Tolerate(1),
            Some((1, 1, &[1, 2])),
        ),
        (
            &[(1, Up), (2, Up)],
            Redundancy::Tolerate(5),
            Some((1, 1, &[1, 2])),
        ),
        (&[(1, Up)], Redundancy::Tolerate(2), Some((1, 0, &[1]))),
        // An exact shape wider than the pool wraps around its members.
        (
            &[(1, Up), (2, Up)],
            Redundancy::Exact { k: 2, m: 1 },
            Some((2, 1, &[1, 2, 1])),
        ),
    ];
    for (nodes, policy, want) in table {
        let got = place_new(&simple(nodes), *policy, 4096, file(1));
        let got = got.map(|p| (p.layout.k, p.layout.m, ids(&p.holders)));
        let want = want.map(|(k, m, h)| (k, m, h.to_vec()));
        assert_eq!(got, want, "nodes {nodes:?}, policy {policy}");
    }
}

#[test]
fn a_new_file_takes_distinct_live_nodes_when_the_pool_is_wider_than_it() {
    let nodes: Vec<(NodeId, NodeState)> = (1..=12)
        .map(|id| (id, if id % 4 == 0 { Down } else { Up }))
        .collect();
    let v = simple(&nodes);
    for j in 0..200 {
        let p = place_new(&v, Redundancy::Auto, 4096, file(j)).expect("live nodes");
        assert_eq!((p.layout.k, p.layout.m), (4, 4));
        let set: HashSet<NodeId> = ids(&p.holders).into_iter().collect();
        assert_eq!(set.len(), 8, "distinct: {:?}", p.holders);
        assert!(set.iter().all(|&id| id % 4 != 0), "live only: {set:?}");
        // The same file and view give the same placement, whoever computes it.
        assert_eq!(place_new(&v, Redundancy::Auto, 4096, file(j)), Some(p));
    }
}

#[test]
fn shards_go_to_distinct_machines_before_doubling_up_on_one() {
    // Six nodes on three machines, a 2+1 shape: every file uses the three machines.
    let three: &[Member] = &[
        (1, Up, 500, "a"),
        (2, Up, 500, "a"),
        (3, Up, 500, "b"),
        (4, Up, 500, "b"),
        (5, Up, 500, "c"),
        (6, Up, 500, "c"),
    ];
    // Six nodes on two machines, 2+2: both machines, four distinct nodes.
    let two: &[Member] = &[
        (1, Up, 500, "a"),
        (2, Up, 500, "a"),
        (3, Up, 500, "a"),
        (4, Up, 500, "b"),
        (5, Up, 500, "b"),
        (6, Up, 500, "b"),
    ];
    let table: &[(&[Member], Redundancy, usize, usize)] = &[
        (three, Redundancy::Exact { k: 2, m: 1 }, 3, 3),
        (two, Redundancy::Exact { k: 2, m: 2 }, 2, 4),
    ];
    for &(members, policy, machines, nodes) in table {
        let v = view(members);
        let mut used_nodes = HashSet::new();
        for j in 0..300 {
            let p = place_new(&v, policy, 4096, file(j)).expect("live nodes");
            let on: HashSet<_> = p
                .holders
                .iter()
                .map(|h| machine_of(&v, h.node_id))
                .collect();
            assert_eq!(on.len(), machines, "file {j}: {:?}", p.holders);
            let distinct: HashSet<_> = ids(&p.holders).into_iter().collect();
            assert_eq!(distinct.len(), nodes, "file {j}: {:?}", p.holders);
            used_nodes.extend(distinct);
        }
        assert_eq!(used_nodes.len(), 6, "every node gets files: {used_nodes:?}");
    }
}

#[test]
fn a_full_node_gets_a_segment_only_when_no_other_node_can_take_it() {
    let members: &[Member] = &[
        (1, Up, 500, ""),
        (2, Up, 0, ""),
        (3, Up, 500, ""),
        (4, Up, 500, ""),
        (5, Up, 500, ""),
    ];
    let v = view(members);
    for j in 0..200 {
        let p = place_new(&v, Redundancy::Exact { k: 2, m: 2 }, 4096, file(j)).expect("live");
        assert!(!ids(&p.holders).contains(&2), "file {j}: {:?}", p.holders);
        let all = place_new(&v, Redundancy::Auto, 4096, file(j)).expect("live");
        assert_eq!(ids(&all.holders), vec![1, 2, 3, 4, 5], "4+1 needs all five");
    }
}

#[test]
fn an_empty_file_is_placed_again_when_a_holder_is_lost_and_a_spare_node_is_live() {
    let place = place_new(
        &simple(&[(1, Up), (2, Up)]),
        Redundancy::Auto,
        4096,
        file(0),
    )
    .expect("two live nodes");
    // (nodes) -> (stale, reshaped under Auto)
    let table: &[(Nodes, bool, bool)] = &[
        (&[(1, Up), (2, Up)], false, false),
        (&[(2, Up), (1, Up)], false, false),
        // Down with nowhere else to go: placing again would give the same holders.
        (&[(1, Up), (2, Down)], false, false),
        (&[(1, Up), (2, Down), (3, Up)], true, true),
        (&[(1, Up), (2, Leaving), (3, Up)], true, false),
        (&[(1, Up), (2, Gone), (3, Up)], true, false),
        // A new node changes the shape files get (2+0 to 2+1).
        (&[(1, Up), (2, Up), (3, Up)], false, true),
        (&[(1, Up)], false, true),
    ];
    for (nodes, stale, reshape) in table {
        let v = simple(nodes);
        assert_eq!(is_stale(&place, &v), *stale, "nodes {nodes:?}");
        assert_eq!(
            reshaped(&place, &v, Redundancy::Auto),
            *reshape,
            "nodes {nodes:?}"
        );
    }
    // A segment doubled up on one node (an exact shape wider than the pool) is stale
    // once another node is live.
    let wide = Redundancy::Exact { k: 2, m: 1 };
    let doubled = place_new(&simple(&[(1, Up), (2, Up)]), wide, 4096, file(0)).expect("live");
    assert!(!is_stale(&doubled, &simple(&[(1, Up), (2, Up)])));
    assert!(is_stale(&doubled, &simple(&[(1, Up), (2, Up), (3, Up)])));
}

#[test]
fn a_failed_shard_goes_first_to_a_machine_holding_none_of_its_stripe() {
    // Holders 1, 2, 3 on machines a, b, c; node 4 shares machine a with holder 1, node
    // 7 machine b with holder 2; nodes 5 and 6 are machines of their own.
    let members: &[Member] = &[
        (1, Up, 500, "a"),
        (2, Up, 500, "b"),
        (3, Up, 500, "c"),
        (4, Up, 500, "a"),
        (5, Up, 500, "d"),
        (6, Up, 900, "e"),
        (7, Up, 500, "b"),
        (8, Down, 900, "f"),
        (9, Leaving, 900, "g"),
        (10, Gone, 900, "h"),
    ];
    let v = view(members);
    let place = Placement {
        file_id: file(7),
        layout: Layout {
            k: 2,
            m: 1,
            shard_size: 4096,
        },
        holders: [1, 2, 3]
            .iter()
            .map(|&id| holder(v.node(id).expect("member")))
            .collect(),
    };
    let plain = StripeRecord::default();
    // Shard 1 of this stripe went from node 2 to node 5.
    let moved = StripeRecord {
        moved: vec![Moved {
            shard: 1,
            to: holder(v.node(5).expect("member")),
        }],
        ..Default::default()
    };
    // (record, failed shard) -> groups of stand-ins, best group first; within a group,
    // the file's rendezvous order.
    let table: &[(&StripeRecord, usize, &[&[NodeId]])] = &[
        // Machines b and c hold shards: 4 (machine a, whose node failed), 5, 6 first,
        // then 7 (machine b), then the holders of other shards.
        (&plain, 0, &[&[4, 5, 6], &[7], &[2, 3]]),
        (&plain, 2, &[&[5, 6], &[4, 7], &[1, 2]]),
        // Node 2 holds nothing of this stripe now, node 5 does.
        (&moved, 0, &[&[2, 4, 6, 7], &[], &[3, 5]]),
    ];
    for (record, i, groups) in table {
        let got = ids(&stand_ins(&v, &place, record, *i));
        let mut at = 0;
        for group in *groups {
            let nodes: Vec<&NodeInfo> = group.iter().map(|&id| v.node(id).expect("m")).collect();
            let want: Vec<NodeId> = ranked(&place.file_id, nodes).iter().map(|n| n.id).collect();
            assert_eq!(got[at..at + want.len()], want[..], "shard {i}: {got:?}");
            at += want.len();
        }
        assert_eq!(
            at,
            got.len(),
            "down, leaving and gone nodes never stand in: {got:?}"
        );
    }
    // Nowhere else: no stand-in.
    let alone = view(&[(1, Up, 500, "a")]);
    let one = place_new(&alone, Redundancy::Auto, 4096, file(1)).expect("live");
    assert!(stand_ins(&alone, &one, &plain, 0).is_empty());
}

#[test]
fn a_lost_segment_is_rebuilt_on_a_live_node_holding_none_of_the_file_on_a_new_machine() {
    let place = |v: &PoolView| Placement {
        file_id: file(3),
        layout: Layout {
            k: 2,
            m: 1,
            shard_size: 4096,
        },
        holders: [1, 2, 3]
            .iter()
            .map(|&id| holder(v.node(id).expect("member")))
            .collect(),
    };
    // Holders 1, 2, 3 on machines a, b, c; segment 1 (node 2) is lost.
    let table: &[(&[Member], Option<NodeId>)] = &[
        // Nobody spare.
        (&[(1, Up, 5, "a"), (2, Down, 5, "b"), (3, Up, 5, "c")], None),
        // Node 4 shares machine a with holder 1; node 5 is a new machine.
        (
            &[
                (1, Up, 5, "a"),
                (2, Gone, 5, "b"),
                (3, Up, 5, "c"),
                (4, Up, 900, "a"),
                (5, Up, 5, "d"),
            ],
            Some(5),
        ),
        // The lost holder's own machine holds nothing else of the file.
        (
            &[
                (1, Up, 5, "a"),
                (2, Gone, 5, "b"),
                (3, Up, 5, "c"),
                (4, Up, 900, "a"),
                (6, Up, 5, "b"),
            ],
            Some(6),
        ),
        // Only a node on a machine holding a segment: better than nothing.
        (
            &[
                (1, Up, 5, "a"),
                (2, Gone, 5, "b"),
                (3, Up, 5, "c"),
                (4, Up, 900, "a"),
                (7, Down, 900, "e"),
            ],
            Some(4),
        ),
    ];
    for (members, want) in table {
        let v = view(members);
        let got = rebuild_target(&v, &place(&v), 1).map(|h| h.node_id);
        assert_eq!(got, *want, "members {members:?}");
    }
}

#[test]
fn machine_of_names_the_machine_a_node_sent() {
    let v = view(&[(1, Up, 5, "desk-1a2b3c4d"), (2, Up, 5, "")]);
    assert_eq!(machine_of(&v, 1), Some("desk-1a2b3c4d"));
    assert_eq!(machine_of(&v, 2), None, "an older node names none");
    assert_eq!(machine_of(&v, 3), None, "not a member");
}
