//! The stripe pipeline's codec stage: one stripe of file bytes becomes k data shards and
//! m Reed-Solomon parity shards (reed-solomon-simd), each with a BLAKE3 checksum; any k
//! of them give the stripe back. Encryption is the next stage, in `seal`, not here.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use reed_solomon_simd::ReedSolomonEncoder;

use super::layout::{sealed_len, Layout};

/// BLAKE3 digest of one shard.
pub type Checksum = [u8; 32];

/// The erasure code refused the shards. (Not `proto::MessageError`, which is about
/// messages and records that cannot be encoded or decoded.)
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// reed-solomon-simd refused the shards (sizes that do not match the layout).
    #[error("erasure coding: {0}")]
    Erasure(#[from] reed_solomon_simd::Error),
    /// Fewer than k shards to rebuild the stripe from.
    #[error("only {have} of the {need} shards needed to rebuild the stripe")]
    TooFew {
        /// Shards given.
        have: usize,
        /// Shards needed (k).
        need: usize,
    },
}

/// Checksum of a shard as stored.
pub fn checksum(shard: &[u8]) -> Checksum {
    *blake3::hash(shard).as_bytes()
}

thread_local! {
    /// Each thread's erasure encoder, reused: its working space (a few stripes' worth)
    /// is allocated once, not for every stripe.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
}

/// Cuts a stripe's bytes into `k` equal data shards (the last zero-padded) followed by
/// `m` parity shards. Every shard has room for its seal's chunk tags, so sealing it
/// never moves it. Parity is Reed-Solomon over GF(2^16) by reed-solomon-simd.
///
/// Errors: `ErasureError::Erasure` if reed-solomon-simd refuses the shard count or length.
pub fn encode(layout: &Layout, stripe: &[u8]) -> Result<Vec<Vec<u8>>, ErasureError> {
    let shard_len = layout.shard_len(stripe.len() as u64) as usize;
    let room = sealed_len(shard_len);
    let mut shards: Vec<Vec<u8>> = (0..layout.k as usize)
        .map(|i| {
            let start = (i * shard_len).min(stripe.len());
            let end = ((i + 1) * shard_len).min(stripe.len());
            let mut shard = Vec::with_capacity(room);
            shard.extend_from_slice(&stripe[start..end]);
            shard.resize(shard_len, 0);
            shard
        })
        .collect();
    if layout.m > 0 {
        let parity = ENCODER.with_borrow_mut(|slot| {
            let (k, m) = (layout.k as usize, layout.m as usize);
            let encoder = match slot {
                Some(encoder) => {
                    encoder.reset(k, m, shard_len)?;
                    encoder
                }
                None => slot.insert(ReedSolomonEncoder::new(k, m, shard_len)?),
            };
            for shard in &shards {
                encoder.add_original_shard(shard)?;
            }
            let result = encoder.encode()?;
            Ok::<_, ErasureError>(
                result
                    .recovery_iter()
                    .map(|p| {
                        let mut shard = Vec::with_capacity(room);
                        shard.extend_from_slice(p);
                        shard
                    })
                    .collect::<Vec<_>>(),
            )
        })?;
        shards.extend(parity);
    }
    Ok(shards)
}

/// A stripe's data bytes as its k data shards, not joined: a read lends bytes from the
/// shard that holds them instead of copying the stripe into one buffer first. Bytes past
/// `len` (the shards' padding, or all of a hole) read as zeros.
#[derive(Debug, Clone, Default)]
pub struct StripeData {
    /// The k data shards in order, each as long as the first; empty for a hole.
    pub shards: Vec<Arc<Vec<u8>>>,
    /// Data bytes of the stripe.
    pub len: usize,
}

impl StripeData {
    /// A stripe never written: `len` zeros.
    pub fn hole(len: usize) -> Self {
        StripeData {
            shards: Vec::new(),
            len,
        }
    }

    fn shard_len(&self) -> usize {
        self.shards.first().map_or(0, |s| s.len())
    }

    /// The shard holding bytes `from..to` of the stripe, and where they are in it, if
    /// one shard holds them all.
    pub fn lend(&self, from: usize, to: usize) -> Option<(Arc<Vec<u8>>, Range<usize>)> {
        let shard_len = self.shard_len();
        if shard_len == 0 || to > self.len || from >= to || from / shard_len != (to - 1) / shard_len
        {
            return None;
        }
        let i = from / shard_len;
        let at = i * shard_len;
        self.shards.get(i).map(|s| (s.clone(), from - at..to - at))
    }

    /// Appends bytes `from..to` of the stripe to `out`, zeros past its data.
    pub fn copy_to(&self, out: &mut Vec<u8>, from: usize, to: usize) {
        let shard_len = self.shard_len();
        let mut at = from;
        let data_end = to.min(self.len);
        while at < data_end && shard_len > 0 {
            let (i, off) = (at / shard_len, at % shard_len);
            let Some(shard) = self.shards.get(i) else {
                break;
            };
            let take = (shard_len - off).min(data_end - at);
            out.extend_from_slice(&shard[off..off + take]);
            at += take;
        }
        out.resize(out.len() + (to - at), 0);
    }

    /// The stripe's data bytes joined.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.copy_to(&mut out, 0, self.len);
        out
    }
}

/// Rebuilds a stripe's `stripe_len` data bytes from its shards (`None` where missing);
/// needs any k of the k + m, and decodes (reed-solomon-simd) only if a data shard is
/// missing.
///
/// Errors: `ErasureError::TooFew` with fewer than k shards, `ErasureError::Erasure` if
/// reed-solomon-simd refuses the ones given.
pub fn decode_shards(
    layout: &Layout,
    stripe_len: usize,
    mut shards: Vec<Option<Vec<u8>>>,
) -> Result<StripeData, ErasureError> {
    let k = layout.k as usize;
    let have = shards.iter().filter(|s| s.is_some()).count();
    if have < k {
        return Err(ErasureError::TooFew { have, need: k });
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
    shards.truncate(k);
    Ok(StripeData {
        shards: shards.into_iter().flatten().map(Arc::new).collect(),
        len: stripe_len,
    })
}

/// Rebuilds a stripe's `stripe_len` bytes, joined, from its shards (`None` where
/// missing); needs any k of the k + m. Errors as `decode_shards`.
pub fn decode(
    layout: &Layout,
    stripe_len: usize,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>, ErasureError> {
    decode_shards(layout, stripe_len, shards).map(|d| d.to_vec())
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
                Err(ErasureError::TooFew { have: 3, need: 4 })
            ));
        }
    }

    #[test]
    fn stripe_data_lends_within_a_shard_and_copies_across_with_zero_padding() {
        let layout = Layout {
            k: 3,
            m: 1,
            shard_size: 16,
        };
        let len = 40; // shards of 14 bytes, the last holding 12 data bytes
        let shards = encode(&layout, &data(len)).unwrap();
        let mut partial: Vec<_> = shards.into_iter().map(Some).collect();
        partial[1] = None; // rebuilt from parity
        let d = decode_shards(&layout, len, partial).unwrap();
        assert_eq!(d.to_vec(), data(len));
        let (shard, range) = d.lend(15, 20).expect("inside shard 1");
        assert_eq!(&shard[range], &data(len)[15..20]);
        assert!(d.lend(10, 20).is_none(), "spans shards 0 and 1");
        assert!(d.lend(38, 42).is_none(), "runs past the data");
        let mut out = vec![9];
        d.copy_to(&mut out, 10, 44);
        let mut want = vec![9];
        want.extend_from_slice(&data(len)[10..]);
        want.resize(1 + 34, 0);
        assert_eq!(out, want);
        let mut zeros = Vec::new();
        StripeData::hole(8).copy_to(&mut zeros, 2, 6);
        assert_eq!(zeros, vec![0; 4]);
    }
}
