//! Weighted rendezvous hashing (highest random weight) over pool members, aware of
//! which machine each node runs on: the ranking every placement decision starts from.
//!
//! Each (file, node) pair gets a score `w / -ln(u)`, where `w` is the node's free bytes
//! and `u` is uniform in (0, 1), drawn from BLAKE3 of the file id and the node id. The
//! node with the highest score is the one a file picks first; a node is first with
//! probability proportional to its weight, and adding or removing a node changes only
//! the rankings in which that node takes part. The method is Thaler and Ravishankar's
//! HRW ("A name-based mapping scheme for rendezvous", 1996); the logarithmic weighting
//! is Schindelhauer and Schomaker's ("Weighted distributed hash tables", SPAA 2005),
//! as used by Ceph's straw2 bucket.

use std::collections::HashSet;

use crate::proto::{NodeId, NodeInfo};

/// The machine a node runs on, as placement tells machines apart: its name, or for a
/// node that gave none (an older node) a machine of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Machine<'a> {
    /// The name the node sent in JOIN and HEARTBEAT.
    Named(&'a str),
    /// A node without a machine name: counted as its own machine.
    Alone(NodeId),
}

impl<'a> Machine<'a> {
    /// The machine of `node`.
    pub fn of(node: &'a NodeInfo) -> Self {
        if node.machine.is_empty() {
            Machine::Alone(node.id)
        } else {
            Machine::Named(&node.machine)
        }
    }
}

/// Free bytes of `node` as it last reported.
pub fn free(node: &NodeInfo) -> u64 {
    node.capacity.saturating_sub(node.used)
}

/// The uniform draw in (0, 1) of `file_id` and node `id`: the first 53 bits of BLAKE3
/// of both, centred in their interval so it is never 0 or 1.
fn draw(file_id: &str, id: NodeId) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(file_id.len() as u64).to_le_bytes());
    hasher.update(file_id.as_bytes());
    hasher.update(&id.to_le_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    let bits = u64::from_le_bytes(first) >> 11;
    (bits as f64 + 0.5) / (1u64 << 53) as f64
}

/// The rendezvous score of `node` for the file `file_id`: `w / -ln(u)` with `w` its free
/// bytes (at least 1, so that full nodes still have an order among themselves).
pub fn score(file_id: &str, node: &NodeInfo) -> f64 {
    let w = free(node).max(1) as f64;
    w / -draw(file_id, node.id).ln()
}

/// `nodes` in the order `file_id` prefers them: nodes with free space before full ones,
/// then by score, highest first (node id on the vanishing chance of a tie).
pub fn ranked<'a>(
    file_id: &str,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
) -> Vec<&'a NodeInfo> {
    let mut scored: Vec<(bool, f64, &NodeInfo)> = nodes
        .into_iter()
        .map(|n| (free(n) > 0, score(file_id, n), n))
        .collect();
    scored.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.total_cmp(&a.1))
            .then(a.2.id.cmp(&b.2.id))
    });
    scored.into_iter().map(|(_, _, n)| n).collect()
}

/// Up to `want` of `ranked` (best first), on machines not in `machines` and each on a
/// machine of its own first, then any other of them in rank order: the most distinct
/// machines the ranking allows, then distinct nodes. `machines` gains the machines
/// of those picked.
pub fn pick<'a>(
    ranked: &[&'a NodeInfo],
    want: usize,
    machines: &mut HashSet<Machine<'a>>,
) -> Vec<&'a NodeInfo> {
    let mut picked: Vec<&'a NodeInfo> = Vec::with_capacity(want);
    for &node in ranked {
        if picked.len() == want {
            break;
        }
        if machines.insert(Machine::of(node)) {
            picked.push(node);
        }
    }
    for &node in ranked {
        if picked.len() == want {
            break;
        }
        if !picked.iter().any(|p| p.id == node.id) {
            machines.insert(Machine::of(node));
            picked.push(node);
        }
    }
    picked
}
