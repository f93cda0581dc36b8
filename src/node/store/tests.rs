//! Tests of the store as a whole: accounting, owners, quota, capacity, ids, syncs,
//! reads and open handles.

use super::*;

pub(super) const A: Identity = Identity([0xa; 16]);
pub(super) const B: Identity = Identity([0xb; 16]);

pub(super) fn seg(file: &str, index: u32) -> SegmentRef {
    SegmentRef {
        file: file.into(),
        index,
    }
}

/// The allocation unit of the filesystem under `dir`, in bytes: usage is counted in
/// whole ones.
pub(super) fn block(dir: &Path) -> u64 {
    fs::metadata(dir).unwrap().blksize()
}

/// Allocated bytes and number of the segment files under `storage`, measured from
/// outside the store.
pub(super) fn measured(storage: &Path) -> (u64, u64) {
    fn walk(dir: &Path, acc: &mut (u64, u64)) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk(&e.path(), acc);
            } else {
                acc.0 += space::allocated(&meta);
                acc.1 += 1;
            }
        }
    }
    let mut acc = (0, 0);
    walk(&storage.join("segments"), &mut acc);
    acc
}

#[test]
fn store_fwd_delete_and_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 100 * b, None).unwrap();
    store.store(&A, &seg("f1", 0), 0, b"hello").unwrap();
    store.store(&A, &seg("f1", 0), 5, b" world").unwrap();
    store.store(&A, &seg("f1", 0), 0, b"J").unwrap();
    assert_eq!(store.fwd(&A, &seg("f1", 0), 0, 11).unwrap(), b"Jello world");
    // 11 bytes take a block of the disk.
    assert_eq!(store.usage(), (b, 1));
    assert_eq!(store.owner_usage(&A), b);
    assert!(matches!(
        store.fwd(&A, &seg("f1", 0), 5, 7),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.fwd(&A, &seg("f2", 0), 0, 1),
        Err(StoreError::NotFound(_))
    ));
    // Reopening measures the same usage, per owner too.
    let again = SegmentStore::open(dir.path(), 100 * b, None).unwrap();
    assert_eq!(again.usage(), (b, 1));
    assert_eq!(again.owner_usage(&A), b);
    assert_eq!(store.delete(&A, "f1").unwrap(), b);
    assert_eq!(store.usage(), (0, 0));
    assert_eq!(store.owner_usage(&A), 0);
    assert_eq!(store.delete(&A, "f1").unwrap(), 0);
    // Nothing is left of an owner that holds nothing.
    assert!(fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn owners_see_only_their_own_segments() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 100 * b, None).unwrap();
    store.store(&A, &seg("f", 0), 0, b"mine").unwrap();
    // B asking for A's file learns what it would for a file that does not exist.
    let theirs = store.fwd(&B, &seg("f", 0), 0, 4).unwrap_err().to_string();
    let nothing = store.fwd(&B, &seg("g", 0), 0, 4).unwrap_err().to_string();
    assert_eq!(theirs.replace("f/0", "g/0"), nothing);
    // B's delete or punch frees nothing of A's; B's store of the same id is B's own
    // segment.
    assert_eq!(store.delete(&B, "f").unwrap(), 0);
    assert_eq!(store.punch(&B, &seg("f", 0), 0, b).unwrap(), 0);
    store.store(&B, &seg("f", 0), 0, b"XXXXXXXX").unwrap();
    assert_eq!(store.fwd(&A, &seg("f", 0), 0, 4).unwrap(), b"mine");
    assert_eq!(store.fwd(&B, &seg("f", 0), 0, 8).unwrap(), b"XXXXXXXX");
    assert_eq!((store.owner_usage(&A), store.owner_usage(&B)), (b, b));
    assert_eq!(store.delete(&B, "f").unwrap(), b);
    assert_eq!(store.punch(&B, &seg("f", 0), 0, b).unwrap(), 0);
    assert_eq!(store.fwd(&A, &seg("f", 0), 0, 4).unwrap(), b"mine");
    assert_eq!(store.usage(), (b, 1));
}

#[test]
fn quota_is_per_owner_and_refusals_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 100 * b, Some(2 * b)).unwrap();
    // b + 8 bytes take two blocks: the whole quota.
    store
        .store(&A, &seg("a", 0), 0, &vec![1; b as usize + 8])
        .unwrap();
    let err = store.store(&A, &seg("b", 0), 0, &[1; 3]).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Quota {
                owner: A,
                used,
                need,
                quota,
            } if (used, need, quota) == (2 * b, b, 2 * b)
        ),
        "{err}"
    );
    assert!(!dir
        .path()
        .join("segments")
        .join(owner_dir_name(&A))
        .join("b")
        .exists());
    // Growing into a third block is refused too; rewriting in place is not, nor is
    // writing into the part of a block already held.
    assert!(matches!(
        store.store(&A, &seg("a", 0), 2 * b - 2, &[1; 6]),
        Err(StoreError::Quota { .. })
    ));
    store
        .store(&A, &seg("a", 0), 0, &vec![2; b as usize + 8])
        .unwrap();
    store.store(&A, &seg("a", 0), 2 * b - 2, &[2; 2]).unwrap();
    // Another owner still has its own quota.
    store
        .store(&B, &seg("b", 0), 0, &vec![3; 2 * b as usize])
        .unwrap();
    assert_eq!(store.usage(), (4 * b, 2));
    // A delete gives the quota back; a reopened store measures the same.
    store.delete(&A, "a").unwrap();
    let again = SegmentStore::open(dir.path(), 100 * b, Some(2 * b)).unwrap();
    assert_eq!((again.owner_usage(&A), again.owner_usage(&B)), (0, 2 * b));
    again
        .store(&A, &seg("c", 0), 0, &vec![4; 2 * b as usize])
        .unwrap();
}

#[test]
fn capacity_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 2 * b + 100, None).unwrap();
    store
        .store(&A, &seg("a", 0), 0, &vec![1; b as usize + 8])
        .unwrap();
    let err = store.store(&B, &seg("a", 1), 0, &[1; 3]).unwrap_err();
    assert!(
        matches!(err, StoreError::NoSpace { need, free: 100, .. } if need == b),
        "{err}"
    );
    // Rewriting in place needs no new space.
    store
        .store(&A, &seg("a", 0), 0, &vec![2; b as usize + 8])
        .unwrap();
    assert_eq!(store.usage(), (2 * b, 1));
}

#[test]
fn segments_from_before_owners_count_but_are_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("segments").join("oldfile");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("0.seg"), [9; 5]).unwrap();
    let held = space::allocated(&fs::metadata(old.join("0.seg")).unwrap());
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    assert_eq!(store.usage(), (held, 1));
    assert!(matches!(
        store.fwd(&A, &seg("oldfile", 0), 0, 5),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn traversal_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(&dir.path().join("s"), 100, None).unwrap();
    for bad in ["../x", "..", "a/b", "", "x\0", &"a".repeat(65)] {
        assert!(
            matches!(
                store.store(&A, &seg(bad, 0), 0, b"x"),
                Err(StoreError::BadId(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(
            store.fwd(&A, &seg(bad, 0), 0, 1),
            Err(StoreError::BadId(_))
        ));
        assert!(matches!(store.delete(&A, bad), Err(StoreError::BadId(_))));
    }
    assert!(!dir.path().join("x").exists());
}

#[test]
fn concurrent_stores_into_one_segment_share_syncs_and_keep_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
    let (threads, rounds, chunk) = (8usize, 16usize, 64 * 1024);
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = &store;
            s.spawn(move || {
                for r in 0..rounds {
                    let i = r * threads + t;
                    store
                        .store(&A, &seg("f", 0), (i * chunk) as u64, &vec![i as u8; chunk])
                        .unwrap();
                }
            });
        }
    });
    let stores = (threads * rounds) as u64;
    let syncs = store.sync_count();
    assert!(
        syncs > 0 && syncs < stores,
        "{syncs} syncs for {stores} stores"
    );
    let all = store
        .fwd(&A, &seg("f", 0), 0, (stores as usize * chunk) as u32)
        .unwrap();
    for (i, part) in all.chunks(chunk).enumerate() {
        assert!(part.iter().all(|&b| b == i as u8), "chunk {i}");
    }
    // Every byte, and now and then a block of the filesystem's own (an extent
    // tree's): counted as the disk counts it.
    let (held, files) = measured(dir.path());
    let (used, segments) = store.usage();
    assert_eq!(segments, files);
    assert!(used >= stores * chunk as u64, "{used}");
    assert!(
        used.abs_diff(held) <= 4 * block(dir.path()),
        "counted {used}, the disk holds {held}"
    );
}

#[test]
fn an_empty_segment_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    store.store(&A, &seg("e", 0), 0, b"").unwrap();
    store.store(&A, &seg("e", 0), 0, b"").unwrap();
    assert_eq!(store.usage(), (0, 1));
    let again = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    assert_eq!(again.usage(), (0, 1));
    assert_eq!(store.delete(&A, "e").unwrap(), 0);
    assert_eq!(store.usage(), (0, 0));
}

#[test]
fn a_lone_store_still_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    for i in 0..3 {
        store.store(&A, &seg("f", 0), i, b"x").unwrap();
        assert_eq!(store.sync_count(), i + 1);
    }
}

#[test]
fn ranges_come_back_in_order_and_a_stored_segment_is_read_without_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    store.store(&A, &seg("f", 0), 0, b"0123456789").unwrap();
    let parts = [(7, 3), (0, 2), (4, 0)];
    assert_eq!(store.fwd_parts(&A, &seg("f", 0), &parts).unwrap(), b"78901");
    assert!(matches!(
        store.fwd_parts(&A, &seg("f", 0), &[(0, 1), (9, 2)]),
        Err(StoreError::OutOfRange { size: 10, .. })
    ));
    // An offset whose range overflows, or ends past any segment, is a bad range,
    // not a range merely beyond this segment's end.
    for offset in [u64::MAX, MAX_SEGMENT_END] {
        assert!(matches!(
            store.fwd(&A, &seg("f", 0), offset, 1),
            Err(StoreError::BadRange { .. })
        ));
    }
    // The STORE left the segment open: a read reaches it through that handle, even
    // with its directory gone from the path (moved away here to prove it).
    let owner_dir = dir.path().join("segments").join(owner_dir_name(&A));
    let aside = dir.path().join("aside");
    fs::rename(&owner_dir, &aside).unwrap();
    assert_eq!(store.fwd(&A, &seg("f", 0), 2, 3).unwrap(), b"234");
    fs::rename(&aside, &owner_dir).unwrap();
    // Not open any more: read by its path.
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    assert_eq!(store.open_segments(), 0);
    assert_eq!(store.fwd(&A, &seg("f", 0), 2, 3).unwrap(), b"234");
}

#[test]
fn reads_after_delete_and_recreate_get_the_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    store.store(&A, &seg("f", 0), 0, b"old bytes").unwrap();
    assert_eq!(store.fwd(&A, &seg("f", 0), 0, 9).unwrap(), b"old bytes");
    assert!(store.open_segments() > 0);
    assert_eq!(store.delete(&A, "f").unwrap(), block(dir.path()));
    assert_eq!(store.open_segments(), 0);
    assert!(matches!(
        store.fwd(&A, &seg("f", 0), 0, 1),
        Err(StoreError::NotFound(_))
    ));
    store.store(&A, &seg("f", 0), 0, b"new").unwrap();
    assert_eq!(store.fwd(&A, &seg("f", 0), 0, 3).unwrap(), b"new");
    assert!(matches!(
        store.fwd(&A, &seg("f", 0), 0, 9),
        Err(StoreError::OutOfRange { size: 3, .. })
    ));
    assert_eq!(store.usage(), (block(dir.path()), 1));
    assert!(dir
        .path()
        .join("segments")
        .join(owner_dir_name(&A))
        .join("f")
        .join("0.seg")
        .exists());
    // Another owner's delete of the same id leaves A's handle and bytes alone.
    assert_eq!(store.delete(&B, "f").unwrap(), 0);
    assert_eq!(store.fwd(&A, &seg("f", 0), 0, 3).unwrap(), b"new");
}

#[test]
fn a_delete_after_the_files_vanished_still_drops_their_handles() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    store.store(&A, &seg("f", 0), 0, b"old").unwrap();
    fs::remove_dir_all(dir.path().join("segments").join(owner_dir_name(&A))).unwrap();
    assert_eq!(store.delete(&A, "f").unwrap(), 0);
    assert_eq!(store.open_segments(), 0);
    store.store(&A, &seg("f", 0), 0, b"new").unwrap();
    assert_eq!(store.fwd(&A, &seg("f", 0), 0, 3).unwrap(), b"new");
}

#[test]
fn open_segment_files_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(dir.path(), 1 << 20, None)
        .unwrap()
        .with_open_segments(16);
    for i in 0..100u32 {
        store
            .store(&A, &seg(&format!("f{i}"), i % 3), 0, &i.to_le_bytes())
            .unwrap();
        assert!(store.open_segments() <= 16);
    }
    assert_eq!(store.open_segments(), 16);
    // Evicted or not, every segment reads back.
    for i in 0..100u32 {
        let got = store.fwd(&A, &seg(&format!("f{i}"), i % 3), 0, 4).unwrap();
        assert_eq!(got, i.to_le_bytes());
    }
    assert_eq!(store.open_segments(), 16);
    assert_eq!(store.usage(), (100 * block(dir.path()), 100));
}
