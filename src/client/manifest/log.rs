//! A file's log: slices (small stripes of patched bytes, stored in the log segments)
//! and the extents that lay their bytes over the file's stripes, newest wins.
//!
//! A random write into a stored stripe does not fetch and rewrite that stripe: its
//! bytes are packed with others into a slice at the next flush, and an extent says
//! which file bytes the slice now holds. Reads put the extents over the stripe's
//! bytes. Compaction (`fs::file::patches`) rewrites a stripe whole and drops its
//! extents; a slice no extent names any more is freed after the next commit.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::StripeRecord;

/// One slice: what was stored for it (its record, `slot == layout::LOG_SLOT`) and its
/// length in bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// How its shards were stored (salt or checksums, moved shards).
    pub record: StripeRecord,
    /// Data bytes of the slice (at most one stripe's).
    pub len: u64,
}

/// File bytes held by a slice: `len` bytes from byte `at` of slice `slice`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes covered.
    pub len: u64,
    /// The slice holding them.
    pub slice: u64,
    /// Where they start in the slice.
    pub at: u64,
}

/// The slices of a file and the extents over its bytes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    /// Slice number (its slot in the log segments) to its record.
    pub slices: BTreeMap<u64, Slice>,
    /// File offset to the extent starting there; extents never overlap.
    pub extents: BTreeMap<u64, Extent>,
    /// Stripe index to the patched writes it took since it was last stored whole: what
    /// decides when it is compacted (`fs::file::patches::compact_after`).
    pub writes: BTreeMap<u64, u32>,
}

impl Log {
    /// Does the file have no slice (every byte is in its stripes)?
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty() && self.extents.is_empty()
    }

    /// Forgets every extent's part inside `range` (those across its edges are cut).
    pub fn clip(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let first = self
            .extents
            .range(..range.start)
            .next_back()
            .filter(|(s, e)| *s + e.len > range.start)
            .map(|(s, _)| *s);
        let inside: Vec<u64> = first
            .into_iter()
            .chain(self.extents.range(range.clone()).map(|(s, _)| *s))
            .collect();
        for start in inside {
            let Some(e) = self.extents.remove(&start) else {
                continue;
            };
            let end = start + e.len;
            if start < range.start {
                let keep = Extent {
                    len: range.start - start,
                    ..e
                };
                self.extents.insert(start, keep);
            }
            if end > range.end {
                let cut = range.end - start;
                let tail = Extent {
                    len: end - range.end,
                    slice: e.slice,
                    at: e.at + cut,
                };
                self.extents.insert(range.end, tail);
            }
        }
    }

    /// Lays `e` over file bytes from `start`, hiding what older extents said there.
    pub fn insert(&mut self, start: u64, e: Extent) {
        if e.len == 0 {
            return;
        }
        self.clip(start..start + e.len);
        self.extents.insert(start, e);
    }

    /// The extents' parts inside `range`, in order: (file offset, extent).
    pub fn overlapping(&self, range: Range<u64>) -> Vec<(u64, Extent)> {
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        let before = self
            .extents
            .range(..range.start)
            .next_back()
            .filter(|(s, e)| *s + e.len > range.start);
        for (&s, e) in before.into_iter().chain(self.extents.range(range.clone())) {
            let from = s.max(range.start);
            let to = (s + e.len).min(range.end);
            out.push((
                from,
                Extent {
                    len: to - from,
                    slice: e.slice,
                    at: e.at + (from - s),
                },
            ));
        }
        out
    }

    /// Does any extent cover a byte of `range`?
    pub fn covers_any(&self, range: Range<u64>) -> bool {
        let before = self
            .extents
            .range(..range.start)
            .next_back()
            .is_some_and(|(s, e)| *s + e.len > range.start);
        before || (!range.is_empty() && self.extents.range(range).next().is_some())
    }

    /// Removes the slices no extent names any more (freed on the nodes once a manifest
    /// without them is committed).
    pub fn prune(&mut self) {
        let named: BTreeSet<u64> = self.extents.values().map(|e| e.slice).collect();
        self.slices.retain(|s, _| named.contains(s));
    }

    /// The lowest slice number neither this log nor `other` uses: slice numbers are
    /// slots in the log segments, so reusing freed ones keeps those segments short.
    pub fn free_number(&self, other: &Log) -> u64 {
        let mut n = 0;
        let used = self.slices.keys().chain(other.slices.keys());
        let used: BTreeSet<u64> = used.copied().collect();
        while used.contains(&n) {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(len: u64, slice: u64, at: u64) -> Extent {
        Extent { len, slice, at }
    }

    #[test]
    fn newer_extents_hide_older_ones_and_clip_their_edges() {
        let mut log = Log::default();
        log.insert(100, ext(100, 1, 0)); // 100..200 from slice 1 at 0
        log.insert(150, ext(10, 2, 40)); // 150..160 from slice 2 at 40
        log.insert(190, ext(20, 3, 0)); // 190..210
        let all: Vec<_> = log.extents.iter().map(|(s, e)| (*s, *e)).collect();
        assert_eq!(
            all,
            vec![
                (100, ext(50, 1, 0)),
                (150, ext(10, 2, 40)),
                (160, ext(30, 1, 60)),
                (190, ext(20, 3, 0)),
            ]
        );
        assert_eq!(
            log.overlapping(155..195),
            vec![
                (155, ext(5, 2, 45)),
                (160, ext(30, 1, 60)),
                (190, ext(5, 3, 0))
            ]
        );
        assert!(log.covers_any(209..300) && !log.covers_any(210..300));
        assert!(!log.covers_any(0..100) && log.covers_any(0..101));
        log.clip(0..155);
        log.clip(205..1000);
        let all: Vec<_> = log.extents.iter().map(|(s, e)| (*s, *e)).collect();
        assert_eq!(
            all,
            vec![
                (155, ext(5, 2, 45)),
                (160, ext(30, 1, 60)),
                (190, ext(15, 3, 0))
            ]
        );
    }

    #[test]
    fn slices_no_extent_names_are_pruned_and_their_numbers_reused() {
        let mut log = Log::default();
        for s in 0..3 {
            let slice = Slice {
                record: StripeRecord::default(),
                len: 10,
            };
            log.slices.insert(s, slice);
        }
        log.insert(0, ext(10, 0, 0));
        log.insert(10, ext(10, 2, 0));
        log.insert(0, ext(10, 2, 0)); // slice 0 is hidden entirely
        log.prune();
        assert_eq!(log.slices.keys().copied().collect::<Vec<_>>(), vec![2]);
        let mut other = Log::default();
        other.slices.insert(
            0,
            Slice {
                record: StripeRecord::default(),
                len: 1,
            },
        );
        assert_eq!(log.free_number(&other), 1);
        assert_eq!(log.free_number(&Log::default()), 0);
    }
}
