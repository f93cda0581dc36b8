//! Tests of LIST and the conditional per-segment DELETE.

use std::time::{Duration, SystemTime};

use super::tests::{block, measured, seg, A, B};
use super::*;
use crate::proto::Reclaim;

/// Sets the mtime of `owner`'s segment back by `ago`, as if last written then.
fn age(store: &SegmentStore, owner: &Identity, s: &SegmentRef, ago: Duration) {
    let path = store.path_of(owner, s).unwrap();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn list_pages_through_an_owner_s_segments_in_order_and_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
    let mut want = Vec::new();
    for file in ["b", "a", "c"] {
        for index in [10, 2, 1 | (1 << 31)] {
            store.store(&A, &seg(file, index), 0, b"xyz").unwrap();
            want.push((file.to_string(), index));
        }
    }
    store.store(&B, &seg("zz", 0), 0, b"other owner").unwrap();
    want.sort();
    let mut got = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.list(&A, after.as_ref(), 4).unwrap();
        pages += 1;
        assert!(page.segments.len() <= 4);
        for info in &page.segments {
            assert_eq!(info.allocated, block(dir.path()), "{info:?}");
            assert!(info.age_ms < 60_000, "{info:?}");
            got.push((info.segment.file.clone(), info.segment.index));
        }
        after = page.segments.last().map(|i| i.segment.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(got, want, "every segment once, in order");
    assert_eq!(pages, 3);
    // An owner with nothing here lists nothing; a bad cursor is refused.
    let none = store.list(&Identity([0xc; 16]), None, 4).unwrap();
    assert_eq!(none, Default::default());
    assert!(matches!(
        store.list(&A, Some(&seg("../x", 0)), 4),
        Err(StoreError::BadId(_))
    ));
}

#[test]
fn list_reports_the_age_of_the_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
    let s = seg("f", 0);
    store.store(&A, &s, 0, b"old").unwrap();
    age(&store, &A, &s, Duration::from_secs(3600));
    let old = store.list(&A, None, 10).unwrap().segments[0].age_ms;
    assert!(old >= 3_600_000, "{old}");
    // Each write verb makes it young again: STORE, RESERVE, PUNCH.
    let b = block(dir.path());
    let writes: [&dyn Fn(); 3] = [
        &|| store.store(&A, &s, 0, b"new").unwrap(),
        &|| store.reserve(&A, &s, 4 * b, b).unwrap(),
        &|| {
            store.punch(&A, &s, 4 * b, b).unwrap();
        },
    ];
    for write in writes {
        age(&store, &A, &s, Duration::from_secs(3600));
        write();
        let young = store.list(&A, None, 10).unwrap().segments[0].age_ms;
        assert!(young < 60_000, "{young}");
    }
}

#[test]
fn a_conditional_delete_keeps_a_segment_written_since_and_frees_an_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
    let (old, fresh) = (seg("f", 0), seg("f", 1));
    store.store(&A, &old, 0, &vec![1; 3 * b as usize]).unwrap();
    store.store(&A, &fresh, 0, b"just stored").unwrap();
    age(&store, &A, &old, Duration::from_secs(700));
    let grace = 600_000;
    assert!(matches!(
        store.delete_segment(&A, &fresh, &[], grace).unwrap(),
        Reclaim::Young { age_ms } if age_ms < grace
    ));
    // Another owner cannot reach it; the owner can.
    assert_eq!(
        store.delete_segment(&B, &old, &[], grace).unwrap(),
        Reclaim::Missing
    );
    assert_eq!(
        store.delete_segment(&A, &old, &[], grace).unwrap(),
        Reclaim::Deleted { freed: 3 * b }
    );
    assert_eq!(
        store.delete_segment(&A, &old, &[], grace).unwrap(),
        Reclaim::Missing
    );
    assert_eq!(store.usage(), (b, 1));
    assert_eq!(
        store.usage(),
        measured(dir.path()),
        "the count is the disk's"
    );
    assert_eq!(store.fwd(&A, &fresh, 0, 11).unwrap(), b"just stored");
    // The last segment of a file takes its directory with it, and a later store into
    // the removed segment starts a fresh file (no stale handle writes into the gone one).
    age(&store, &A, &fresh, Duration::from_secs(700));
    assert!(matches!(
        store.delete_segment(&A, &fresh, &[], grace).unwrap(),
        Reclaim::Deleted { .. }
    ));
    assert_eq!(store.usage(), (0, 0));
    assert!(!dir.path().join("segments").join(hex::encode(A.0)).exists());
    store.store(&A, &old, 0, b"again").unwrap();
    assert_eq!(store.fwd(&A, &old, 0, 5).unwrap(), b"again");
    assert_eq!(store.usage(), measured(dir.path()));
    assert!(matches!(
        store.delete_segment(&A, &seg("a/b", 0), &[], 0),
        Err(StoreError::BadId(_))
    ));
}

#[test]
fn an_owner_that_holds_nothing_any_more_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
    store.store(&A, &seg("f", 0), 0, b"a").unwrap();
    store.store(&A, &seg("g", 0), 0, b"b").unwrap();
    store.store(&B, &seg("f", 0), 0, b"c").unwrap();
    // Drift the filesystem can cause: blocks counted that a delete will not find.
    store.usage_lock().add(&A, 2 * b);
    store.delete(&A, "f").unwrap();
    assert_eq!(store.owner_usage(&A), 3 * b, "A still holds g");
    age(&store, &A, &seg("g", 0), Duration::from_secs(10));
    store.delete_segment(&A, &seg("g", 0), &[], 0).unwrap();
    assert_eq!(store.owner_usage(&A), 0);
    assert_eq!(store.usage(), (b, 1));
    assert_eq!(store.usage(), measured(dir.path()));
    store.usage_lock().add(&B, b);
    store.delete(&B, "f").unwrap();
    assert_eq!(store.usage(), (0, 0));
}

#[test]
fn a_delete_keeping_ranges_frees_only_the_dead_slots_and_the_kept_bytes_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
    let s = seg("t", 0);
    const SLOT: u64 = 64 * 1024;
    // Four slots written; slots 1 and 3 are dead (say, rewritten elsewhere).
    let slot = |k: u64| vec![k as u8 + 1; SLOT as usize];
    for k in 0..4 {
        store.store(&A, &s, k * SLOT, &slot(k)).unwrap();
    }
    let keep = [(0, SLOT), (2 * SLOT, SLOT)];
    let grace = 60_000;
    // Written just now: kept whole.
    assert!(matches!(
        store.delete_segment(&A, &s, &keep, grace).unwrap(),
        Reclaim::Young { .. }
    ));
    age(&store, &A, &s, Duration::from_secs(120));
    let before = store.owner_usage(&A);
    let freed = match store.delete_segment(&A, &s, &keep, grace).unwrap() {
        Reclaim::Trimmed { freed } => freed,
        other => panic!("expected a trim, got {other:?}"),
    };
    assert_eq!(freed, 2 * SLOT, "two dead slots freed");
    assert_eq!(store.owner_usage(&A), before - freed);
    let path = store.path_of(&A, &s).unwrap();
    let bytes = fs::read(path).unwrap();
    assert_eq!(bytes.len() as u64, 4 * SLOT, "the length stays");
    for k in 0..4u64 {
        let at = (k * SLOT) as usize..((k + 1) * SLOT) as usize;
        let want = if k % 2 == 0 {
            slot(k)
        } else {
            vec![0; SLOT as usize]
        };
        assert!(bytes[at] == want[..], "slot {k}");
    }
    // Too many ranges, or one past the most a segment holds: refused, nothing freed.
    let many = vec![(0, 1); crate::proto::MAX_KEEP_RANGES + 1];
    assert!(matches!(
        store.delete_segment(&A, &s, &many, 0),
        Err(StoreError::TooManyRanges { .. })
    ));
    assert!(matches!(
        store.delete_segment(&A, &s, &[(u64::MAX, 2)], 0),
        Err(StoreError::BadRange { .. })
    ));
    assert_eq!(store.owner_usage(&A), before - freed);
}
