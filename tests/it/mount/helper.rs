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
    let fields: Vec<&str> = line.split(' ').collect();
    assert!(
        fields[0] == ctrl.addr.to_string() && fields[2] == "fuse.poolfs",
        "a mount of type fuse.poolfs (also when root mounts) whose source is the \
         controller's address, as the fstab line's: {line}"
    );
    let df = run_ok(Command::new("df").arg("-P").arg(&mnt));
    let df = String::from_utf8_lossy(&df.stdout);
    assert!(
        df.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&format!("{} ", ctrl.addr))),
        "df shows the controller: {df}"
    );

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
    // `status --mount DIR` of a mount `up` did not start finds its controller in the
    // mount table (the mount's source), with no --controller and no pool of `up`.
    let home = root.join("home");
    fs::create_dir_all(&home).unwrap();
    let out = run(harness::mount::poolfs(["status", "--mount"])
        .arg(&mnt)
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("POOLFS_CONTROLLER"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status --mount of a mount -t poolfs: {}{said}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("pool: 1 of 1 node up") && said.contains("healthy"),
        "status: {said}"
    );
    // Plain `status` of that pool (its controller named) shows this machine's mount of
    // it too, found in the mount table.
    let out = run(
        harness::mount::poolfs(["status", "-c", &ctrl.addr.to_string()])
            .env("HOME", &home)
            .env_remove("XDG_DATA_HOME"),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.contains(&mnt.display().to_string())
            && said.contains("healthy"),
        "plain status of the pool of a mount -t poolfs: {}{said}",
        String::from_utf8_lossy(&out.stderr)
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
    // `status --mount` of it now says it is not mounted, as the one error.
    let out = run(harness::mount::poolfs(["status", "--mount"])
        .arg(&mnt)
        .args(["-c", &ctrl.addr.to_string()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "cannot show mount {}: not mounted (nothing is mounted on this directory)",
                mnt.display()
            )),
        "status --mount of an unmounted directory: {err}"
    );

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
    // `mount -T FSTAB ARGS`, as at boot: no POOLFS_KEY, the key from the line.
    let mount_fstab = |args: &[&str]| {
        run(Command::new("mount")
            .arg("-T")
            .arg(&fstab)
            .args(args)
            .env("POOLFS_BIN", harness::mount::BIN)
            .env_remove("POOLFS_KEY"))
    };
    let out = mount_fstab(&[mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "mount of an fstab line failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt), "mount DIR from fstab mounted nothing");
    drop_cache(&mnt.join("f"));
    assert_same_file(&src, &mnt.join("f"));

    // Mounted already: `mount -a` (boot, or run again by hand) skips the line, as
    // util-linux does for a line whose source and mount point are in the mount table,
    // and `mount DIR` again is told so by the helper; neither mounts a second time.
    let mount_lines = || {
        fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(1) == mnt.to_str())
            .count()
    };
    let before = mount_procs();
    for (what, args) in [
        ("mount -a -T FSTAB", vec!["-a"]),
        ("mount -T FSTAB DIR", vec![mnt.to_str().unwrap()]),
        ("mount -a -T FSTAB, again", vec!["-a"]),
    ] {
        let out = mount_fstab(&args);
        assert!(
            out.status.success(),
            "{what} of the mounted pool failed ({:?}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(mount_lines(), 1, "{what}: mounted a second time");
        assert_eq!(
            mount_procs(),
            before,
            "{what}: started another mount process"
        );
    }
    umount_leaves("the fstab line");
    drop(ctrl);
}

/// mount(8) runs its helpers with a minimal PATH and no HOME (util-linux's setuid
/// mount, systemd at boot). The helper then finds poolfs where `cargo install` put it,
/// ~/.cargo/bin of the user that mounts (its home from its passwd entry), gives poolfs
/// that HOME, so the default key is that user's ~/.local/share/poolfs/pool.key (not
/// one under /tmp), keeps a HOME it was given, and says what to do when poolfs is
/// nowhere. Run in a private mount namespace whose /etc/passwd gives this user a home
/// in the test's directory (and where any poolfs installed on the machine is hidden),
/// so that neither the real home nor the machine's files are touched.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and unshare (a private mount namespace)"
)]
fn the_mount_helper_finds_poolfs_and_the_users_key_without_home_or_path() {
    let tmp = harness::mount::test_dir("helper-env");
    let root = tmp.path().canonicalize().unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.poolfs");
    let ns_ok = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ns_ok {
        harness::skip("unshare --mount cannot make a private mount namespace");
        return;
    }
    let home = root.join("home");
    let cargo_bin = home.join(".cargo/bin");
    fs::create_dir_all(&cargo_bin).unwrap();
    // This machine's passwd, with this user's home moved into the test's directory.
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() }.to_string();
    let passwd: String = fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.len() == 7 && f[2] == uid {
                f[5] = home.to_str().unwrap();
            }
            f.join(":") + "\n"
        })
        .collect();
    assert!(
        passwd.contains(&format!(":{}:", home.display())),
        "uid {uid} has no line in /etc/passwd"
    );
    let fake_passwd = root.join("passwd");
    fs::write(&fake_passwd, passwd).unwrap();
    // The helper as mount(8) runs it: `env -i` with only a minimal PATH, plus `env`.
    let mnt = root.join("mnt");
    let storage = root.join("storage");
    let run_helper = |env: &[&str], controller: &str| {
        let script = r#"mount --bind "$1" /etc/passwd || exit 97
for f in /usr/local/bin/poolfs /usr/bin/poolfs /usr/sbin/poolfs /sbin/poolfs /bin/poolfs; do
    if [ -e "$f" ]; then mount --bind /dev/null "$f" || exit 97; fi
done
shift
exec "$@""#;
        let out = run(Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&fake_passwd)
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(env)
            .arg(&helper)
            .arg(controller)
            .arg(&mnt)
            .arg("-o")
            .arg(format!("storage={},listen=127.0.0.1:0", storage.display())));
        assert_ne!(out.status.code(), Some(97), "cannot set up the namespace");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };

    // A stand-in poolfs in ~/.cargo/bin that shows its HOME and arguments.
    let fake = cargo_bin.join("poolfs");
    fs::write(&fake, "#!/bin/sh\necho \"HOME=$HOME\"\necho \"$@\"\n").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let args = format!(
        "mount {} --controller 10.0.0.1:2000 --storage {} --listen 127.0.0.1:0",
        mnt.display(),
        storage.display()
    );
    for (what, env, want_home) in [
        ("no HOME", vec![], home.clone()),
        ("an empty HOME", vec!["HOME="], home.clone()),
        (
            "HOME=/elsewhere",
            vec!["HOME=/elsewhere"],
            "/elsewhere".into(),
        ),
    ] {
        assert_eq!(
            run_helper(&env, "10.0.0.1:2000"),
            (
                true,
                format!("HOME={}\n{args}", want_home.display()),
                String::new()
            ),
            "{what}: the helper runs ~/.cargo/bin/poolfs with that HOME"
        );
    }

    // The real poolfs from ~/.cargo/bin, the pool key only at the user's default path:
    // the mount gets past its key and stops at the controller (none listens there).
    fs::remove_file(&fake).unwrap();
    std::os::unix::fs::symlink(harness::mount::BIN, &fake).unwrap();
    let key_dir = home.join(".local/share/poolfs");
    fs::create_dir_all(&key_dir).unwrap();
    fs::copy(harness::mount::test_key(), key_dir.join("pool.key")).unwrap();
    fs::create_dir(&mnt).unwrap();
    let _guard = harness::mount::MountGuard {
        mnt: mnt.clone(),
        root: root.clone(),
    };
    let nobody = format!("127.0.0.1:{}", harness::mount::free_port());
    let (ok, _, err) = run_helper(&[], &nobody);
    assert!(
        !ok && err.contains(&format!("no reachable controller at {nobody}")),
        "the mount did not use the key at {}: {err}",
        key_dir.join("pool.key").display()
    );
    assert!(!is_mounted(&mnt));

    // poolfs nowhere: the reason (mount's minimal PATH) and the fixes.
    fs::remove_file(&fake).unwrap();
    let (ok, _, err) = run_helper(&[], "10.0.0.1:2000");
    assert!(!ok, "ran without a poolfs");
    for want in [
        "poolfs binary not found",
        "minimal PATH",
        "install -m 755 \"$(command -v poolfs)\" /usr/local/bin/",
        "POOLFS_BIN",
    ] {
        assert!(err.contains(want), "says {want:?}: {err}");
    }
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
