//! A file's manifest: its id, size, layout, which node holds each segment, and the
//! checksum of every shard.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::seal::Salt;
use super::stripe::Checksum;
use crate::proto::NodeId;

/// The node holding one segment of a file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node_id: NodeId,
    /// Address when the file was placed; the live view's address wins if it changed.
    pub addr: SocketAddr,
}

/// Where a file's segments live: fixed when the file is placed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub file_id: String,
    pub layout: Layout,
    /// `holders[i]` stores segment i.
    pub holders: Vec<Holder>,
}

/// A shard stored away from its segment's holder, because that holder was down or
/// failed when the stripe was written. Repair moves it home once it can.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Which shard of the stripe (the segment index).
    pub shard: u32,
    pub to: Holder,
}

/// What was stored for one stripe.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct StripeRecord {
    /// `sums[i]` is the checksum of shard i as stored in clear; empty for a sealed
    /// stripe (its chunk tags authenticate it) and for a hole (zeros).
    pub sums: Vec<Checksum>,
    /// Shards not on their segment's holder.
    pub moved: Vec<Moved>,
    /// How the shards were encrypted; `None` if they were stored in clear.
    pub seal: Option<Sealing>,
}

/// The encryption of one stripe write: the salt of its key. The chunk tags travel with
/// the shards (see `seal`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sealing {
    pub salt: Salt,
}

impl StripeRecord {
    /// Where shard `i` of this stripe is: its segment's holder unless it was moved.
    pub fn holder<'a>(&'a self, place: &'a Placement, i: usize) -> &'a Holder {
        self.moved
            .iter()
            .find(|mv| mv.shard as usize == i)
            .map_or(&place.holders[i], |mv| &mv.to)
    }

    /// Is this stripe a hole (never written)?
    pub fn is_hole(&self) -> bool {
        self.sums.is_empty() && self.seal.is_none()
    }

    /// Bytes a shard of `shard_len` plaintext bytes takes on its node.
    pub fn stored_len(&self, shard_len: usize) -> usize {
        match self.seal {
            Some(_) => super::layout::sealed_len(shard_len),
            None => shard_len,
        }
    }

    /// Can each of a stripe's `n` shards be verified: sealed, or a checksum for each?
    pub fn verifies(&self, n: usize) -> bool {
        self.seal.is_some() || self.sums.len() >= n
    }
}

/// The record of a stripe never written.
static HOLE: StripeRecord = StripeRecord {
    sums: Vec::new(),
    moved: Vec::new(),
    seal: None,
};

/// Everything needed to read a file back from the pool.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub place: Placement,
    pub size: u64,
    /// `stripes[j]` records stripe j's shard checksums and moved shards.
    pub stripes: Vec<StripeRecord>,
    /// A small file's bytes, kept in this record instead of on the pool (then no
    /// stripe is stored); see `fs::file::INLINE_MAX`.
    pub inline: Option<Vec<u8>>,
}

impl Manifest {
    /// Records a stripe just stored.
    pub fn set_stripe(&mut self, j: u64, record: StripeRecord) {
        let j = j as usize;
        if self.stripes.len() <= j {
            self.stripes.resize(j + 1, StripeRecord::default());
        }
        self.stripes[j] = record;
    }

    /// Stripe `j`'s record; a hole's is empty.
    pub fn stripe(&self, j: u64) -> &StripeRecord {
        self.stripes.get(j as usize).unwrap_or(&HOLE)
    }

    /// Does any node hold bytes of this file? Not if no stripe was ever stored.
    pub fn stores_anything(&self) -> bool {
        self.stripes.iter().any(|s| !s.is_hole())
    }

    /// Is stripe `j` a hole (never written, read as zeros)?
    pub fn is_hole(&self, j: u64) -> bool {
        self.stripes
            .get(j as usize)
            .is_none_or(StripeRecord::is_hole)
    }

    /// Every node that may hold bytes of this file: segment holders and moved shards.
    pub fn all_holders(&self) -> Vec<Holder> {
        let mut all: Vec<Holder> = self.place.holders.clone();
        for mv in self.stripes.iter().flat_map(|s| &s.moved) {
            if !all.iter().any(|h| h.node_id == mv.to.node_id) {
                all.push(mv.to.clone());
            }
        }
        all
    }

    /// Data bytes in stripe `j`.
    pub fn stripe_len(&self, j: u64) -> u64 {
        self.place.layout.stripe_len(self.size, j)
    }

    /// Drops stripes past the end of the file (after a shrink).
    pub fn trim_stripes(&mut self) {
        let n = self.place.layout.stripe_count(self.size) as usize;
        self.stripes.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: NodeId) -> Holder {
        Holder {
            node_id: id,
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + id as u16)),
        }
    }

    #[test]
    fn moved_shards_are_found_and_every_node_is_listed_once() {
        let mut m = Manifest {
            place: Placement {
                file_id: "f".into(),
                layout: Layout {
                    k: 2,
                    m: 1,
                    shard_size: 16,
                },
                holders: vec![holder(1), holder(2), holder(3)],
            },
            size: 100,
            stripes: Vec::new(),
            inline: None,
        };
        m.set_stripe(
            2,
            StripeRecord {
                sums: vec![[0; 32]; 3],
                moved: vec![
                    Moved {
                        shard: 0,
                        to: holder(3),
                    },
                    Moved {
                        shard: 1,
                        to: holder(4),
                    },
                ],
                seal: None,
            },
        );
        assert!(m.is_hole(0) && m.is_hole(1) && !m.is_hole(2) && m.is_hole(9));
        let rec = m.stripe(2);
        let at: Vec<NodeId> = (0..3).map(|i| rec.holder(&m.place, i).node_id).collect();
        assert_eq!(at, vec![3, 4, 3]);
        let all: Vec<NodeId> = m.all_holders().iter().map(|h| h.node_id).collect();
        assert_eq!(all, vec![1, 2, 3, 4]);
    }
}
