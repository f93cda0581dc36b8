//! The owner's sweep: every segment this mount stored on a node belongs to a live file
//! or is reclaimed within a bounded time. Covers what nothing else frees: shards stored
//! away and since brought home, old copies on a node back after its data was rebuilt
//! elsewhere, the shards of a file in flight when the mount crashed, shards repair
//! wrote without recording them, and the segments of files deleted while their node
//! was away.
//!
//! One pass, for each live node: LIST this mount's segments there, THEN snapshot the
//! files that are open, THEN read the committed manifests (a page of files at a time,
//! keeping what they name of the listed segments only: each manifest is read at some
//! moment after the open files were looked at, which is all the argument below needs,
//! and the pass holds no map of every file's segments). A segment is live if a
//! manifest names it (the segment, slot 0 or its shadow, of each stored shard on the
//! node holding it: its holder or where it was moved) or its file is open. The rest is
//! sent a conditional DELETE-SEGMENT: "only if not written in the last `grace` plus the
//! time since the listing", which the node checks under its store's lock. A live
//! segment of a closed file that allocates more than its live slots can hold gets the
//! same request with `keep`: the node punches everything but those slots (the old slot
//! of a stripe rewritten while this node was away, away copies brought home).
//!
//! Why nothing live is reclaimed: a segment listed and later named by a manifest was
//! either named already when the manifests were read (committed before), or its file
//! was open when the open files were looked at (a file is committed before it leaves
//! the open set), or it was written after that (so it is younger than the grace when
//! the DELETE arrives, and kept). A segment created after the listing is not listed.
//! Repair, which writes segments of closed files, runs in the same background thread
//! as the sweep (`mount::spawn_repair`), never during a pass; a repair that
//! wrote and then failed before committing leaves segments no manifest names, which a
//! later pass reclaims once they are older than the grace.
//!
//! Bound: a dead segment last written at T is reclaimed by the first pass that starts
//! after T + grace with its node up: by T + grace + interval + one pass (for a node
//! that was away, counted from its return; a repair pass running then, in the same
//! thread, delays it by its length).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::vfs::{Vfs, Walk};
use super::FsError;
use crate::client::{Holder, Manifest};
use crate::proto::{NodeId, NodeState, Reclaim, SegmentInfo};

/// The default `--reclaim-after`: how long a segment no live file names stays before
/// the sweep removes it (seconds).
pub const DEFAULT_RECLAIM_AFTER_SECS: u64 = 600;

/// How often a mount sweeps for a given grace: a quarter of it, at least a second, so
/// the bound (grace + interval + one pass) stays within 1.25 × grace plus a pass.
pub fn interval_for(grace: Duration) -> Duration {
    (grace / 4).max(Duration::from_secs(1))
}

/// What one sweep pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Live nodes whose segments were listed.
    pub nodes: usize,
    /// Live nodes that could not be listed (their segments wait for a later pass).
    pub unreachable: usize,
    /// Segments of this mount listed on those nodes.
    pub listed: usize,
    /// Segments no live file names, removed in this pass.
    pub reclaimed: usize,
    /// Bytes those freed on the nodes' disks.
    pub freed: u64,
    /// Segments no live file names but written within the grace: kept for now.
    pub waiting: usize,
    /// Live segments whose dead slots were freed in this pass.
    pub trimmed: usize,
}

/// Added to the age a segment must have to be reclaimed, beyond the grace and the time
/// since it was listed: the time a DELETE-SEGMENT may take to reach its node.
const LISTING_MARGIN: Duration = Duration::from_secs(1);

/// A segment as (file id, index).
type SegKey = (String, u32);

/// The byte ranges `(offset, len)` of a segment that live shards or reservations use.
type Kept = Vec<(u64, u64)>;

/// The segments the committed manifests name, per node, each with the slots it keeps:
/// for each stored stripe and each slice of the log, the slot of each shard in the
/// segment of the node holding it (its holder, or where it was moved), and the reserved stripes' slots in slot 0 of
/// every holder of a file with reservations. A file placed but never committed with a
/// stripe (a copy in flight at a crash) names none.
#[cfg(test)]
fn named_segments<'a>(
    manifests: impl IntoIterator<Item = &'a Manifest>,
) -> HashMap<NodeId, HashMap<SegKey, Kept>> {
    let mut live = HashMap::new();
    for m in manifests {
        name_segments(m, &mut live, |_, _, _| true);
    }
    live
}

/// Adds the segments `m` names (as `named_segments`) to `live`, those `wanted` says
/// yes to only (a sweep keeps what it listed, so its map is no larger than the
/// listings, whatever the file count).
fn name_segments(
    m: &Manifest,
    live: &mut HashMap<NodeId, HashMap<SegKey, Kept>>,
    wanted: impl Fn(NodeId, &str, u32) -> bool,
) {
    let mut name = |node: NodeId, file: &str, index: u32, range: (u64, u64)| {
        if !wanted(node, file, index) {
            return;
        }
        live.entry(node)
            .or_default()
            .entry((file.to_string(), index))
            .or_default()
            .push(range);
    };
    {
        let file = &m.place.file_id;
        let layout = &m.place.layout;
        let slots = |from: u64, to: u64| {
            let start = layout.segment_offset(from);
            (start, layout.segment_offset(to) - start)
        };
        // Reservations are made in slot 0 of every holder.
        for run in m.reserved.iter() {
            for (i, h) in m.place.holders.iter().enumerate() {
                name(h.node_id, file, i as u32, slots(run.start, run.end));
            }
        }
        // Stripes, and slices (slice s in slot s of the log segments).
        let slices = m.log.slices.iter().map(|(s, slice)| (*s, &slice.record));
        for (j, rec) in m.records().chain(slices) {
            for i in 0..m.place.holders.len() {
                let at = rec.holder(&m.place, i).node_id;
                name(at, file, rec.segment_index(i), slots(j, j + 1));
            }
        }
    }
}

/// `kept` sorted, with touching or overlapping ranges joined.
fn merged(mut kept: Kept) -> Kept {
    kept.sort_unstable();
    let mut out: Kept = Vec::with_capacity(kept.len());
    for (offset, len) in kept {
        match out.last_mut() {
            Some((o, l)) if *o + *l >= offset => *l = (*l).max(offset + len - *o),
            _ => out.push((offset, len)),
        }
    }
    out
}

/// Does a segment allocating `allocated` bytes hold more than its `kept` slots can,
/// each rounded up to whole 4 KiB blocks, plus a block: dead slots worth punching?
fn holds_dead_slots(allocated: u64, kept: &Kept) -> bool {
    const BLOCK: u64 = 4096;
    let room: u64 = kept
        .iter()
        .map(|(_, len)| len.div_ceil(BLOCK) * BLOCK + BLOCK)
        .sum();
    allocated > room + BLOCK
}

/// One live node and this mount's segments on it.
type Listing = (Holder, Vec<SegmentInfo>);

/// This mount's segments on every live node, and the number of live nodes that could
/// not be listed.
fn list_live_nodes(vfs: &Vfs) -> Result<(Vec<Listing>, usize), FsError> {
    let client = vfs.client();
    let view = vfs.run(client.refresh_view())?;
    let holders: Vec<Holder> = view
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| Holder {
            node_id: n.id,
            addr: n.addr,
        })
        .collect();
    let listed = vfs.run(futures::future::join_all(holders.into_iter().map(
        |h| async move {
            let listing = client.list_segments(&h).await;
            (h, listing)
        },
    )));
    let mut out = Vec::new();
    let mut unreachable = 0;
    for (h, listing) in listed {
        match listing {
            Ok(segments) => out.push((h, segments)),
            Err(e) => {
                log::warn!(
                    "sweep: cannot list this mount's segments on node {}: {e}",
                    h.node_id
                );
                unreachable += 1;
            }
        }
    }
    Ok((out, unreachable))
}

/// One sweep: removes, on every live node, this mount's segments that no committed
/// manifest names, whose file is not open, and that were not written in the last
/// `grace`. Errors: the pool view or the metadata could not be read (nothing is
/// removed then). A node that cannot be listed or refuses a DELETE is skipped and
/// counted; a later pass tries again.
pub fn sweep_pass(vfs: &Vfs, grace: Duration) -> Result<SweepReport, FsError> {
    // The order matters (see the module's comment): listings, open files, manifests.
    let listed_at = std::time::Instant::now();
    let (listings, unreachable) = list_live_nodes(vfs)?;
    let open: HashSet<String> = vfs.open_file_ids().into_iter().collect();
    // The manifests are read a page at a time; what they name is kept for the listed
    // segments only.
    let listed: HashSet<(NodeId, &str, u32)> = listings
        .iter()
        .flat_map(|(h, segments)| {
            segments
                .iter()
                .map(|s| (h.node_id, s.segment.file.as_str(), s.segment.index))
        })
        .collect();
    let mut report = SweepReport {
        nodes: listings.len(),
        unreachable,
        ..Default::default()
    };
    // Nothing of this mount's on any node (its files all small, kept in the namespace):
    // nothing to judge, and no walk of every file for it.
    if listed.is_empty() {
        return Ok(report);
    }
    let mut live = HashMap::new();
    let walk = vfs.walk_files(|inode| {
        if let Some(m) = &inode.manifest {
            name_segments(m, &mut live, |node, file, index| {
                listed.contains(&(node, file, index))
            });
        }
        Ok(())
    })?;
    drop(listed);
    if walk == Walk::Stopped {
        // The files after the walk's last page were not seen: their segments would look
        // unnamed. Remove nothing.
        return Ok(report);
    }
    let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
    for (holder, segments) in listings {
        report.listed += segments.len();
        let named = live.get(&holder.node_id);
        for info in segments {
            let seg = &info.segment;
            let key = (seg.file.clone(), seg.index);
            if open.contains(&seg.file) {
                continue;
            }
            // A named segment keeps its live slots; the rest of it may be dead slots (the
            // old slot of a stripe rewritten while this node was away, an away copy
            // brought home) and is freed, under the same age rule, when there are some.
            let keep = match named.and_then(|n| n.get(&key)) {
                Some(kept) => {
                    let kept = merged(kept.clone());
                    if !holds_dead_slots(info.allocated, &kept)
                        || kept.len() > crate::proto::MAX_KEEP_RANGES
                    {
                        continue;
                    }
                    kept
                }
                None => Vec::new(),
            };
            if info.age_ms < grace_ms {
                report.waiting += 1;
                continue;
            }
            // Not written since the listing either, whatever the grace: a write after it
            // (a file opened since, writing into this segment) makes the segment younger
            // than the time since, which the node checks under its lock. A second covers
            // the request's way there.
            let older_than = grace + listed_at.elapsed() + LISTING_MARGIN;
            let outcome =
                vfs.run(
                    vfs.client()
                        .reclaim_segment(&holder, seg.clone(), keep, older_than),
                );
            match outcome {
                Ok(Reclaim::Deleted { freed }) => {
                    log::info!(
                        "sweep: reclaimed segment {}/{} on node {}: {freed} bytes no live \
                         file names",
                        seg.file,
                        seg.index,
                        holder.node_id
                    );
                    report.reclaimed += 1;
                    report.freed += freed;
                }
                Ok(Reclaim::Trimmed { freed }) => {
                    log::info!(
                        "sweep: freed {freed} bytes of dead slots in segment {}/{} on node {}",
                        seg.file,
                        seg.index,
                        holder.node_id
                    );
                    report.trimmed += 1;
                    report.freed += freed;
                }
                Ok(Reclaim::Young { .. }) => report.waiting += 1,
                Ok(Reclaim::Missing) => {}
                Err(e) => log::warn!(
                    "sweep: cannot reclaim segment {}/{} on node {}: {e}",
                    seg.file,
                    seg.index,
                    holder.node_id
                ),
            }
        }
    }
    Ok(report)
}

/// Space of one node as this mount sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpace {
    /// The node.
    pub node: NodeId,
    /// Bytes this mount's segments take on its disk (from LIST: allocated bytes).
    pub held: u64,
    /// Bytes of shards and reserved slots this mount's committed files keep there.
    pub live: u64,
}

/// Bytes the live files of `m` keep on each node: each stored shard (sealed length)
/// on the node holding it, and each reserved slot on each holder.
fn live_bytes(m: &Manifest, into: &mut HashMap<NodeId, u64>) {
    if m.inline.is_some() && !m.stores_anything() && m.reserved.is_empty() {
        return;
    }
    let layout = &m.place.layout;
    let n = m.place.holders.len();
    for (j, rec) in m.records() {
        let shard = rec.stored_len(layout.shard_len(m.stripe_len(j)) as usize) as u64;
        for i in 0..n {
            *into.entry(rec.holder(&m.place, i).node_id).or_default() += shard;
        }
    }
    for run in m.reserved.iter() {
        let slots = layout.segment_offset(run.end) - layout.segment_offset(run.start);
        for h in &m.place.holders {
            *into.entry(h.node_id).or_default() += slots;
        }
    }
}

/// Per live node, the bytes this mount's segments hold there against the bytes its
/// committed files need there (what `status` shows as held against live). Nodes that
/// cannot be listed are left out. Errors: the view or the metadata could not be read.
pub fn held_and_live(vfs: &Vfs) -> Result<Vec<NodeSpace>, FsError> {
    let (listings, _) = list_live_nodes(vfs)?;
    let mut live = HashMap::new();
    vfs.meta().each_file(|inode| {
        if let Some(m) = &inode.manifest {
            live_bytes(m, &mut live);
        }
        Ok(())
    })?;
    let mut out: Vec<NodeSpace> = listings
        .into_iter()
        .map(|(h, segments)| NodeSpace {
            node: h.node_id,
            held: segments.iter().map(|s| s.allocated).sum(),
            live: live.get(&h.node_id).copied().unwrap_or(0),
        })
        .collect();
    out.sort_by_key(|s| s.node);
    Ok(out)
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
