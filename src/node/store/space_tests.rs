//! Tests of allocated-bytes accounting: sparse segments, overwrites, RESERVE, PUNCH
//! and a full disk.

use std::fs::File;

use super::super::handles::SegKey;
use super::tests::{block, measured, seg, A};
use super::*;

/// A slot of a sealed 1 MiB shard, as the client lays segments out.
const SLOT: u64 = (1 << 20) + 512;

#[test]
fn a_sparse_segment_is_charged_its_allocated_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    // A MiB of capacity, and a byte written at the slot of stripe 70 000 (~73 GB
    // into the segment), as a thin VM image on the mount writes.
    let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    let far = 70_000 * SLOT;
    store.store(&A, &seg("vm", 0), far, b"X").unwrap();
    assert_eq!(store.usage(), (b, 1));
    assert_eq!(store.owner_usage(&A), b);
    assert_eq!(store.fwd(&A, &seg("vm", 0), far, 1).unwrap(), b"X");
    assert_eq!(measured(dir.path()), (b, 1));
    // Bytes elsewhere cost their own blocks only; a reopened store measures the same.
    store
        .store(&A, &seg("vm", 0), 0, &vec![1; 3 * b as usize])
        .unwrap();
    assert_eq!(store.usage(), (4 * b, 1));
    let again = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
    assert_eq!(again.usage(), (4 * b, 1));
    assert_eq!(store.delete(&A, "vm").unwrap(), 4 * b);
    assert_eq!(store.usage(), (0, 0));
}

#[test]
fn an_overwrite_needs_no_room() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
    store
        .store(&A, &seg("f", 0), 0, &vec![1; 4 * b as usize])
        .unwrap();
    assert_eq!(store.usage(), (4 * b, 1));
    // The store is full, and any part of what it holds can be written again.
    store.store(&A, &seg("f", 0), b + 10, &[2; 100]).unwrap();
    store
        .store(&A, &seg("f", 0), 0, &vec![3; 4 * b as usize])
        .unwrap();
    assert_eq!(store.usage(), (4 * b, 1));
    // A byte past it needs a block there is no room for.
    let err = store.store(&A, &seg("f", 0), 4 * b, b"x").unwrap_err();
    assert!(
        matches!(err, StoreError::NoSpace { need, free: 0, .. } if need == b),
        "{err}"
    );
    assert_eq!(store.usage(), (4 * b, 1));
    assert_eq!(measured(dir.path()), (4 * b, 1));
}

#[test]
fn reserve_is_refused_past_the_quota_and_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 100 * b, Some(4 * b)).unwrap();
    let err = store.reserve(&A, &seg("r", 0), 0, 5 * b).unwrap_err();
    assert!(
        matches!(err, StoreError::Quota { used: 0, need, .. } if need == 5 * b),
        "{err}"
    );
    // Nothing was created, nothing is counted.
    assert!(!dir
        .path()
        .join("segments")
        .join(owner_dir_name(&A))
        .exists());
    assert_eq!(store.usage(), (0, 0));
    // Within the quota: allocated and counted, and the segment's length stays.
    store.reserve(&A, &seg("r", 0), b, 3 * b).unwrap();
    assert_eq!(store.usage(), (3 * b, 1));
    assert_eq!(measured(dir.path()), (3 * b, 1));
    let path = dir
        .path()
        .join("segments")
        .join(owner_dir_name(&A))
        .join("r")
        .join("0.seg");
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    // Two more blocks are one too many; one is not, nor is what is held already.
    assert!(matches!(
        store.reserve(&A, &seg("r", 0), 4 * b, 2 * b),
        Err(StoreError::Quota { .. })
    ));
    assert_eq!(store.usage(), (3 * b, 1));
    store.reserve(&A, &seg("r", 0), 0, b).unwrap();
    store.reserve(&A, &seg("r", 0), 0, 4 * b).unwrap();
    store.reserve(&A, &seg("r", 0), 7, 0).unwrap();
    assert_eq!(store.usage(), (4 * b, 1));
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    // Ranges past what a segment may hold are bad requests, before any check.
    for (offset, len) in [(MAX_SEGMENT_END, 1), (u64::MAX, 2), (0, u64::MAX)] {
        assert!(
            matches!(
                store.reserve(&A, &seg("r", 0), offset, len),
                Err(StoreError::BadRange { .. })
            ),
            "{offset}+{len}"
        );
    }
    assert!(matches!(
        store.store(&A, &seg("r", 0), MAX_SEGMENT_END, b"x"),
        Err(StoreError::BadRange { .. })
    ));
    assert!(matches!(
        store.reserve(&A, &seg("../r", 0), 0, 1),
        Err(StoreError::BadId(_))
    ));
}

#[test]
fn a_store_into_reserved_space_needs_no_room() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let probe = File::create(dir.path().join("probe")).unwrap();
    if !space::maps_extents(&probe) {
        eprintln!(
            "skipped: the filesystem of {} has no FIEMAP, so reserved space looks free",
            dir.path().display()
        );
        return;
    }
    let store = SegmentStore::open(dir.path(), 100 * b, Some(4 * b)).unwrap();
    // The whole quota reserved past the segment's end, then written.
    store.reserve(&A, &seg("r", 0), 0, 4 * b).unwrap();
    store
        .store(&A, &seg("r", 0), 0, &vec![5; 4 * b as usize])
        .unwrap();
    assert_eq!(store.usage(), (4 * b, 1));
    assert_eq!(
        store.fwd(&A, &seg("r", 0), 0, 4 * b as u32).unwrap(),
        vec![5; 4 * b as usize]
    );
    assert!(matches!(
        store.store(&A, &seg("r", 0), 4 * b, b"x"),
        Err(StoreError::Quota { .. })
    ));
}

#[test]
fn punch_frees_space_and_a_missing_segment_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(dir.path());
    let store = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
    store
        .store(&A, &seg("p", 0), 0, &vec![7; 4 * b as usize])
        .unwrap();
    assert_eq!(store.punch(&A, &seg("p", 0), b, 2 * b).unwrap(), 2 * b);
    assert_eq!(store.usage(), (2 * b, 1));
    assert_eq!(measured(dir.path()), (2 * b, 1));
    // The punched bytes read as zeros, and the segment keeps its length.
    let mut want = vec![7; 4 * b as usize];
    want[b as usize..3 * b as usize].fill(0);
    assert_eq!(store.fwd(&A, &seg("p", 0), 0, 4 * b as u32).unwrap(), want);
    // Part of a block is zeroed, but the block stays.
    assert_eq!(store.punch(&A, &seg("p", 0), 10, 20).unwrap(), 0);
    want[10..30].fill(0);
    assert_eq!(store.fwd(&A, &seg("p", 0), 0, 4 * b as u32).unwrap(), want);
    // What was freed is room again.
    store
        .store(&A, &seg("q", 0), 0, &vec![8; 2 * b as usize])
        .unwrap();
    assert_eq!(store.usage(), (4 * b, 2));
    // A segment that does not exist frees nothing, and is not created.
    assert_eq!(store.punch(&A, &seg("none", 0), 0, b).unwrap(), 0);
    assert_eq!(store.punch(&A, &seg("p", 3), 0, b).unwrap(), 0);
    assert_eq!(store.punch(&A, &seg("p", 0), 0, 0).unwrap(), 0);
    assert!(!dir
        .path()
        .join("segments")
        .join(owner_dir_name(&A))
        .join("none")
        .exists());
    assert!(matches!(
        store.punch(&A, &seg("p", 0), u64::MAX, 1),
        Err(StoreError::BadRange { .. })
    ));
    // A reopened store measures what the punches left.
    let again = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
    assert_eq!(again.usage(), (4 * b, 2));
    store.punch(&A, &seg("q", 0), 0, 2 * b).unwrap();
    assert_eq!(store.usage(), (2 * b, 2));
    // Space reserved past a segment's end is freed too (ext4 punches nothing there
    // by itself), and a reservation before it stays.
    store.reserve(&A, &seg("q", 0), 4 * b, b).unwrap();
    store.reserve(&A, &seg("q", 0), 8 * b, b).unwrap();
    assert_eq!(store.usage(), (4 * b, 2));
    assert_eq!(store.punch(&A, &seg("q", 0), 8 * b, b).unwrap(), b);
    assert_eq!(store.usage(), (3 * b, 2));
    assert_eq!(measured(dir.path()), (3 * b, 2));
    assert_eq!(store.punch(&A, &seg("q", 0), 4 * b, b).unwrap(), b);
    assert_eq!(measured(dir.path()), (2 * b, 2));
    // A range that is not block-aligned, reserved past the end and given back, leaves
    // no block behind (where the filesystem maps extents, to see that no reservation
    // shares them).
    let mut probe = None;
    store.reserve(&A, &seg("q", 0), 20 * b + 10, b).unwrap();
    assert_eq!(store.usage(), (4 * b, 2));
    if let Some(file) = store.handles_lock().get(&SegKey::new(&A, &seg("q", 0))) {
        probe = Some(space::maps_extents(file.file()));
    }
    let freed = store.punch(&A, &seg("q", 0), 20 * b + 10, b).unwrap();
    if probe == Some(true) {
        assert_eq!(freed, 2 * b);
        assert_eq!(store.usage(), (2 * b, 2));
    }
    assert_eq!(store.usage(), measured(dir.path()));
}

/// A small tmpfs mounted for one test (root only), unmounted when dropped, panic
/// or not.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `size` (a mount option, "4m") under a new temporary directory;
    /// `None` (with a message) where this process cannot mount.
    fn mount(size: &str) -> Option<SmallDisk> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: no arguments, no side effects.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let data = CString::new(format!("size={size}")).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            eprintln!(
                "skipped: cannot mount a tmpfs: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            self.dir.path().as_os_str(),
        ))
        .unwrap();
        // SAFETY: a NUL-terminated path that outlives the call. Lazily: a handle
        // still open in a failed test must not keep the tmpfs mounted.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "cannot unmount {}: {}",
                self.dir.path().display(),
                io::Error::last_os_error()
            );
        }
    }
}

#[test]
fn a_full_disk_refuses_with_no_space_and_recovers_when_freed() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    // The node believes it has a GiB: its disk is what runs out.
    let store = SegmentStore::open(disk.path(), 1 << 30, None).unwrap();
    let shard = vec![9u8; 1 << 20];
    let mut stored = 0u64;
    let err = loop {
        match store.store(&A, &seg(&format!("f{stored}"), 0), 0, &shard) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 8, "a 4 MiB disk took {stored} MiB");
    };
    assert!(stored >= 2, "only {stored} shards fit");
    let text = err.to_string();
    assert!(matches!(err, StoreError::DiskFull { .. }), "{text}");
    assert!(text.contains("disk is full"), "{text}");
    assert!(
        text.contains(&format!("f{stored}")),
        "names the path: {text}"
    );
    // Nothing is counted for the refused store, and no file is left of it.
    let owner = disk.path().join("segments").join(owner_dir_name(&A));
    assert!(!owner.join(format!("f{stored}")).exists());
    let held = measured(disk.path());
    assert_eq!(held.1, stored);
    assert_eq!(store.usage(), held);
    // Growing a segment and reserving are refused alike, counting nothing.
    assert!(matches!(
        store.store(&A, &seg("f0", 0), 1 << 20, &shard),
        Err(StoreError::DiskFull { .. })
    ));
    assert!(matches!(
        store.reserve(&A, &seg("r", 0), 0, 1 << 20),
        Err(StoreError::DiskFull { .. })
    ));
    assert!(!owner.join("r").exists());
    assert_eq!(store.usage(), measured(disk.path()));
    // Once space is freed, the next store succeeds, on the same store.
    store.delete(&A, "f0").unwrap();
    store.store(&A, &seg("again", 0), 0, &shard).unwrap();
    assert_eq!(store.fwd(&A, &seg("again", 0), 0, 4).unwrap(), [9; 4]);
    assert_eq!(store.usage(), measured(disk.path()));
    drop(store);
}
