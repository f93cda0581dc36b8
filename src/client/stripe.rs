//! The stripe pipeline's codec stage: one stripe of file bytes becomes k shards (and
//! back), each with a BLAKE3 checksum. Erasure parity and encryption slot in here.

use super::layout::Layout;

/// BLAKE3 digest of one shard.
pub type Checksum = [u8; 32];

/// Checksum of a shard as stored.
pub fn checksum(shard: &[u8]) -> Checksum {
    *blake3::hash(shard).as_bytes()
}

/// Cuts a stripe's bytes into `k` equal shards (the last zero-padded).
pub fn encode(layout: &Layout, stripe: &[u8]) -> Vec<Vec<u8>> {
    let shard_len = layout.shard_len(stripe.len() as u64) as usize;
    (0..layout.k as usize)
        .map(|i| {
            let start = (i * shard_len).min(stripe.len());
            let end = ((i + 1) * shard_len).min(stripe.len());
            let mut shard = Vec::with_capacity(shard_len);
            shard.extend_from_slice(&stripe[start..end]);
            shard.resize(shard_len, 0);
            shard
        })
        .collect()
}

/// Joins the k data shards of a stripe back into its `stripe_len` bytes.
pub fn decode(stripe_len: usize, shards: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stripe_len);
    for shard in shards {
        let take = (stripe_len - out.len()).min(shard.len());
        out.extend_from_slice(&shard[..take]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_for_every_length() {
        let layout = Layout {
            k: 3,
            m: 0,
            shard_size: 16,
        };
        for len in 0..=48usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 200) as u8).collect();
            let shards = encode(&layout, &data);
            assert_eq!(shards.len(), 3);
            assert!(shards.iter().all(|s| s.len() == shards[0].len()));
            assert_eq!(decode(len, &shards), data, "len {len}");
        }
    }
}
