//! Keeping stripes whole: rewriting corrupt shards (heal), verifying every shard of a
//! stripe (scrub), rebuilding a lost segment on a new holder, and bringing shards stored
//! away from their holders back home.

use std::sync::Arc;
use std::time::Duration;

use super::Placement;
use super::{stripe, ClientError, Holder, Manifest, PoolClient, StripeRecord};

impl PoolClient {
    /// Stripe `j`'s shards as its record says they were stored: erasure coded from
    /// `data` and, if the stripe was encrypted, sealed again under the same nonces
    /// (the same bytes, so the same ciphertext).
    pub(super) fn shards_as_recorded(
        &self,
        place: &Placement,
        record: &StripeRecord,
        j: u64,
        data: &[u8],
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut shards = stripe::encode(&place.layout, data).map_err(|e| ClientError::Erasure {
            file: place.file_id.clone(),
            stripe: j,
            message: e.to_string(),
        })?;
        if let Some(seal) = &record.seal {
            let cipher = self.cipher(place).map_err(|_| ClientError::NoOwnerKey {
                file: place.file_id.clone(),
            })?;
            cipher.seal_all(&seal.salt, j, &mut shards);
        }
        Ok(shards)
    }

    /// Rebuilds segment `i` of a file on `to` (a node that is not yet a holder), stripe
    /// by stripe from the other segments, pausing `pause` between stripes so repair
    /// does not crowd out users. Returns the manifest with the new holder; shards of
    /// segment i that had been moved elsewhere come home to it too.
    pub async fn rebuild_segment(
        &self,
        m: &Manifest,
        i: usize,
        to: Holder,
        pause: Duration,
    ) -> Result<Manifest, ClientError> {
        let mut moved = m.clone();
        moved.place.holders[i] = to.clone();
        // Holes have no shards anywhere: only stored stripes are rebuilt.
        for (j, _) in m.records() {
            let shard = Arc::new(self.rebuilt_shard(m, j, i).await?);
            let slot = m.stripe(j).slot;
            self.store_shard(&moved.place, &to, (j, slot), i, &shard)
                .await?;
            if let Some(rec) = moved.stripes.get_mut(&j) {
                rec.moved.retain(|mv| mv.shard as usize != i);
            }
            tokio::time::sleep(pause).await;
        }
        Ok(moved)
    }

    /// Moves shards that were stored away from their holders back home, where the
    /// holder is up again. Returns the manifest with the moves it made undone.
    pub async fn bring_home(&self, m: &Manifest, pause: Duration) -> Result<Manifest, ClientError> {
        let mut out = m.clone();
        let down = self.unhealthy(&m.place.holders).await;
        for (j, rec) in m.records() {
            for mv in &rec.moved {
                let i = mv.shard as usize;
                if down.get(i).copied().unwrap_or(true) {
                    continue;
                }
                let shard = Arc::new(self.rebuilt_shard(m, j, i).await?);
                self.store_shard(&m.place, &m.place.holders[i], (j, rec.slot), i, &shard)
                    .await?;
                if let Some(r) = out.stripes.get_mut(&j) {
                    r.moved.retain(|x| x.shard != mv.shard);
                }
                tokio::time::sleep(pause).await;
            }
        }
        Ok(out)
    }

    /// Shard `i` of stripe `j`, rebuilt from whichever k shards can be read.
    async fn rebuilt_shard(&self, m: &Manifest, j: u64, i: usize) -> Result<Vec<u8>, ClientError> {
        let data = self
            .read_stripe(&m.place, j, m.stripe_len(j), m.stripe(j))
            .await?
            .to_vec();
        let mut shards = self.shards_as_recorded(&m.place, m.stripe(j), j, &data)?;
        Ok(shards.swap_remove(i))
    }

    /// Verifies every shard of stripe `j`, data and parity, and rewrites those that are
    /// missing or corrupt on holders that are up. Returns (shards verified, shards healed).
    pub async fn scrub_stripe(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
    ) -> Result<(usize, usize), ClientError> {
        let n = place.layout.segments() as usize;
        if record.is_hole() {
            return Ok((0, 0));
        }
        if !record.verifies(n) {
            return Err(ClientError::Incomplete {
                file: place.file_id.clone(),
                stripe: j,
            });
        }
        let shard_len = place.layout.shard_len(stripe_len);
        // First, so the fetches below go to the holders' current addresses.
        let skip = self
            .unhealthy((0..n).map(|i| record.holder(place, i)))
            .await;
        let fetched = futures::future::join_all(
            (0..n).map(|i| self.read_shard(place, record, j, i, shard_len)),
        )
        .await;
        let bad: Vec<usize> = (0..n)
            .filter(|&i| fetched[i].is_err() && !skip[i])
            .collect();
        let verified = fetched.iter().filter(|r| r.is_ok()).count();
        if bad.is_empty() {
            return Ok((verified, 0));
        }
        for i in &bad {
            if let Err(why) = &fetched[*i] {
                log::warn!("scrub: stripe {j} of file {}: {why}", place.file_id);
            }
        }
        let shards: Vec<Option<Vec<u8>>> = fetched.into_iter().map(Result::ok).collect();
        let data = stripe::decode(&place.layout, stripe_len as usize, shards).map_err(|e| {
            ClientError::Erasure {
                file: place.file_id.clone(),
                stripe: j,
                message: e.to_string(),
            }
        })?;
        self.heal(place, record, j, &data, &bad).await;
        Ok((verified, bad.len()))
    }

    /// Rewrites shards that failed their checksum with the bytes rebuilt from the others.
    pub(super) async fn heal(
        &self,
        place: &Placement,
        record: &StripeRecord,
        j: u64,
        data: &[u8],
        bad: &[usize],
    ) {
        let shards = match self.shards_as_recorded(place, record, j, data) {
            Ok(shards) => shards.into_iter().map(Arc::new).collect::<Vec<_>>(),
            Err(e) => {
                log::warn!("cannot heal stripe {j} of file {}: {e}", place.file_id);
                return;
            }
        };
        for &i in bad {
            let holder = record.holder(place, i);
            match self
                .store_shard(place, holder, (j, record.slot), i, &shards[i])
                .await
            {
                Ok(()) => log::warn!("healed shard {i} of stripe {j} of file {}", place.file_id),
                Err(e) => log::warn!(
                    "cannot heal shard {i} of stripe {j} of file {}: {e}",
                    place.file_id
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{bytes, pool, put, SHARD};
    use super::super::Holder;
    use super::super::MemSegments;
    use crate::proto::NodeState;

    #[tokio::test]
    async fn a_scrub_finds_a_rotten_parity_shard_and_rewrites_it() {
        let (mem, client) = pool(3, true);
        let m = put(&client, &bytes(2 * SHARD as usize, 1)).await;
        let file = &m.place.file_id;
        let good = mem.segment(3, file, 2).expect("parity on node 3");
        assert!(mem.rot(3, file, 2, 5));
        let (verified, healed) = client
            .scrub_stripe(&m.place, 0, m.stripe_len(0), m.stripe(0))
            .await
            .expect("scrub");
        assert_eq!((verified, healed), (2, 1));
        assert_eq!(mem.segment(3, file, 2), Some(good));
        let again = client
            .scrub_stripe(&m.place, 0, m.stripe_len(0), m.stripe(0))
            .await;
        assert_eq!(again.expect("scrub"), (3, 0));
    }

    #[tokio::test]
    async fn a_lost_segment_is_rebuilt_on_a_new_holder() {
        let (mem, client) = pool(3, false);
        let data = bytes(5 * SHARD as usize, 2);
        let m = put(&client, &data).await;
        mem.kill(2);
        let new = mem.add_node();
        client.refresh_view().await.expect("view");
        let to = Holder {
            node_id: new,
            addr: MemSegments::addr_of(new),
        };
        let rebuilt = client
            .rebuild_segment(&m, 1, to, Duration::ZERO)
            .await
            .expect("rebuild");
        assert_eq!(rebuilt.place.holders[1].node_id, new);
        assert_eq!(mem.segments_of(new, &m.place.file_id), 1);
        mem.kill(1); // the rebuilt segment now carries the reads
        client.refresh_view().await.expect("view");
        let got = client.read_range(&rebuilt, 0, data.len() as u64).await;
        assert_eq!(got.expect("read"), data);
    }

    #[tokio::test]
    async fn shards_stored_away_come_home_when_their_holder_is_back() {
        let (mem, client) = pool(3, false);
        let place = client.new_file().await.expect("new file").place;
        mem.kill(3);
        client.refresh_view().await.expect("view");
        let data = bytes(2 * SHARD as usize, 3);
        let mut m = super::super::Manifest::new(place);
        let record = client
            .write_stripe(&m.place, (0, 0), &data)
            .await
            .expect("write");
        assert_eq!(record.moved.len(), 1);
        m.size = data.len() as u64;
        m.set_stripe(0, record);
        mem.set_fault(3, None);
        mem.set_state(3, Some(NodeState::Up));
        client.refresh_view().await.expect("view");
        let home = client
            .bring_home(&m, Duration::ZERO)
            .await
            .expect("bring home");
        assert!(!home.has_moved());
        assert_eq!(mem.segments_of(3, &m.place.file_id), 1);
        mem.kill(1);
        client.refresh_view().await.expect("view");
        let got = client.read_range(&home, 0, data.len() as u64).await;
        assert_eq!(got.expect("read from the holders at home"), data);
    }
}
