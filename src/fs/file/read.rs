//! Reads of an open file: the latest bytes from its buffers or the pool, a small cache
//! of fetched stripes, and prefetch for sequential readers.

use std::ops::Range;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{extend_padded, Fetch, FileData, ReadBytes, CACHE_STRIPES, PREFETCH};
use crate::client::layout::SEAL_CHUNK;
use crate::client::{ClientError, StripeData};
use crate::fs::FsError;

/// The pieces of the first data shard fetched at open (`FileData::fetch_head`), as
/// ranges of the shard: the first sealed chunk alone (what the kernel's READ for a
/// `read(1)` at offset 0, 16 KiB, needs), then the next three (with it, the 128 KiB
/// READ of a 64 KiB read, `READ_IO_SIZE`), fetched side by side so the first is not
/// slowed by the rest.
const HEAD_PIECES: [Range<usize>; 2] = [0..SEAL_CHUNK, SEAL_CHUNK..4 * SEAL_CHUNK];

/// A piece of stripe 0's first data shard on its way: the shard bytes asked for and the
/// fetch (where its bytes start in the shard, and them).
pub(super) struct Head {
    asked: Range<usize>,
    fetch: JoinHandle<Result<(usize, Vec<u8>), ClientError>>,
}

impl FileData {
    pub(super) fn forget_cached(&mut self, j: u64) {
        if j == 0 {
            self.forget_head();
        }
        self.cache.retain(|(c, _)| *c != j);
        if self.shard.as_ref().is_some_and(|(c, _, _)| *c == j) {
            self.shard = None;
        }
        if let Some(f) = self.prefetch.remove(&j) {
            f.abort();
        }
    }

    pub(super) fn forget_all_cached(&mut self) {
        self.forget_head();
        self.cache.clear();
        self.shard = None;
        for (_, f) in self.prefetch.drain() {
            f.abort();
        }
    }

    pub(super) fn spawn_fetch(&self, j: u64) -> Fetch {
        let client = self.client.clone();
        let place = self.manifest.place.clone();
        let len = self.manifest.stripe_len(j);
        let record = self.manifest.stripe(j).clone();
        tokio::spawn(async move { client.read_stripe(&place, j, len, &record).await })
    }

    fn forget_head(&mut self) {
        for h in self.head.drain(..) {
            h.fetch.abort();
        }
    }

    /// Starts fetching the first bytes of the file (`HEAD_PIECES` of its first data
    /// shard, each verified on its own) when it is opened to be read and nothing of it
    /// is here yet: the fetch then overlaps the open's answer and the READ that follows,
    /// which most readers send for offset 0 (cat, head, file, a buffered reader). A
    /// reader starting elsewhere costs the node one small read. Nothing is fetched for a
    /// file in its record, a hole, a stripe 0 with newer bytes here, or one whose data
    /// shard would come whole anyway (clear, k = 1); a failed piece only means the
    /// READ fetches as it would have.
    pub fn fetch_head(&mut self) {
        let fresh = self.head.is_empty()
            && self.shard.is_none()
            && self.cache.is_empty()
            && self.prefetch.is_empty()
            && self.last_read.is_none();
        if !fresh
            || self.size() == 0
            || self.manifest.inline.is_some()
            || self.dirty.contains_key(&0)
            || self.uploads.contains_key(&0)
        {
            return;
        }
        let record = self.manifest.stripe(0);
        let layout = self.manifest.place.layout;
        if record.is_hole() || record.seal.is_none() {
            return;
        }
        let stripe_len = self.manifest.stripe_len(0);
        let shard_len = layout.shard_len(stripe_len) as usize;
        for piece in HEAD_PIECES {
            let asked = piece.start.min(shard_len)..piece.end.min(shard_len);
            if asked.is_empty() {
                break;
            }
            let client = self.client.clone();
            let place = self.manifest.place.clone();
            let record = record.clone();
            let want = asked.clone();
            let fetch = tokio::spawn(async move {
                client
                    .read_data_range(&place, 0, stripe_len, &record, 0, want)
                    .await
            });
            self.head.push_back(Head { asked, fetch });
        }
    }

    /// For a read of shard bytes `from..to` of stripe 0's first data shard: waits for
    /// the head pieces it needs, in order, and keeps what came as the shard piece
    /// (`self.shard`), joined to the piece kept before when they meet. Pieces not
    /// needed yet stay on their way; a failed one drops the rest.
    async fn use_head(&mut self, from: usize, to: usize) {
        if !self
            .head
            .iter()
            .any(|h| h.asked.start < to && from < h.asked.end)
        {
            return; // a read elsewhere: the pieces may serve a later one
        }
        let needed = |h: &Head| h.asked.start < to;
        while self.head.front().is_some_and(needed) {
            let covered =
                matches!(&self.shard, Some((0, at, d)) if *at <= from && to <= at + d.len());
            if covered {
                return;
            }
            let Some(h) = self.head.pop_front() else {
                return;
            };
            let got = match h.fetch.await {
                Ok(piece) => piece.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (start, bytes) = match got {
                Ok(piece) => piece,
                Err(e) => {
                    log::debug!("first bytes fetched at open: {e}; reading as usual");
                    self.forget_head();
                    return;
                }
            };
            let joined = match self.shard.take() {
                Some((0, at, before)) if at + before.len() == start => {
                    let mut all = Vec::with_capacity(before.len() + bytes.len());
                    all.extend_from_slice(&before);
                    all.extend_from_slice(&bytes);
                    (at, all)
                }
                _ => (start, bytes),
            };
            self.shard = Some((0, joined.0, Arc::new(joined.1)));
        }
    }

    /// Stripe `j` as stored in the pool (through the cache and prefetches).
    pub(super) async fn pooled_stripe(&mut self, j: u64) -> Result<StripeData, FsError> {
        if let Some((_, data)) = self.cache.iter().find(|(c, _)| *c == j) {
            return Ok(data.clone());
        }
        let fetch = match self.prefetch.remove(&j) {
            Some(f) => f,
            None => self.spawn_fetch(j),
        };
        let data = fetch.await.map_err(|e| FsError::task("fetch", e))??;
        self.cache.push_back((j, data.clone()));
        if self.cache.len() > CACHE_STRIPES {
            self.cache.pop_front();
        }
        Ok(data)
    }

    /// Prefetches the stripes after `j` for a sequential reader, and `j` itself too
    /// when `with_j` (its read was served by one shard, the reader may want the rest).
    pub(super) fn schedule_prefetch(&mut self, j: u64, with_j: bool) {
        let sequential = matches!(self.last_read, Some(l) if j == l || j == l + 1) || j == 0;
        self.last_read = Some(j);
        if !sequential {
            return;
        }
        let count = self.manifest.place.layout.stripe_count(self.size());
        let first = if with_j { j } else { j + 1 };
        for next in first..(j + 1 + PREFETCH).min(count) {
            let known = self.dirty.contains_key(&next)
                || self.uploads.contains_key(&next)
                || self.prefetch.contains_key(&next)
                || self.cache.iter().any(|(c, _)| *c == next);
            if !known {
                let fetch = self.spawn_fetch(next);
                self.prefetch.insert(next, fetch);
            }
        }
    }

    /// For a read of bytes `from..to` of stripe `j` that lie in one data shard, when
    /// the stripe is neither cached nor on its way: that part of the shard alone (and
    /// where it starts in the stripe), so the first read of a file waits for one node
    /// and a few sealed chunks (a clear stripe: its whole shard, 1/k of the stripe).
    /// `None` when the whole stripe is the way (or the piece failed: the stripe read
    /// fails over and heals).
    pub(super) async fn one_piece(
        &mut self,
        j: u64,
        from: usize,
        to: usize,
    ) -> Option<(usize, Arc<Vec<u8>>)> {
        let layout = self.manifest.place.layout;
        let stripe_len = self.manifest.stripe_len(j);
        let shard_len = layout.shard_len(stripe_len) as usize;
        if j == 0 && from < shard_len && !self.head.is_empty() {
            self.use_head(from, to).await;
        }
        let record = self.manifest.stripe(j);
        // A clear stripe of one data shard would come whole anyway.
        let worth_it = layout.k >= 2 || record.seal.is_some();
        if !worth_it || shard_len == 0 || from / shard_len != (to - 1) / shard_len {
            return None;
        }
        if let Some((c, at, data)) = &self.shard {
            if *c == j && *at <= from && to <= at + data.len() {
                return Some((*at, data.clone()));
            }
        }
        if self.prefetch.contains_key(&j) || self.cache.iter().any(|(c, _)| *c == j) {
            return None;
        }
        let i = from / shard_len;
        let base = i * shard_len;
        let place = &self.manifest.place;
        match self
            .client
            .read_data_range(place, j, stripe_len, record, i, from - base..to - base)
            .await
        {
            Ok((start, data)) => {
                let data = Arc::new(data);
                self.shard = Some((j, base + start, data.clone()));
                Some((base + start, data))
            }
            Err(e) => {
                log::debug!("reading stripe {j} whole: {e}");
                None
            }
        }
    }

    /// Reads up to `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<ReadBytes, FsError> {
        let size = self.size();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(ReadBytes::Owned(Vec::new()));
        }
        if let Some(bytes) = &self.manifest.inline {
            let mut out = Vec::with_capacity((end - offset) as usize);
            extend_padded(&mut out, bytes, offset as usize, end as usize);
            return Ok(ReadBytes::Owned(out));
        }
        let stripe_size = self.stripe_size();
        let stripes = offset / stripe_size..end.div_ceil(stripe_size);
        let one_stripe = stripes.end - stripes.start == 1;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for j in stripes {
            let base = j * stripe_size;
            let from = (offset.max(base) - base) as usize;
            let to = (end.min(base + stripe_size) - base) as usize;
            // Bytes from a fetched shard are lent as they are when they are the whole
            // answer (no copy on the way to the kernel), else appended.
            if let Some(buf) = self.dirty.get(&j) {
                extend_padded(&mut out, buf, from, to);
            } else if let Some(up) = self.uploads.get(&j) {
                extend_padded(&mut out, &up.data, from, to);
            } else if let Some((at, piece)) = self.one_piece(j, from, to).await {
                self.schedule_prefetch(j, true);
                if one_stripe && to - at <= piece.len() {
                    return Ok(ReadBytes::Shared(piece, from - at..to - at));
                }
                extend_padded(&mut out, &piece, from - at, to - at);
            } else {
                let data = self.pooled_stripe(j).await?;
                self.schedule_prefetch(j, false);
                match data.lend(from, to) {
                    Some((shard, range)) if one_stripe => {
                        return Ok(ReadBytes::Shared(shard, range))
                    }
                    _ => data.copy_to(&mut out, from, to),
                }
            }
        }
        Ok(ReadBytes::Owned(out))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::FileData;
    use crate::client::{DataConfig, Fault, Manifest, MemSegments, PoolClient};
    use crate::trust::OwnerKey;

    /// A sealed file of `len` bytes on a fresh 3-node in-memory pool (k = 2, m = 1,
    /// shards of 128 KiB): the pool, its client and the committed manifest.
    async fn sealed_file(data: &[u8]) -> (Arc<MemSegments>, Arc<PoolClient>, Manifest) {
        let mem = MemSegments::new(3);
        let mut cfg = DataConfig::new(Some(Arc::new(OwnerKey::from_bytes([7; 32]))));
        cfg.shard_size = 128 << 10;
        let client = Arc::new(PoolClient::in_memory(mem.clone(), cfg));
        let fresh = client.new_file().await.expect("placed");
        let mut file = FileData::new(client.clone(), fresh, 4);
        file.write(0, data).await.expect("write");
        file.flush().await.expect("stored");
        assert!(file.manifest.stripe(0).seal.is_some(), "sealed");
        (mem, client, file.manifest.clone())
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i * 13 + i / 251) as u8).collect()
    }

    async fn read(file: &mut FileData, offset: u64, len: u64) -> Vec<u8> {
        file.read(offset, len).await.expect("read").to_vec()
    }

    #[tokio::test]
    async fn the_first_bytes_fetched_at_open_are_the_files() {
        let data = bytes(300 << 10);
        let (_, client, m) = sealed_file(&data).await;
        let mut file = FileData::new(client, m, 4);
        file.fetch_head();
        assert_eq!(file.head.len(), 2, "the first chunk, then the next three");
        // The kernel's READs for read(1) and for a 64 KiB read, then beyond the head.
        assert_eq!(read(&mut file, 0, 16 << 10).await, data[..16 << 10]);
        assert_eq!(read(&mut file, 0, 128 << 10).await, data[..128 << 10]);
        assert!(file.head.is_empty(), "both pieces used");
        assert_eq!(
            read(&mut file, 100 << 10, 200 << 10).await,
            data[100 << 10..]
        );
    }

    #[tokio::test]
    async fn a_corrupt_first_chunk_fetched_at_open_is_read_around() {
        let data = bytes(300 << 10);
        let (mem, client, m) = sealed_file(&data).await;
        let holder = m.stripe(0).holder(&m.place, 0).node_id;
        mem.set_fault(holder, Some(Fault::Corrupt));
        let mut file = FileData::new(client, m, 4);
        file.fetch_head();
        assert_eq!(
            read(&mut file, 0, 16 << 10).await,
            data[..16 << 10],
            "rebuilt from the other shards"
        );
    }

    #[tokio::test]
    async fn a_write_after_open_is_read_not_the_head_fetched_before() {
        let data = bytes(300 << 10);
        let (_, client, m) = sealed_file(&data).await;
        let mut file = FileData::new(client, m, 4);
        file.fetch_head();
        file.write(10, b"new bytes").await.expect("write");
        file.flush().await.expect("stored");
        let mut want = data[..64].to_vec();
        want[10..19].copy_from_slice(b"new bytes");
        assert_eq!(read(&mut file, 0, 64).await, want);
    }
}
