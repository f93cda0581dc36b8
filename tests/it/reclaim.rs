//! No space leaks (issue 14): a mount killed -9 in the middle of a copy leaves shards
//! no file names on the nodes; the restarted mount's sweep removes them within the
//! documented bound (`--reclaim-after` + a quarter of it + one pass), and the files
//! whose close succeeded read back exact.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::cluster::data_segments;
use crate::harness::mount::{assert_same_file, can_mount, random_file, wait_until, Pool, MIB};

/// The file ids this pool's members hold segments of file data of, over every storage
/// directory, with their allocated bytes (the mount's namespace left out: its blobs
/// are stored and tidied by rules of their own, not by the sweep this test is about).
fn file_ids(storages: &[impl AsRef<Path>]) -> (BTreeSet<String>, u64) {
    let mut ids = BTreeSet::new();
    let mut bytes = 0;
    for storage in storages {
        for seg in data_segments(storage.as_ref()) {
            bytes += seg.allocated;
            ids.insert(seg.file);
        }
    }
    (ids, bytes)
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn shards_of_a_copy_in_flight_at_kill_9_are_reclaimed_within_the_bound() {
    if !can_mount() {
        return;
    }
    const GRACE_SECS: u64 = 2;
    let grace = GRACE_SECS.to_string();
    let mut pool = Pool::up_with("reclaim", 3, &["--reclaim-after", &grace]);
    let scratch = pool.scratch();
    let kept = scratch.join("kept");
    random_file(&kept, 5 * MIB + 123);
    fs::copy(&kept, pool.path("kept")).expect("copy a file in");
    let storages = pool.storages();
    let (before, before_bytes) = file_ids(&storages);
    assert_eq!(before.len(), 1, "one file stored: {before:?}");

    // A copy in flight: 1 MiB at a time, paced so the kill lands in its middle.
    let dst = pool.path("in-flight");
    let writer = std::thread::spawn(move || {
        let mut out = fs::File::create(&dst).expect("create in the pool");
        let chunk = vec![0x5au8; MIB];
        let mut written = 0;
        for _ in 0..256 {
            if out.write_all(&chunk).is_err() {
                break; // the mount died under us
            }
            written += MIB;
            std::thread::sleep(Duration::from_millis(20));
        }
        written
    });
    let in_flight_stored = || {
        let (ids, bytes) = file_ids(&storages);
        ids.len() > before.len() && bytes > before_bytes + 16 * MIB as u64
    };
    assert!(
        wait_until(Duration::from_secs(60), in_flight_stored),
        "the copy's stripes never reached the nodes"
    );
    pool.kill_mount();
    let written = writer.join().expect("writer thread");
    assert!(written < 256 * MIB, "the copy ended before the kill");
    let (leaked, held) = file_ids(&storages);
    assert!(leaked.len() > before.len(), "in-flight shards on the nodes");

    pool.remount_with(&["--reclaim-after", &grace]);
    let remounted = Instant::now();
    // The bound: the grace, the interval (a quarter of it, at least 1 s), one pass; and
    // slack for the mount's node to rejoin and a loaded test machine.
    let bound = Duration::from_secs(GRACE_SECS + 1) + Duration::from_secs(20);
    let gone = wait_until(bound, || file_ids(&storages).0 == before);
    let (left, left_bytes) = file_ids(&storages);
    assert!(
        gone,
        "after {:?} the nodes still hold {left:?} ({left_bytes} bytes; {held} with the \
         in-flight copy), only {before:?} is live",
        remounted.elapsed()
    );
    assert_eq!(
        left_bytes, before_bytes,
        "the closed file's segments are untouched"
    );
    assert_same_file(&kept, &pool.path("kept"));
}
