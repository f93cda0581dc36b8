//! Keeping stripes whole: rewriting corrupt shards (heal), verifying every shard of a
//! stripe (scrub), rebuilding a lost segment on a new holder, and bringing shards stored
//! away from their holders back home.

use std::sync::Arc;
use std::time::Duration;

use super::{placement, Placement};
use super::{stripe, ClientError, Holder, Manifest, Moved, PoolClient, StripeRecord};
use crate::proto::PoolView;

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

    /// Rebuilds shard `i` of the stripes `js` of the file `m` onto `to` (a live node
    /// that is not the segment's holder), each from whichever k shards can be read,
    /// and records each as moved to `to`: a manifest committed after any prefix of the
    /// work reads right, so a rebuild cut short resumes where it stopped. `pace` spaces
    /// the stores out. Returns the manifest and the bytes stored on `to`.
    ///
    /// Once no stripe is left on the lost holder, `adopt_holder` makes `to` segment
    /// i's holder. Errors: a stripe that cannot be read (fewer than k shards) or a
    /// store `to` refuses; the stripes done before are in no returned manifest then.
    pub async fn rebuild_onto(
        &self,
        m: &Manifest,
        i: usize,
        to: &Holder,
        js: &[u64],
        pace: Pace,
    ) -> Result<(Manifest, u64), ClientError> {
        let mut out = m.clone();
        let mut bytes = 0u64;
        for &j in js {
            if m.is_hole(j) {
                continue; // holes have no shards anywhere
            }
            let shard = Arc::new(self.rebuilt_shard(m, j, i).await?);
            let slot = m.stripe(j).slot;
            self.store_shard(&m.place, to, (j, slot), i, &shard).await?;
            bytes += shard.len() as u64;
            if let Some(rec) = out.stripes.get_mut(&j) {
                rec.moved.retain(|mv| mv.shard as usize != i);
                rec.moved.push(Moved {
                    shard: i as u32,
                    to: to.clone(),
                });
            }
            tokio::time::sleep(pace.after(shard.len() as u64)).await;
        }
        Ok((out, bytes))
    }

    /// A fresh placement for a file re-encoded by repair, over the live nodes of `view`
    /// (repair passes one where nodes away for good are gone), in the shape this
    /// client's policy gives that pool, with a new file id (its segments must not mix
    /// with the old ones on a node holding both). `None` when no node is live.
    pub fn placement_for(&self, view: &PoolView, shard_size: u32) -> Option<Placement> {
        let id: [u8; 16] = rand::random();
        placement::place_new(view, self.cfg.redundancy, shard_size, hex::encode(id))
            .map(|place| self.own_node_first(view, place))
    }

    /// Re-encodes the file `m` onto `place` (a fresh placement, with a file id of its
    /// own, usually narrower: see `fs::repair`): every stored stripe's bytes are read
    /// and written again in `place`'s stripes. Reservations (`fallocate`) are kept as
    /// the new stripes covering them, unreserved on the nodes. Returns the new manifest
    /// and the bytes stored; on an error, what was stored of the new copy is deleted.
    pub async fn reencode(
        &self,
        m: &Manifest,
        place: Placement,
        pace: Pace,
    ) -> Result<(Manifest, u64), ClientError> {
        let mut out = Manifest::new(place);
        out.size = m.size;
        out.inline = m.inline.clone();
        let result = self.reencode_into(m, &mut out, pace).await;
        if result.is_err() {
            if let Err(e) = self.delete(&out).await {
                log::warn!(
                    "repair: cannot delete the partial copy {} of file {}: {e}",
                    out.place.file_id,
                    m.place.file_id
                );
            }
        }
        result.map(|bytes| (out, bytes))
    }

    async fn reencode_into(
        &self,
        m: &Manifest,
        out: &mut Manifest,
        pace: Pace,
    ) -> Result<u64, ClientError> {
        let old = m.place.layout.stripe_size().max(1);
        let new = out.place.layout.stripe_size().max(1);
        // The new stripes that cover a byte of an old stored stripe (below the size).
        let mut js = std::collections::BTreeSet::new();
        for (j, _) in m.records() {
            let start = j.saturating_mul(old);
            let end = start.saturating_add(old).min(m.size);
            if start < end {
                js.extend(start / new..=(end - 1) / new);
            }
        }
        let n = out.place.layout.segments() as u64;
        let mut bytes = 0u64;
        for j in js {
            let len = out.stripe_len(j);
            let data = self.read_range(m, j * new, len).await?;
            let record = self.write_stripe(&out.place, (j, 0), &data).await?;
            let shard = record.stored_len(out.place.layout.shard_len(len) as usize) as u64;
            let stored = n - record.missing(&out.place).count() as u64;
            bytes += shard * stored;
            out.set_stripe(j, record);
            tokio::time::sleep(pace.after(shard * stored)).await;
        }
        for r in m.reserved.iter() {
            let (start, end) = (r.start.saturating_mul(old), r.end.saturating_mul(old));
            if start < end {
                let covering = start / new..(end - 1) / new + 1;
                out.reserved.insert(covering.clone());
                let stored: Vec<u64> = out.records_in(covering).map(|(j, _)| j).collect();
                for j in stored {
                    out.reserved.remove(j..j + 1);
                }
            }
        }
        Ok(bytes)
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

/// The file `m` with `to` as the holder of segment `i`: shards of segment i recorded as
/// moved to `to` are home then. Called once no stripe's shard i is left on the old
/// holder (see `PoolClient::rebuild_onto`).
pub fn adopt_holder(m: &Manifest, i: usize, to: &Holder) -> Manifest {
    let mut out = m.clone();
    out.place.holders[i] = to.clone();
    for rec in out.stripes.values_mut() {
        rec.moved
            .retain(|mv| !(mv.shard as usize == i && mv.to.node_id == to.node_id));
    }
    out
}

/// Repair's bandwidth budget: a store of `b` bytes is followed by a pause of
/// `b / bytes_per_sec`, and never less than `floor`, so that repair leaves most of a
/// node's link and disk to its users and its traffic is bounded whatever the shard
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Bytes per second repair may store, over all its stores (0: only the floor).
    pub bytes_per_sec: u64,
    /// The least pause after each store.
    pub floor: Duration,
}

impl Pace {
    /// The pause after storing `bytes` bytes.
    pub fn after(&self, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return self.floor;
        }
        let budget = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        budget.max(self.floor)
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
        let js: Vec<u64> = m.records().map(|(j, _)| j).collect();
        // Cut in two, as a repair committing part way and resuming does it.
        let pace = super::Pace {
            bytes_per_sec: 0,
            floor: Duration::ZERO,
        };
        let (half, bytes) = client
            .rebuild_onto(&m, 1, &to, &js[..2], pace)
            .await
            .expect("rebuild the first stripes");
        assert_eq!(bytes, 2 * SHARD as u64);
        assert_eq!(half.stripe(0).holder(&half.place, 1).node_id, new);
        let (all, _) = client
            .rebuild_onto(&half, 1, &to, &js[2..], pace)
            .await
            .expect("rebuild the rest");
        let rebuilt = super::adopt_holder(&all, 1, &to);
        assert!(!rebuilt.has_moved());
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
