//! Extended attributes: the pool's own stay out of listings and copies; names and sizes
//! follow local filesystems.

use super::*;

/// Issue 12, item 5 (/work/shared/cases/23-internal-xattr-rsync-X-cp-a.sh). listxattr
/// lists no `user.poolfs.*` name (they stay readable by name); rsync -aX into the mount
/// exits 0; copies out with cp -a, rsync -aX and shutil.copy2 carry no pool attribute; a
/// user attribute is listed, read, copied out, kept across a remount and removable.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn pool_attributes_stay_out_of_listings_and_copies() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("xattr", 2);
    let f = pool.path("f");
    fs::write(&f, b"hello\n").unwrap();
    for p in [&f, &pool.mnt] {
        let names = list_xattrs(p).unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()));
        assert!(
            pool_attrs(&names).is_empty(),
            "listxattr of {} lists the pool's own attributes: {names:?}",
            p.display()
        );
    }
    let out = run(Command::new("getfattr")
        .args(["-n", "user.poolfs.health"])
        .arg(&f));
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("user.poolfs.health="),
        "getfattr -n user.poolfs.health: {} {}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );

    // rsync -aX of plain files and one with a user attribute into the mount.
    let scratch = pool.scratch();
    let src = scratch.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("plain"), b"plain\n").unwrap();
    fs::write(src.join("big"), Rng::new(23).bytes(100_000)).unwrap();
    fs::write(src.join("tagged"), b"tagged\n").unwrap();
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.x", "-v", "y"])
            .arg(src.join("tagged")),
    );
    let d = pool.path("d");
    let out = run(Command::new("rsync")
        .arg("-aX")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", d.display())));
    assert!(
        out.status.success(),
        "rsync -aX into the mount exited {}: {}",
        out.status,
        stderr_of(&out)
    );
    assert_same_file(&src.join("big"), &d.join("big"));
    assert_eq!(
        get_xattr(&d.join("tagged"), "user.x").expect("user.x copied in by rsync -aX"),
        b"y"
    );

    // Copies out of the mount carry no pool attribute.
    let out1 = scratch.join("out1");
    let out2 = scratch.join("out2");
    let out3 = scratch.join("out3");
    fs::create_dir(&out1).unwrap();
    fs::create_dir(&out3).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(d.join("plain"))
            .arg(d.join("big"))
            .arg(&out1),
    );
    let out = run(Command::new("rsync")
        .arg("-aX")
        .arg(format!("{}/", d.display()))
        .arg(format!("{}/", out2.display())));
    assert!(
        out.status.success(),
        "rsync -aX out of the mount exited {}: {}",
        out.status,
        stderr_of(&out)
    );
    run_ok(
        Command::new(python())
            .arg("-c")
            .arg("import shutil, sys; shutil.copy2(sys.argv[1], sys.argv[2])")
            .arg(d.join("plain"))
            .arg(out3.join("plain")),
    );
    for c in [
        out1.join("plain"),
        out1.join("big"),
        out2.join("plain"),
        out2.join("big"),
        out2.join("tagged"),
        out3.join("plain"),
    ] {
        let names = list_xattrs(&c).unwrap();
        assert!(
            pool_attrs(&names).is_empty(),
            "copy {} carries {names:?}",
            c.display()
        );
    }
    assert_eq!(
        get_xattr(&out2.join("tagged"), "user.x").unwrap(),
        b"y",
        "rsync -aX out"
    );

    // A user attribute on the mount: set, listed, read, copied out by cp -a.
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.x", "-v", "y"])
            .arg(&f),
    );
    let names = list_xattrs(&f).unwrap();
    assert!(
        names.contains(&"user.x".to_string()),
        "user.x not listed: {names:?}"
    );
    assert!(pool_attrs(&names).is_empty(), "listed: {names:?}");
    let out = run_ok(
        Command::new("getfattr")
            .args(["--only-values", "-n", "user.x"])
            .arg(&f),
    );
    assert_eq!(out.stdout, b"y", "getfattr -n user.x");
    let out4 = scratch.join("out4");
    run_ok(Command::new("cp").arg("-a").arg(&f).arg(&out4));
    assert_eq!(
        get_xattr(&out4, "user.x").expect("user.x on the cp -a copy"),
        b"y"
    );
    assert_eq!(
        list_xattrs(&out4).unwrap(),
        vec!["user.x".to_string()],
        "attributes of the cp -a copy"
    );

    pool.unmount();
    pool.remount();
    assert_eq!(
        get_xattr(&f, "user.x").expect("user.x after a remount"),
        b"y"
    );
    assert_eq!(
        get_xattr(&d.join("tagged"), "user.x").expect("rsync'd user.x after a remount"),
        b"y"
    );
    assert!(
        pool_attrs(&list_xattrs(&f).unwrap()).is_empty(),
        "after a remount"
    );

    run_ok(Command::new("setfattr").args(["-x", "user.x"]).arg(&f));
    assert_errno(
        get_xattr(&f, "user.x"),
        libc::ENODATA,
        "getxattr after setfattr -x",
    );
    assert!(
        !list_xattrs(&f).unwrap().contains(&"user.x".to_string()),
        "listed after setfattr -x"
    );
}

/// The attribute rules of local filesystems at their edges: `trusted.*` names are
/// listed to root only, a user's own `user.poolfs.*` attribute is an ordinary one (only
/// the pool's three names are reserved), and a value of the kernel's largest size fits.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn attribute_names_and_sizes_follow_local_filesystems() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with("xattr-edges", 2, &["--allow-other"]);
    open_to_others(&pool);
    let f = pool.path("f");
    fs::write(&f, b"x").unwrap();
    let set = |name: &str, value: &[u8]| {
        let c = CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated strings and a value buffer of its length.
        cvt(unsafe {
            libc::setxattr(
                cstr(&f).as_ptr(),
                c.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    };
    set("trusted.t", b"1").expect("trusted.t as root");
    set("user.u", b"2").expect("user.u");
    set("user.poolfs.note", b"mine").expect("a user's own user.poolfs.* attribute");
    let big = vec![7u8; 65536];
    set("user.big", &big).expect("a 64 KiB value");
    assert_eq!(get_xattr(&f, "user.big").unwrap(), big);
    assert_eq!(get_xattr(&f, "user.poolfs.note").unwrap(), b"mine");
    let as_root = list_xattrs(&f).unwrap();
    assert!(
        as_root.contains(&"trusted.t".to_string()),
        "root lists {as_root:?}"
    );
    let listed = user_ok(
        &ALICE,
        "print('\\n'.join(sorted(os.listxattr(sys.argv[1]))))",
        &[&f],
        "listxattr",
    );
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(
        listed,
        vec!["user.big", "user.poolfs.note", "user.u"],
        "what another user lists"
    );
    assert_errno(
        set("user.poolfs.health", b"x"),
        libc::EPERM,
        "setting the pool's own attribute",
    );
}
