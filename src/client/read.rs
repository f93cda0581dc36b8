//! The read side: bytes of a file, one stripe (hedged over k of its holders, decoded,
//! corrupt shards healed), or a piece of one data shard alone; each shard verified
//! against its checksum or opened with its seal.
//!
//! Names: `read_range` (a file's bytes), `read_stripe` (one stripe), `read_data_range`
//! (part of one data shard), `read_shard` (one shard, verified), `read_chunks` (sealed
//! chunks of one shard), `ask_holder` (raw bytes from one holder).

use std::ops::Range;

use futures::stream::StreamExt;

use super::fanout::{self, ShardFailure, HEDGE_AFTER, READ_DEADLINE};
use super::layout::{SEAL_CHUNK, TAG_LEN};
use super::{seal, stripe, ClientError, FileCipher, Holder, Manifest, PoolClient};
use super::{Placement, SegmentRead, StripeData, StripeRecord};
use crate::proto::{NodeState, SegmentRef};

impl PoolClient {
    /// Asks the node holding shard `i` of a stripe for bytes of that shard's segment:
    /// the bytes, or why not, naming the node.
    pub(super) async fn ask_holder(
        &self,
        place: &Placement,
        record: &StripeRecord,
        i: usize,
        what: SegmentRead,
    ) -> Result<Vec<u8>, ShardFailure> {
        let holder = record.holder(place, i);
        let segment = SegmentRef {
            file: place.file_id.clone(),
            index: record.segment_index(i),
        };
        if self.io.by_call(holder.node_id) {
            // This process's own node: nothing to route around, no deadline.
            let node = holder.node_id;
            return self
                .io
                .read(holder, segment, what)
                .await
                .map_err(|e| ShardFailure::Unreachable(format!("node {node} (here): {e}")));
        }
        // Readers consulted the view just before (or, for one shard alone, chose not
        // to wait for it): its address as last seen, with no round trip of its own.
        let addr = match self.cached_view() {
            Some((view, _)) => view.node(holder.node_id).map_or(holder.addr, |n| n.addr),
            None => self.addr_of(holder).await,
        };
        let to = Holder {
            node_id: holder.node_id,
            addr,
        };
        let who = format!("node {} ({addr})", holder.node_id);
        tokio::time::timeout(READ_DEADLINE, self.io.read(&to, segment, what))
            .await
            .map_err(|_| {
                // What it keeps for that holder is likely as dead: start afresh.
                self.io.abandon(&to);
                ShardFailure::Unreachable(format!("{who} did not answer within {READ_DEADLINE:?}"))
            })?
            .map_err(|e| ShardFailure::Unreachable(format!("{who}: {e}")))
    }

    /// Shard `i` of stripe `j` from wherever the record says it is, verified against
    /// its checksum or, for an encrypted file, opened: plaintext or why not.
    pub(super) async fn read_shard(
        &self,
        place: &Placement,
        record: &StripeRecord,
        j: u64,
        i: usize,
        shard_len: u32,
    ) -> Result<Vec<u8>, ShardFailure> {
        let offset = place.layout.segment_offset(j);
        let len = record.stored_len(shard_len as usize) as u32;
        let what = SegmentRead::Range {
            offset,
            len,
            sealed: record.seal.is_some(),
        };
        let mut shard = self.ask_holder(place, record, i, what).await?;
        let who = || format!("node {}", record.holder(place, i).node_id);
        match &record.seal {
            Some(seal) => self
                .cipher(place)?
                .open_shard(&seal.salt, j, i, shard_len as usize, &mut shard)
                .map_err(|e| ShardFailure::Corrupt(format!("{}: {e}", who())))?,
            None => {
                let intact = shard.len() == shard_len as usize
                    && record.sums.get(i) == Some(&stripe::checksum(&shard));
                if !intact {
                    return Err(ShardFailure::Corrupt(format!(
                        "{}: shard {i} fails its checksum",
                        who()
                    )));
                }
            }
        }
        Ok(shard)
    }

    /// The cipher of a file, if this client holds an owner key.
    pub(super) fn cipher(&self, place: &Placement) -> Result<FileCipher, ShardFailure> {
        let owner = self.cfg.owner.as_ref().ok_or_else(|| {
            ShardFailure::Unreachable(format!(
                "file {} is encrypted and this client has no owner key",
                place.file_id
            ))
        })?;
        Ok(FileCipher::new(owner, &place.file_id))
    }

    /// Bytes `want` of data shard `i` of stripe `j` (shard offsets; the stripe's bytes
    /// from `i × shard_len`) from the shard's holder alone, authenticated: for a read
    /// that needs nothing else of the stripe, so it waits for one node and, for a sealed
    /// stripe, only the chunks that cover `want` (a clear shard's checksum covers the
    /// whole shard, so it comes whole). Returns where the bytes start in the shard and
    /// the bytes, which cover `want`. It does not fail over: on any failure (or after
    /// `HEDGE_AFTER`, a suspect or down holder at once) the caller reads the whole
    /// stripe, which does, and heals.
    pub async fn read_data_range(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
        i: usize,
        want: Range<usize>,
    ) -> Result<(usize, Vec<u8>), ClientError> {
        let layout = &place.layout;
        let shard_len = layout.shard_len(stripe_len);
        if record.is_hole() {
            return Ok((0, vec![0; shard_len as usize]));
        }
        let n = layout.segments() as usize;
        if i >= layout.k as usize || !record.verifies(n) || place.holders.len() < n {
            return Err(ClientError::Incomplete {
                file: place.file_id.clone(),
                stripe: j,
            });
        }
        let holder = record.holder(place, i);
        let unavailable = |missing: String| ClientError::Unavailable {
            file: place.file_id.clone(),
            stripe: j,
            need: 1,
            have: 0,
            missing,
        };
        // The last view as it is, without asking the controller: one round trip less
        // before the first byte. A holder that died or moved since is refused or late,
        // and the caller falls back to the stripe read, which consults a fresh view.
        let down = self.cached_view().is_some_and(|(view, _)| {
            view.node(holder.node_id)
                .is_some_and(|n| n.state != NodeState::Up)
        });
        if down || self.suspects.is_suspect(holder.node_id) {
            return Err(unavailable(format!(
                "node {} is down or late",
                holder.node_id
            )));
        }
        let fetch = async {
            match &record.seal {
                Some(seal) => {
                    let chunks = seal_chunks_covering(&want, shard_len as usize);
                    self.read_chunks(place, record, &seal.salt, j, i, shard_len as usize, chunks)
                        .await
                }
                None => self
                    .read_shard(place, record, j, i, shard_len)
                    .await
                    .map(|shard| (0, shard)),
            }
        };
        match tokio::time::timeout(HEDGE_AFTER, fetch).await {
            Ok(Ok(piece)) => Ok(piece),
            Ok(Err(why)) => Err(unavailable(why.to_string())),
            Err(_) => {
                self.suspects.mark(holder.node_id);
                Err(unavailable(format!(
                    "node {} did not answer within {HEDGE_AFTER:?}",
                    holder.node_id
                )))
            }
        }
    }

    /// Chunks `chunks` of sealed shard `i` of stripe `j` (`shard_len` plaintext bytes),
    /// fetched with their tags in one round trip and opened: where they start in the
    /// shard, and their plaintext.
    #[allow(clippy::too_many_arguments)]
    async fn read_chunks(
        &self,
        place: &Placement,
        record: &StripeRecord,
        salt: &seal::Salt,
        j: u64,
        i: usize,
        shard_len: usize,
        chunks: Range<usize>,
    ) -> Result<(usize, Vec<u8>), ShardFailure> {
        let start = chunks.start * SEAL_CHUNK;
        let len = (chunks.end * SEAL_CHUNK).min(shard_len) - start;
        let tags_len = TAG_LEN * chunks.len();
        let slot = place.layout.segment_offset(j);
        let parts = vec![
            (slot + start as u64, len as u32),
            (
                slot + (shard_len + TAG_LEN * chunks.start) as u64,
                tags_len as u32,
            ),
        ];
        let mut bytes = self
            .ask_holder(place, record, i, SegmentRead::Parts(parts))
            .await?;
        let corrupt = |why: String| {
            let node = record.holder(place, i).node_id;
            ShardFailure::Corrupt(format!("node {node}: {why}"))
        };
        if bytes.len() != len + tags_len {
            return Err(corrupt(format!(
                "sent {} bytes of shard {i} where {} were asked",
                bytes.len(),
                len + tags_len
            )));
        }
        let (ciphertext, tags) = bytes.split_at_mut(len);
        self.cipher(place)?
            .open_chunks(salt, j, i, chunks.start, ciphertext, tags)
            .map_err(|e| corrupt(e.to_string()))?;
        bytes.truncate(len);
        Ok((start, bytes))
    }

    /// Fetches stripe `j` (carrying `stripe_len` data bytes) from any k of its holders,
    /// healthy data holders first, moving on from a holder that fails, is corrupt or
    /// takes longer than a second, and asking one more holder each time the stripe is
    /// `HEDGE_AFTER` late. Holders that were late or failed are asked last for a while.
    /// A stripe neither sealed nor checksummed is a hole: zeros. The data comes as
    /// its k shards (no copy into one buffer).
    pub async fn read_stripe(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
    ) -> Result<StripeData, ClientError> {
        let layout = &place.layout;
        if record.is_hole() {
            return Ok(StripeData::hole(stripe_len as usize));
        }
        let n = layout.segments() as usize;
        let k = layout.k as usize;
        if !record.verifies(n) || place.holders.len() < n {
            return Err(ClientError::Incomplete {
                file: place.file_id.clone(),
                stripe: j,
            });
        }
        let shard_len = layout.shard_len(stripe_len);
        let skip = self
            .unhealthy((0..n).map(|i| record.holder(place, i)))
            .await;
        let node = |i: usize| record.holder(place, i).node_id;
        // Healthy holders first, then suspect ones, then those the view calls down; data
        // shards before parity (no decode).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (skip[i], self.suspects.is_suspect(node(i)), i >= k, i));
        let fetch =
            |i: usize| async move { (i, self.read_shard(place, record, j, i, shard_len).await) };
        let fanout::Gathered {
            shards,
            have,
            failures,
            corrupt,
        } = fanout::hedged_read(order, n, k, fetch, &self.suspects, node).await;
        if have < k {
            let missing = failures.join("; ");
            log::error!(
                "stripe {j} of file {} is unreadable: {missing}",
                place.file_id
            );
            return Err(ClientError::Unavailable {
                file: place.file_id.clone(),
                stripe: j,
                need: k,
                have,
                missing,
            });
        }
        let codec_err = |e: stripe::ErasureError| ClientError::Erasure {
            file: place.file_id.clone(),
            stripe: j,
            message: e.to_string(),
        };
        let data = stripe::decode_shards(layout, stripe_len as usize, shards).map_err(codec_err)?;
        if !corrupt.is_empty() {
            self.heal(place, record, j, &data.to_vec(), &corrupt).await;
        }
        Ok(data)
    }

    /// Bytes `offset..offset+len` of a file (shorter at the end of the file), fetching
    /// only the stripes the range touches.
    pub async fn read_range(
        &self,
        m: &Manifest,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let end = offset.saturating_add(len).min(m.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut stripes =
            futures::stream::iter(m.place.layout.stripes_touching(offset, len, m.size))
                .map(|j| async move {
                    let data = self
                        .read_stripe(&m.place, j, m.stripe_len(j), m.stripe(j))
                        .await?;
                    Ok::<_, ClientError>((j, data))
                })
                .buffered(self.cfg.stripes_in_flight);
        while let Some(next) = stripes.next().await {
            let (j, data) = next?;
            let range = m.place.layout.stripe_range(m.size, j);
            let from = offset.max(range.start) - range.start;
            let to = end.min(range.end) - range.start;
            data.copy_to(&mut out, from as usize, to as usize);
        }
        Ok(out)
    }
}

/// The sealed chunks of a shard of `shard_len` bytes that hold bytes `want` of it.
fn seal_chunks_covering(want: &Range<usize>, shard_len: usize) -> Range<usize> {
    let last = shard_len.div_ceil(SEAL_CHUNK);
    (want.start / SEAL_CHUNK).min(last)..want.end.div_ceil(SEAL_CHUNK).min(last)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{bytes, pool, put, SHARD};
    use super::super::{ClientError, Fault, READ_DEADLINE};

    #[tokio::test]
    async fn any_byte_range_reads_back_clear_or_sealed() {
        for sealed in [false, true] {
            let (_, client) = pool(3, sealed);
            let data = bytes(5 * 2 * SHARD as usize + 123, 1);
            let m = put(&client, &data).await;
            for (off, len) in [
                (0, data.len()),
                (1, 10),
                (7999, 2),
                (8000, 8000),
                (40_000, 500),
            ] {
                let got = client.read_range(&m, off as u64, len as u64).await;
                let end = (off + len).min(data.len());
                assert_eq!(
                    got.expect("read"),
                    data[off..end],
                    "sealed {sealed}, {off}+{len}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_stripe_reads_around_a_dead_holder() {
        let (mem, client) = pool(3, true);
        let data = bytes(3 * SHARD as usize, 2);
        let m = put(&client, &data).await;
        mem.kill(1);
        client.refresh_view().await.expect("view");
        let got = client.read_range(&m, 0, data.len() as u64).await;
        assert_eq!(got.expect("k of k + 1 shards suffice"), data);
    }

    #[tokio::test]
    async fn a_corrupt_shard_is_read_around_and_healed() {
        let (mem, client) = pool(3, false);
        let data = bytes(2 * SHARD as usize, 3);
        let m = put(&client, &data).await;
        let file = &m.place.file_id;
        let good = mem.segment(1, file, 0).expect("shard 0 on node 1");
        assert!(mem.rot(1, file, 0, 10));
        let got = client.read_range(&m, 0, data.len() as u64).await;
        assert_eq!(got.expect("parity covers one bad shard"), data);
        assert_eq!(
            mem.segment(1, file, 0),
            Some(good),
            "the bad shard was rewritten"
        );
    }

    #[tokio::test]
    async fn too_many_lost_shards_make_the_stripe_unavailable() {
        let (mem, client) = pool(3, false);
        let m = put(&client, &bytes(1000, 4)).await;
        mem.set_fault(1, Some(Fault::Refuse));
        mem.set_fault(2, Some(Fault::Corrupt));
        let err = client
            .read_range(&m, 0, 1000)
            .await
            .expect_err("one good shard of three");
        assert!(
            matches!(
                err,
                ClientError::Unavailable {
                    need: 2,
                    have: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_piece_of_a_data_shard_comes_from_its_holder_alone() {
        for sealed in [false, true] {
            let (mem, client) = pool(3, sealed);
            let data = bytes(2 * SHARD as usize, 5);
            let m = put(&client, &data).await;
            // Every other holder gone: only shard 1's holder (node 2) is asked.
            mem.set_fault(1, Some(Fault::Down));
            mem.set_fault(3, Some(Fault::Down));
            let (start, piece) = client
                .read_data_range(&m.place, 0, m.stripe_len(0), m.stripe(0), 1, 100..200)
                .await
                .expect("one holder serves its own shard");
            let at = SHARD as usize + start;
            assert_eq!(
                piece[100 - start..200 - start],
                data[at + 100 - start..at + 200 - start]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_fails_a_read_after_the_read_deadline() {
        let (mem, client) = pool(2, false);
        let m = put(&client, &bytes(1000, 6)).await;
        mem.set_fault(2, Some(Fault::Silent));
        let t = tokio::time::Instant::now();
        let err = client
            .read_range(&m, 0, 1000)
            .await
            .expect_err("k = 2 of 2, one silent");
        assert_eq!(t.elapsed(), READ_DEADLINE);
        assert!(
            matches!(err, ClientError::Unavailable { have: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("did not answer within"), "{err}");
    }
}
