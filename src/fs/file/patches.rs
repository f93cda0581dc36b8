//! Patches: writes into stripes already stored, kept without read-modify-write. Their
//! bytes wait in the patch buffer (file offset to bytes, newest wins) until a flush
//! (or a full buffer) packs them into a slice, a small stripe of its own in the log
//! segments, and the manifest's log gains the extents that lay it over the file.
//! Reads put extents and patches over a stripe's stored bytes; compaction rewrites a
//! much patched stripe whole and drops its extents.

use std::ops::Range;
use std::sync::Arc;

use super::FileData;
use crate::client::layout::LOG_SLOT;
use crate::client::{Extent, Layout, Slice};
use crate::fs::FsError;

/// Wire bytes each patched write may cost beyond its own slice bytes ((k + m) / k × its
/// length): issue 16's bound. Compaction is paid from it.
pub const WIRE_SLACK: u64 = 64 << 10;

/// Most extents a file's log keeps: the manifest (extents included) is rewritten at
/// every commit, so past this the most patched stripes are compacted until half are
/// left. At ~10 bytes an extent, a log this full takes ~320 KB of the record.
pub const MAX_EXTENTS: usize = 32 * 1024;

/// Patched writes a stripe takes before it is compacted (rewritten whole, its extents
/// dropped). A compaction reads the k data shards and writes k + m shards,
/// (2k + m) × shard_size bytes, and reads each extent's slice chunk (a sealed chunk is
/// 32 KiB, ~half of `WIRE_SLACK`): so the rewrite may take the other half of the slack
/// of each write it absorbs. k = 2, m = 1, 1 MiB shards: 5 MiB / 32 KiB = 160 writes.
/// At least `MIN_WRITES`: small stripes cost little to rewrite, but a rewrite per
/// write would be read-modify-write again.
pub fn compact_after(layout: &Layout) -> u32 {
    const MIN_WRITES: u64 = 16;
    let rewrite = u64::from(2 * layout.k + layout.m) * u64::from(layout.shard_size);
    let n = rewrite.div_ceil(WIRE_SLACK / 2).max(MIN_WRITES);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Fetched pieces of slices kept for reads and compaction (a chunk serves many
/// neighbouring extents).
const PIECES: usize = 16;

/// A fetched piece of a slice: its number and record (numbers are reused), where the
/// piece starts in the slice, and its bytes.
pub(super) struct Piece {
    slice: u64,
    record: crate::client::StripeRecord,
    start: u64,
    bytes: Arc<Vec<u8>>,
}

impl FileData {
    /// Can bytes of stripe `j` up to file offset `upto` go to the patch buffer: the
    /// stripe is stored, and neither buffered nor being stored here?
    pub(super) fn patchable(&self, j: u64, upto: u64) -> bool {
        !self.manifest.is_hole(j)
            && !self.dirty.contains_key(&j)
            && !self.uploads.contains_key(&j)
            && upto <= self.manifest.size
            && self.manifest.inline.is_none()
    }

    /// Puts `src` (bytes of stored stripe `j` from file offset `pos`) into the patch
    /// buffer, packing the buffer into a slice first if it would outgrow one. A stripe
    /// the buffer then covers whole becomes a dirty stripe (no fetch needed).
    pub(super) async fn patch(&mut self, j: u64, pos: u64, src: &[u8]) -> Result<(), FsError> {
        let cap = self.stripe_size() as usize;
        if self.patch_bytes + src.len() > cap {
            self.write_slice().await?;
        }
        self.put_patch(pos, src);
        let count = self.manifest.log.writes.entry(j).or_insert(0);
        *count = count.saturating_add(1);
        let base = j * self.stripe_size();
        let len = self.manifest.stripe_len(j);
        let whole = self
            .patches
            .range(..=base)
            .next_back()
            .is_some_and(|(s, b)| *s <= base && s + b.len() as u64 >= base + len);
        if whole {
            let mut pieces = self.take_patches(base..base + len);
            if let Some((_, bytes)) = pieces.pop() {
                self.forget_cached(j);
                self.dirty.insert(j, bytes);
                self.start_upload(j).await?;
            }
        }
        Ok(())
    }

    /// Lays `src` at file offset `pos` in the patch buffer, joining the entries it
    /// touches or overlaps into one.
    fn put_patch(&mut self, pos: u64, src: &[u8]) {
        let end = pos + src.len() as u64;
        let before = self
            .patches
            .range(..=pos)
            .next_back()
            .filter(|(s, b)| *s + b.len() as u64 >= pos)
            .map(|(s, _)| *s);
        let (start, mut buf) = match before.and_then(|s| self.patches.remove(&s).map(|b| (s, b))) {
            Some((s, b)) => {
                self.patch_bytes -= b.len();
                (s, b)
            }
            None => (pos, Vec::with_capacity(src.len())),
        };
        let at = (pos - start) as usize;
        let inside = buf.len().min(at + src.len()) - at;
        buf[at..at + inside].copy_from_slice(&src[..inside]);
        buf.extend_from_slice(&src[inside..]);
        // Entries starting inside or right after: their bytes past `end` are kept.
        let later: Vec<u64> = self.patches.range(pos..=end).map(|(s, _)| *s).collect();
        for s in later {
            if let Some(b) = self.patches.remove(&s) {
                self.patch_bytes -= b.len();
                let b_end = s + b.len() as u64;
                let buf_end = start + buf.len() as u64;
                if b_end > buf_end {
                    buf.extend_from_slice(&b[(buf_end - s) as usize..]);
                }
            }
        }
        self.patch_bytes += buf.len();
        self.patches.insert(start, buf);
    }

    /// Removes and returns the patch buffer's bytes inside `range` (entries across its
    /// edges are cut), in order.
    pub(super) fn take_patches(&mut self, range: Range<u64>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        let first = self
            .patches
            .range(..range.start)
            .next_back()
            .filter(|(s, b)| *s + b.len() as u64 > range.start)
            .map(|(s, _)| *s);
        let inside: Vec<u64> = first
            .into_iter()
            .chain(self.patches.range(range.clone()).map(|(s, _)| *s))
            .collect();
        for s in inside {
            let Some(mut b) = self.patches.remove(&s) else {
                continue;
            };
            self.patch_bytes -= b.len();
            let end = s + b.len() as u64;
            if end > range.end {
                let tail = b.split_off((range.end - s) as usize);
                self.patch_bytes += tail.len();
                self.patches.insert(range.end, tail);
            }
            if s < range.start {
                let mid = b.split_off((range.start - s) as usize);
                self.patch_bytes += b.len();
                self.patches.insert(s, b);
                out.push((range.start, mid));
            } else {
                out.push((s, b));
            }
        }
        out
    }

    /// Does anything newer than the stored stripes (an extent or a patch) cover a byte
    /// of file range `range`?
    pub(super) fn patched(&self, range: Range<u64>) -> bool {
        let patch = self
            .patches
            .range(..range.end)
            .next_back()
            .is_some_and(|(s, b)| *s + b.len() as u64 > range.start);
        patch || self.manifest.log.covers_any(range)
    }

    /// Puts the newest bytes of file range `range` over `out` (which holds its bytes
    /// as the stripes store them): the log's extents, then the patch buffer.
    pub(super) async fn overlay(
        &mut self,
        range: Range<u64>,
        out: &mut [u8],
    ) -> Result<(), FsError> {
        for (at, e) in self.manifest.log.overlapping(range.clone()) {
            let bytes = self.slice_bytes(e).await?;
            let from = (at - range.start) as usize;
            out[from..from + bytes.len()].copy_from_slice(&bytes);
        }
        let first = self
            .patches
            .range(..range.start)
            .next_back()
            .map_or(range.start, |(s, _)| *s);
        for (&s, b) in self.patches.range(first..range.end) {
            let from = s.max(range.start);
            let to = (s + b.len() as u64).min(range.end);
            if from < to {
                let src = &b[(from - s) as usize..(to - s) as usize];
                let at = (from - range.start) as usize;
                out[at..at + src.len()].copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// The bytes extent `e` names, from its slice: only the sealed chunks that hold
    /// them, from the data shards' holders (the whole slice, which fails over and
    /// heals, when a piece cannot be had).
    async fn slice_bytes(&mut self, e: Extent) -> Result<Vec<u8>, FsError> {
        let slice = self
            .manifest
            .log
            .slices
            .get(&e.slice)
            .cloned()
            .ok_or_else(|| {
                FsError::Meta(format!(
                    "file {}: an extent names slice {}, which its manifest lacks",
                    self.manifest.place.file_id, e.slice
                ))
            })?;
        let range = e.at..e.at + e.len;
        if range.end > slice.len {
            return Err(FsError::Meta(format!(
                "file {}: an extent reaches past the end of slice {}",
                self.manifest.place.file_id, e.slice
            )));
        }
        let place = self.manifest.place.clone();
        let shard_len = u64::from(place.layout.shard_len(slice.len)).max(1);
        let mut out = Vec::with_capacity(e.len as usize);
        let mut pos = range.start;
        while pos < range.end {
            let i = pos / shard_len;
            let base = i * shard_len;
            let upto = range.end.min(base + shard_len);
            if let Some(p) = self.cached_piece(e.slice, &slice, pos, upto) {
                out.extend_from_slice(
                    &p.bytes[(pos - p.start) as usize..(upto - p.start) as usize],
                );
                pos = upto;
                continue;
            }
            let want = (pos - base) as usize..(upto - base) as usize;
            let piece = self
                .client
                .read_data_range(&place, e.slice, slice.len, &slice.record, i as usize, want)
                .await;
            match piece {
                Ok((start, bytes)) => {
                    let start = base + start as u64;
                    let bytes = Arc::new(bytes);
                    out.extend_from_slice(&bytes[(pos - start) as usize..(upto - start) as usize]);
                    self.keep_piece(Piece {
                        slice: e.slice,
                        record: slice.record.clone(),
                        start,
                        bytes,
                    });
                    pos = upto;
                }
                Err(why) => {
                    log::debug!("reading slice {} whole: {why}", e.slice);
                    let data = self
                        .client
                        .read_stripe(&place, e.slice, slice.len, &slice.record)
                        .await?;
                    data.copy_to(&mut out, pos as usize, range.end as usize);
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn cached_piece(&self, s: u64, slice: &Slice, from: u64, to: u64) -> Option<&Piece> {
        self.pieces.iter().find(|p| {
            p.slice == s
                && p.record == slice.record
                && p.start <= from
                && to <= p.start + p.bytes.len() as u64
        })
    }

    fn keep_piece(&mut self, p: Piece) {
        self.pieces.push_back(p);
        if self.pieces.len() > PIECES {
            self.pieces.pop_front();
        }
    }

    /// Packs the patch buffer into a slice stored in the log segments (a fresh salt,
    /// k + m shards like any stripe) and lays its extents over the file. Errors: the
    /// store's; the file then fails as for any store.
    pub(super) async fn write_slice(&mut self) -> Result<(), FsError> {
        self.check_failed()?;
        if self.patches.is_empty() {
            return Ok(());
        }
        let patches = std::mem::take(&mut self.patches);
        self.patch_bytes = 0;
        let mut data = Vec::with_capacity(patches.values().map(Vec::len).sum());
        let mut extents = Vec::with_capacity(patches.len());
        for (start, bytes) in &patches {
            extents.push((*start, data.len() as u64, bytes.len() as u64));
            data.extend_from_slice(bytes);
        }
        let s = self.manifest.log.free_number(&self.committed.log);
        let place = self.manifest.place.clone();
        match self.client.write_stripe(&place, (s, LOG_SLOT), &data).await {
            Ok(record) => {
                self.written.push((s, record.clone()));
                let len = data.len() as u64;
                self.manifest.log.slices.insert(s, Slice { record, len });
                for (start, at, len) in extents {
                    let e = Extent { len, slice: s, at };
                    self.manifest.log.insert(start, e);
                }
                Ok(())
            }
            Err(e) => {
                log::error!("cannot store a slice of file {}: {e}", place.file_id);
                let e = FsError::from(e);
                self.fail(e.again());
                Err(e)
            }
        }
    }

    /// Before a flush packs the patches: rewrites whole (copy-on-write, as any
    /// stripe) each stripe that took `compact_after` patched writes, and, while the
    /// log holds more than `MAX_EXTENTS` extents, the stripes with the most of them.
    /// Their extents are dropped when their new shards are stored.
    pub(super) async fn compact(&mut self) -> Result<(), FsError> {
        let after = compact_after(&self.manifest.place.layout);
        let mut hot: Vec<u64> = (self.manifest.log.writes.iter())
            .filter(|(_, n)| **n >= after)
            .map(|(j, _)| *j)
            .collect();
        let total = self.manifest.log.extents.len();
        if total > MAX_EXTENTS {
            let stripe = self.stripe_size();
            let mut per: std::collections::BTreeMap<u64, usize> = Default::default();
            for s in self.manifest.log.extents.keys() {
                *per.entry(s / stripe).or_default() += 1;
            }
            let mut most: Vec<(usize, u64)> = per.into_iter().map(|(j, n)| (n, j)).collect();
            most.sort_unstable_by(|a, b| b.cmp(a));
            let mut left = total;
            for (n, j) in most {
                if left <= MAX_EXTENTS / 2 {
                    break;
                }
                hot.push(j);
                left -= n;
            }
            hot.sort_unstable();
            hot.dedup();
        }
        self.compact_stripes(&hot).await
    }

    /// Rewrites each of stripes `js` whole with its patched bytes (a hole just forgets
    /// its patches).
    pub(super) async fn compact_stripes(&mut self, js: &[u64]) -> Result<(), FsError> {
        for &j in js {
            if self.manifest.is_hole(j) && !self.dirty.contains_key(&j) {
                self.manifest.drop_patches(j);
                continue;
            }
            self.dirty_stripe(j, false).await?;
            self.start_upload(j).await?;
        }
        Ok(())
    }

    /// Rewrites every patched stripe whole, so the file's bytes are all in its stripes
    /// and its log is empty once flushed (for repair and re-encoding, which move
    /// stripes only).
    pub async fn compact_all(&mut self) -> Result<(), FsError> {
        self.compact_some(usize::MAX).await.map(|_| ())
    }

    /// Rewrites the first `most` patched stripes whole (`compact_all` for all of them);
    /// returns whether patched stripes are left. A file compacted a few stripes at a
    /// time holds its lock for a few stripes' rewrite, not for the whole file's.
    pub async fn compact_some(&mut self, most: usize) -> Result<bool, FsError> {
        self.write_slice().await?;
        let stripe = self.stripe_size();
        let mut js: Vec<u64> = (self.manifest.log.extents.iter())
            .flat_map(|(s, e)| *s / stripe..(s + e.len).div_ceil(stripe))
            .collect();
        js.extend(self.manifest.log.writes.keys());
        js.sort_unstable();
        js.dedup();
        let left = js.len() > most;
        js.truncate(most);
        self.compact_stripes(&js).await?;
        Ok(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripe_is_compacted_once_its_writes_have_paid_for_the_rewrite() {
        let l = Layout {
            k: 2,
            m: 1,
            shard_size: 1 << 20,
        };
        // 5 MiB moved by the rewrite, 32 KiB of each write's slack.
        assert_eq!(compact_after(&l), 160);
        let tiny = Layout {
            k: 2,
            m: 1,
            shard_size: 4000,
        };
        assert_eq!(compact_after(&tiny), 16);
    }
}
