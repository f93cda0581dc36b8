//! Simulation of placement over many files and pools of 3 to 100 nodes: spread over
//! machines, balance against capacity, movement when a node joins or leaves, and the
//! fraction of files unreadable when machines are off (exact and Monte Carlo).

use std::collections::HashSet;

use super::*;
use crate::proto::NodeId;

/// Files per simulated pool.
const FILES: usize = 20_000;
/// Bytes a unit of capacity stands for (1 TB); free space is what weighs.
const TB: u64 = 1_000_000_000_000;

/// A pool of `n` up nodes, node i (from 1) on machine `machine(i)` with `capacity(i)`
/// bytes free.
fn pool(n: u32, machine: impl Fn(u32) -> String, capacity: impl Fn(u32) -> u64) -> PoolView {
    PoolView {
        epoch: 1,
        nodes: (1..=n)
            .map(|id| NodeInfo {
                id,
                addr: ([10, 0, (id >> 8) as u8, id as u8], 2001).into(),
                state: NodeState::Up,
                capacity: capacity(id),
                used: 0,
                last_seen_ms: 0,
                machine: machine(id),
                disk: crate::proto::Disk::default(),
            })
            .collect(),
    }
}

/// A pool of `n` nodes, each a machine of its own, of equal capacity.
fn plain(n: u32) -> PoolView {
    pool(n, |id| format!("m{id}"), |_| TB)
}

/// The holders of `FILES` new files placed on `view` under the automatic shape.
fn place_files(view: &PoolView, policy: Redundancy) -> Vec<Vec<NodeId>> {
    (0..FILES)
        .map(|j| {
            let p = place_new(view, policy, 1 << 20, format!("{j:032x}")).expect("live nodes");
            p.holders.iter().map(|h| h.node_id).collect()
        })
        .collect()
}

#[test]
fn no_two_shards_of_a_file_share_a_machine_while_there_are_enough_machines() {
    for n in [3, 5, 6, 8, 10, 12, 20, 50, 100] {
        // Each node a machine of its own; then two nodes per machine.
        for per_machine in [1, 2] {
            let view = pool(n, |id| format!("m{}", (id - 1) / per_machine), |_| TB);
            let machines = n.div_ceil(per_machine) as usize;
            let (k, m) = shape(Redundancy::Auto, n as usize);
            let width = (k + m) as usize;
            for (j, holders) in place_files(&view, Redundancy::Auto).iter().enumerate() {
                let nodes: HashSet<_> = holders.iter().collect();
                assert_eq!(nodes.len(), width, "pool {n}, file {j}: {holders:?}");
                let on: HashSet<_> = holders
                    .iter()
                    .map(|&id| machine_of(&view, id).expect("named"))
                    .collect();
                assert_eq!(
                    on.len(),
                    width.min(machines),
                    "pool {n} ({per_machine} per machine), file {j}: {holders:?}"
                );
            }
        }
    }
}

/// The largest relative gap between each node's share of shards and its share of
/// capacity, over `placed` files on `view`.
fn imbalance(view: &PoolView, placed: &[Vec<NodeId>]) -> f64 {
    let total_cap: u64 = view.nodes.iter().map(|n| n.capacity).sum();
    let total_shards: usize = placed.iter().map(Vec::len).sum();
    view.nodes
        .iter()
        .map(|node| {
            let shards = placed.iter().flatten().filter(|&&id| id == node.id).count();
            let share = shards as f64 / total_shards as f64;
            let cap_share = node.capacity as f64 / total_cap as f64;
            (share / cap_share - 1.0).abs()
        })
        .fold(0.0, f64::max)
}

#[test]
fn each_node_holds_shards_within_ten_percent_of_its_capacity_share() {
    // Width 8 (4+4) against pools of 50 and 100: small against the pool.
    for n in [50, 100] {
        let equal = plain(n);
        let gap = imbalance(&equal, &place_files(&equal, Redundancy::Auto));
        assert!(gap <= 0.10, "pool of {n}, equal capacities: {gap:.3}");
        // Mixed: 1, 1.5 and 2 TB nodes in turn.
        let mixed = pool(
            n,
            |id| format!("m{id}"),
            |id| TB / 2 * u64::from(2 + id % 3),
        );
        let gap = imbalance(&mixed, &place_files(&mixed, Redundancy::Auto));
        assert!(gap <= 0.10, "pool of {n}, mixed capacities: {gap:.3}");
    }
}

/// How many of `before` and `after` (the same files' holders) differ as sets.
fn changed(before: &[Vec<NodeId>], after: &[Vec<NodeId>]) -> Vec<usize> {
    (0..before.len())
        .filter(|&j| {
            let a: HashSet<_> = before[j].iter().collect();
            let b: HashSet<_> = after[j].iter().collect();
            a != b
        })
        .collect()
}

#[test]
fn a_node_joining_or_leaving_moves_only_the_files_that_gain_or_lose_it() {
    for n in [10, 20, 50, 100] {
        let width = 8.0; // 4+4 from 8 members on: the shape stays as n changes by one
        let view = plain(n);
        let before = place_files(&view, Redundancy::Auto);

        // Node n + 1 joins on a machine of its own.
        let joined = plain(n + 1);
        let after = place_files(&joined, Redundancy::Auto);
        let moved = changed(&before, &after);
        for &j in &moved {
            assert!(
                after[j].contains(&(n + 1)),
                "file {j} moved without the new node"
            );
            let kept = after[j].iter().filter(|id| before[j].contains(id)).count();
            assert_eq!(kept, 7, "file {j} swapped one holder for the new node");
        }
        let fraction = moved.len() as f64 / FILES as f64;
        let expected = width / f64::from(n + 1);
        assert!(
            (fraction / expected - 1.0).abs() < 0.15,
            "join to {}: {fraction:.4} of files moved, expected about {expected:.4}",
            n + 1
        );

        // Node 1 leaves (gone): exactly the files it held move, each to one new node.
        let mut left = view.clone();
        left.nodes[0].state = NodeState::Gone;
        let after = place_files(&left, Redundancy::Auto);
        let moved = changed(&before, &after);
        let held: Vec<usize> = (0..FILES).filter(|&j| before[j].contains(&1)).collect();
        assert_eq!(moved, held, "pool of {n}: only the files node 1 held move");
        for &j in &moved {
            let kept = after[j].iter().filter(|id| before[j].contains(id)).count();
            assert_eq!(kept, 7, "file {j} replaced node 1 only");
        }
        let fraction = moved.len() as f64 / FILES as f64;
        let expected = width / f64::from(n);
        assert!(
            (fraction / expected - 1.0).abs() < 0.15,
            "leave from {n}: {fraction:.4} of files moved, expected about {expected:.4}"
        );
    }
}

/// Probability that more than `m` of `w` machines, each off with probability `p`
/// independently, are off: a stripe of k + m = w shards is then unreadable.
fn unreadable(w: u32, m: u32, p: f64) -> f64 {
    (m + 1..=w).map(|j| exactly(w, j, p)).sum()
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a seeded generator, enough for a Monte
/// Carlo run that must give the same figures every time.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `j` distinct machines of `0..n`, uniformly (a partial Fisher-Yates shuffle), as
    /// a mask.
    fn subset(&mut self, n: u32, j: u32) -> u128 {
        let mut order: Vec<u32> = (0..n).collect();
        let mut mask = 0u128;
        for i in 0..j as usize {
            let pick = i + (self.next() % (n as u64 - i as u64)) as usize;
            order.swap(i, pick);
            mask |= 1 << order[i];
        }
        mask
    }
}

/// Random sets of machines drawn per count of machines off.
const DRAWS: usize = 100;

/// Monte Carlo fraction of files unreadable, with its standard error, when each of `n`
/// machines is off with probability `p`: files whose holders (bit i for node i + 1)
/// have more than `m` off. Stratified by how many machines are off (Cochran, "Sampling
/// Techniques", ch. 5): j off has its exact binomial weight; the fraction of files it
/// makes unreadable is measured on `DRAWS` random sets of j machines (0 for j ≤ m, and
/// the counts whose whole weight is below 1e-12 are left out: it bounds the error).
fn monte_carlo(masks: &[u128], m: u32, n: u32, p: f64, seed: u64) -> (f64, f64) {
    let mut rng = SplitMix(seed);
    let (mut mean, mut var) = (0.0, 0.0);
    for j in m + 1..=n {
        let weight = exactly(n, j, p);
        if weight < 1e-12 && f64::from(j) > f64::from(n) * p {
            break;
        }
        let fractions: Vec<f64> = (0..DRAWS)
            .map(|_| {
                let off = rng.subset(n, j);
                let bad = masks
                    .iter()
                    .filter(|&&h| (h & off).count_ones() > m)
                    .count();
                bad as f64 / masks.len() as f64
            })
            .collect();
        let f = fractions.iter().sum::<f64>() / DRAWS as f64;
        let s2 = fractions.iter().map(|x| (x - f).powi(2)).sum::<f64>() / (DRAWS - 1) as f64;
        mean += weight * f;
        var += weight * weight * s2 / DRAWS as f64;
    }
    (mean, var.sqrt())
}

/// Probability that exactly `j` of `n` machines are off, each with probability `p`.
fn exactly(n: u32, j: u32, p: f64) -> f64 {
    let choose = (0..j).fold(1.0, |c, i| c * f64::from(n - i) / f64::from(i + 1));
    choose * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32)
}

fn mask(holders: &[NodeId]) -> u128 {
    holders.iter().fold(0, |acc, &id| acc | 1 << (id - 1))
}

fn percent(x: f64) -> String {
    match x {
        x if x >= 0.01 => format!("{:.2} %", x * 100.0),
        x => format!("{:.4} %", x * 100.0),
    }
}

/// The table: for pools of 3 to 100 machines each off independently with
/// probability p, the fraction of files unreadable under the automatic shape and under
/// the old one (k = n − 1, m = 1), exact (binomial) beside a Monte Carlo run over the
/// simulated placements. `cargo test --lib availability_table -- --nocapture` prints
/// it as markdown.
#[test]
fn availability_table_of_files_unreadable_with_machines_off() {
    let mut table = String::from(
        "| nodes | shape | p | unreadable (auto, exact) | (auto, Monte Carlo) \
         | old k=n-1, m=1 (exact) | (old, Monte Carlo) |\n|---|---|---|---|---|---|---|\n",
    );
    for n in [3u32, 4, 5, 6, 7, 8, 10, 12, 20, 50, 100] {
        let view = plain(n);
        let (k, m) = shape(Redundancy::Auto, n as usize);
        let masks: Vec<u128> = place_files(&view, Redundancy::Auto)
            .iter()
            .map(|h| mask(h))
            .collect();
        let everyone = [mask(&(1..=n).collect::<Vec<_>>())];
        for (pi, p) in [0.05, 0.1, 0.2].into_iter().enumerate() {
            let seed = u64::from(n) << 8 | pi as u64;
            let exact = unreadable(k + m, m, p);
            let (mc, se) = monte_carlo(&masks, m, n, p, seed);
            // The simulated placements must behave as the binomial says, which holds
            // only when every file's shards are on k + m distinct machines.
            assert!(
                (mc - exact).abs() <= 5.0 * se + 1e-9,
                "pool {n}, p {p}: Monte Carlo {mc:.6} ± {se:.6}, exact {exact:.6}"
            );
            let old = unreadable(n, 1, p);
            let (old_mc, old_se) = monte_carlo(&everyone, 1, n, p, seed ^ 0xff);
            assert!(
                (old_mc - old).abs() <= 5.0 * old_se + 1e-9,
                "pool {n}, p {p}, old shape: Monte Carlo {old_mc:.6} ± {old_se:.6}, exact {old:.6}"
            );
            assert!(exact <= old + 1e-12, "pool {n}, p {p}: worse than before");
            table.push_str(&format!(
                "| {n} | {k}+{m} | {p} | {} | {} | {} | {} |\n",
                percent(exact),
                percent(mc),
                percent(old),
                percent(old_mc)
            ));
            if n == 20 && pi == 1 {
                // The target: 20 nodes, 10 % off, at most 0.1 % unreadable.
                assert!(exact <= 0.001 && mc <= 0.001, "{exact} {mc}");
                assert!((old - 0.608).abs() < 0.001, "today's 61 %: {old}");
            }
        }
    }
    println!("{table}");
}
