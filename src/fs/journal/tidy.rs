//! Removes namespace blobs no root names: a flush that died between storing its blob
//! and writing the root, or old blobs whose removal failed after a snapshot. Only the
//! lease holder runs it, right after it wrote a root, so every blob a root may still
//! need is named by the one it holds; an age guard spares blobs being written now.

use std::collections::HashSet;
use std::time::Duration;

use super::root::{Root, ROOT_FILE};
use crate::client::{Holder, PoolClient};

/// How old an unnamed blob must be before it goes: far longer than a flush takes.
pub const TIDY_AGE: Duration = Duration::from_secs(120);

/// Removes, on every up node, the namespace identity's segments that `root` does not
/// name and that were last written more than `TIDY_AGE` ago. Returns how many went.
/// Failures are logged and skipped: a later pass tries again.
pub async fn tidy(ns: &PoolClient, root: &Root) -> usize {
    let Ok(view) = ns.refresh_view().await else {
        return 0;
    };
    let mut named: HashSet<&str> = root.log.iter().map(|m| m.place.file_id.as_str()).collect();
    named.extend(root.snapshot.iter().map(|m| m.place.file_id.as_str()));
    named.insert(ROOT_FILE);
    let mut removed = 0;
    for n in view.live() {
        let holder = Holder {
            node_id: n.id,
            addr: n.addr,
        };
        let segments = match ns.list_segments(&holder).await {
            Ok(s) => s,
            Err(e) => {
                log::debug!("namespace tidy: cannot list node {}: {e}", n.id);
                continue;
            }
        };
        for info in segments {
            if named.contains(info.segment.file.as_str()) {
                continue;
            }
            match ns
                .reclaim_segment(&holder, info.segment.clone(), Vec::new(), TIDY_AGE)
                .await
            {
                Ok(crate::proto::Reclaim::Deleted { .. }) => removed += 1,
                Ok(_) => {}
                Err(e) => log::debug!("namespace tidy on node {}: {e}", n.id),
            }
        }
    }
    if removed > 0 {
        log::info!("namespace: removed {removed} blob segments no root names");
    }
    removed
}
