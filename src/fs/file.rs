//! An open file's data: stripe buffers that collect writes and go out to the pool as
//! they fill (a bounded number in flight), and a small cache with prefetch for reads.
//!
//! Every stripe is in exactly one of these places: dirty (buffered here, newer than the
//! pool), uploading (being stored, its bytes kept until acknowledged), or in the pool
//! (described by the manifest's checksums). Reads look in that order, so a reader always
//! sees the latest writes.
//!
//! A write into a stored stripe that is neither buffered nor covers the whole stripe
//! does not fetch it: its bytes go to the patch buffer, and from there into a slice
//! (`patches`). Reads put the file's extents and patches over the stored stripes.
//!
//! This file holds `FileData`'s state; its work is split by concern: `buffers`
//! (writes and truncation), `patches` (writes into stored stripes, slices,
//! compaction), `upload` (storing, flush, roll-back), `read` (cache and prefetch) and
//! `holes` (holes, seek, fallocate).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::meta::Time;
use super::FsError;
use crate::client::{ClientError, Manifest, PoolClient};
use crate::client::{StripeData, StripeRecord};

mod buffers;
mod holes;
mod patches;
mod read;
mod upload;

pub use patches::{compact_after, MAX_EXTENTS, WIRE_SLACK};
pub use upload::unused_slots;

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
    /// The file's manifest as this open file sees it: its size and the stripes stored
    /// so far, ahead of the committed one until the next commit.
    pub manifest: Manifest,
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Bytes written into stored stripes since the last slice, by file offset (never
    /// overlapping): newer than the log's extents, older than dirty stripes.
    patches: BTreeMap<u64, Vec<u8>>,
    /// Bytes in `patches`; at most a stripe's (a slice fits one slot).
    patch_bytes: usize,
    /// Pieces of slices fetched lately, for reads and compaction.
    pieces: VecDeque<patches::Piece>,
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
            patches: BTreeMap::new(),
            patch_bytes: 0,
            pieces: VecDeque::new(),
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
    /// Bytes `range` of a shared buffer (a cached stripe).
    Shared(Arc<Vec<u8>>, Range<usize>),
    /// Bytes of this read's own.
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
    use rangemap::RangeSet;

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
