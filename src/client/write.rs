//! The write side: placing a new file, and storing a stripe (encode, seal, one shard
//! to each holder in parallel under the write quorum, stand-ins for holders that fail).

use std::sync::Arc;

use super::{fanout, layout, placement, refused, stripe};
use super::{ClientError, Holder, Manifest, Moved, PoolClient, Sealing, StripeRecord};
use super::{FileCipher, Placement};
use crate::proto::{NodeId, PoolView, SegmentRef};

impl PoolClient {
    /// An empty manifest for a new file, placed by `placement::place_new` on the pool
    /// as the view shows it now. Errors: `NoNodes` when no node is live; `Controller`
    /// when there is no view.
    pub async fn new_file(&self) -> Result<Manifest, ClientError> {
        let view = self.view().await?;
        let id: [u8; 16] = rand::random();
        let file_id = hex::encode(id);
        placement::place_new(&view, self.cfg.redundancy, self.cfg.shard_size, file_id)
            .map(|place| Manifest::new(self.own_node_first(&view, place)))
            .ok_or(ClientError::NoNodes)
    }

    /// `place` with this process's own node (a mount's) holding segment 0, the first
    /// data shard, when it is one of the holders: the start of each stripe is then read
    /// from the local disk with no round trip (a file's first byte above all), where the
    /// rendezvous order would have given it any segment, and by node id (the mount
    /// joins last) mostly a parity one. A swap of two holders: each node keeps as many
    /// segments as `place_new` gave it, so spread and tolerance do not change. Only
    /// while `view` has that node up: a down holder stays where `place_new` put it
    /// (last, on parity).
    pub(super) fn own_node_first(&self, view: &PoolView, mut place: Placement) -> Placement {
        let own = |h: &Holder| self.io.by_call(h.node_id) && view.is_up(h.node_id);
        if let Some(j) = place.holders.iter().position(own) {
            place.holders.swap(0, j);
        }
        place
    }

    /// The placement an empty file (nothing stored, nothing reserved) should have now:
    /// `Some` fresh manifest when a holder is lost while a spare live node could take
    /// its place (`placement::is_stale`) or the pool changed the shape new files get
    /// (`placement::reshaped`), `None` when `m` may stay as it is.
    pub async fn place_again(&self, m: &Manifest) -> Result<Option<Manifest>, ClientError> {
        let view = self.view().await?;
        if !placement::is_stale(&m.place, &view)
            && !placement::reshaped(&m.place, &view, self.cfg.redundancy)
        {
            return Ok(None);
        }
        self.new_file().await.map(Some)
    }

    /// Stores shard `i` of stripe `j` in slot `slot` on `holder` (its segment's
    /// holder, or another node standing in for it).
    pub(super) async fn store_shard(
        &self,
        place: &Placement,
        holder: &Holder,
        (j, slot): (u64, u8),
        i: usize,
        shard: &Arc<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let segment = SegmentRef {
            file: place.file_id.clone(),
            index: layout::segment_index(i, slot),
        };
        let offset = place.layout.segment_offset(j);
        let to = self.reach(holder).await;
        self.io
            .store(&to, segment, offset, Arc::clone(shard))
            .await
            .map_err(|source| refused(holder, &place.file_id, i as u32, source))
    }

    /// Stores stripe `j` (its data bytes) in slot `slot` on all holders in parallel
    /// and returns its record for the manifest.
    ///
    /// Full redundancy: every one of the k + m shards is stored somewhere whenever a live
    /// node can take it. Holders known to be down are skipped, the others get until the
    /// write quorum (`fanout::write_quorum`) plus `fanout::STRAGGLER_GRACE`; then each
    /// shard not stored yet (its holder down, failed or late) goes to a stand-in
    /// (`placement::stand_ins`) and is recorded as moved. A shard no stand-in takes is
    /// recorded as missing (see `StripeRecord::missing`): the stripe is written
    /// degraded and repair stores that shard on its holder when the holder is back.
    ///
    /// Errors: fewer than the write quorum of shards stored anywhere (a full node or a
    /// spent quota reported first, any other failure else; `Unavailable` when every
    /// holder was known down). The caller picks a slot the file's committed manifest
    /// does not use for this stripe (copy-on-write: see `layout::SHADOW_SEGMENT`).
    pub async fn write_stripe(
        &self,
        place: &Placement,
        (j, slot): (u64, u8),
        data: &[u8],
    ) -> Result<StripeRecord, ClientError> {
        let layout = &place.layout;
        let mut shards = stripe::encode(layout, data).map_err(|e| ClientError::Erasure {
            file: place.file_id.clone(),
            stripe: j,
            message: e.to_string(),
        })?;
        // A fresh salt per write: nonces never repeat for different bytes.
        let seal = self.cfg.owner.as_ref().map(|owner| {
            let salt = rand::random();
            FileCipher::new(owner, &place.file_id).seal_all(&salt, j, &mut shards);
            Sealing { salt }
        });
        // Shared, so a store on this process's own node takes them without a copy.
        let shards: Vec<Arc<Vec<u8>>> = shards.into_iter().map(Arc::new).collect();
        let n = shards.len();
        let needed = fanout::write_quorum(layout);
        let skip = self.unhealthy(&place.holders).await;
        let stores = (0..n).filter(|i| !skip[*i]).map(|i| {
            let shard = &shards[i];
            async move {
                let r = self
                    .store_shard(place, &place.holders[i], (j, slot), i, shard)
                    .await;
                (i, r)
            }
        });
        let (stored, mut failures) = fanout::gather_stores(stores, n, needed).await;
        // Sealed shards are authenticated by their tags: a checksum would be a second
        // pass over every byte for nothing.
        let sums = match &seal {
            Some(_) => Vec::new(),
            None => shards.iter().map(|s| stripe::checksum(s)).collect(),
        };
        let mut record = StripeRecord {
            sums,
            moved: Vec::new(),
            seal,
            slot,
        };
        let mut count = stored.iter().filter(|s| **s).count();
        // Holders that did not store their own shard: no use as stand-ins either.
        let mut failed: Vec<NodeId> = (0..n)
            .filter(|&i| !stored[i])
            .map(|i| place.holders[i].node_id)
            .collect();
        let mut missing = Vec::new();
        for i in (0..n).filter(|&i| !stored[i]) {
            match self
                .store_elsewhere(place, j, i, &shards[i], &record, &mut failed)
                .await
            {
                Ok(to) => {
                    record.moved.push(Moved {
                        shard: i as u32,
                        to,
                    });
                    count += 1;
                }
                Err(e) => {
                    failures.push(e);
                    missing.push(i);
                }
            }
        }
        if count < needed {
            // A full node or a spent quota is the most useful thing to report; any
            // failure otherwise.
            let pos = failures
                .iter()
                .position(|e| matches!(e, ClientError::NoSpace { .. } | ClientError::Quota { .. }))
                .unwrap_or(0);
            return Err(if failures.is_empty() {
                ClientError::Unavailable {
                    file: place.file_id.clone(),
                    stripe: j,
                    need: needed,
                    have: count,
                    missing: "holders are down".into(),
                }
            } else {
                failures.swap_remove(pos)
            });
        }
        for &i in &missing {
            record.set_missing(place, i);
        }
        if !missing.is_empty() {
            log::warn!(
                "stripe {j} of file {} written degraded: {count} of {n} shards stored, no \
                 live node could take shards {missing:?}; repair stores them when their \
                 holders are back",
                place.file_id
            );
        } else if !record.moved.is_empty() {
            log::info!(
                "stripe {j} of file {}: {} of {n} shards on stand-ins; repair moves them home",
                place.file_id,
                record.moved.len()
            );
        }
        Ok(record)
    }

    /// Stores shard `i` of stripe `j` on a live node other than its holder, in the order
    /// of `placement::stand_ins` (nodes holding no other shard of the stripe first),
    /// skipping nodes in `failed` and adding to it those that refuse. Returns where it
    /// went; `NoNodes` when no candidate was left, else the last refusal.
    async fn store_elsewhere(
        &self,
        place: &Placement,
        j: u64,
        i: usize,
        shard: &Arc<Vec<u8>>,
        record: &StripeRecord,
        failed: &mut Vec<NodeId>,
    ) -> Result<Holder, ClientError> {
        let view = self.view().await?;
        let candidates = placement::stand_ins(&view, place, record, i);
        let mut last = None;
        for to in candidates {
            if failed.contains(&to.node_id) {
                continue;
            }
            match self
                .store_shard(place, &to, (j, record.slot), i, shard)
                .await
            {
                Ok(()) => return Ok(to),
                Err(e) => {
                    // A full node may still have taken its own shard: only refusals
                    // other than space mark the node as failed for this stripe.
                    if !matches!(e, ClientError::NoSpace { .. } | ClientError::Quota { .. }) {
                        failed.push(to.node_id);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::NoNodes))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{bytes, pool, pool_with, put, SHARD};
    use super::super::{ClientError, Fault};
    use crate::client::placement::Redundancy;
    use crate::proto::NodeState;

    #[tokio::test]
    async fn a_new_file_on_four_nodes_is_3_plus_1_with_a_down_member_holding_parity() {
        let (mem, client) = pool(4, false);
        mem.set_state(2, Some(NodeState::Down));
        client.refresh_view().await.expect("view");
        let m = client.new_file().await.expect("new file");
        // The down member may come back: it counts for the shape, and holds the parity
        // segment (its shards go to stand-ins until it returns).
        let holders: Vec<_> = m.place.holders.iter().map(|h| h.node_id).collect();
        assert_eq!(holders, vec![1, 3, 4, 2]);
        assert_eq!((m.place.layout.k, m.place.layout.m), (3, 1));
        assert_eq!(m.place.layout.shard_size, SHARD);
    }

    #[tokio::test]
    async fn a_stripe_goes_one_shard_to_each_holder() {
        let (mem, client) = pool(3, false);
        let m = put(&client, &bytes(100, 1)).await;
        for h in &m.place.holders {
            assert_eq!(
                mem.segments_of(h.node_id, &m.place.file_id),
                1,
                "node {}",
                h.node_id
            );
        }
        assert!(m.stripe(0).moved.is_empty());
    }

    #[tokio::test]
    async fn a_shard_whose_holder_is_down_is_stored_on_a_stand_in_and_recorded() {
        let (mem, client) = pool(4, false);
        let place = client.new_file().await.expect("new file").place;
        // Node 2 dies after placement, unseen by the view: its store fails.
        mem.set_fault(2, Some(Fault::Down));
        let record = client
            .write_stripe(&place, (0, 0), &bytes(500, 2))
            .await
            .expect("a write survives one dead holder");
        // k + 1 = 4 of 4 shards are the quorum: shard 1 went to a stand-in, a live
        // node (each holds one shard of the stripe: the file's rendezvous order picks).
        assert_eq!(record.moved.len(), 1);
        let to = record.moved[0].to.node_id;
        assert_eq!(record.moved[0].shard, 1);
        assert!([1, 3, 4].contains(&to), "stand-in {to}");
        assert_eq!(mem.segments_of(to, &place.file_id), 2);
    }

    #[tokio::test]
    async fn a_full_pool_fails_the_write_with_no_space() {
        let (mem, client) = pool(2, false);
        let place = client.new_file().await.expect("new file").place;
        mem.set_fault(1, Some(Fault::Full));
        mem.set_fault(2, Some(Fault::Full));
        let err = client
            .write_stripe(&place, (0, 0), &bytes(500, 4))
            .await
            .expect_err("nowhere to store");
        assert!(matches!(err, ClientError::NoSpace { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_last_live_node_takes_every_shard_of_a_stripe() {
        let (mem, client) = pool(3, false);
        let place = client.new_file().await.expect("new file").place;
        mem.kill(2);
        mem.kill(3);
        client.refresh_view().await.expect("view");
        let record = client
            .write_stripe(&place, (0, 0), &bytes(500, 5))
            .await
            .expect("a stand-in takes the shards of the dead holders");
        let to: Vec<_> = record
            .moved
            .iter()
            .map(|mv| (mv.shard, mv.to.node_id))
            .collect();
        assert_eq!(to, vec![(1, 1), (2, 1)]);
    }

    #[tokio::test]
    async fn a_write_with_no_live_node_fails() {
        let (mem, client) = pool(2, false);
        let place = client.new_file().await.expect("new file").place;
        mem.kill(1);
        mem.kill(2);
        client.refresh_view().await.expect("view");
        let err = client.write_stripe(&place, (0, 0), &bytes(500, 6)).await;
        assert!(matches!(err, Err(ClientError::NoNodes)), "{err:?}");
    }

    #[tokio::test]
    async fn a_holder_failing_mid_write_leaves_every_later_stripe_with_all_its_shards() {
        // 3 + 2: the quorum is 4 of 5, so before full redundancy a stripe whose holder
        // died was left with 4 shards and one more loss from unreadable.
        let (mem, client) = pool_with(5, false, Redundancy::Tolerate(2));
        let place = client.new_file().await.expect("new file").place;
        let stripe = 3 * SHARD as usize;
        client
            .write_stripe(&place, (0, 0), &bytes(stripe, 0))
            .await
            .expect("first stripe");
        // Node 5 dies under the writer, unseen by the view.
        mem.set_fault(5, Some(Fault::Down));
        let mut records = Vec::new();
        for j in 1..=3u64 {
            let record = client
                .write_stripe(&place, (j, 0), &bytes(stripe, j as u8))
                .await
                .expect("a write survives a dead holder");
            assert_eq!(record.moved.len(), 1, "stripe {j}: {:?}", record.moved);
            assert_eq!(record.missing(&place).count(), 0);
            records.push((j, record));
        }
        // Two more nodes go, neither one the stand-ins: 3 = k shards are left of each
        // stripe, enough only if all 5 were stored.
        let stand_ins: Vec<_> = records.iter().map(|(_, r)| r.moved[0].to.node_id).collect();
        let doomed: Vec<_> = (1..=4)
            .filter(|id| !stand_ins.contains(id))
            .take(2)
            .collect();
        assert_eq!(doomed.len(), 2, "stand-ins {stand_ins:?}");
        for id in doomed {
            mem.kill(id);
        }
        mem.kill(5);
        client.refresh_view().await.expect("view");
        for (j, record) in &records {
            let got = client
                .read_stripe(&place, *j, stripe as u64, record)
                .await
                .expect("the stripe is readable with 3 of 5 nodes lost");
            assert_eq!(got.to_vec(), bytes(stripe, *j as u8), "stripe {j}");
        }
    }

    #[tokio::test]
    async fn a_stripe_no_live_node_can_complete_is_written_degraded_and_made_whole_on_return() {
        let (mem, client) = pool_with(5, false, Redundancy::Tolerate(2));
        let place = client.new_file().await.expect("new file").place;
        mem.kill(5);
        client.refresh_view().await.expect("view");
        // Each live node has room for its own shard only: none can stand in for node 5.
        for id in 1..=4 {
            mem.set_capacity(id, SHARD as u64);
        }
        let stripe = 3 * SHARD as usize;
        let data = bytes(stripe, 9);
        let record = client
            .write_stripe(&place, (0, 0), &data)
            .await
            .expect("4 of 5 shards meet the quorum");
        assert_eq!(record.missing(&place).collect::<Vec<_>>(), vec![4]);
        assert_eq!(mem.segments_of(5, &place.file_id), 0);
        // Node 5 is back: repair stores the missing shard on it.
        mem.set_fault(5, None);
        mem.set_state(5, Some(NodeState::Up));
        client.refresh_view().await.expect("view");
        let mut m = super::super::Manifest::new(place.clone());
        m.size = stripe as u64;
        m.set_stripe(0, record);
        let whole = client.bring_home(&m, Duration::ZERO).await.expect("repair");
        assert!(!whole.has_moved(), "{:?}", whole.stripe(0).moved);
        assert_eq!(mem.segments_of(5, &place.file_id), 1);
        // Whole again: any two nodes may go.
        mem.kill(1);
        mem.kill(2);
        client.refresh_view().await.expect("view");
        let got = client.read_range(&whole, 0, stripe as u64).await;
        assert_eq!(got.expect("read with 2 of 5 nodes lost"), data);
    }
}
