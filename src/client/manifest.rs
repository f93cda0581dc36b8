//! A file's manifest: its id, size, layout, which node holds each segment, the record
//! of every stored stripe, the stripes reserved by `fallocate`, and the log of patched
//! bytes laid over the stripes (`log`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;

use rangemap::RangeSet;
use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::seal::Salt;
use super::stripe::Checksum;
use crate::proto::NodeId;

mod log;

pub use log::{Extent, Log, Slice};

/// The node holding one segment of a file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The node's pool id, the one stable name of the holder.
    pub node_id: NodeId,
    /// Address when the file was placed; the live view's address wins if it changed.
    pub addr: SocketAddr,
}

/// Where a file's segments live: fixed when the file is placed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The file's id in the pool (1 to 64 letters, digits, `-` or `_`): what its
    /// segments are named by on the nodes.
    pub file_id: String,
    /// How the file is cut into stripes and shards.
    pub layout: Layout,
    /// `holders[i]` stores segment i.
    pub holders: Vec<Holder>,
}

/// A shard stored away from its segment's holder, because that holder was down or
/// failed when the stripe was written. Repair moves it home once it can.
///
/// A record whose `to` is the segment's own holder marks a shard stored nowhere: the
/// stripe was written degraded because no live node could take it
/// (`StripeRecord::missing`). Repair stores it on its holder when that is back, as it
/// brings a moved shard home.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Which shard of the stripe (the segment index).
    pub shard: u32,
    /// The node that holds this shard instead.
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
    /// Which of the stripe's two slots holds its shards (see
    /// `layout::SHADOW_SEGMENT`): 0 in segment i, 1 in its shadow segment.
    pub slot: u8,
}

/// The encryption of one stripe write: the salt of its key. The chunk tags travel with
/// the shards (see `seal`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sealing {
    /// The random salt the stripe key was derived with (see `seal`).
    pub salt: Salt,
}

impl StripeRecord {
    /// The segment (of its holder) that shard `i` of this stripe is in: segment i, or
    /// its shadow for slot 1.
    pub fn segment_index(&self, i: usize) -> u32 {
        super::layout::segment_index(i, self.slot)
    }

    /// Where shard `i` of this stripe is: its segment's holder unless it was moved.
    pub fn holder<'a>(&'a self, place: &'a Placement, i: usize) -> &'a Holder {
        self.moved
            .iter()
            .find(|mv| mv.shard as usize == i)
            .map_or(&place.holders[i], |mv| &mv.to)
    }

    /// Records shard `i` as stored nowhere (see `Moved`), replacing any move of it.
    pub fn set_missing(&mut self, place: &Placement, i: usize) {
        self.moved.retain(|mv| mv.shard as usize != i);
        self.moved.push(Moved {
            shard: i as u32,
            to: place.holders[i].clone(),
        });
    }

    /// The shards of this stripe stored nowhere (written degraded), in record order.
    pub fn missing<'a>(&'a self, place: &'a Placement) -> impl Iterator<Item = usize> + 'a {
        self.moved
            .iter()
            .filter(|mv| {
                place
                    .holders
                    .get(mv.shard as usize)
                    .is_some_and(|h| h.node_id == mv.to.node_id)
            })
            .map(|mv| mv.shard as usize)
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
    slot: 0,
};

/// Everything needed to read a file back from the pool.
///
/// Stripes are kept sparse: only stored stripes have a record, so a file of any size
/// (up to the kernel's 2^63 - 1 bytes) costs only what was written to it, and every
/// walk over a file's stripes visits those records, never `0..stripe_count`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Where the file's segments live.
    pub place: Placement,
    /// The file's length in bytes.
    pub size: u64,
    /// Stripe index to what was stored for it; a stripe absent here is a hole (zeros).
    pub stripes: BTreeMap<u64, StripeRecord>,
    /// Stripes whose slots `fallocate` reserved on the holders and that no write has
    /// filled yet: they read as zeros, count as allocated, and may lie past the end of
    /// the file (`FALLOC_FL_KEEP_SIZE`).
    pub reserved: RangeSet<u64>,
    /// A small file's bytes, kept in this record instead of on the pool (then no
    /// stripe is stored); see `fs::file::INLINE_MAX`.
    pub inline: Option<Vec<u8>>,
    /// Bytes written into stored stripes since they were last stored whole: slices in
    /// the log segments and the extents that lay them over the stripes (newest wins).
    pub log: Log,
}

impl Manifest {
    /// An empty file placed as `place`.
    pub fn new(place: Placement) -> Manifest {
        Manifest {
            place,
            size: 0,
            stripes: BTreeMap::new(),
            reserved: RangeSet::new(),
            inline: None,
            log: Log::default(),
        }
    }

    /// Records a stripe just stored (no longer merely reserved). A record that stores
    /// nothing makes the stripe a hole.
    pub fn set_stripe(&mut self, j: u64, record: StripeRecord) {
        if record.is_hole() {
            self.stripes.remove(&j);
        } else {
            self.reserved.remove(j..j + 1);
            self.stripes.insert(j, record);
        }
    }

    /// Makes stripe `j` a hole again; returns the record it had, if it was stored.
    pub fn clear_stripe(&mut self, j: u64) -> Option<StripeRecord> {
        self.stripes.remove(&j)
    }

    /// Stripe `j`'s record; a hole's is empty.
    pub fn stripe(&self, j: u64) -> &StripeRecord {
        self.stripes.get(&j).unwrap_or(&HOLE)
    }

    /// The stored stripes, in order: (index, record).
    pub fn records(&self) -> impl Iterator<Item = (u64, &StripeRecord)> {
        self.stripes.iter().map(|(j, r)| (*j, r))
    }

    /// The stored stripes in `range`, in order.
    pub fn records_in(&self, range: Range<u64>) -> impl Iterator<Item = (u64, &StripeRecord)> {
        self.stripes.range(range).map(|(j, r)| (*j, r))
    }

    /// Does any node hold bytes of this file? Not if no stripe was ever stored.
    pub fn stores_anything(&self) -> bool {
        !self.stripes.is_empty()
    }

    /// Is stripe `j` a hole (never written, read as zeros)?
    pub fn is_hole(&self, j: u64) -> bool {
        !self.stripes.contains_key(&j)
    }

    /// Is stripe `j` reserved by `fallocate` and not written since?
    pub fn is_reserved(&self, j: u64) -> bool {
        self.reserved.contains(&j)
    }

    /// Does any stripe hold shards stored away from their segment's holder?
    pub fn has_moved(&self) -> bool {
        self.stripes.values().any(|s| !s.moved.is_empty())
    }

    /// Shards stored away from their holders, in all.
    pub fn moved_count(&self) -> usize {
        self.stripes.values().map(|s| s.moved.len()).sum()
    }

    /// Every node that may hold bytes of this file: segment holders and moved shards.
    pub fn all_holders(&self) -> Vec<Holder> {
        let mut all: Vec<Holder> = Vec::new();
        // A shape wider than the pool names a node as holder of several segments: once.
        let slices = self.log.slices.values().map(|s| &s.record);
        for h in self.place.holders.iter().chain(
            self.stripes
                .values()
                .chain(slices)
                .flat_map(|s| s.moved.iter().map(|mv| &mv.to)),
        ) {
            if !all.iter().any(|a| a.node_id == h.node_id) {
                all.push(h.clone());
            }
        }
        all
    }

    /// Forgets the extents over stripe `j` and its count of patched writes: it was just
    /// stored whole (its new bytes include them) or became a hole.
    pub fn drop_patches(&mut self, j: u64) {
        let stripe = self.place.layout.stripe_size();
        self.log.clip(j * stripe..(j + 1).saturating_mul(stripe));
        self.log.writes.remove(&j);
    }

    /// Data bytes in stripe `j`.
    pub fn stripe_len(&self, j: u64) -> u64 {
        self.place.layout.stripe_len(self.size, j)
    }

    /// File bytes that are allocated: the data bytes of every stored stripe (up to the
    /// end of the file) and the whole of every reserved stripe, reserved ones past the
    /// end included. What `st_blocks` reports, as a local filesystem counts its blocks.
    pub fn allocated_bytes(&self) -> u64 {
        let stored: u64 = self.stripes.keys().map(|&j| self.stripe_len(j)).sum();
        let stripe = self.place.layout.stripe_size();
        let reserved: u64 = self
            .reserved
            .iter()
            .map(|r| (r.end - r.start).saturating_mul(stripe))
            .sum();
        stored.saturating_add(reserved)
    }

    /// Drops stripes past the end of the file (after a shrink), reserved ones included
    /// (a shrink frees what `fallocate` reserved beyond the new end, as on ext4).
    /// Returns the stripe range that was dropped, for its slots to be freed.
    pub fn trim_stripes(&mut self) -> Range<u64> {
        let n = self.place.layout.stripe_count(self.size);
        let end = self
            .stripes
            .keys()
            .next_back()
            .map_or(0, |j| j + 1)
            .max(self.reserved.iter().next_back().map_or(0, |r| r.end));
        self.stripes.split_off(&n);
        self.log.clip(self.size..u64::MAX);
        self.log.writes.split_off(&n);
        if n < end {
            self.reserved.remove(n..end);
        }
        n..end.max(n)
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
        let mut m = Manifest::new(Placement {
            file_id: "f".into(),
            layout: Layout {
                k: 2,
                m: 1,
                shard_size: 16,
            },
            holders: vec![holder(1), holder(2), holder(3)],
        });
        m.size = 100;
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
                slot: 0,
            },
        );
        assert!(m.is_hole(0) && m.is_hole(1) && !m.is_hole(2) && m.is_hole(9));
        let rec = m.stripe(2);
        let at: Vec<NodeId> = (0..3).map(|i| rec.holder(&m.place, i).node_id).collect();
        assert_eq!(at, vec![3, 4, 3]);
        let all: Vec<NodeId> = m.all_holders().iter().map(|h| h.node_id).collect();
        assert_eq!(all, vec![1, 2, 3, 4]);
    }

    fn sealed() -> StripeRecord {
        StripeRecord {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(Sealing { salt: [7; 16] }),
            slot: 0,
        }
    }

    #[test]
    fn a_huge_sparse_file_costs_only_its_stored_stripes() {
        let mut m = Manifest::new(Placement {
            file_id: "f".into(),
            layout: Layout {
                k: 2,
                m: 1,
                shard_size: 16,
            },
            holders: vec![holder(1), holder(2), holder(3)],
        });
        m.size = i64::MAX as u64;
        m.set_stripe(1 << 40, sealed());
        m.set_stripe(3, sealed());
        assert_eq!(
            m.records().map(|(j, _)| j).collect::<Vec<_>>(),
            vec![3, 1 << 40]
        );
        assert_eq!(m.allocated_bytes(), 64, "two full stripes of 32 bytes");
        // A reservation counts whole stripes, also past the end; writing one of them
        // turns it into a stored stripe.
        m.reserved.insert(10..20);
        assert_eq!(m.allocated_bytes(), 64 + 10 * 32);
        m.set_stripe(12, sealed());
        assert!(!m.is_reserved(12) && m.is_reserved(11) && m.is_reserved(13));
        assert_eq!(m.allocated_bytes(), 64 + 10 * 32);
        // A record storing nothing is a hole; shrinking drops what lies past the end.
        m.set_stripe(3, StripeRecord::default());
        assert!(m.is_hole(3));
        m.size = 11 * 32 + 5;
        assert_eq!(m.trim_stripes(), 12..(1 << 40) + 1);
        assert_eq!(m.records().count(), 0);
        assert!(m.is_reserved(10) && m.is_reserved(11) && !m.is_reserved(13));
        assert_eq!(m.allocated_bytes(), 2 * 32);
    }
}
