//! An open file's data: stripe buffers that collect writes and go out to the pool as
//! they fill (a bounded number in flight), and a small cache with prefetch for reads.
//!
//! Every stripe is in exactly one of these places: dirty (buffered here, newer than the
//! pool), uploading (being stored, its bytes kept until acknowledged), or in the pool
//! (described by the manifest's checksums). Reads look in that order, so a reader always
//! sees the latest writes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use rangemap::RangeSet;
use tokio::task::JoinHandle;

use super::meta::Time;
use super::FsError;
use crate::client::{ClientError, Manifest, PoolClient};
use crate::client::{StripeData, StripeRecord};

/// Stripes fetched ahead of a sequential reader.
const PREFETCH: u64 = 2;
/// Fetched stripes kept for readers.
const CACHE_STRIPES: usize = 4;

/// Files of at most this many bytes live in their metadata record instead of on the
/// pool: their close costs one durable commit and no round trip, and their bytes are
/// exactly as safe as the file's name and manifest, which live in that same record (the
/// mount's metadata is needed to read any file back). Small enough that offloading
/// still offloads: a manifest alone takes a few hundred bytes.
pub const INLINE_MAX: u64 = 4096;

type Fetch = JoinHandle<Result<StripeData, ClientError>>;

struct Upload {
    data: Arc<Vec<u8>>,
    task: JoinHandle<Result<StripeRecord, ClientError>>,
}

/// The data side of one open inode, shared by all its handles.
pub struct FileData {
    client: Arc<PoolClient>,
    max_uploads: usize,
    pub manifest: Manifest,
    dirty: BTreeMap<u64, Vec<u8>>,
    uploads: BTreeMap<u64, Upload>,
    cache: VecDeque<(u64, StripeData)>,
    prefetch: HashMap<u64, Fetch>,
    /// The last piece of a data shard fetched alone (stripe, where the piece starts in
    /// the stripe, plaintext) for a read that needed nothing else of its stripe.
    shard: Option<(u64, usize, Arc<Vec<u8>>)>,
    last_read: Option<u64>,
    /// A failure to store data, reported by every later flush of this file.
    failed: Option<FsError>,
    /// Size or data changed since the manifest was last committed.
    pub changed: bool,
    /// When the data last changed, if after the last commit: the file's mtime and
    /// ctime from then on (a stat of the open file shows it at once, and the commit
    /// records it, not the time of the close).
    pub touched: Option<Time>,
    /// The manifest as last committed (what a crash would leave): rewrites go to the
    /// slots it does not use, and what it uses is freed only once a manifest without it
    /// is committed.
    pub committed: Manifest,
    /// The stripes stored since the last commit, for freeing the slots the next
    /// committed manifest does not keep (overwritten, punched or cut off again before
    /// the commit, or all of them if the flush fails).
    pub written: Vec<(u64, StripeRecord)>,
    /// A roll-back discarded changes the kernel may hold in its cache, and it has not
    /// been told to drop them yet.
    pub discarded: bool,
}

impl FileData {
    /// Data state for a file described by `manifest`.
    pub fn new(client: Arc<PoolClient>, manifest: Manifest, max_uploads: usize) -> Self {
        let committed = manifest.clone();
        FileData {
            client,
            max_uploads: max_uploads.max(1),
            manifest,
            dirty: BTreeMap::new(),
            uploads: BTreeMap::new(),
            cache: VecDeque::new(),
            prefetch: HashMap::new(),
            shard: None,
            last_read: None,
            failed: None,
            changed: false,
            touched: None,
            committed,
            written: Vec::new(),
            discarded: false,
        }
    }

    /// Has a store of this file failed (reported by every flush until it is closed)?
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Makes `e` the failure every later flush and write of this file reports, unless
    /// an earlier one already is.
    pub fn fail(&mut self, e: FsError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// Notes a change of the file's bytes or size now.
    pub fn touch(&mut self) {
        self.changed = true;
        self.touched = Some(Time::now());
    }

    /// Is stripe `j` data rather than a hole: stored, reserved, or holding written
    /// bytes here? Holes read as zeros and take no space.
    fn is_data(&self, j: u64) -> bool {
        !self.manifest.is_hole(j)
            || self.manifest.is_reserved(j)
            || self.dirty.contains_key(&j)
            || self.uploads.contains_key(&j)
            || (j == 0 && self.manifest.inline.as_ref().is_some_and(|b| !b.is_empty()))
    }

    /// The first stripe at or after `j` that is data, if any.
    fn next_data_stripe(&self, j: u64) -> Option<u64> {
        let stored = self.manifest.records_in(j..u64::MAX).next().map(|(s, _)| s);
        let reserved = self
            .manifest
            .reserved
            .overlapping(&(j..u64::MAX))
            .next()
            .map(|r| r.start.max(j));
        let dirty = self.dirty.range(j..).next().map(|(s, _)| *s);
        let uploading = self.uploads.range(j..).next().map(|(s, _)| *s);
        let inline = (j == 0 && self.is_data(0)).then_some(0);
        [stored, reserved, dirty, uploading, inline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The maximal runs of hole stripes in `range` (walking only its data stripes, so
    /// a range of any length costs what was written in it).
    fn hole_runs(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut j = range.start;
        while j < range.end {
            match self.next_data_stripe(j) {
                Some(d) if d < range.end => {
                    if d > j {
                        out.push(j..d);
                    }
                    j = d;
                    while j < range.end && self.is_data(j) {
                        j += 1;
                    }
                }
                _ => {
                    out.push(j..range.end);
                    break;
                }
            }
        }
        out
    }

    /// `lseek(SEEK_DATA)` (`data`) or `lseek(SEEK_HOLE)` from `offset`, at the
    /// granularity of stripes (a stripe with any byte written is data). `None` is
    /// ENXIO: `offset` at or past the end, or no data after it.
    pub fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        let size = self.size();
        if offset >= size {
            return None;
        }
        let stripe = self.stripe_size();
        let j = offset / stripe;
        if data {
            let at = self.next_data_stripe(j)?.saturating_mul(stripe).max(offset);
            (at < size).then_some(at)
        } else {
            // Runs of data are as long as what was written: walk them.
            let mut h = j;
            while h.saturating_mul(stripe) < size && self.is_data(h) {
                h += 1;
            }
            Some(h.saturating_mul(stripe).max(offset).min(size))
        }
    }

    /// Bytes of the file that take space: stored, reserved, or written here and not yet
    /// stored (what `st_blocks` counts).
    pub fn allocated_bytes(&self) -> u64 {
        if let Some(bytes) = &self.manifest.inline {
            return bytes.len() as u64;
        }
        let pending: u64 = self
            .dirty
            .keys()
            .chain(self.uploads.keys())
            .filter(|j| self.manifest.is_hole(**j) && !self.manifest.is_reserved(**j))
            .map(|j| self.manifest.stripe_len(*j))
            .sum();
        self.manifest.allocated_bytes().saturating_add(pending)
    }

    /// Current size, including buffered writes.
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    fn stripe_size(&self) -> u64 {
        self.manifest.place.layout.stripe_size()
    }

    fn check_failed(&self) -> Result<(), FsError> {
        match &self.failed {
            Some(e) => Err(e.again()),
            None => Ok(()),
        }
    }

    fn forget_cached(&mut self, j: u64) {
        self.cache.retain(|(c, _)| *c != j);
        if self.shard.as_ref().is_some_and(|(c, _, _)| *c == j) {
            self.shard = None;
        }
        if let Some(f) = self.prefetch.remove(&j) {
            f.abort();
        }
    }

    fn forget_all_cached(&mut self) {
        self.cache.clear();
        self.shard = None;
        for (_, f) in self.prefetch.drain() {
            f.abort();
        }
    }

    fn spawn_fetch(&self, j: u64) -> Fetch {
        let client = self.client.clone();
        let place = self.manifest.place.clone();
        let len = self.manifest.stripe_len(j);
        let record = self.manifest.stripe(j).clone();
        tokio::spawn(async move { client.read_stripe(&place, j, len, &record).await })
    }

    /// Stripe `j` as stored in the pool (through the cache and prefetches).
    async fn pooled_stripe(&mut self, j: u64) -> Result<StripeData, FsError> {
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
    fn schedule_prefetch(&mut self, j: u64, with_j: bool) {
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
    async fn one_piece(&mut self, j: u64, from: usize, to: usize) -> Option<(usize, Arc<Vec<u8>>)> {
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

    /// Makes stripe `j` dirty, holding its current bytes unless the caller is about to
    /// overwrite all of it. A stripe buffer is only as long as the bytes put in it (the
    /// rest of the stripe reads as zeros), so a small file never fills a whole stripe.
    async fn dirty_stripe(&mut self, j: u64, overwrite_all: bool) -> Result<&mut Vec<u8>, FsError> {
        if !self.dirty.contains_key(&j) {
            let mut buf = Vec::new();
            if !overwrite_all {
                if let Some(up) = self.uploads.get(&j) {
                    buf.extend_from_slice(&up.data);
                } else if !self.manifest.is_hole(j) {
                    let data = self.pooled_stripe(j).await?;
                    data.copy_to(&mut buf, 0, data.len);
                }
            }
            self.forget_cached(j);
            self.dirty.insert(j, buf);
        }
        self.dirty
            .get_mut(&j)
            .ok_or_else(|| FsError::Meta("stripe buffer vanished".into()))
    }

    /// Does this file hold nothing yet (no bytes, nothing stored or reserved, nothing
    /// buffered)? Its placement may then still change at no cost: the caller places it
    /// again, before a write, if the pool changed since (`PoolClient::place_again`).
    pub fn holds_nothing(&self) -> bool {
        self.size() == 0
            && !self.manifest.stores_anything()
            && self.manifest.reserved.is_empty()
            && self.dirty.is_empty()
    }

    /// Takes `fresh` (a new placement, from `PoolClient::place_again`) as the placement
    /// of this file, which `holds_nothing`.
    pub fn replace_placement(&mut self, fresh: Manifest) {
        self.manifest = fresh;
        self.changed = true;
    }

    /// A small file's bytes kept in its record become its (dirty) first stripe again,
    /// for a change; the flush that follows decides where they go.
    fn spill_inline(&mut self) {
        if let Some(bytes) = self.manifest.inline.take() {
            if !bytes.is_empty() {
                self.dirty.insert(0, bytes);
            }
            self.changed = true;
        }
    }

    /// At a flush: keeps a small file's bytes in its record rather than on the pool, if
    /// nothing of it is on the pool (a file that was stored stays stored).
    fn keep_inline(&mut self) -> bool {
        let small = self.size() <= INLINE_MAX
            && self.uploads.is_empty()
            && self.failed.is_none()
            && !self.manifest.stores_anything()
            && self.dirty.keys().all(|&j| j == 0);
        if !small {
            return false;
        }
        if let Some(mut bytes) = self.dirty.remove(&0) {
            bytes.resize(self.size() as usize, 0);
            self.manifest.inline = Some(bytes);
        }
        self.manifest.inline.is_some()
    }

    /// Writes `data` at `offset`; full stripes start uploading at once.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.check_failed()?;
        self.spill_inline();
        let stripe_size = self.stripe_size();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooBig)?;
        if end > self.manifest.place.layout.max_written_size() {
            return Err(FsError::FileTooBig);
        }
        if end > self.size() {
            self.prepare_growth().await?;
        }
        let mut pos = offset;
        while pos < end {
            let j = pos / stripe_size;
            let base = j * stripe_size;
            let upto = end.min(base + stripe_size);
            let overwrite_all = pos == base && upto == base + stripe_size;
            let buf = self.dirty_stripe(j, overwrite_all).await?;
            let src = &data[(pos - offset) as usize..(upto - offset) as usize];
            put_at(buf, (pos - base) as usize, src, stripe_size as usize);
            if upto > self.manifest.size {
                self.manifest.size = upto;
            }
            if upto == base + stripe_size {
                self.start_upload(j).await?;
            }
            pos = upto;
        }
        self.touch();
        Ok(())
    }

    /// Before the size grows: the last stripe's shards were cut for its old, shorter
    /// length, so it must be rewritten with the new one.
    async fn prepare_growth(&mut self) -> Result<(), FsError> {
        let tail = self.size() % self.stripe_size();
        if tail != 0 {
            self.dirty_stripe(self.size() / self.stripe_size(), false)
                .await?;
        }
        Ok(())
    }

    /// Sends dirty stripe `j` to the pool, after any earlier upload of the same stripe
    /// (so the segment ends with the newest bytes), waiting while too many are in flight.
    async fn start_upload(&mut self, j: u64) -> Result<(), FsError> {
        let Some(mut buf) = self.dirty.remove(&j) else {
            return Ok(());
        };
        if self.uploads.contains_key(&j) {
            self.finish_upload(j).await;
        }
        let len = self.manifest.stripe_len(j) as usize;
        if len == 0 {
            return Ok(()); // wholly past the end after a truncation
        }
        // A stripe of zeros is stored as a hole: nothing to send, nothing to keep, and
        // its old shards (if any) are freed once the manifest without them commits.
        if buf.iter().all(|&b| b == 0) {
            self.manifest.clear_stripe(j);
            return Ok(());
        }
        // Exactly the stripe's bytes: zeros where nothing was written.
        buf.resize(len, 0);
        let data = Arc::new(buf);
        let client = self.client.clone();
        let place = self.manifest.place.clone();
        let bytes = data.clone();
        let slot = self.upload_slot(j);
        let task =
            tokio::spawn(async move { client.write_stripe(&place, (j, slot), &bytes).await });
        self.uploads.insert(j, Upload { data, task });
        while self.uploads.len() > self.max_uploads {
            if let Some(&oldest) = self.uploads.keys().next() {
                self.finish_upload(oldest).await;
            }
        }
        self.check_failed()
    }

    /// The slot stripe `j` is written into: the one its committed record does not use
    /// (copy-on-write), slot 0 for a stripe the committed file does not have.
    fn upload_slot(&self, j: u64) -> u8 {
        if self.committed.place.file_id != self.manifest.place.file_id {
            return 0; // a placement begun since the commit: nothing of it is committed
        }
        match self.committed.stripes.get(&j) {
            Some(r) => 1 - r.slot.min(1),
            None => 0,
        }
    }

    async fn finish_upload(&mut self, j: u64) {
        let Some(up) = self.uploads.remove(&j) else {
            return;
        };
        let result = match up.task.await {
            Ok(r) => r.map_err(FsError::from),
            Err(e) => Err(FsError::task("upload", e)),
        };
        match result {
            Ok(record) => {
                self.written.push((j, record.clone()));
                self.manifest.set_stripe(j, record);
            }
            Err(e) => {
                log::error!(
                    "cannot store stripe {j} of file {}: {e}",
                    self.manifest.place.file_id
                );
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
            }
        }
    }

    /// Stores every buffered stripe and waits for all acknowledgements. Afterwards the
    /// manifest describes exactly the stored bytes, or an error says they are not.
    pub async fn flush(&mut self) -> Result<(), FsError> {
        if self.keep_inline() {
            return Ok(());
        }
        let dirty: Vec<u64> = self.dirty.keys().copied().collect();
        for j in dirty {
            self.start_upload(j).await?;
        }
        let pending: Vec<u64> = self.uploads.keys().copied().collect();
        for j in pending {
            self.finish_upload(j).await;
        }
        self.check_failed()
    }

    /// Waits for every upload in flight, recording what each stored.
    pub async fn settle(&mut self) {
        let pending: Vec<u64> = self.uploads.keys().copied().collect();
        for j in pending {
            self.finish_upload(j).await;
        }
    }

    /// After a failed flush: forgets every change since the last commit (the file is
    /// back to what was committed) and returns what the failed attempt left on the
    /// nodes: the manifest it had and the stripes it stored, for their slots to be
    /// freed. The failure stays, reported by every later flush and write of this file
    /// until it is closed.
    pub async fn roll_back(&mut self) -> (Manifest, Vec<(u64, StripeRecord)>) {
        self.settle().await;
        // Something the kernel may have cached is gone (not when a roll-back finds the
        // file as committed already, such as the next flush after a failed write).
        self.discarded |= self.changed || !self.written.is_empty() || !self.dirty.is_empty();
        self.dirty.clear();
        self.forget_all_cached();
        self.changed = false;
        self.touched = None;
        let abandoned = std::mem::replace(&mut self.manifest, self.committed.clone());
        (abandoned, std::mem::take(&mut self.written))
    }

    /// Changes the size: shrinking forgets what lies beyond, growing leaves a hole that
    /// reads as zeros. The stripe holding the new end is rewritten so its shards match
    /// its new length. Truncating to zero starts afresh on the current pool.
    pub async fn resize(&mut self, new_size: u64) -> Result<(), FsError> {
        self.check_failed()?;
        self.spill_inline();
        let old_size = self.size();
        // A truncate sets mtime and ctime even when the size stays (as ext4 does).
        self.touch();
        if new_size == old_size {
            return Ok(());
        }
        self.forget_all_cached();
        if new_size == 0 {
            let pending: Vec<u64> = self.uploads.keys().copied().collect();
            for j in pending {
                self.finish_upload(j).await;
            }
            self.dirty.clear();
            let fresh = self.client.new_file().await?;
            let old = std::mem::replace(&mut self.manifest, fresh);
            // The committed placement is deleted once the new one is committed; one
            // begun since the commit was never committed and goes now.
            self.written.clear();
            if old.place.file_id != self.committed.place.file_id {
                if let Err(e) = self.client.delete(&old).await {
                    log::warn!("cannot delete file {}: {e}", old.place.file_id);
                }
            }
            return Ok(());
        }
        let stripe_size = self.stripe_size();
        if new_size < old_size {
            let keep = new_size.div_ceil(stripe_size);
            self.dirty.retain(|j, _| *j < keep);
            let tail = new_size % stripe_size;
            if tail != 0 {
                let j = new_size / stripe_size;
                let buf = self.dirty_stripe(j, false).await?;
                buf.truncate(tail as usize);
            }
            let pending: Vec<u64> = self
                .uploads
                .keys()
                .copied()
                .filter(|j| *j >= keep)
                .collect();
            for j in pending {
                self.finish_upload(j).await;
            }
            // What the shrink cuts off is freed on the nodes once it is committed.
            self.manifest.size = new_size;
            self.manifest.trim_stripes();
        } else {
            self.prepare_growth().await?;
            self.manifest.size = new_size;
        }
        Ok(())
    }

    /// `fallocate` without `FALLOC_FL_PUNCH_HOLE`: reserves room on the holders for
    /// every stripe of `offset..offset+len` that is a hole (all of them or none: a
    /// refusal leaves the file as it was), so later writes there cannot run out of
    /// space; unless `keep_size`, grows the file to cover the range. The reserved
    /// stripes read as zeros. Errors: ENOSPC or EDQUOT when the pool cannot hold it.
    pub async fn allocate(
        &mut self,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<(), FsError> {
        self.check_failed()?;
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > self.manifest.place.layout.max_written_size() {
            return Err(FsError::FileTooBig);
        }
        self.spill_inline();
        let stripe = self.stripe_size();
        let holes = self.hole_runs(offset / stripe..end.div_ceil(stripe));
        let mut done = Vec::new();
        for run in holes {
            if let Err(e) = self.client.reserve(&self.manifest, run.clone()).await {
                // All or nothing: free what this call reserved before the refusal.
                for run in done {
                    if let Err(e) = self.client.punch(&self.manifest, run).await {
                        log::warn!("cannot free a reservation: {e}");
                    }
                }
                return Err(e.into());
            }
            done.push(run);
        }
        for run in done {
            self.manifest.reserved.insert(run);
        }
        if !keep_size && end > self.size() {
            self.resize(end).await?;
        }
        self.touch();
        Ok(())
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE)`: bytes `offset..offset+len` (within the file)
    /// read as zeros from now on. Stripes wholly inside become holes (their slots are
    /// freed on the nodes after the commit); the parts of the stripes at either edge are
    /// overwritten with zeros.
    pub async fn punch(&mut self, offset: u64, len: u64) -> Result<(), FsError> {
        self.check_failed()?;
        let end = offset.saturating_add(len).min(self.size());
        if offset >= end {
            return Ok(());
        }
        let stripe = self.stripe_size();
        let mut pos = offset;
        while pos < end {
            let j = pos / stripe;
            let base = j * stripe;
            let stripe_end = (base + stripe).min(self.size());
            let upto = end.min(stripe_end);
            if pos == base && upto == stripe_end {
                // The whole stripe: it becomes a hole.
                if self.uploads.contains_key(&j) {
                    self.finish_upload(j).await;
                }
                self.dirty.remove(&j);
                self.forget_cached(j);
                // Its slots are freed once the manifest without it is committed.
                self.manifest.clear_stripe(j);
                self.manifest.reserved.remove(j..j + 1);
            } else if self.is_data(j) {
                let zeros = vec![0u8; (upto - pos) as usize];
                self.write(pos, &zeros).await?;
            }
            pos = upto;
        }
        self.check_failed()?;
        self.touch();
        Ok(())
    }
}

/// The slots that `candidates` (stripe records) and `reserved` (reserved stripes, slot
/// 0) take on the nodes and that `keep` does not use, as manifests of `keep`'s
/// placement to punch (one per slot, empty ones left out): what can be freed once
/// `keep` is the committed manifest.
pub fn unused_slots(
    keep: &Manifest,
    candidates: &[(u64, StripeRecord)],
    reserved: &RangeSet<u64>,
) -> Vec<Manifest> {
    let used = |j: u64, slot: u8| {
        keep.stripes.get(&j).is_some_and(|r| r.slot == slot) || (slot == 0 && keep.is_reserved(j))
    };
    let mut by_slot = [
        Manifest::new(keep.place.clone()),
        Manifest::new(keep.place.clone()),
    ];
    for (j, record) in candidates {
        if !used(*j, record.slot) {
            by_slot[usize::from(record.slot.min(1))]
                .stripes
                .insert(*j, record.clone());
        }
    }
    let mut free = reserved.clone();
    for r in keep.reserved.iter() {
        free.remove(r.clone());
    }
    let kept: Vec<u64> = free
        .iter()
        .flat_map(|r| keep.records_in(r.clone()))
        .filter(|(_, rec)| rec.slot == 0)
        .map(|(j, _)| j)
        .collect();
    for j in kept {
        free.remove(j..j + 1);
    }
    // A reserved slot 0 of a stripe punched anyway needs no second punch.
    for j in by_slot[0].stripes.keys() {
        free.remove(*j..j + 1);
    }
    by_slot[0].reserved = free;
    by_slot
        .into_iter()
        .filter(|m| m.stores_anything() || !m.reserved.is_empty())
        .collect()
}

/// Writes `src` at `at` of a stripe buffer, growing it (zeros for any gap). A buffer
/// growing past a small file's size is given the whole stripe at once, so streaming
/// writes neither reallocate nor zero what they are about to fill.
fn put_at(buf: &mut Vec<u8>, at: usize, src: &[u8], stripe_size: usize) {
    const SMALL: usize = 64 << 10;
    let end = at + src.len();
    if end > buf.capacity() && end > SMALL {
        buf.reserve_exact(stripe_size.saturating_sub(buf.len()));
    }
    if at > buf.len() {
        buf.resize(at, 0);
    }
    let inside = buf.len().min(end) - at;
    buf[at..at + inside].copy_from_slice(&src[..inside]);
    buf.extend_from_slice(&src[inside..]);
}

/// Appends `src[from..to]` to `out`, with zeros for the part past the end of `src`.
/// The bytes a read returns: a range of a fetched buffer, lent without a copy, or bytes
/// put together for this read.
pub enum ReadBytes {
    Shared(Arc<Vec<u8>>, Range<usize>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Shared(buf, range) => &buf[range.clone()],
            ReadBytes::Owned(bytes) => bytes,
        }
    }
}

fn extend_padded(out: &mut Vec<u8>, src: &[u8], from: usize, to: usize) {
    // `from` may lie past the end of a short buffer: then it is all zeros.
    let start = from.min(src.len());
    let have = to.min(src.len()).max(start);
    out.extend_from_slice(&src[start..have]);
    out.resize(out.len() + (to - from) - (have - start), 0);
}

impl Drop for FileData {
    fn drop(&mut self) {
        self.forget_all_cached();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_read_as_zeros_past_their_end() {
        let mut out = Vec::new();
        extend_padded(&mut out, b"abc", 1, 5);
        assert_eq!(out, b"bc\0\0");
        extend_padded(&mut out, b"abc", 7, 9); // wholly past the end
        assert_eq!(out, b"bc\0\0\0\0");
        let mut buf = b"xy".to_vec();
        put_at(&mut buf, 4, b"zz", 1 << 20); // a gap of zeros, then the bytes
        assert_eq!(buf, b"xy\0\0zz");
        put_at(&mut buf, 1, b"QQQQQQQ", 1 << 20); // over the end: overwrite and grow
        assert_eq!(buf, b"xQQQQQQQ");
    }

    fn record(slot: u8) -> StripeRecord {
        StripeRecord {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(crate::client::Sealing { salt: [slot; 16] }),
            slot,
        }
    }

    fn manifest() -> Manifest {
        Manifest::new(crate::client::Placement {
            file_id: "f".into(),
            layout: crate::client::Layout {
                k: 2,
                m: 1,
                shard_size: 16,
            },
            holders: Vec::new(),
        })
    }

    fn stored(ms: &[Manifest]) -> Vec<(u64, u8)> {
        let mut out: Vec<(u64, u8)> = ms
            .iter()
            .flat_map(|m| m.records().map(|(j, r)| (j, r.slot)))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn only_the_slots_the_kept_manifest_does_not_use_are_freed() {
        // Committed: stripe 0 in slot 0, stripe 1 in slot 1, stripe 2 in slot 0,
        // stripes 10..20 reserved.
        let mut committed = manifest();
        committed.set_stripe(0, record(0));
        committed.set_stripe(1, record(1));
        committed.set_stripe(2, record(0));
        committed.reserved.insert(10..20);
        // Since: stripe 0 rewritten into slot 1, stripe 1 made a hole, stripe 3 written
        // then cut off, stripe 12 written into its reservation, 15..20 punched.
        let mut kept = committed.clone();
        kept.set_stripe(0, record(1));
        kept.clear_stripe(1);
        kept.set_stripe(12, record(0));
        kept.reserved.remove(15..20);
        let mut candidates: Vec<(u64, StripeRecord)> =
            committed.records().map(|(j, r)| (j, r.clone())).collect();
        candidates.extend([(0, record(1)), (3, record(0)), (12, record(0))]);
        let free = unused_slots(&kept, &candidates, &committed.reserved);
        assert_eq!(stored(&free), vec![(0, 0), (1, 1), (3, 0)]);
        let reserved: Vec<_> = free
            .iter()
            .flat_map(|m| m.reserved.iter().cloned())
            .collect();
        assert_eq!(
            reserved,
            vec![15..20],
            "12 is written now, 10..15 still reserved"
        );
        // Rolling back instead: what the failed attempt wrote, not what is committed.
        let written = [(0, record(1)), (3, record(0)), (2, record(0))];
        let free = unused_slots(&committed, &written, &RangeSet::new());
        assert_eq!(
            stored(&free),
            vec![(0, 1), (3, 0)],
            "stripe 2's slot 0 is committed"
        );
    }
}
