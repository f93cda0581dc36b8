//! Stripe geometry: which bytes of a file go to which shard of which stripe, and where
//! each shard lives inside its segment. Pure arithmetic with its own tests.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Plaintext bytes per sealed chunk: an encrypted shard is sealed chunk by chunk, so a
/// read can fetch and authenticate any chunk alone instead of the whole shard.
pub const SEAL_CHUNK: usize = 32 * 1024;
/// Bytes of one chunk's authentication tag (AES-256-GCM's 128-bit tag, through ring).
pub const TAG_LEN: usize = 16;

/// The bit that turns segment index i into the index of its shadow segment. Every
/// stripe has two slots at the same offset: slot 0 in segment i, slot 1 in segment
/// `i | SHADOW_SEGMENT` on the same node. A stored stripe is rewritten into the slot its
/// committed record does not use (copy-on-write), so the committed shards stay whole
/// until the manifest that names the new ones is committed, whatever fails or crashes
/// in between; the old slot is freed after that commit.
pub const SHADOW_SEGMENT: u32 = 1 << 31;

/// The bit that turns segment index i into the index of its log segment: shard i of a
/// file's slices (small stripes of patched bytes, see `manifest::Log`), slice s in the
/// slot of stripe s. A slice's record has `slot == LOG_SLOT`.
pub const LOG_SEGMENT: u32 = 1 << 30;

/// The `StripeRecord::slot` of a slice: its shards are in the log segments.
pub const LOG_SLOT: u8 = 2;

/// The index of the segment holding slot `slot` of shard `i`'s stripes: 0 in segment
/// i, 1 in its shadow, `LOG_SLOT` in its log segment.
pub fn segment_index(i: usize, slot: u8) -> u32 {
    match slot {
        0 => i as u32,
        LOG_SLOT => i as u32 | LOG_SEGMENT,
        _ => i as u32 | SHADOW_SEGMENT,
    }
}

/// Bytes a shard of `len` plaintext bytes takes when sealed: the ciphertext (as long as
/// the plaintext), then the tag of every chunk in order.
pub fn sealed_len(len: usize) -> usize {
    len + TAG_LEN * len.div_ceil(SEAL_CHUNK)
}

/// How a file is cut: stripes of `k` data shards (plus `m` parity shards) of at most
/// `shard_size` bytes. Segment i of a file holds shard i of every stripe, stripe j at
/// `j` slots into it, a slot being room for a full shard sealed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Data shards per stripe.
    pub k: u32,
    /// Reed-Solomon parity shards per stripe (0 for none); a stripe survives the loss of
    /// any `m` of its `k + m` shards.
    pub m: u32,
    /// Largest shard in bytes, before sealing (`DEFAULT_SHARD_SIZE`, 1 MiB, unless
    /// configured); the last stripe's shards may be shorter.
    pub shard_size: u32,
}

impl Layout {
    /// Data bytes in one full stripe.
    pub fn stripe_size(&self) -> u64 {
        u64::from(self.k) * u64::from(self.shard_size)
    }

    /// The most bytes of a file that can be written or reserved: the end of the last
    /// stripe whose slot a node still takes (`node::MAX_SEGMENT_END` bytes per
    /// segment; 2 PiB for k = 2). A file may be longer (a truncate), as holes past it.
    pub fn max_written_size(&self) -> u64 {
        let slots = crate::node::MAX_SEGMENT_END / sealed_len(self.shard_size as usize) as u64;
        slots.saturating_mul(self.stripe_size())
    }

    /// Number of segments (and holders) of a file.
    pub fn segments(&self) -> u32 {
        self.k + self.m
    }

    /// Stripes needed for a file of `size` bytes.
    pub fn stripe_count(&self, size: u64) -> u64 {
        size.div_ceil(self.stripe_size())
    }

    /// Data bytes in stripe `j` of a file of `size` bytes.
    pub fn stripe_len(&self, size: u64, j: u64) -> u64 {
        size.saturating_sub(j * self.stripe_size())
            .min(self.stripe_size())
    }

    /// Bytes of each shard of a stripe carrying `stripe_len` data bytes: the data split
    /// evenly over the k shards (so even a small file is spread over every segment),
    /// rounded up to an even count as erasure codecs require.
    pub fn shard_len(&self, stripe_len: u64) -> u32 {
        let per = stripe_len.div_ceil(u64::from(self.k));
        let even = per + (per & 1);
        even.min(u64::from(self.shard_size)) as u32
    }

    /// Where stripe `j`'s shard sits in its segment. Every stripe gets room for a
    /// sealed shard, encrypted or not, so stripes written with and without encryption
    /// can share a segment.
    pub fn segment_offset(&self, j: u64) -> u64 {
        j * sealed_len(self.shard_size as usize) as u64
    }

    /// File bytes of stripe `j`.
    pub fn stripe_range(&self, size: u64, j: u64) -> Range<u64> {
        let start = j * self.stripe_size();
        start..start + self.stripe_len(size, j)
    }

    /// The stripes that bytes `offset..offset+len` of a file of `size` bytes touch.
    pub fn stripes_touching(&self, offset: u64, len: u64, size: u64) -> Range<u64> {
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return 0..0;
        }
        offset / self.stripe_size()..end.div_ceil(self.stripe_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Layout = Layout {
        k: 3,
        m: 0,
        shard_size: 8,
    };

    #[test]
    fn stripe_counts_and_lengths() {
        assert_eq!(L.stripe_size(), 24);
        assert_eq!(L.stripe_count(0), 0);
        assert_eq!(L.stripe_count(1), 1);
        assert_eq!(L.stripe_count(24), 1);
        assert_eq!(L.stripe_count(25), 2);
        assert_eq!(L.stripe_len(25, 0), 24);
        assert_eq!(L.stripe_len(25, 1), 1);
        assert_eq!(L.stripe_len(25, 2), 0);
        assert_eq!(L.stripe_range(25, 1), 24..25);
    }

    #[test]
    fn shards_split_evenly_and_stay_even() {
        assert_eq!(L.shard_len(24), 8);
        assert_eq!(L.shard_len(1), 2);
        assert_eq!(L.shard_len(7), 4); // 3 per shard, rounded to 4
        assert_eq!(L.shard_len(23), 8);
        for len in 1..=24 {
            let s = u64::from(L.shard_len(len));
            assert!(s * 3 >= len && s <= 8 && s % 2 == 0, "len {len}");
        }
    }

    #[test]
    fn ranges_touch_the_right_stripes() {
        assert_eq!(L.stripes_touching(0, 1, 100), 0..1);
        assert_eq!(L.stripes_touching(23, 2, 100), 0..2);
        assert_eq!(L.stripes_touching(24, 24, 100), 1..2);
        assert_eq!(L.stripes_touching(90, 100, 100), 3..5);
        assert_eq!(L.stripes_touching(100, 5, 100), 0..0);
        // A slot holds a sealed 8-byte shard: 8 bytes and one tag.
        assert_eq!(L.segment_offset(3), 3 * (8 + TAG_LEN as u64));
    }

    #[test]
    fn sealed_shards_carry_one_tag_per_chunk() {
        assert_eq!(sealed_len(0), 0);
        assert_eq!(sealed_len(1), 1 + TAG_LEN);
        assert_eq!(sealed_len(SEAL_CHUNK), SEAL_CHUNK + TAG_LEN);
        assert_eq!(sealed_len(SEAL_CHUNK + 1), SEAL_CHUNK + 1 + 2 * TAG_LEN);
        assert_eq!(sealed_len(1 << 20), (1 << 20) + 32 * TAG_LEN);
    }
}
