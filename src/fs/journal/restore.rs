//! Recovery of a namespace from the pool onto an empty storage directory: the root's
//! snapshot and log, applied in order to a fresh metadata store, and the mount's node
//! key and id back in place, so the recovered mount proves the identity its files'
//! segments belong to.

use std::path::Path;
use std::sync::Arc;

use super::root::Root;
use super::JournalError;
use crate::client::PoolClient;
use crate::fs::meta::{Delta, MetaStore};
use crate::proto::decode_record;

/// The metadata store's file in a storage directory.
pub const META_FILE: &str = "meta.redb";

/// Applies the blobs `root` names to `meta`, the snapshot first, then the log in
/// order, one blob at a time: memory holds one blob (a snapshot part is at most
/// `snapshot::PART_BYTES` of records), whatever the namespace's size.
///
/// Errors: `Pool` naming the blob that cannot be read or decoded; `Meta` when the
/// store cannot be written.
pub async fn apply_chain(
    ns: &PoolClient,
    root: &Root,
    meta: &MetaStore,
) -> Result<(), JournalError> {
    for (what, m) in root
        .snapshot
        .iter()
        .map(|m| ("snapshot", m))
        .chain(root.log.iter().map(|m| ("log blob", m)))
    {
        let mut bytes = Vec::with_capacity(m.size as usize);
        ns.get(m, &mut bytes, |_| {})
            .await
            .map_err(|e| JournalError::Pool(format!("cannot read the namespace's {what}: {e}")))?;
        let delta: Delta = decode_record(&bytes).map_err(|e| {
            JournalError::Pool(format!("the namespace's {what} does not decode: {e}"))
        })?;
        drop(bytes);
        meta.apply(std::slice::from_ref(&delta))?;
    }
    Ok(())
}

/// Rebuilds `storage` from `root`: the metadata store (built beside it, then renamed
/// into place, so a failure leaves no half store), the node key and the node id.
/// `storage` must hold no metadata store and no node key.
///
/// Errors: `Meta` for a storage directory that is not empty of those, or that cannot
/// be written; `Pool` when a blob cannot be read.
pub fn rebuild(
    rt: &tokio::runtime::Handle,
    ns: &Arc<PoolClient>,
    root: &Root,
    storage: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), JournalError> {
    let meta_path = storage.join(META_FILE);
    let key_path = storage.join(crate::trust::NODE_KEY_FILE);
    for p in [&meta_path, &key_path] {
        if p.exists() {
            return Err(JournalError::Pool(format!(
                "{} exists: --recover rebuilds a storage directory that holds no namespace; \
                 give it an empty --storage directory (or mount this one without --recover)",
                p.display()
            )));
        }
    }
    let building = storage.join(format!("{META_FILE}.recovering"));
    let _ = std::fs::remove_file(&building);
    let applied = MetaStore::open(&building, uid, gid)
        .map_err(JournalError::from)
        .and_then(|meta| rt.block_on(apply_chain(ns, root, &meta)));
    if let Err(e) = applied {
        // A half-built store is no use to anyone: the next --recover starts afresh.
        let _ = std::fs::remove_file(&building);
        return Err(e);
    }
    crate::trust::write_key_bytes(&key_path, &root.node_key)
        .map_err(|e| JournalError::Pool(format!("cannot restore the node key: {e}")))?;
    if let Some(id) = root.node_id {
        crate::node::save_node_id(storage, id).map_err(|e| {
            JournalError::Pool(format!(
                "cannot restore the node id in {}: {e}",
                storage.display()
            ))
        })?;
    }
    std::fs::rename(&building, &meta_path).map_err(|e| {
        JournalError::Pool(format!("cannot put the recovered namespace in place: {e}"))
    })?;
    log::info!(
        "recovered the namespace from the pool: root {}, snapshot of {} B and {} log blobs",
        root.seq,
        root.snapshot_bytes,
        root.log.len()
    );
    Ok(())
}
