//! The root of a namespace kept in the pool: one small sealed record, replicated whole
//! on every up node, that names the snapshot and log blobs holding the namespace and
//! carries the writer's lease. It is the one thing found without a manifest: a
//! recovering mount asks every node for it and takes the newest that opens.
//!
//! On a node the root is two segments of the namespace identity, `ROOT_FILE` index 0
//! and 1; write `seq` goes to index `seq % 2`, so a write torn by a node's crash leaves
//! the previous root whole in the other. Each is `MAGIC`, `seq` (u64 LE), a random
//! salt (16 bytes), the sealed body's length (u32 LE), then the body: the encoded
//! `Root` sealed with AES-256-GCM (ring) under a key derived with BLAKE3 from the owner
//! secret and the salt, the header before the body as associated data. A fresh salt per
//! write makes every (key, nonce) pair seal one plaintext only, as shard sealing does
//! (`client::seal`).

use futures::future::join_all;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};

use crate::client::{Holder, Manifest, PoolClient};
use crate::proto::{decode_record, encode_record, NodeId, SegmentRef};
use crate::trust::OwnerKey;

/// The root's file id on every node (in the namespace identity's own directory, so
/// no other owner's can clash with it).
pub const ROOT_FILE: &str = "namespace-root";
/// First bytes of a root: the format of everything after them.
const MAGIC: &[u8; 8] = b"PFSROOT1";
/// Bytes before the sealed body.
const HEADER: usize = 8 + 8 + 16 + 4;
/// Largest sealed body read back (a root names at most `MAX_LOG` log blobs and one
/// snapshot: far below this).
pub const MAX_ROOT: usize = 8 << 20;
/// BLAKE3 key-derivation context of the root's sealing key.
const ROOT_KEY_CONTEXT: &str = "poolfs 2026-11 namespace root sealing key, v1";

/// Who may write the namespace, until when.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's machine (`--machine`), for the message a second mount gets.
    pub machine: String,
    /// The holding mount's random instance id (a remount is another instance).
    pub instance: u64,
    /// Wall-clock milliseconds since the epoch when the lease runs out unless renewed.
    pub until_ms: u64,
}

/// The root record (see the module doc).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Root {
    /// Grows by one on every write of the root.
    pub seq: u64,
    /// The writing store's id (`MetaStore::store_id`): tells a stale copy of the
    /// namespace (an old disk back after a recovery) from the one in the pool.
    pub store_id: u64,
    /// The writer's lease; `None` once it unmounted cleanly.
    pub lease: Option<Lease>,
    /// The private half of the mount's node key: a recovered mount proves the same
    /// identity, so its files' segments are its own again and its node keeps its id.
    pub node_key: [u8; 32],
    /// The mount's node id when the root was written.
    pub node_id: Option<NodeId>,
    /// The last snapshot of the namespace (a full `Delta`), if one was written.
    pub snapshot: Option<Manifest>,
    /// Bytes of the snapshot blob.
    pub snapshot_bytes: u64,
    /// The deltas written since the snapshot, oldest first.
    pub log: Vec<Manifest>,
    /// Bytes of the log blobs, summed.
    pub log_bytes: u64,
    /// Wall-clock milliseconds since the epoch of this write.
    pub written_ms: u64,
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key(owner: &OwnerKey, salt: &[u8; 16]) -> LessSafeKey {
    let mut material = [0u8; 48];
    material[..32].copy_from_slice(owner.bytes());
    material[32..].copy_from_slice(salt);
    let key = blake3::derive_key(ROOT_KEY_CONTEXT, &material);
    // A 32-byte key is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!()))
}

/// The root sealed for a node: header then body.
///
/// Errors: the record cannot be encoded (a bug), as a message.
pub fn seal(owner: &OwnerKey, root: &Root) -> Result<Vec<u8>, String> {
    let mut body = encode_record(root).map_err(|e| e.to_string())?;
    let salt: [u8; 16] = rand::random();
    let mut out = Vec::with_capacity(HEADER + body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&root.seq.to_le_bytes());
    out.extend_from_slice(&salt);
    let len = u32::try_from(body.len() + AES_256_GCM.tag_len()).map_err(|e| e.to_string())?;
    out.extend_from_slice(&len.to_le_bytes());
    let aad = Aad::from(out.clone());
    key(owner, &salt)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key([0; NONCE_LEN]), aad, &mut body)
        .map_err(|_| "cannot seal the namespace root".to_string())?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// The length of the sealed body a header announces, or `None` for bytes that are
/// not a root header.
fn body_len(header: &[u8]) -> Option<usize> {
    if header.len() < HEADER || &header[..8] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[32..36].try_into().ok()?) as usize;
    (len <= MAX_ROOT).then_some(len)
}

/// Opens a root sealed by `seal` for this owner. `None` for anything else: another
/// owner's, torn, or tampered with.
pub fn open(owner: &OwnerKey, header: &[u8], body: &[u8]) -> Option<Root> {
    let len = body_len(header)?;
    if body.len() != len {
        return None;
    }
    let salt: [u8; 16] = header[16..32].try_into().ok()?;
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let mut body = body.to_vec();
    let plain = key(owner, &salt)
        .open_in_place(
            Nonce::assume_unique_for_key([0; NONCE_LEN]),
            Aad::from(&header[..HEADER]),
            &mut body,
        )
        .ok()?;
    let root: Root = decode_record(plain).ok()?;
    (root.seq == seq).then_some(root)
}

/// What asking the pool for the root found.
#[derive(Debug, Default)]
pub struct Found {
    /// The newest root that opened, if any.
    pub root: Option<Root>,
    /// Nodes asked.
    pub asked: usize,
    /// Nodes that could not be asked (a network failure, not a missing root).
    pub unreachable: usize,
}

async fn read_one(
    ns: &PoolClient,
    owner: &OwnerKey,
    holder: &Holder,
    index: u32,
) -> Result<Option<Root>, ()> {
    let segment = SegmentRef {
        file: ROOT_FILE.into(),
        index,
    };
    let header = match ns
        .read_record(holder, segment.clone(), 0, HEADER as u32)
        .await
    {
        Ok(h) => h,
        Err(e) if e.kind() == Some(crate::proto::ErrorKind::NotFound) => return Ok(None),
        Err(e) => {
            log::debug!("namespace root {index} on node {}: {e}", holder.node_id);
            return Err(());
        }
    };
    let Some(len) = body_len(&header) else {
        return Ok(None);
    };
    let body = match ns
        .read_record(holder, segment, HEADER as u64, len as u32)
        .await
    {
        Ok(b) => b,
        Err(_) => return Ok(None),
    };
    Ok(open(owner, &header, &body))
}

/// Asks every up node of the pool for both root segments and keeps the newest root
/// that opens. Nodes without one count as asked; nodes that fail count as unreachable.
///
/// Errors: no pool view at all (the controller cannot be reached and none is cached).
pub async fn read_latest(
    ns: &PoolClient,
    owner: &OwnerKey,
) -> Result<Found, crate::client::ClientError> {
    let view = ns.refresh_view().await?;
    let holders: Vec<Holder> = view
        .live()
        .into_iter()
        .map(|n| Holder {
            node_id: n.id,
            addr: n.addr,
        })
        .collect();
    let asks = holders.iter().map(|h| async move {
        let (a, b) = futures::join!(read_one(ns, owner, h, 0), read_one(ns, owner, h, 1));
        (a, b)
    });
    let mut found = Found {
        asked: holders.len(),
        ..Found::default()
    };
    for (a, b) in join_all(asks).await {
        if a.is_err() && b.is_err() {
            found.unreachable += 1;
        }
        for root in [a, b].into_iter().flatten().flatten() {
            if found.root.as_ref().is_none_or(|r| root.seq > r.seq) {
                found.root = Some(root);
            }
        }
    }
    Ok(found)
}

/// Writes `root` (already sealed as `sealed`) to every up node; returns how many
/// stored it.
///
/// Errors: no pool view at all.
pub async fn write_all(
    ns: &PoolClient,
    root: &Root,
    sealed: Vec<u8>,
) -> Result<(usize, usize), crate::client::ClientError> {
    let view = ns.refresh_view().await?;
    let live = view.live();
    let index = (root.seq % 2) as u32;
    let stores = live.iter().map(|n| {
        let holder = Holder {
            node_id: n.id,
            addr: n.addr,
        };
        let bytes = sealed.clone();
        async move {
            let segment = SegmentRef {
                file: ROOT_FILE.into(),
                index,
            };
            match ns.store_record(&holder, segment, 0, bytes).await {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("namespace root on node {}: {e}", holder.node_id);
                    false
                }
            }
        }
    });
    let stored = join_all(stores).await.into_iter().filter(|ok| *ok).count();
    Ok((stored, live.len()))
}

/// Most root copies a write must reach to count: two (so the loss of any one disk,
/// the writer's own included, leaves one), or every up node if fewer.
pub fn required_copies(live: usize) -> usize {
    live.min(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_opens_only_for_its_owner_and_untampered() {
        let owner = OwnerKey::from_bytes([3; 32]);
        let root = Root {
            seq: 7,
            store_id: 9,
            node_key: [5; 32],
            ..Root::default()
        };
        let sealed = seal(&owner, &root).unwrap();
        let (h, b) = sealed.split_at(HEADER);
        assert_eq!(open(&owner, h, b), Some(root));
        assert_eq!(
            open(&OwnerKey::from_bytes([4; 32]), h, b),
            None,
            "another owner"
        );
        let mut bad = b.to_vec();
        bad[3] ^= 1;
        assert_eq!(open(&owner, h, &bad), None, "a flipped bit");
        let mut h2 = h.to_vec();
        h2[8] ^= 1; // another seq in the header
        assert_eq!(open(&owner, &h2, b), None, "a header of another write");
    }
}
