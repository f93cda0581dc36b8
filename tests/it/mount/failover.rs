//! Nodes that die or leave under a mount: writes route around them, readers never
//! stall, members hand off first, late joiners are used, scrub heals.

use super::*;

/// With a storage node killed (kill -9), writes into the pool fail visibly: `cp` of a
/// 10 MiB file exits non-zero, and close() of a small file returns EIO. Nothing
/// reports success for bytes that are not stored.
/// Writes route around a dead holder, before and after the controller knows it is
/// dead: a file placed while it was alive, a small file and a large `cp` all store
/// their stripes on the live nodes, read back bit-exact, and report that they need
/// repair.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn writes_route_around_a_dead_node() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("deadnode", 3);
    let src = pool.scratch().join("src");
    random_file(&src, 10 * MIB);
    let want = fs::read(&src).unwrap();
    // A file created while every node was alive: placed on all three.
    close_checked(File::create(pool.path("precreated")).unwrap()).unwrap();
    let victim = pool.nodes[0].pid;
    harness::mount::kill_ours(&[victim], &pool.root, libc::SIGKILL);
    assert!(
        !harness::mount::is_ours(victim, &pool.root),
        "node survived kill -9"
    );

    let out = cp(&src, &pool.path("precreated"));
    assert!(
        out.status.success(),
        "cp into a file with a dead holder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let small = vec![7u8; 100_000];
    let mut f = File::create(pool.path("small")).unwrap();
    f.write_all(&small).unwrap();
    close_checked(f).unwrap();
    let out = cp(&src, &pool.path("fresh"));
    assert!(
        out.status.success(),
        "cp of a new file failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        read_uncached(&pool.path("precreated")) == want,
        "precreated: bytes differ"
    );
    assert!(
        read_uncached(&pool.path("small")) == small,
        "small: bytes differ"
    );
    assert!(
        read_uncached(&pool.path("fresh")) == want,
        "fresh: bytes differ"
    );
    let h = health(&pool.path("precreated"));
    assert!(
        h.starts_with("degraded") && h.contains("away from their holders"),
        "health of a file written around a dead holder: {h}"
    );
}

/// Regression: with 4 nodes and k = 3, m = 1 every node holds a segment, so a node
/// killed during a `cp` left stripes with only k shards and `close` failed with EIO.
/// Shards of the dead holder now go to the live nodes: the copy completes, the bytes
/// are right, and the file reports what is not yet back home.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_node_killed_mid_cp_does_not_fail_the_copy() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("midcp", 4);
    let src = pool.scratch().join("src");
    let size = 200 * MIB;
    random_file(&src, size);
    let dst = pool.path("big");
    let child = Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || fs::metadata(&dst)
            .map(|m| m.len() >= 60 * MIB as u64)
            .unwrap_or(false)),
        "cp made no progress"
    );
    let victim = pool.nodes[1].pid;
    harness::mount::kill_ours(&[victim], &pool.root, libc::SIGKILL);
    let copied_at_kill = fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cp failed after a node died at {copied_at_kill} of {size} bytes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        copied_at_kill < size as u64,
        "the node died only after the copy had finished writing; the test proves nothing"
    );
    drop_cache(&dst);
    assert_same_file(&src, &dst);
    let h = health(&dst);
    assert!(h.starts_with("degraded"), "health after the kill: {h}");
}

/// A member that leaves (SIGTERM) hands off first: it is marked leaving, keeps serving
/// while its segment is rebuilt on a spare node, and goes (LEAVE) only once nothing of
/// it is needed, so the pool is never less redundant than before. Then another holder
/// can die and the file still reads.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_member_that_leaves_hands_off_first() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("repair", 4);
    let src = pool.scratch().join("src");
    let size = 7 * MIB + 4321;
    random_file(&src, size);
    let want = fs::read(&src).unwrap();
    let f = pool.path("f");
    assert!(cp(&src, &f).status.success());
    let h = health(&f);
    assert!(h.starts_with("healthy: 4 of 4"), "{h}");

    let spare = pool.add_node("spare");
    harness::mount::wait_members_up(pool.controller, 5, "the spare node");
    let leaver = pool.nodes[0].clone();
    // SAFETY: a pid this pool started.
    unsafe { libc::kill(leaver.pid as i32, libc::SIGTERM) };
    // The spare ends up with the leaver's segment: a third of the file (k = 3).
    let third = size as u64 / 3;
    let rebuilt = || segment_usage(&spare.storage).0.abs_diff(third) <= third / 10;
    let mut saw_leaving = false;
    let gone = wait_until(Duration::from_secs(30), || {
        let states = member_states(pool.controller);
        saw_leaving |= states.contains(&"Leaving".to_string());
        states.contains(&"Gone".to_string())
    });
    assert!(gone, "the node did not leave");
    // By the time it is gone, its segment is already on the spare: the hand-off.
    assert!(
        rebuilt(),
        "the leaver went before its segment was rebuilt: spare holds {} bytes, expected \
         about {third}",
        segment_usage(&spare.storage).0
    );
    assert!(saw_leaving, "the node was never seen leaving");
    assert_eq!(
        segment_usage(&leaver.storage).0,
        0,
        "the leaver still holds segment bytes after the hand-off"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !harness::mount::is_ours(
            leaver.pid, &pool.root
        )),
        "the leaver did not exit after its hand-off"
    );
    assert!(
        wait_until(Duration::from_secs(10), || health(&f)
            .starts_with("healthy")),
        "{}",
        health(&f)
    );

    // One more holder dies: parity covers it.
    // SAFETY: a pid this pool started.
    unsafe { libc::kill(pool.nodes[1].pid as i32, libc::SIGKILL) };
    drop_cache(&f);
    assert!(
        fs::read(&f).unwrap() == want,
        "wrong bytes after the hand-off and a second loss"
    );
    // Once the controller marks it down, the health says so.
    assert!(
        wait_until(Duration::from_secs(10), || health(&f)
            .starts_with("degraded")),
        "{}",
        health(&f)
    );
    assert!(health(&f).contains("3 of 4"), "{}", health(&f));
}

/// Unmounting is leaving: the mount moves its own files' segments off its node before
/// its node goes; remounted later, the files read even with another node dead.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn an_unmount_hands_off_the_mounts_own_segments() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("umountleave", 4);
    // `up`'s own mount leaves without a hand-off (`down` stops its whole pool); a mount
    // started with `poolfs mount`, which this test is about, hands off.
    pool.unmount();
    pool.remount();
    let src = pool.scratch().join("src");
    let size = 6 * MIB + 99;
    random_file(&src, size);
    let want = fs::read(&src).unwrap();
    assert!(cp(&src, &pool.path("f")).status.success());
    let spare = pool.add_node("spare");
    harness::mount::wait_members_up(pool.controller, 5, "the spare node");
    assert!(segment_usage(&pool.mount_storage).0 > 0);
    pool.unmount();
    assert_eq!(
        segment_usage(&pool.mount_storage).0,
        0,
        "the mount's node still holds segments after leaving"
    );
    let third = size as u64 / 3;
    assert!(
        segment_usage(&spare.storage).0.abs_diff(third) <= third / 10,
        "the spare holds {} bytes, expected about {third}",
        segment_usage(&spare.storage).0
    );
    pool.remount();
    // SAFETY: a pid this pool started.
    unsafe { libc::kill(pool.nodes[0].pid as i32, libc::SIGKILL) };
    assert!(
        read_uncached(&pool.path("f")) == want,
        "wrong bytes after the mount's leave and a node's death"
    );
}

/// A holder killed in the middle of a sequential read: the read completes with the right
/// bytes and no single read() call stalls for a second.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_node_killed_mid_read_never_stalls_a_reader() {
    use std::io::Read;
    if !can_mount() {
        return;
    }
    let pool = Pool::up("midread", 4);
    let src = pool.scratch().join("src");
    let size = 48 * MIB;
    random_file(&src, size);
    let want = fs::read(&src).unwrap();
    let f = pool.path("f");
    assert!(cp(&src, &f).status.success());
    drop_cache(&f);
    let mut file = fs::File::open(&f).unwrap();
    let mut got = Vec::with_capacity(size);
    let mut buf = vec![0u8; 256 * 1024];
    let mut slowest = Duration::ZERO;
    let mut killed = false;
    loop {
        if !killed && got.len() >= 12 * MIB {
            // SAFETY: a pid this pool started.
            unsafe { libc::kill(pool.nodes[0].pid as i32, libc::SIGKILL) };
            killed = true;
        }
        let t = Instant::now();
        let n = file.read(&mut buf).unwrap();
        slowest = slowest.max(t.elapsed());
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == want, "wrong bytes after a holder died mid-read");
    eprintln!("slowest read() with a holder killed mid-read: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a read() stalled {slowest:?}"
    );
}

/// Files use the pool as it is when their data is first written: a node that joins
/// later is used by new files and by files that were still empty.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn new_and_empty_files_use_nodes_that_joined_later() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("grow", 3);
    let early = pool.path("early");
    fs::write(&early, b"").unwrap();
    pool.add_node("late");
    harness::mount::wait_members_up(pool.controller, 4, "the late node");
    // The mount caches the pool view (half a second): wait until it places a new file
    // on all four nodes, so the files below are written with a view that has the late
    // node (a probe, removed before they are written).
    let probe = pool.path("probe");
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs::write(&probe, vec![1u8; 300_000]).unwrap();
            let placed_on_all = health(&probe).starts_with("healthy: 4 of 4");
            fs::remove_file(&probe).unwrap();
            placed_on_all
        }),
        "the mount never placed a file on the late node"
    );
    fs::write(&early, vec![7u8; 300_000]).unwrap();
    let fresh = pool.path("fresh");
    fs::write(&fresh, vec![9u8; 300_000]).unwrap();
    for f in [&early, &fresh] {
        let h = health(f);
        assert!(h.starts_with("healthy: 4 of 4"), "{}: {h}", f.display());
    }
    assert_eq!(fs::read(&early).unwrap(), vec![7u8; 300_000]);
}

/// A parity shard that no read touches is verified and healed by `poolfs scrub`.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn scrub_heals_a_corrupt_parity_shard() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("scrub", 3);
    let f = pool.path("f");
    let want: Vec<u8> = (0..5 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&f, &want).unwrap();
    // The parity segment is the last one (index 2 of k = 2 + m = 1): find its file,
    // leaving out the namespace's own blobs (stored by another identity).
    let parity: Vec<PathBuf> = pool
        .storages()
        .iter()
        .flat_map(|s| walk(&s.join("segments")))
        .filter(|p| p.file_name().is_some_and(|n| n == "2.seg"))
        .filter(|p| {
            p.ancestors()
                .nth(2)
                .is_some_and(|owner| !crate::harness::cluster::is_namespace_owner(owner))
        })
        .collect();
    assert_eq!(parity.len(), 1, "one parity segment: {parity:?}");
    let good = fs::read(&parity[0]).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    fs::write(&parity[0], &bad).unwrap();

    let out = run_ok(poolfs(["scrub"]).arg(&pool.mnt));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("1 healed"), "{report}");
    assert_eq!(
        fs::read(&parity[0]).unwrap(),
        good,
        "the parity shard was rewritten"
    );
    let again =
        String::from_utf8_lossy(&run_ok(poolfs(["scrub"]).arg(&pool.mnt)).stdout).into_owned();
    assert!(again.contains("0 healed"), "{again}");
    drop_cache(&f);
    assert!(fs::read(&f).unwrap() == want);
}
