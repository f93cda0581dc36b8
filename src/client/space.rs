//! Space on the holders: reserving stripes ahead of writes (`fallocate`), punching
//! freed stripes, deleting a file's segments, and the sweep's verbs (listing this
//! client's segments on a node, removing one that stayed unwritten long enough).

use std::ops::Range;
use std::time::Duration;

use super::segments::SegmentError;
use super::Placement;
use super::{fanout, layout, refused, ClientError, Holder, Manifest, PoolClient};
use crate::proto::{NodeId, NodeState, Reclaim, SegmentInfo, SegmentRef, MAX_LIST_PAGE};

/// What a space request does to a range of a segment (see `PoolClient::reserve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpaceOp {
    Reserve,
    Punch,
}

impl PoolClient {
    /// RESERVEs or PUNCHes bytes `offset..offset+len` of segment `index` of a file on
    /// `holder`, with a call when it is this process's own node.
    async fn space_on(
        &self,
        place: &Placement,
        holder: &Holder,
        index: u32,
        (offset, len): (u64, u64),
        op: SpaceOp,
    ) -> Result<(), ClientError> {
        let segment = SegmentRef {
            file: place.file_id.clone(),
            index,
        };
        let to = self.reach(holder).await;
        let done = match op {
            SpaceOp::Reserve => self.io.reserve(&to, segment, offset, len).await,
            SpaceOp::Punch => self.io.punch(&to, segment, offset, len).await,
        };
        done.map_err(|source| refused(holder, &place.file_id, index, source))
    }

    /// Reserves room for stripes `stripes` of a file on its nodes, so that writing them
    /// later cannot fail for lack of space (what `fallocate(2)` promises): on every
    /// holder the view says is up, in parallel, RESERVE of those stripes' slots in its
    /// segment (with a call on this process's own node). Holders that are down or do not
    /// answer are skipped, as writes route around them. All or nothing: if a holder
    /// refuses for space or quota (`NoSpace`, `Quota`: ENOSPC, EDQUOT), or fewer holders
    /// than a write's quorum (k + 1 with parity, else all) reserved, the ranges that were
    /// reserved are punched back and the refusal (else the first failure, else
    /// `Unavailable`) is returned.
    ///
    /// The caller passes only runs of stripes that are holes in `m` (nothing stored in
    /// those slots): that is what makes punching a refused reservation back safe.
    pub async fn reserve(&self, m: &Manifest, stripes: Range<u64>) -> Result<(), ClientError> {
        if stripes.is_empty() {
            return Ok(());
        }
        let place = &m.place;
        let layout = &place.layout;
        let offset = layout.segment_offset(stripes.start);
        let range = (offset, layout.segment_offset(stripes.end) - offset);
        let n = place.holders.len();
        let needed = fanout::write_quorum(layout);
        let skip = self.unhealthy(&place.holders).await;
        let asks = (0..n).filter(|&i| !skip[i]).map(|i| async move {
            let r = self
                .space_on(place, &place.holders[i], i as u32, range, SpaceOp::Reserve)
                .await;
            (i, r)
        });
        let mut reserved = Vec::new();
        let mut failures = Vec::new();
        for (i, r) in futures::future::join_all(asks).await {
            match r {
                Ok(()) => reserved.push(i),
                Err(e) => failures.push(e),
            }
        }
        let refusal = failures
            .iter()
            .position(|e| matches!(e, ClientError::NoSpace { .. } | ClientError::Quota { .. }));
        if refusal.is_none() && reserved.len() >= needed {
            for e in &failures {
                log::warn!("reserve of stripes {stripes:?} skipped a holder: {e}");
            }
            return Ok(());
        }
        let undo = reserved
            .iter()
            .map(|&i| self.space_on(place, &place.holders[i], i as u32, range, SpaceOp::Punch));
        for e in futures::future::join_all(undo)
            .await
            .into_iter()
            .filter_map(Result::err)
        {
            log::warn!("cannot give back a reservation of stripes {stripes:?}: {e}");
        }
        Err(match refusal {
            Some(pos) => failures.swap_remove(pos),
            None if !failures.is_empty() => failures.swap_remove(0),
            None => ClientError::Unavailable {
                file: place.file_id.clone(),
                stripe: stripes.start,
                need: needed,
                have: reserved.len(),
                missing: "holders are down".into(),
            },
        })
    }

    /// Frees the slots of stripes `stripes` of a file on the nodes (PUNCH): the slot
    /// each stripe's record names (slot 0 for a hole or a reservation) on every holder
    /// of every segment, and on each node a shard of one of those stripes was moved to,
    /// in parallel (with a call on this process's own node). Best effort: nodes the
    /// view says are down or gone are not asked (they would only make the caller
    /// wait), and the first failure is returned for logging. A slot left allocated
    /// costs space, never bytes: the manifest no longer points at it.
    pub async fn punch(&self, m: &Manifest, stripes: Range<u64>) -> Result<(), ClientError> {
        if stripes.is_empty() {
            return Ok(());
        }
        let place = &m.place;
        let layout = &place.layout;
        // Per (node, segment): the holder, and the runs of stripes to punch there.
        type Runs = (Holder, Vec<Range<u64>>);
        let mut targets: std::collections::BTreeMap<(NodeId, u32), Runs> = Default::default();
        let mut add = |holder: &Holder, index: u32, run: Range<u64>| {
            let (_, runs) = targets
                .entry((holder.node_id, index))
                .or_insert_with(|| (holder.clone(), Vec::new()));
            match runs.last_mut() {
                Some(last) if last.end >= run.start => last.end = last.end.max(run.end),
                _ => runs.push(run),
            }
        };
        // Holes and reservations between the records: slot 0 of every segment.
        let mut gaps = Vec::new();
        let mut from = stripes.start;
        for (j, rec) in m.records_in(stripes.clone()) {
            if from < j {
                gaps.push(from..j);
            }
            for (i, h) in place.holders.iter().enumerate() {
                add(h, rec.segment_index(i), j..j + 1);
            }
            for mv in &rec.moved {
                add(&mv.to, rec.segment_index(mv.shard as usize), j..j + 1);
            }
            from = j + 1;
        }
        if from < stripes.end {
            gaps.push(from..stripes.end);
        }
        for run in gaps {
            for (i, h) in place.holders.iter().enumerate() {
                add(h, layout::segment_index(i, 0), run.clone());
            }
        }
        let view = self.view().await.ok();
        let away = |id: NodeId| {
            view.as_ref()
                .and_then(|v| v.node(id))
                .is_some_and(|n| matches!(n.state, NodeState::Down | NodeState::Gone))
        };
        let punches = targets
            .iter()
            .filter(|((node, _), _)| !away(*node))
            .flat_map(|((_, index), (holder, runs))| {
                runs.iter().map(move |run| {
                    let offset = layout.segment_offset(run.start);
                    let range = (offset, layout.segment_offset(run.end) - offset);
                    self.space_on(place, holder, *index, range, SpaceOp::Punch)
                })
            });
        futures::future::join_all(punches)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Removes a file's segments from every node that holds any; nodes that cannot be
    /// reached are reported, the others are cleaned.
    pub async fn delete(&self, m: &Manifest) -> Result<(), ClientError> {
        let place = &m.place;
        let holders = m.all_holders();
        let deletes = holders.iter().map(|holder| async move {
            let to = self.reach(holder).await;
            self.io
                .delete(&to, &place.file_id)
                .await
                .map_err(|source| ClientError::Delete {
                    node: holder.node_id,
                    file: place.file_id.clone(),
                    source,
                })
        });
        let results = futures::future::join_all(deletes).await;
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Every segment this client holds on `holder` (LIST, page after page of
    /// `MAX_LIST_PAGE`), in (file id, index) order. Errors: the first failed page's.
    pub async fn list_segments(&self, holder: &Holder) -> Result<Vec<SegmentInfo>, SegmentError> {
        let to = self.reach(holder).await;
        let mut all: Vec<SegmentInfo> = Vec::new();
        loop {
            let after = all.last().map(|info| info.segment.clone());
            let page = self.io.list(&to, after, MAX_LIST_PAGE).await?;
            let more = page.more && !page.segments.is_empty();
            all.extend(page.segments);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Removes this client's `segment` on `holder` (with `keep`: every byte of it but
    /// those `(offset, len)` ranges) unless it was written in the last `older_than`
    /// (the node checks, under its store's lock); says which happened.
    pub async fn reclaim_segment(
        &self,
        holder: &Holder,
        segment: SegmentRef,
        keep: Vec<(u64, u64)>,
        older_than: Duration,
    ) -> Result<Reclaim, SegmentError> {
        let to = self.reach(holder).await;
        let ms = older_than.as_millis().min(u64::MAX as u128) as u64;
        self.io.delete_segment(&to, segment, keep, ms).await
    }

    /// Removes this client's segments of `file` from one node.
    pub async fn delete_on(&self, holder: &Holder, file: &str) -> Result<(), ClientError> {
        let to = self.reach(holder).await;
        self.io
            .delete(&to, file)
            .await
            .map_err(|source| ClientError::Delete {
                node: holder.node_id,
                file: file.into(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{bytes, pool, pool_with, put};
    use super::super::Redundancy;
    use super::super::{ClientError, Fault};

    #[tokio::test]
    async fn a_reservation_is_all_or_nothing() {
        let (mem, client) = pool(3, false);
        let m = client.new_file().await.expect("new file");
        mem.set_fault(2, Some(Fault::Full));
        let err = client.reserve(&m, 0..3).await.expect_err("node 2 is full");
        assert!(matches!(err, ClientError::NoSpace { .. }), "{err}");
        for id in 1..=3 {
            assert_eq!(
                mem.used(id),
                0,
                "node {id} keeps nothing of a refused reservation"
            );
        }
        mem.set_fault(2, None);
        client.reserve(&m, 0..3).await.expect("room now");
        assert!(mem.used(1) > 0 && mem.used(2) > 0 && mem.used(3) > 0);
        client.punch(&m, 0..3).await.expect("punch");
        for id in 1..=3 {
            assert_eq!(mem.used(id), 0, "node {id}: a punched reservation is freed");
        }
    }

    #[tokio::test]
    async fn a_reservation_skips_a_dead_holder_but_not_below_the_quorum() {
        // k = 2, m = 2: a quorum of k + 1 = 3 holders of 4.
        let (mem, client) = pool_with(4, false, Redundancy::Tolerate(2));
        let m = client.new_file().await.expect("new file");
        let stripe = m.place.layout.segment_offset(1);
        mem.set_fault(4, Some(Fault::Down));
        client
            .reserve(&m, 0..1)
            .await
            .expect("3 holders of 4 reserved");
        mem.set_fault(3, Some(Fault::Down));
        client
            .reserve(&m, 1..2)
            .await
            .expect_err("2 holders are below the quorum");
        for id in 1..=2 {
            assert_eq!(
                mem.used(id),
                stripe,
                "node {id}: stripe 1's reservation given back"
            );
        }
    }

    #[tokio::test]
    async fn delete_removes_every_segment_of_a_file() {
        let (mem, client) = pool(3, true);
        let m = put(&client, &bytes(20_000, 1)).await;
        client.delete(&m).await.expect("delete");
        for id in 1..=3 {
            assert_eq!(mem.segments_of(id, &m.place.file_id), 0, "node {id}");
        }
    }
}
