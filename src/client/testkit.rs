//! Test helpers for the client's modules: a `PoolClient` over an in-memory pool, and
//! file bytes that differ at every offset.

use std::sync::Arc;

use super::{DataConfig, Manifest, MemSegments, PoolClient, Redundancy};
use crate::trust::OwnerKey;

/// Shard size of test files: small, so a few KiB span several stripes, and not a
/// multiple of the seal chunk.
pub const SHARD: u32 = 4000;

/// A client over a fresh in-memory pool of `n` nodes, sealing shards when `sealed`,
/// with the default shape.
pub fn pool(n: usize, sealed: bool) -> (Arc<MemSegments>, PoolClient) {
    pool_with(n, sealed, Redundancy::Auto)
}

/// `pool`, with new files shaped by `redundancy`.
pub fn pool_with(n: usize, sealed: bool, redundancy: Redundancy) -> (Arc<MemSegments>, PoolClient) {
    let mem = MemSegments::new(n);
    let owner = sealed.then(|| Arc::new(OwnerKey::from_bytes([7; 32])));
    let mut cfg = DataConfig::new(owner);
    cfg.shard_size = SHARD;
    cfg.redundancy = redundancy;
    (mem.clone(), PoolClient::in_memory(mem, cfg))
}

/// `len` bytes, each a function of its offset and `seed`.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64 * 7 + i as u64 / 251) as u8)
        .collect()
}

/// Stores `data` as a new file with `put`: its manifest.
pub async fn put(client: &PoolClient, data: &[u8]) -> Manifest {
    client
        .put(data, |_| {})
        .await
        .expect("put into a healthy in-memory pool")
}
