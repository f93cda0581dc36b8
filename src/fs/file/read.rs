//! Reads of an open file: the latest bytes from its buffers or the pool, a small cache
//! of fetched stripes, and prefetch for sequential readers.

use std::sync::Arc;

use super::{extend_padded, Fetch, FileData, ReadBytes, CACHE_STRIPES, PREFETCH};
use crate::client::StripeData;
use crate::fs::FsError;

impl FileData {
    pub(super) fn forget_cached(&mut self, j: u64) {
        self.cache.retain(|(c, _)| *c != j);
        if self.shard.as_ref().is_some_and(|(c, _, _)| *c == j) {
            self.shard = None;
        }
        if let Some(f) = self.prefetch.remove(&j) {
            f.abort();
        }
    }

    pub(super) fn forget_all_cached(&mut self) {
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
    /// A reader is sequential from its second read on (in the stripe of the one before
    /// or the next): a first read alone (`head -c1`, `file`, a thumbnailer) prefetches
    /// nothing, since the fetches would be aborted at its close, wasting the bytes in
    /// flight and the connections that carried them (the next open then pays a new
    /// TCP connection and handshake).
    pub(super) fn schedule_prefetch(&mut self, j: u64, with_j: bool) {
        let sequential = matches!(self.last_read, Some(l) if j == l || j == l + 1);
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
            // answer (no copy on the way to the kernel), else appended. Bytes patched
            // since the stripe was stored go over them (`patches`).
            let file_range = base + from as u64..base + to as u64;
            let patched = self.patched(file_range.clone());
            let lend = one_stripe && !patched;
            let start = out.len();
            if let Some(buf) = self.dirty.get(&j) {
                extend_padded(&mut out, buf, from, to);
                continue; // a buffered stripe holds its patches
            } else if let Some(up) = self.uploads.get(&j) {
                extend_padded(&mut out, &up.data, from, to);
                continue;
            } else if let Some((at, piece)) = self.one_piece(j, from, to).await {
                self.schedule_prefetch(j, true);
                if lend && to - at <= piece.len() {
                    return Ok(ReadBytes::Shared(piece, from - at..to - at));
                }
                extend_padded(&mut out, &piece, from - at, to - at);
            } else {
                let data = self.pooled_stripe(j).await?;
                self.schedule_prefetch(j, false);
                match data.lend(from, to) {
                    Some((shard, range)) if lend => return Ok(ReadBytes::Shared(shard, range)),
                    _ => data.copy_to(&mut out, from, to),
                }
            }
            if patched {
                self.overlay(file_range, &mut out[start..]).await?;
            }
        }
        Ok(ReadBytes::Owned(out))
    }
}
