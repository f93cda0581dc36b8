//! Leaving the pool at unmount: the segments of the mount's own files on its node are
//! rebuilt elsewhere, then the node's own hand-off (the namespace's copy); both are
//! skipped when no other node of the pool is up, since nothing could move.

use std::time::Duration;

use super::MountConfig;
use crate::fs::repair;
use crate::fs::vfs::Vfs;
use crate::node::Node;

/// The hand-off of a mount that leaves the pool (`cfg.hand_off`): see the module doc.
pub(super) fn hand_off(rt: &tokio::runtime::Runtime, node: &Node, vfs: &Vfs, cfg: &MountConfig) {
    if alone_in_pool(rt, node, vfs) {
        // Nowhere to move anything: waiting for a hand-off would only delay the exit
        // and warn of files "not handed off" that were never at risk.
        log::info!(
            "no other node of the pool is up: this mount's files stay on its node \
             ({}) and are served again when it mounts",
            cfg.storage.display()
        );
        return;
    }
    hand_off_own_files(rt, node, vfs, cfg.repair_grace);
    // The journal still runs through the node's hand-off: the namespace's blobs and
    // root on this node (another identity's, to the node) move off it with a snapshot.
    rt.block_on(node.hand_off());
}

/// Is this mount's node the only member of the pool that is up (as the controller
/// sees it now)? `false` when the view cannot be had: then the hand-off is tried.
fn alone_in_pool(rt: &tokio::runtime::Runtime, node: &Node, vfs: &Vfs) -> bool {
    match rt.block_on(vfs.client().refresh_view()) {
        Ok(view) => view.live().iter().all(|n| Some(n.id) == node.node_id()),
        Err(_) => false,
    }
}

/// Before the mount's node leaves, the segments of the mount's own files that it holds
/// are rebuilt on other nodes (repair passes see the node leaving), so the leave does
/// not make them less redundant. Stops when a pass moves nothing more.
fn hand_off_own_files(rt: &tokio::runtime::Runtime, node: &Node, vfs: &Vfs, grace: Duration) {
    if node.own_bytes() == 0 || !rt.block_on(node.announce_leaving()) {
        return;
    }
    // The client's pool view must show this node leaving before a pass.
    if let Err(e) = rt.block_on(vfs.client().refresh_view()) {
        log::warn!("hand-off: cannot refresh the pool view: {e}");
    }
    loop {
        match repair::repair_pass(vfs, grace) {
            Ok(r) if r.rebuilt > 0 && node.own_bytes() > 0 => continue,
            Ok(_) => break,
            Err(e) => {
                log::warn!("hand-off: repair pass failed: {e}");
                break;
            }
        }
    }
    let left = node.own_bytes();
    if left > 0 {
        log::warn!(
            "leaving with {left} bytes of this mount's files on its node: no spare node could \
             take them. Those files that have parity on other nodes stay readable; those \
             without cannot be read until this node returns"
        );
    }
}
