//! mount-helper/mount.poolfs: `mount -t poolfs`, an fstab line through `mount DIR`, and
//! `umount`; the helper's options as `poolfs mount` flags.

use super::*;

/// The helper turns each of its options into the `poolfs mount` flag that
/// mount-helper/README.md names: the shape of new files as `tolerate=F`,
/// `redundancy=K+M` or the old `parity=M`, and refuses an option it does not know.
/// (`POOLFS_BIN=echo` shows the command line it would run.)
#[test]
fn the_mount_helper_passes_its_options_as_poolfs_mount_flags() {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.poolfs");
    let said = |opts: &str| {
        let out = run(Command::new(&helper)
            .args(["10.0.0.1:2000", "/mnt/pool", "-o", opts])
            .env("POOLFS_BIN", "echo"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let table = [
        (
            "storage=/s,tolerate=2,_netdev",
            "mount /mnt/pool --controller 10.0.0.1:2000 --storage /s --tolerate 2",
        ),
        (
            "storage=/s,redundancy=4+2,key=/k,quota=2G",
            "mount /mnt/pool --controller 10.0.0.1:2000 --storage /s --redundancy 4+2 --key /k \
             --quota 2G",
        ),
        (
            "storage=/s,parity=1,allow_other",
            "mount /mnt/pool --controller 10.0.0.1:2000 --storage /s --tolerate 1 --allow-other",
        ),
    ];
    for (opts, want) in table {
        assert_eq!(
            said(opts),
            (true, want.to_string(), String::new()),
            "-o {opts}"
        );
    }
    let (ok, _, err) = said("storage=/s,copies=3");
    assert!(
        !ok && err.contains("unknown option copies=3"),
        "stderr: {err}"
    );
}

/// `mount -t poolfs CONTROLLER DIR -o storage=...` through mount-helper/mount.poolfs,
/// and `umount DIR`; the helper refuses a missing storage= option with a clear message;
/// then the same from an fstab line: `mount DIR`, `umount DIR`.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn mount_t_poolfs_through_the_helper() {
    if !can_mount() {
        return;
    }
    let tmp = harness::mount::test_dir("helper");
    let root = tmp.path().canonicalize().unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.poolfs");
    let installed = Path::new("/sbin/mount.poolfs");
    let _link = HelperLink::install(installed, &helper);

    let ctrl =
        harness::mount::ControllerProc::start(&root.join("controller"), &root.join("ctrl.log"));
    let mnt = root.join("mnt");
    let storage = root.join("storage");
    fs::create_dir(&mnt).unwrap();
    let _guard = harness::mount::MountGuard {
        mnt: mnt.clone(),
        root: root.clone(),
    };

    // Without storage=: refused, with a message that names the option.
    let out = run(Command::new("mount")
        .args(["-t", "poolfs", &ctrl.addr.to_string()])
        .arg(&mnt)
        .args(["-o", "listen=127.0.0.1:0"])
        .env("POOLFS_BIN", harness::mount::BIN)
        .env("POOLFS_KEY", harness::mount::test_key()));
    assert!(!out.status.success(), "mount without storage= succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage=PATH option is required"),
        "stderr: {err}"
    );
    assert!(!is_mounted(&mnt));

    let out = run(Command::new("mount")
        .args(["-t", "poolfs", &ctrl.addr.to_string()])
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "storage={},listen=127.0.0.1:0,_netdev",
            storage.display()
        ))
        .env("POOLFS_BIN", harness::mount::BIN)
        .env("POOLFS_KEY", harness::mount::test_key()));
    assert!(
        out.status.success(),
        "mount -t poolfs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(&mnt),
        "mount -t poolfs returned but nothing is mounted"
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("fuse"), "{line}");

    let src = root.join("src");
    random_file(&src, 3 * MIB + 17);
    assert!(cp(&src, &mnt.join("f")).status.success());
    drop_cache(&mnt.join("f"));
    let cat = run_ok(Command::new("cat").arg(mnt.join("f")));
    assert!(
        cat.stdout == fs::read(&src).unwrap(),
        "cat through mount -t poolfs"
    );
    assert!(
        storage.join("meta.redb").exists(),
        "the namespace lives in storage="
    );

    let mount_procs = || {
        procs_under(&root)
            .into_iter()
            .filter(|&p| p != ctrl.pid())
            .collect::<Vec<_>>()
    };
    // `umount DIR`: unmounted, its process gone, its node left the pool.
    let umount_leaves = |what: &str| {
        let pids = mount_procs();
        assert_eq!(pids.len(), 1, "{what}: one mount process: {pids:?}");
        run_ok(Command::new("umount").arg(&mnt));
        assert!(!is_mounted(&mnt), "{what}: still mounted after umount");
        assert!(
            wait_until(Duration::from_secs(10), || mount_procs().is_empty()),
            "{what}: the mount process did not exit after umount: {pids:?}"
        );
        assert_eq!(
            harness::mount::member_states(ctrl.addr),
            ["Gone"],
            "{what}: umount makes the node leave the pool"
        );
    };
    umount_leaves("mount -t poolfs");

    // The same mount from an fstab line, as mount-helper/README.md gives it (the key by
    // key=, as at boot where no POOLFS_KEY is set): `mount DIR` mounts it, `umount DIR`
    // leaves. `mount -T` reads this test's fstab instead of /etc/fstab.
    let fstab = root.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# poolfs\n{}  {}  poolfs  storage={},key={},listen=127.0.0.1:0,_netdev,nofail  0 0\n",
            ctrl.addr,
            mnt.display(),
            storage.display(),
            harness::mount::test_key().display()
        ),
    )
    .unwrap();
    let out = run(Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .env("POOLFS_BIN", harness::mount::BIN)
        .env_remove("POOLFS_KEY"));
    assert!(
        out.status.success(),
        "mount of an fstab line failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt), "mount DIR from fstab mounted nothing");
    drop_cache(&mnt.join("f"));
    assert_same_file(&src, &mnt.join("f"));
    umount_leaves("the fstab line");
    drop(ctrl);
}

/// Installs /sbin/mount.poolfs -> the repo's helper only if absent; removes it again
/// on drop if it was ours.
struct HelperLink {
    path: PathBuf,
    created: bool,
}

impl HelperLink {
    fn install(path: &Path, target: &Path) -> HelperLink {
        let created = if fs::symlink_metadata(path).is_ok() {
            eprintln!("{} exists already; using it", path.display());
            false
        } else {
            std::os::unix::fs::symlink(target, path)
                .unwrap_or_else(|e| panic!("cannot install {}: {e}", path.display()));
            true
        };
        HelperLink {
            path: path.to_path_buf(),
            created,
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(&self.path);
        }
    }
}
