//! A pool's life: persistence across remounts and kill -9, spreading over the nodes,
//! `up`/`down`, and mounts refused with a clear error (`mount -t poolfs` and fstab are
//! in `helper`).

use super::*;

/// Files are there after an unmount and remount, and after kill -9 of the mount
/// process (once their close returned success), a lazy unmount and a remount.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn files_survive_remount_and_kill_9() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("persist", 3);
    let scratch = pool.scratch();
    let m = pool.mnt.clone();
    let big = scratch.join("big");
    random_file(&big, 7 * MIB + 3);
    assert!(cp(&big, &m.join("big")).status.success());
    fs::create_dir_all(m.join("d/e")).unwrap();
    fs::write(m.join("d/e/small"), b"small file").unwrap();
    fs::write(m.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("d/e/small", m.join("sym")).unwrap();

    let check_first = |m: &Path| {
        assert_same_file(&big, &m.join("big"));
        assert_eq!(fs::read(m.join("d/e/small")).unwrap(), b"small file");
        assert_eq!(fs::metadata(m.join("empty")).unwrap().len(), 0);
        assert_eq!(fs::read(m.join("sym")).unwrap(), b"small file");
    };
    pool.unmount();
    assert_eq!(
        names(&m),
        Vec::<String>::new(),
        "mountpoint empty once unmounted"
    );
    pool.remount();
    check_first(&m);

    // Writes whose close returned success; one more made durable by fsync and still
    // open; then kill -9.
    let mut after = File::create(m.join("after")).unwrap();
    let bytes = Rng::new(99).bytes(3 * MIB + 11);
    after.write_all(&bytes).unwrap();
    close_checked(after).expect("close of a stored file");
    let f = OpenOptions::new().write(true).open(m.join("big")).unwrap();
    f.write_all_at(b"PATCHED", 4 * MIB as u64).unwrap();
    close_checked(f).expect("close after an overwrite");
    let mut patched = fs::read(&big).unwrap();
    patched[4 * MIB..4 * MIB + 7].copy_from_slice(b"PATCHED");
    fs::write(&big, &patched).unwrap();
    let mut synced = File::create(m.join("synced")).unwrap();
    synced.write_all(b"fsynced but open").unwrap();
    synced.sync_all().expect("fsync");
    // Unlinked while open when the mount dies: its segments go at the next mount.
    assert!(cp(&big, &m.join("orphan")).status.success());
    let orphan = File::open(m.join("orphan")).unwrap();
    fs::remove_file(m.join("orphan")).unwrap();
    // An unlink is durable within half a second, or at once by fsync of its directory.
    File::open(&m)
        .unwrap()
        .sync_all()
        .expect("fsync of the directory");
    let with_orphan = total_segments(&pool);

    pool.kill_mount();
    drop(synced);
    drop(orphan);
    pool.remount();
    assert!(
        wait_until(Duration::from_secs(5), || total_segments(&pool).0
            <= with_orphan.0 - 7 * MIB as u64),
        "segments of a file unlinked while open at kill -9 remain after remount: {:?} \
         (before: {with_orphan:?})",
        total_segments(&pool)
    );
    check_first(&m);
    assert_eq!(
        fs::read(m.join("after")).unwrap(),
        bytes,
        "file closed before kill -9"
    );
    assert_eq!(fs::read(m.join("synced")).unwrap(), b"fsynced but open");
    assert_eq!(names(&m), ["after", "big", "d", "empty", "sym", "synced"]);
}

/// After a 32 MiB copy into a 4-node pool (k = 3 data + 1 parity segment) each node
/// holds about a third of it, and the mounting node does not hold the whole file. What
/// it holds is the first data segment of each file it writes, so a file's start (its
/// first byte above all) is read from its own disk with no round trip.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn bytes_are_spread_over_the_nodes() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("spread", 4);
    let src = pool.scratch().join("src");
    let size = 32 * MIB as u64;
    random_file(&src, size as usize);
    let before: Vec<u64> = pool
        .storages()
        .iter()
        .map(|s| data_segment_usage(s).0)
        .collect();
    assert!(cp(&src, &pool.path("big")).status.success());
    let share = size as f64 / 3.0;
    for (i, s) in pool.storages().iter().enumerate() {
        let held = (data_segment_usage(s).0 - before[i]) as f64;
        assert!(
            (held - share).abs() <= share * 0.15,
            "{} holds {held} bytes of a {size}-byte file; expected about {share}",
            s.display()
        );
    }
    let mine = data_segment_usage(&pool.mount_storage).0 - before[0];
    assert!(
        mine < size / 2,
        "the mounting node holds {mine} of {size} bytes"
    );
    assert_same_file(&src, &pool.path("big"));
    for i in 0..4 {
        fs::write(pool.path(&format!("more{i}")), Rng::new(i).bytes(3 * MIB)).unwrap();
    }
    let own = crate::harness::cluster::data_segments(&pool.mount_storage);
    let mut files: Vec<&str> = own.iter().map(|s| s.file.as_str()).collect();
    files.dedup();
    assert_eq!(
        files.len(),
        5,
        "the mounting node holds a segment of every file"
    );
    for file in files {
        assert!(
            own.iter().any(|s| s.file == file && s.name == "0.seg"),
            "the mounting node holds no first data segment of {file}: {own:?}"
        );
    }
}

/// `poolfs up` mounts a pool one can cp into at once; `poolfs down` unmounts it and
/// stops every process; a second `up` finds the files again.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn up_and_down_end_to_end() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("updown", 3);
    assert_eq!(pool.pids.len(), 4, "mount + 2 nodes + controller");
    // A second `up` on the same mount point is refused and leaves the pool alone.
    let err = pool.up_refused("a second up on a live mount");
    assert!(err.contains("already up"), "stderr: {err}");
    let src = pool.scratch().join("src");
    random_file(&src, 5 * MIB + 1);
    assert!(cp(&src, &pool.path("f")).status.success());
    assert_same_file(&src, &pool.path("f"));

    // down while a file is open: refused (like umount), naming this test's process as
    // what holds the mount, and the pool keeps working.
    let busy = File::open(pool.path("f")).unwrap();
    let out = pool.down();
    assert!(!out.status.success(), "down succeeded with a file open");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "is busy, in use by {}",
            format_args!(
                "{} (pid {})",
                fs::read_to_string("/proc/self/comm").unwrap().trim(),
                std::process::id()
            )
        )),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&pool.mnt));
    assert!(
        pool.any_alive().len() == 4,
        "down stopped processes of a busy pool"
    );
    assert_eq!(pread(&busy, 0, 10).unwrap(), fs::read(&src).unwrap()[..10]);
    drop(busy);
    assert_same_file(&src, &pool.path("f"));

    let out = pool.down();
    assert!(
        out.status.success(),
        "poolfs down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&pool.mnt), "still mounted after down");
    assert!(
        pool.any_alive().is_empty(),
        "alive after down: {:?}",
        pool.any_alive()
    );
    assert!(
        procs_under(&pool.root).is_empty(),
        "a poolfs process is left"
    );
    assert!(
        !pool.state.join("up.json").exists(),
        "up.json left after down"
    );
    assert_eq!(
        names(&pool.mnt),
        Vec::<String>::new(),
        "files visible after down"
    );
    let twice = pool.down();
    assert!(!twice.status.success(), "a second down succeeded");

    // Up again with the same data dir, this time without a key given: `up` makes one of
    // its own for the pool, and the files are still there.
    let own_key = pool.state.join("pool.key");
    assert!(!own_key.exists(), "up made a key although it was given one");
    let out = pool.up_again(|cmd| {
        cmd.env_remove("POOLFS_KEY");
    });
    assert!(
        out.status.success(),
        "second up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_file(&src, &pool.path("f"));
    let mode = fs::metadata(&own_key)
        .expect("up's own key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "up's key is private");
    // Its key opens the pool; the key of the first run no longer does.
    let ctrl = pool.controller.to_string();
    let status =
        |key: &Path| run(harness::mount::poolfs(["status", "-c", &ctrl, "--key"]).arg(key));
    assert!(status(&own_key).status.success(), "status with up's key");
    let old = status(harness::mount::test_key());
    assert!(!old.status.success(), "status with another key succeeded");
    assert!(old.stdout.is_empty(), "the view leaked: {:?}", old.stdout);
}

/// After the mount of a pool started with `up` was killed (a crash, an OOM kill), `down`
/// clears the rest and `up` mounts it again: the namespace database, left open, is
/// checked first, `up` says so and waits for it, and every file is there.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn up_after_a_killed_mount_checks_the_namespace_database_and_finds_every_file() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("killedup", 3);
    let src = pool.scratch().join("src");
    random_file(&src, 3 * MIB + 7);
    assert!(cp(&src, &pool.path("f")).status.success());
    fs::write(pool.path("small"), b"kept").unwrap();
    pool.kill_mount();
    let out = pool.down();
    assert!(
        out.status.success(),
        "down after a killed mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pool.any_alive().is_empty(),
        "alive after down: {:?}",
        pool.any_alive()
    );

    let out = pool.up_again(|_| {});
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "up after a killed mount failed: {said}"
    );
    assert!(
        said.contains("was not closed cleanly") && said.contains("checking it"),
        "up did not say that it checks the namespace database: {said}"
    );
    assert_same_file(&src, &pool.path("f"));
    assert_eq!(fs::read(pool.path("small")).unwrap(), b"kept");
    let out = pool.down();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mounting over a non-empty directory, over a mounted one, or with no reachable
/// controller fails with a clear message, and leaves nothing mounted or running.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn mount_refuses_bad_targets_and_unreachable_controllers() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("mounterr", 2);
    let pool_procs = pool.any_alive();
    let leftovers = || {
        procs_under(&pool.root)
            .into_iter()
            .filter(|p| !pool_procs.contains(p))
            .collect::<Vec<_>>()
    };
    let mount = |mnt: &Path, controller: &str, storage: &str| {
        let started = Instant::now();
        let out = run(harness::mount::poolfs(["mount"])
            .arg(mnt)
            .arg("--storage")
            .arg(pool.root.join(storage))
            .args(["-c", controller, "--listen", "127.0.0.1:0"]));
        (out, started.elapsed())
    };
    let ctrl = pool.controller.to_string();

    // Non-empty directory.
    let full = pool.root.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), b"mine").unwrap();
    let (out, _) = mount(&full, &ctrl, "s1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "mount over a non-empty dir succeeded"
    );
    assert!(err.contains("not empty, it holds 'keep'"), "stderr: {err}");
    assert!(!is_mounted(&full));
    assert_eq!(fs::read(full.join("keep")).unwrap(), b"mine");
    // Refused before anything was made for it: no storage directory, no log.
    assert!(
        !pool.root.join("s1").exists(),
        "a refused mount made its storage"
    );
    // `up` refuses it before it starts a controller or a node, or writes any state.
    let data = pool.root.join("full-data");
    let out = run(harness::mount::poolfs(["up"])
        .arg(&full)
        .arg("--data-dir")
        .arg(&data));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up over a non-empty dir succeeded");
    assert!(err.contains("not empty, it holds 'keep'"), "stderr: {err}");
    assert!(!data.exists(), "a refused up wrote its state");
    assert!(leftovers().is_empty(), "a refused up left processes");

    // Already mounted (the pool's own mount point).
    let (out, _) = mount(&pool.mnt, &ctrl, "s2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount over a mounted dir succeeded");
    assert!(err.contains("already mounted"), "stderr: {err}");
    fs::write(pool.path("still-works"), b"ok").unwrap();
    assert_eq!(fs::read(pool.path("still-works")).unwrap(), b"ok");

    // No controller listening there.
    let empty = pool.root.join("empty");
    fs::create_dir(&empty).unwrap();
    let nobody = format!("127.0.0.1:{}", harness::mount::free_port());
    let (out, took) = mount(&empty, &nobody, "s3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount with no controller succeeded");
    assert!(
        err.contains("no reachable controller") && err.contains(&nobody),
        "stderr: {err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?} to give up");
    assert!(!is_mounted(&empty));

    // The storage of the running mount: refused before the pool hears of it (the
    // node's address in the pool view stays the running mount's), and the pool keeps
    // working.
    let view = || {
        let out = run_ok(&mut harness::mount::poolfs([
            "status", "--json", "-c", &ctrl,
        ]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let mut addrs: Vec<String> = v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| format!("{} {}", n["id"], n["addr"]))
            .collect();
        addrs.sort();
        addrs
    };
    let before = view();
    let out = run(harness::mount::poolfs(["mount"])
        .arg(&empty)
        .arg("--storage")
        .arg(&pool.mount_storage)
        .args(["-c", &ctrl, "--listen", "127.0.0.1:0"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "second mount of one storage dir succeeded"
    );
    assert!(err.contains("in use"), "stderr: {err}");
    assert!(!is_mounted(&empty));
    // `status` asks the controller afresh (no cache), and the refused mount has exited.
    assert_eq!(view(), before, "a refused mount changed the pool view");
    let src = pool.scratch().join("src");
    random_file(&src, 3 * MIB + 3);
    let out = cp(&src, &pool.path("after-refusal"));
    assert!(
        out.status.success(),
        "the pool stopped storing after a refused mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_file(&src, &pool.path("after-refusal"));

    // Not a directory at all.
    let (out, _) = mount(&full.join("keep"), &ctrl, "s4");
    assert!(!out.status.success(), "mount on a file succeeded");

    assert!(
        wait_until(Duration::from_secs(5), || leftovers().is_empty()),
        "processes left behind by failed mounts: {:?}",
        leftovers()
    );
    assert!(
        harness::mount::fuse_mounts_under(&pool.root).len() == 1,
        "mounts: {:?}",
        harness::mount::fuse_mounts_under(&pool.root)
    );
}

/// Regression: `poolfs down` recognised the pool's processes by their binary's name, so
/// a pool started from a copy named otherwise (`poolfs-new`, say) was unmounted but its
/// controller and nodes kept running.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn down_stops_a_pool_started_from_a_renamed_binary() {
    if !can_mount() {
        return;
    }
    let tmp = harness::mount::test_dir("renamed");
    let root = tmp.path().canonicalize().unwrap();
    let bin = root.join("pf-renamed");
    fs::copy(harness::mount::BIN, &bin).unwrap();
    let (mnt, data) = (root.join("mnt"), root.join("data"));
    let up = harness::mount::run(
        Command::new(&bin)
            .arg("up")
            .arg(&mnt)
            .arg("--data-dir")
            .arg(&data),
    );
    assert!(
        up.status.success(),
        "up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let running = |root: &Path| -> Vec<u32> {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.split(|b| *b == 0)
                        .next()
                        .is_some_and(|exe| exe.starts_with(root.as_os_str().as_bytes()))
                })
            })
            .collect()
    };
    let started = running(&root);
    assert!(
        started.len() >= 4,
        "expected the pool's processes: {started:?}"
    );
    let down = harness::mount::run(
        Command::new(&bin)
            .arg("down")
            .arg(&mnt)
            .arg("--data-dir")
            .arg(&data),
    );
    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = || {
        running(&root)
            .into_iter()
            .filter(|pid| {
                // A zombie waiting to be reaped has stopped already.
                !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
            })
            .collect::<Vec<_>>()
    };
    let stopped = wait_until(Duration::from_secs(10), || left().is_empty());
    let leftover = left();
    for pid in &leftover {
        // SAFETY: processes this test started from its own copy of the binary.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(stopped, "down left processes running: {leftover:?}");
    assert!(
        !harness::mount::is_mounted(&mnt),
        "still mounted after down"
    );
}

/// A mount that is the only member of its pool is told at mount that its files get
/// no parity. It has nowhere to move them when it leaves: after `umount` its process
/// exits at once rather than waiting out a hand-off, its log warns of nothing from
/// then on (no files "not handed off"), and the files are served again by the next
/// mount of the same storage.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_mount_alone_in_its_pool_leaves_at_once_and_warns_of_nothing() {
    use crate::harness::mount::{test_dir, test_key, ControllerProc, MountGuard};
    if !can_mount() {
        return;
    }
    let tmp = test_dir("alone");
    let root = tmp.path().canonicalize().unwrap();
    let ctrl = ControllerProc::start(&root.join("controller"), &root.join("ctrl.log"));
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let guard = MountGuard {
        mnt: mnt.clone(),
        root: root.clone(),
    };
    let storage = root.join("storage");
    let mount = || {
        run_ok(
            poolfs(["mount"])
                .arg(&mnt)
                .arg("--storage")
                .arg(&storage)
                .args(["-c", &ctrl.addr.to_string(), "--listen", "127.0.0.1:0"])
                .arg("--key")
                .arg(test_key()),
        )
    };
    let mount_exited = || procs_under(&root).iter().all(|&p| p == ctrl.pid());
    let said = String::from_utf8_lossy(&mount().stderr).into_owned();
    assert!(
        said.contains("the pool has 1 member") && said.contains("stored as 1+0, with no parity"),
        "mount of a one-member pool: {said}"
    );
    fs::write(mnt.join("kept"), b"alone in the pool").unwrap();
    let before = Instant::now();
    run_ok(Command::new("umount").arg(&mnt));
    assert!(
        wait_until(Duration::from_secs(30), mount_exited),
        "the mount process did not exit"
    );
    // A hand-off that waits for something to move gives up after 8 s of nothing.
    assert!(
        before.elapsed() < Duration::from_secs(5),
        "the lone mount took {:?} to leave",
        before.elapsed()
    );
    let log = fs::read_to_string(storage.join("mount.log")).unwrap();
    let leave = &log[log.find("unmounted").expect("no unmount in the log")..];
    assert!(
        !leave.contains(" WARN ") && !leave.contains(" ERROR "),
        "a lone mount's leave warned: {leave}"
    );
    assert!(log.contains("no other node of the pool is up"), "{log}");
    mount();
    assert_eq!(fs::read(mnt.join("kept")).unwrap(), b"alone in the pool");
    run_ok(Command::new("umount").arg(&mnt));
    assert!(wait_until(Duration::from_secs(30), mount_exited));
    drop(guard);
}
