//! The stripe pipeline's codec stage: one stripe of file bytes becomes k data shards and
//! m Reed-Solomon parity shards, each with a BLAKE3 checksum; any k of them give the
//! stripe back. Encryption slots in here too.

use super::layout::Layout;

/// BLAKE3 digest of one shard.
pub type Checksum = [u8; 32];

/// The erasure codec refused the shards.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("erasure coding: {0}")]
    Erasure(#[from] reed_solomon_simd::Error),
    #[error("only {have} of the {need} shards needed to rebuild the stripe")]
    TooFew { have: usize, need: usize },
}

/// Checksum of a shard as stored.
pub fn checksum(shard: &[u8]) -> Checksum {
    *blake3::hash(shard).as_bytes()
}

/// Cuts a stripe's bytes into `k` equal data shards (the last zero-padded) followed by
/// `m` parity shards.
pub fn encode(layout: &Layout, stripe: &[u8]) -> Result<Vec<Vec<u8>>, CodecError> {
    let shard_len = layout.shard_len(stripe.len() as u64) as usize;
    let mut shards: Vec<Vec<u8>> = (0..layout.k as usize)
        .map(|i| {
            let start = (i * shard_len).min(stripe.len());
            let end = ((i + 1) * shard_len).min(stripe.len());
            let mut shard = Vec::with_capacity(shard_len);
            shard.extend_from_slice(&stripe[start..end]);
            shard.resize(shard_len, 0);
            shard
        })
        .collect();
    if layout.m > 0 {
        let parity = reed_solomon_simd::encode(layout.k as usize, layout.m as usize, &shards)?;
        shards.extend(parity);
    }
    Ok(shards)
}

/// Rebuilds a stripe's `stripe_len` bytes from its shards (`None` where missing);
/// needs any k of the k + m.
pub fn decode(
    layout: &Layout,
    stripe_len: usize,
    mut shards: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>, CodecError> {
    let k = layout.k as usize;
    let have = shards.iter().filter(|s| s.is_some()).count();
    if have < k {
        return Err(CodecError::TooFew { have, need: k });
    }
    if shards[..k].iter().any(Option::is_none) {
        let originals = shards[..k]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)));
        let recovery = shards[k..]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)));
        let rebuilt = reed_solomon_simd::decode(k, layout.m as usize, originals, recovery)?;
        for (i, shard) in rebuilt {
            shards[i] = Some(shard);
        }
    }
    let mut out = Vec::with_capacity(stripe_len);
    for shard in shards[..k].iter().flatten() {
        let take = (stripe_len - out.len()).min(shard.len());
        out.extend_from_slice(&shard[..take]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 37 + 200) as u8).collect()
    }

    #[test]
    fn round_trip_for_every_length_without_parity() {
        let layout = Layout {
            k: 3,
            m: 0,
            shard_size: 16,
        };
        for len in 1..=48usize {
            let shards = encode(&layout, &data(len)).unwrap();
            assert_eq!(shards.len(), 3);
            assert!(shards.iter().all(|s| s.len() == shards[0].len()));
            let back = decode(&layout, len, shards.into_iter().map(Some).collect()).unwrap();
            assert_eq!(back, data(len), "len {len}");
        }
    }

    #[test]
    fn any_k_of_k_plus_m_rebuild_the_stripe() {
        let layout = Layout {
            k: 4,
            m: 2,
            shard_size: 64,
        };
        for len in [1usize, 7, 100, 255, 256] {
            let shards = encode(&layout, &data(len)).unwrap();
            assert_eq!(shards.len(), 6);
            for a in 0..6 {
                for b in a + 1..6 {
                    let partial: Vec<_> = shards
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (i != a && i != b).then(|| s.clone()))
                        .collect();
                    assert_eq!(
                        decode(&layout, len, partial).unwrap(),
                        data(len),
                        "len {len} lost {a},{b}"
                    );
                }
            }
            let three_lost: Vec<_> = shards
                .iter()
                .enumerate()
                .map(|(i, s)| (i > 2).then(|| s.clone()))
                .collect();
            assert!(matches!(
                decode(&layout, len, three_lost),
                Err(CodecError::TooFew { have: 3, need: 4 })
            ));
        }
    }
}
