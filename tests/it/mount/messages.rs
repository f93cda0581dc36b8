//! Messages that name the cause and the fix (issue 17): each test runs the command a
//! user runs after an ordinary mistake or failure, and checks what it says.

use super::*;
use crate::harness::mount::{kill_ours, test_dir, BIN};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cmd` as run by a user whose home holds no poolfs state and no pool key: nothing
/// but the mount itself (or the options given) can lead it to the pool.
fn without_defaults<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    fs::create_dir_all(home).expect("home dir");
    cmd.env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("POOLFS_KEY")
        .env_remove("POOLFS_CONTROLLER")
}

/// A mount given a key that is not the pool's reaches the controller, which refuses
/// the handshake: it says so on the terminal (not "no reachable controller", which
/// sends the user to look for a controller that is running), and mounts nothing.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn mount_with_the_wrong_key_says_the_controller_refused_it() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("wrongkey", 2);
    let before = procs_under(&pool.root);
    let wrong = pool.root.join("wrong.key");
    run_ok(poolfs(["init", "--key"]).arg(&wrong));
    let mnt = pool.root.join("other");
    fs::create_dir(&mnt).unwrap();
    let ctrl = pool.controller.to_string();
    let out = run(poolfs(["mount"])
        .arg(&mnt)
        .arg("--storage")
        .arg(pool.root.join("wrong-storage"))
        .args(["-c", &ctrl, "--listen", "127.0.0.1:0", "--key"])
        .arg(&wrong));
    let err = stderr(&out);
    assert!(!out.status.success(), "a mount with a wrong key succeeded");
    assert!(
        err.contains(&format!("the controller at {ctrl} refused our pool key"))
            && err.contains("is not the pool's")
            && err.contains(&wrong.display().to_string())
            && err.contains("--key FILE"),
        "stderr: {err}"
    );
    assert!(!err.contains("no reachable controller"), "stderr: {err}");
    assert!(!is_mounted(&mnt));
    // `status` with the same key names the same cause, and only that: no report of
    // the pool's mount comes before it.
    let out = run(poolfs(["status", "-c", &ctrl, "--mount"])
        .arg(&pool.mnt)
        .arg("--key")
        .arg(&wrong));
    let err = stderr(&out);
    assert!(!out.status.success(), "status with a wrong key succeeded");
    assert!(
        err.contains(&format!("the controller at {ctrl} refused our pool key"))
            && err.contains(&wrong.display().to_string()),
        "status: {err}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "status: {err}");
    // Nothing was stored: no owner key made for it, and no word of one to keep.
    assert!(!err.contains("A new owner key"), "stderr: {err}");
    assert!(
        !pool.root.join("wrong-storage/owner.key").exists(),
        "the refused mount left an owner key"
    );
    assert!(
        wait_until(Duration::from_secs(10), || procs_under(&pool.root)
            .iter()
            .all(|p| before.contains(p))),
        "the refused mount left a process"
    );
}

/// After the mount process is killed (kill -9), its mount point is a dead FUSE mount
/// (ENOTCONN). `mount` and `up` on it say so and how to clear it (rather than "not a
/// directory" and "File exists"), and `down` clears it: a lazy unmount, then the
/// rest of the pool stopped.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_dead_mount_is_named_with_how_to_clear_it_and_down_clears_it() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("deadmount", 2);
    kill_ours(&[pool.mount_pid], &pool.root, libc::SIGKILL);
    // Just after the death a request may get ECONNABORTED; then every one ENOTCONN.
    assert!(
        wait_until(Duration::from_secs(5), || {
            fs::metadata(&pool.mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
        }),
        "stat of a dead mount never gave ENOTCONN: {:?}",
        fs::metadata(&pool.mnt)
    );
    let mnt = pool.mnt.display().to_string();
    let says_how_to_clear = |err: &str| {
        err.contains("Transport endpoint is not connected")
            && err.contains(&format!("`fusermount3 -u {mnt}`"))
            && err.contains(&format!("`poolfs down {mnt}`"))
    };

    let out = run(poolfs(["mount"])
        .arg(&pool.mnt)
        .arg("--storage")
        .arg(pool.root.join("again"))
        .args(["-c", &pool.controller.to_string()])
        .args(["--listen", "127.0.0.1:0"]));
    let err = stderr(&out);
    assert!(!out.status.success(), "mount on a dead mount succeeded");
    assert!(says_how_to_clear(&err), "mount: {err}");
    assert!(!err.contains("not a directory"), "mount: {err}");

    let err = pool.up_refused("up on a dead mount");
    assert!(says_how_to_clear(&err), "up: {err}");
    assert!(!err.contains("File exists"), "up: {err}");

    let out = run(poolfs(["status", "--data-dir"])
        .arg(&pool.data)
        .arg("--mount")
        .arg(&pool.mnt));
    let err = stderr(&out);
    assert!(!out.status.success(), "status of a dead mount succeeded");
    assert!(
        err.contains(&format!("cannot show mount {mnt}")) && says_how_to_clear(&err),
        "status: {err}"
    );

    let out = pool.down();
    assert!(out.status.success(), "down: {}", stderr(&out));
    assert!(!is_mounted(&pool.mnt), "the dead mount is still there");
    assert!(
        fs::metadata(&pool.mnt).is_ok_and(|m| m.is_dir()),
        "the mount point is not a plain directory again"
    );
    pool.assert_stopped();
}

/// Where this user cannot open /dev/fuse, `up` says which file, why, and what to do.
/// The test hides /dev/fuse from `up` alone: in a mount namespace of its own, an
/// unreadable file is bound over it, and `up` runs as nobody (the real /dev/fuse is
/// not touched).
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn up_without_access_to_dev_fuse_says_what_is_wrong_and_what_to_do() {
    if !can_mount()
        || !harness::have_program("unshare", "a mount namespace that hides /dev/fuse")
        || !harness::have_program("setpriv", "to run up as an unprivileged user")
    {
        return;
    }
    let tmp = test_dir("nofuse");
    let root = tmp.path().canonicalize().unwrap();
    // nobody writes the pool's state here.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let locked = root.join("locked");
    fs::write(&locked, b"").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o600)).unwrap();
    let real = fs::metadata("/dev/fuse").unwrap();
    let mnt = root.join("mnt");
    let out = run(Command::new("unshare")
        .args(["--mount", "--", "sh", "-c"])
        .arg(
            r#"mount --bind "$0" /dev/fuse && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@""#,
        )
        .arg(&locked)
        .arg(BIN)
        .arg("up")
        .arg(&mnt)
        .arg("--data-dir")
        .arg(root.join("data"))
        .env_remove("POOLFS_KEY"));
    let err = stderr(&out);
    assert!(!out.status.success(), "up without /dev/fuse succeeded");
    assert!(
        err.contains("cannot open /dev/fuse")
            && err.contains("Permission denied")
            && err.contains("uid 65534")
            && err.contains("run poolfs as root")
            && err.contains("add it to the group that owns /dev/fuse"),
        "stderr: {err}"
    );
    // The mount never started: no owner key to keep the words of.
    assert!(!err.contains("A new owner key"), "stderr: {err}");
    assert!(!is_mounted(&mnt));
    assert!(
        wait_until(Duration::from_secs(10), || procs_under(&root).is_empty()),
        "up left processes: {:?}",
        procs_under(&root)
    );
    let now = fs::metadata("/dev/fuse").unwrap();
    assert_eq!(
        (now.mode(), now.uid(), now.gid()),
        (real.mode(), real.uid(), real.gid()),
        "the real /dev/fuse changed"
    );
}

/// `status --mount X` for a pool that `up` started with a key of its own (and a data
/// directory of its own) asks that pool's controller with that pool's key, as `up`
/// recorded them: it lists the pool and the files, and does not fail for want of the
/// default key.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn status_of_a_mount_started_with_up_uses_that_pools_key() {
    if !can_mount() {
        return;
    }
    let keys = test_dir("statuskey-key");
    let key = keys.path().join("own.key");
    let pool = Pool::up_with("statuskey", 2, &["--key", key.to_str().unwrap()]);
    fs::write(pool.path("listed"), b"a file").unwrap();
    let home = pool.root.join("home");
    let status = |json: &[&str]| {
        run(without_defaults(&mut Command::new(BIN), &home)
            .arg("status")
            .args(json)
            .arg("--mount")
            .arg(&pool.mnt))
    };
    let out = status(&[]);
    let (said, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        out.status.success(),
        "status --mount failed: {err}\nstdout: {said}"
    );
    assert!(!err.contains("no pool key"), "stderr: {err}");
    assert!(said.contains("listed"), "stdout: {said}");
    // The view came from this pool's controller: both of its members are in it.
    let out = status(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stderr(&out)));
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["mounts"][0]["files"][0]["path"], "listed", "{v}");
}

/// `down X` finds a pool that `up X --data-dir D` started without being told D: from
/// the pool's running processes, whose paths name it. A `down` with nothing to stop
/// says where it looked and what to give.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn down_finds_the_pool_from_its_mount_without_the_data_dir() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("downfind", 2);
    let home = pool.root.join("home");
    let out = pool.down_with(|cmd| {
        without_defaults(cmd, &home);
    });
    assert!(
        out.status.success(),
        "down without --data-dir: {}",
        stderr(&out)
    );
    assert!(!is_mounted(&pool.mnt), "still mounted after down");
    pool.assert_stopped();
    assert!(!pool.state.join("up.json").exists(), "up.json left");

    let gone = pool.root.join("no-such-dir");
    let out = run(without_defaults(&mut poolfs(["down"]), &home).arg(&gone));
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("does not exist, so no pool is mounted there"),
        "down of a missing directory: {err}"
    );

    let out = run(without_defaults(&mut poolfs(["down"]), &home).arg(&pool.mnt));
    let err = stderr(&out);
    assert!(!out.status.success(), "a second down succeeded");
    assert!(
        err.contains("no pool was started with `poolfs up`") && err.contains("--data-dir"),
        "stderr: {err}"
    );
}

/// A read that too few nodes can serve fails with EIO, as a local disk's would; the
/// reason is in the mount's log at WARN (the inode read, the nodes that failed) and in
/// `status` (the file unavailable, the nodes missing).
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_read_too_few_nodes_can_serve_is_explained_in_the_log_and_in_status() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("eio", 3);
    let src = pool.scratch().join("src");
    random_file(&src, 3 * MIB + 5);
    assert!(cp(&src, &pool.path("f")).status.success());
    let ino = fs::metadata(pool.path("f")).unwrap().ino();
    let pids: Vec<u32> = pool.nodes.iter().map(|n| n.pid).collect();
    kill_ours(&pids, &pool.root, libc::SIGKILL);
    let ctrl = pool.controller.to_string();
    let down_ids = || -> Vec<u64> {
        let out = run_ok(&mut poolfs(["status", "--json", "-c", &ctrl]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["state"] == "Down")
            .filter_map(|n| n["id"].as_u64())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || down_ids().len() == 2),
        "the controller did not mark both nodes down: {:?}",
        member_states(pool.controller)
    );
    let missing = down_ids();

    drop_cache(&pool.path("f"));
    assert_errno(
        fs::read(pool.path("f")),
        libc::EIO,
        "read with 1 of 3 nodes",
    );

    let log = fs::read_to_string(pool.state.join("mount.log")).unwrap();
    let warned = log
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains(&format!("read of inode {ino} failed")));
    let Some(warned) = warned else {
        panic!("no WARN line for the read of inode {ino} in the mount's log:\n{log}");
    };
    assert!(
        warned.contains("needs 2 shards, only 1 could be read"),
        "{warned}"
    );
    for id in &missing {
        assert!(
            warned.contains(&format!("node {id}")),
            "node {id} not named: {warned}"
        );
    }

    let out = run_ok(poolfs(["status", "-c", &ctrl, "--mount"]).arg(&pool.mnt));
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said
        .lines()
        .find(|l| l.contains("unavailable") && l.trim_end().contains(" f "))
        .unwrap_or_else(|| panic!("f is not listed as unavailable: {said}"));
    for id in &missing {
        assert!(
            line.contains(&format!("node {id} down")),
            "node {id} not named missing: {line}"
        );
    }
}

/// `down` on a mount that a process still uses fails as `umount` would, but names the
/// process (a shell whose working directory is inside, here), says that nothing was
/// stopped, and a second `down` once it is gone stops the pool.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn down_of_a_busy_mount_names_what_holds_it_and_keeps_the_pool() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("busydown", 2);
    fs::write(pool.path("kept"), b"still here").unwrap();
    let mut holder = Command::new("sleep")
        .arg("60")
        .current_dir(&pool.mnt)
        .spawn()
        .expect("start sleep in the mount");
    let out = pool.down();
    let err = stderr(&out);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!out.status.success(), "down of a busy mount succeeded");
    assert!(
        err.contains("is busy")
            && err.contains(&format!("sleep (pid {})", holder.id()))
            && err.contains("the pool still runs"),
        "stderr: {err}"
    );
    assert!(is_mounted(&pool.mnt), "the busy mount went away");
    assert_eq!(fs::read(pool.path("kept")).unwrap(), b"still here");
    assert!(
        pool.any_alive().len() == pool.pids.len(),
        "a process was stopped"
    );
    let out = pool.down();
    assert!(out.status.success(), "second down: {}", stderr(&out));
    pool.assert_stopped();
}

/// A pool of `up` unmounted with a plain `umount` keeps its controller and nodes:
/// `status` says so and that `down` stops them, `up` refuses to start a second pool on
/// the same storage and says why, and `down` then stops it ("it was not mounted").
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn after_a_plain_umount_status_and_up_say_the_pool_still_runs_and_down_stops_it() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("plainumount", 2);
    run_ok(Command::new("umount").arg(&pool.mnt));
    let mnt = pool.mnt.display().to_string();
    let out = run(poolfs(["status", "--data-dir"]).arg(&pool.data));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{mnt}: not mounted, but the rest of its pool"))
            && said.contains(&format!("`poolfs down {mnt}` stops it")),
        "status: {said}"
    );
    let err = pool.up_refused("a second up on a running pool");
    assert!(
        err.contains("still runs without its mount")
            && err.contains(&format!("`poolfs down {mnt}`")),
        "up: {err}"
    );
    assert!(
        !err.contains("in use by another poolfs process"),
        "up: {err}"
    );
    let out = pool.down();
    assert!(out.status.success(), "down: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("it was not mounted"), "down: {said}");
    pool.assert_stopped();
}

/// A pool stopped by `down` is kept with its files: `status` and a second `down` say
/// that it is down and how to start it again, rather than that no pool was ever
/// recorded.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_pool_that_is_down_is_named_by_status_and_down_with_how_to_start_it() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("downnamed", 2);
    let out = pool.down();
    assert!(out.status.success(), "down: {}", stderr(&out));
    let mnt = pool.mnt.display().to_string();
    let start_again = format!("`poolfs up {mnt}` starts it again");
    let home = pool.root.join("home");
    let out = run(without_defaults(&mut Command::new(BIN), &home)
        .args(["status", "--data-dir"])
        .arg(&pool.data));
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "status of a pool that is down succeeded"
    );
    assert!(
        err.contains(&format!("the pool of {mnt} is down")) && err.contains(&start_again),
        "status: {err}"
    );
    let out = pool.down();
    let err = stderr(&out);
    assert!(!out.status.success(), "a second down succeeded");
    assert!(
        err.contains(&format!("the pool of {mnt} is not up")) && err.contains(&start_again),
        "down: {err}"
    );
    // A file copied into the mount point while the pool is down lands on the local
    // disk: `up` refuses the directory, says why and what to do, and starts nothing.
    fs::write(pool.mnt.join("copied-while-down"), b"local").unwrap();
    let err = pool.up_refused("up over a non-empty mount point");
    assert!(
        err.contains("it holds 'copied-while-down'")
            && err.contains("while this pool was down are on this machine's disk")
            && err.contains("move them away"),
        "up: {err}"
    );
    assert!(
        procs_under(&pool.root).is_empty(),
        "a refused up started processes"
    );
}

/// After `poolfs up ~/pool`, `put` and `get` with no options reach that pool (its
/// controller and its key, as `status` does), rather than asking for a key that
/// `poolfs init` would make wrong; a `--key` naming a missing file says so without
/// suggesting `init`.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn put_and_get_reach_the_pool_that_up_started_without_options() {
    if !can_mount() {
        return;
    }
    let tmp = test_dir("putup");
    let root = tmp.path().canonicalize().unwrap();
    let (home, mnt) = (root.join("home"), root.join("pool"));
    let _guard = crate::harness::mount::MountGuard {
        mnt: mnt.clone(),
        root: root.clone(),
    };
    let user = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        without_defaults(&mut cmd, &home).args(args);
        cmd
    };
    run_ok(&mut user(&["up", mnt.to_str().unwrap(), "--nodes", "2"]));
    let src = root.join("src.bin");
    random_file(&src, 3 * MIB + 5);
    let out = run(user(&["put", src.to_str().unwrap()]).current_dir(&root));
    assert!(out.status.success(), "put: {}", stderr(&out));
    let back = root.join("back.bin");
    let out = run(&mut user(&["get", "src.bin", back.to_str().unwrap()]));
    assert!(out.status.success(), "get: {}", stderr(&out));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&src).unwrap());
    let missing = root.join("missing.key");
    let out = run(&mut user(&[
        "put",
        src.to_str().unwrap(),
        "--key",
        missing.to_str().unwrap(),
    ]));
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "put with a missing key file succeeded"
    );
    assert!(
        err.contains(&format!("no key file at {}", missing.display()))
            && !err.contains("poolfs init` to create"),
        "stderr: {err}"
    );
    run_ok(&mut user(&["down", mnt.to_str().unwrap()]));
}
