//! Files stay readable while machines come and go (issue 14), proved with real
//! processes on loopback: pools of 12 lose any 2 members (any 3 with `--tolerate 3`)
//! and every file reads back exact; a shape chosen with `--redundancy` is the files'
//! shape and survives the loss of its parity; a pool of 4 that loses a member for good
//! is back to full redundancy within 2 minutes of the grace and then survives a second
//! loss; and after each fault the shards on the members take within 5 % of what the live
//! files need (the sweep reclaims the rest).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::faults::{assert_space_settles, pick, repair_bytes, seed, shape_of, Killed};
use crate::harness::mount::{
    assert_same_file, can_mount, drop_cache, health, poolfs, random_file, run_ok, wait_members_up,
    Pool, Rng, MIB,
};

/// How long the sweep may take to reclaim what no file names, with `--reclaim-after 5`.
const SWEEP: Duration = Duration::from_secs(90);

/// A file of the test: its reference copy outside the mount and its path inside.
struct Kept {
    want: PathBuf,
    got: PathBuf,
}

/// Copies a reference file into the mount with `cp` (which reports a failed close).
fn cp_in(src: &PathBuf, dst: &PathBuf) {
    run_ok(Command::new("cp").arg(src).arg(dst));
}

/// Fills the mount the way a user does: a file of several stripes, a one-stripe file,
/// a small one and one kept in the metadata, a file overwritten in its middle (its
/// rewritten stripes go to their other slot and the old ones must be freed), and a
/// file deleted again (its shards must be freed). Returns the files that remain.
fn fill(pool: &Pool) -> Vec<Kept> {
    let scratch = pool.scratch();
    let mut kept = Vec::new();
    for (name, len) in [
        ("big", 24 * MIB + 777),
        ("medium", 5 * MIB + 12345),
        ("small", 40 * 1024),
        ("tiny", 3000),
        ("rewritten", 9 * MIB),
        ("deleted", 6 * MIB),
    ] {
        let want = scratch.join(name);
        random_file(&want, len);
        let got = pool.path(name);
        cp_in(&want, &got);
        kept.push(Kept { want, got });
    }
    // Overwrite 2 MiB across a stripe boundary, in the mount and in the reference.
    let patch = crate::harness::cluster::random_bytes(2 * MIB, 14);
    for path in [&kept[4].want, &kept[4].got] {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open to overwrite");
        f.write_all_at(&patch, 3 * MIB as u64)
            .expect("overwrite in the middle");
        f.sync_all().expect("fsync the overwrite");
    }
    let deleted = kept.pop().expect("the file to delete");
    fs::remove_file(&deleted.got).expect("delete a file");
    kept
}

/// Every kept file reads back exact from the pool (not from the page cache).
fn assert_all_read_back(kept: &[Kept], when: &str) {
    for f in kept {
        drop_cache(&f.got);
        eprintln!("{when}: reading {} ({})", f.got.display(), health(&f.got));
        assert_same_file(&f.want, &f.got);
    }
}

/// Waits (up to `timeout`) until every kept file says it is healthy; panics with the
/// health of each file if they do not.
fn assert_all_healthy(kept: &[Kept], timeout: Duration, when: &str) {
    let whole = crate::harness::mount::wait_until(timeout, || {
        kept.iter().all(|f| health(&f.got).starts_with("healthy"))
    });
    let report: Vec<String> = kept
        .iter()
        .map(|f| format!("{}: {}", f.got.display(), health(&f.got)))
        .collect();
    assert!(
        whole,
        "{timeout:?} after {when}, files are not all healthy:\n{}",
        report.join("\n")
    );
}

/// Storage members worth killing: those holding a segment of the biggest file (so the
/// kill takes shards the reads need), the others only if there are too few.
fn victims(pool: &Pool, rng: &mut Rng, count: usize) -> Vec<usize> {
    let holders = pool.holders_of_biggest_file();
    let mut chosen = pick(rng, &holders, count);
    if chosen.len() < count {
        let others: Vec<usize> = (0..pool.nodes.len())
            .filter(|i| !chosen.contains(i))
            .collect();
        chosen.extend(pick(rng, &others, count - chosen.len()));
    }
    chosen
}

/// kill -9 of `count` storage members chosen at random among the holders of the
/// biggest file; every file reads back exact. Returns the killed.
fn kill_and_read(pool: &mut Pool, kept: &[Kept], count: usize) -> Vec<Killed> {
    let mut rng = Rng::new(seed());
    let chosen = victims(pool, &mut rng, count);
    let killed: Vec<Killed> = chosen.iter().map(|&i| pool.kill_member(i)).collect();
    assert_all_read_back(kept, &format!("{count} members killed"));
    killed
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn twelve_nodes_keep_every_file_readable_with_any_two_killed() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up_with("twelve", 12, &["--reclaim-after", "5"]);
    let mut kept = fill(&pool);
    assert_space_settles(&pool, &pool.storages(), SWEEP, "12 nodes, after the writes");
    let killed = kill_and_read(&mut pool, &kept, 2);

    // The biggest file deleted while two of its holders are away (the victims were
    // chosen among them): once they are back, the sweep reclaims their shards of it
    // too. Their part of it is far more than 5 % of what the rest needs.
    let gone = kept.remove(0);
    fs::remove_file(&gone.got).expect("delete a file while members are away");
    // A file written while they are away: the shards of absent holders go to stand-ins
    // and come home once the holders are back; the stand-ins' copies must then go.
    // Files overwritten in place while they are away: their stripes are rewritten into
    // the other slot, and the old slot on an absent holder cannot be freed then; once
    // back, the sweep frees those dead slots (the segments still hold live shards).
    let patch = crate::harness::cluster::random_bytes(2 * MIB, 15);
    for f in kept
        .iter()
        .filter(|f| f.got.ends_with("medium") || f.got.ends_with("rewritten"))
    {
        for path in [&f.want, &f.got] {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open to overwrite while members are away");
            file.write_all_at(&patch, 3 * MIB as u64 + 4321)
                .expect("overwrite while members are away");
            file.sync_all().expect("fsync the overwrite");
        }
    }
    let want = pool.scratch().join("written-while-away");
    random_file(&want, 8 * MIB);
    let got = pool.path("written-while-away");
    cp_in(&want, &got);
    kept.push(Kept { want, got });
    for k in killed {
        pool.restart_member(k);
    }
    wait_members_up(pool.controller, 12, "the restarted members");
    assert_all_healthy(&kept, Duration::from_secs(60), "two members came back");
    assert_space_settles(
        &pool,
        &pool.storages(),
        SWEEP,
        "12 nodes, after two members came back",
    );
    assert_all_read_back(&kept, "every member back");
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn twelve_nodes_told_to_tolerate_three_keep_every_file_readable_with_any_three_killed() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up_with(
        "twelve-t3",
        12,
        &["--tolerate", "3", "--reclaim-after", "5"],
    );
    let kept = fill(&pool);
    let shape = shape_of(&health(&kept[0].got));
    assert!(
        shape.is_some_and(|(_, m)| m >= 3),
        "--tolerate 3 must give 3 parity shards or more: {}",
        health(&kept[0].got)
    );
    assert_space_settles(&pool, &pool.storages(), SWEEP, "12 nodes, --tolerate 3");
    kill_and_read(&mut pool, &kept, 3);
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn four_nodes_return_to_full_redundancy_after_one_is_lost_for_good() {
    if !can_mount() {
        return;
    }
    let grace = Duration::from_secs(10);
    let mut pool = Pool::up_with(
        "four-lost",
        4,
        &["--repair-grace", "10", "--reclaim-after", "5"],
    );
    let kept = fill(&pool);
    let mut rng = Rng::new(seed());
    let first = pick(&mut rng, &(0..pool.nodes.len()).collect::<Vec<_>>(), 1)[0];
    let lost = pool.kill_member(first);
    let since = Instant::now();
    // The pool notices first (a member silent for 3 s is down): until then every
    // file still says healthy, which would prove nothing.
    let big = &kept[0].got;
    assert!(
        crate::harness::mount::wait_until(Duration::from_secs(30), || !health(big)
            .starts_with("healthy")),
        "30 s after member {} was killed, {} still says {}",
        lost.index,
        big.display(),
        health(big)
    );
    // And says so where a user looks: `poolfs status` names the degraded file.
    let out =
        run_ok(poolfs(["status", "-c", &pool.controller.to_string(), "--mount"]).arg(&pool.mnt));
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.contains("degraded") && l.contains("big")),
        "poolfs status does not name the degraded file:\n{status}"
    );

    // Every file whole again within 2 minutes of the grace, by repair's doing: on a
    // loaded machine a heartbeat the member sent just before its death can reach the
    // controller late and show it up for a few seconds, which alone proves nothing.
    let limit = grace + Duration::from_secs(120);
    let repaired =
        crate::harness::mount::wait_until(limit, || repair_bytes(&pool.mnt).is_some_and(|b| b > 0));
    assert!(
        repaired,
        "{limit:?} after member {} was lost, repair has written nothing: {:?}",
        lost.index,
        crate::harness::faults::xattr(&pool.mnt, "user.poolfs.repair")
    );
    assert_all_healthy(&kept, limit, &format!("member {} was lost", lost.index));
    eprintln!(
        "full redundancy again {:.1}s after the loss",
        since.elapsed().as_secs_f64()
    );
    let written = repair_bytes(&pool.mnt);
    assert!(
        written.is_some_and(|b| b > 0),
        "repair made the files whole but says it wrote nothing: {:?}",
        crate::harness::faults::xattr(&pool.mnt, "user.poolfs.repair")
    );

    // The lost member's disk is gone with it: the live members hold what the files need.
    let live: Vec<PathBuf> = std::iter::once(pool.mount_storage.clone())
        .chain(
            pool.nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != lost.index)
                .map(|(_, n)| n.storage.clone()),
        )
        .collect();
    assert_space_settles(&pool, &live, SWEEP, "4 nodes, after repair");

    let others: Vec<usize> = (0..pool.nodes.len()).filter(|&i| i != lost.index).collect();
    let second = pick(&mut rng, &others, 1)[0];
    pool.kill_member(second);
    assert_all_read_back(&kept, "a second member lost after repair");
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_shape_chosen_with_redundancy_is_the_files_shape_and_survives_its_parity_lost() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up_with("shape-2p2", 6, &["--redundancy", "2+2"]);
    let kept = fill(&pool);
    for f in kept.iter().filter(|f| f.got.ends_with("big")) {
        assert_eq!(
            shape_of(&health(&f.got)),
            Some((2, 2)),
            "--redundancy 2+2 on up: {}",
            health(&f.got)
        );
    }
    kill_and_read(&mut pool, &kept, 2);
}
