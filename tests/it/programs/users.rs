//! Other users on the mount: access by mode bits with `--allow-other`, `up` through
//! sudo, and setgid directories.

use super::*;

/// Issue 12, item 1. Without `--allow-other` another uid is refused (EACCES); with it,
/// access follows the mode bits, owner, group and supplementary groups, sticky
/// directories protect other users' entries, and a write or truncate by a non-owner
/// clears setuid and setgid. (Needs `poolfs up --allow-other`.)
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn other_users_get_access_by_mode_bits_with_allow_other() {
    if !can_mount() {
        return;
    }
    {
        let pool = Pool::up("noallow", 2);
        open_to_others(&pool);
        fs::write(pool.path("f"), b"root's\n").unwrap();
        let mnt = pool.mnt.as_path();
        user_fails(
            &ALICE,
            LIST,
            &[mnt],
            libc::EACCES,
            "ls of the root without --allow-other",
        );
        user_fails(
            &ALICE,
            STAT,
            &[&pool.path("f")],
            libc::EACCES,
            "stat without --allow-other",
        );
    }

    let pool = Pool::up_with("allow", 2, &["--allow-other"]);
    open_to_others(&pool);
    let p = |n: &str| pool.path(n);
    fs::write(p("hello"), b"hello from root\n").unwrap();
    let mnt = pool.mnt.as_path();

    // ls of the root, and reading a 0644 file of root's.
    let out = run(as_user(&ALICE).arg("ls").arg("-la").arg(mnt));
    assert!(
        out.status.success(),
        "ls -la of the root as uid 1000: {}",
        stderr_of(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello"),
        "ls as uid 1000 does not list the root's file: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        user_ok(&ALICE, READ, &[&p("hello")], "read a 0644 file"),
        "hello from root\n"
    );

    // A 0777 directory: create, mkdir and rename work, and the new entries are hers.
    mkdir_owned(&p("pub"), 0, 0, 0o777);
    user_ok(
        &ALICE,
        CREATE,
        &[&p("pub/a")],
        "open(O_CREAT) in a 0777 dir",
    );
    user_ok(&ALICE, MKDIR, &[&p("pub/d")], "mkdir in a 0777 dir");
    for n in ["pub/a", "pub/d"] {
        let m = lstat(&p(n));
        assert_eq!(
            (m.uid(), m.gid()),
            (1000, 1000),
            "owner of {n} made by uid 1000"
        );
    }
    user_ok(
        &ALICE,
        RENAME,
        &[&p("pub/a"), &p("pub/b")],
        "rename in a 0777 dir",
    );
    assert!(
        p("pub/b").exists() && !p("pub/a").exists(),
        "rename by uid 1000"
    );

    // A 0755 directory of root's refuses her, and so does root's 0644 file.
    mkdir_owned(&p("ro"), 0, 0, 0o755);
    user_fails(
        &ALICE,
        CREATE,
        &[&p("ro/x")],
        libc::EACCES,
        "create in root's 0755 dir",
    );
    user_fails(
        &ALICE,
        MKDIR,
        &[&p("ro/y")],
        libc::EACCES,
        "mkdir in root's 0755 dir",
    );
    user_fails(
        &ALICE,
        WRITE_BYTE,
        &[&p("hello")],
        libc::EACCES,
        "write to root's 0644 file",
    );
    assert!(!p("ro/x").exists() && !p("ro/y").exists());

    // A group-writable 0770 dir of group G: writable through a supplementary group only.
    mkdir_owned(&p("grp"), 0, G, 0o770);
    user_ok(
        &ALICE_IN_G,
        CREATE,
        &[&p("grp/m")],
        "create in a 0770 dir of a supplementary group",
    );
    user_fails(
        &BOB,
        CREATE,
        &[&p("grp/n")],
        libc::EACCES,
        "create in a 0770 dir of a group not held",
    );
    user_fails(
        &ALICE,
        LIST,
        &[&p("grp")],
        libc::EACCES,
        "ls of a 0770 dir without the group",
    );

    // A sticky 1777 dir: others' entries cannot be removed or renamed, one's own can.
    mkdir_owned(&p("tmp"), 0, 0, 0o1777);
    user_ok(&ALICE, CREATE, &[&p("tmp/alice")], "create in a sticky dir");
    user_ok(&BOB, CREATE, &[&p("tmp/bob")], "create in a sticky dir");
    user_fails(
        &BOB,
        UNLINK,
        &[&p("tmp/alice")],
        libc::EPERM,
        "unlink of another's file in a sticky dir",
    );
    user_fails(
        &BOB,
        RENAME,
        &[&p("tmp/alice"), &p("tmp/stolen")],
        libc::EPERM,
        "rename of another's file in a sticky dir",
    );
    assert!(
        p("tmp/alice").exists(),
        "the sticky dir lost uid 1000's file"
    );
    user_ok(
        &BOB,
        RENAME,
        &[&p("tmp/bob"), &p("tmp/bob2")],
        "rename of one's own file in a sticky dir",
    );
    user_ok(
        &BOB,
        UNLINK,
        &[&p("tmp/bob2")],
        "unlink of one's own file in a sticky dir",
    );
    assert!(!p("tmp/bob2").exists());

    // A write and a truncate by a non-owner with write permission clear setuid/setgid.
    for (name, op) in [("pub/suid-w", WRITE_BYTE), ("pub/suid-t", TRUNCATE)] {
        fs::write(p(name), b"0123456789").unwrap();
        fs::set_permissions(p(name), fs::Permissions::from_mode(0o6777)).unwrap();
        assert_eq!(perm(&p(name)), 0o6777, "{name} set up as 06777");
        user_ok(&ALICE, op, &[&p(name)], &format!("{name} by a non-owner"));
        assert_eq!(
            perm(&p(name)),
            0o777,
            "{name}: mode {:o} after a non-owner's write/truncate (setuid and setgid must go)",
            perm(&p(name))
        );
    }
    assert_eq!(fs::read(p("pub/suid-w")).unwrap(), b"x123456789");
    assert_eq!(lstat(&p("pub/suid-t")).len(), 0);

    // Set-group-ID without group-execute (Linux 6.x): a writer outside the file's group
    // clears it, a member keeps it.
    for (who, inside) in [(&ALICE, false), (&ALICE_IN_G, true)] {
        for (op_name, op) in [("write", WRITE_BYTE), ("truncate", TRUNCATE)] {
            let f = p(&format!("pub/sgid-{op_name}-{inside}"));
            fs::write(&f, b"0123456789").unwrap();
            std::os::unix::fs::chown(&f, None, Some(G)).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o2666)).unwrap();
            user_ok(who, op, &[&f], &format!("{op_name} of a 02666 file"));
            let want = if inside { 0o2666 } else { 0o666 };
            assert_eq!(
                perm(&f),
                want,
                "02666 file of group {G} after a {op_name} by uid {} (in the group: {inside})",
                who.uid
            );
        }
    }
}

/// `sudo poolfs up ~/pool` is for the user who ran sudo: the mount admits other users
/// and the pool's root directory is theirs, so they can copy files in without sudo.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn up_through_sudo_gives_the_pool_to_the_user_who_ran_it() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with_env(
        "sudo",
        2,
        &[],
        &[("SUDO_UID", "1000"), ("SUDO_GID", "1000")],
    );
    open_to_others(&pool);
    let root = lstat(&pool.mnt);
    assert_eq!(
        (root.uid(), root.gid()),
        (1000, 1000),
        "owner of the pool's root"
    );
    let f = pool.path("mine");
    user_ok(&ALICE, CREATE, &[&f], "create in the pool's root");
    user_ok(
        &ALICE,
        MKDIR,
        &[&pool.path("dir")],
        "mkdir in the pool's root",
    );
    assert_eq!(lstat(&f).uid(), 1000, "owner of the file alice made");
    user_fails(
        &BOB,
        CREATE,
        &[&pool.path("bob")],
        libc::EACCES,
        "create in alice's pool",
    );
}

// ---------------------------------------------------------------------------------
// Setgid directories
// ---------------------------------------------------------------------------------

/// Issue 12, item 3, as root (/work/shared/cases/13-setgid-dir.sh). In a directory of
/// group G with mode 2775, a file, a subdirectory, a symlink and a fifo get group G, and
/// subdirectories keep the setgid bit, recursively.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn new_entries_in_a_setgid_directory_take_its_group() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("setgid", 2);
    let d = pool.path("shared");
    mkdir_owned(&d, 0, G, 0o2775);
    assert_eq!(
        (lstat(&d).gid(), perm(&d)),
        (G, 0o2775),
        "the setgid dir itself"
    );
    let um = umask();

    File::create(d.join("file")).unwrap();
    fs::write(d.join("written"), b"hi\n").unwrap();
    fs::DirBuilder::new()
        .mode(0o775)
        .create(d.join("sub"))
        .unwrap();
    fs::DirBuilder::new()
        .mode(0o775)
        .create(d.join("sub/deeper"))
        .unwrap();
    File::create(d.join("sub/deeper/file")).unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    for n in [
        "file",
        "written",
        "link",
        "sub",
        "sub/deeper",
        "sub/deeper/file",
    ] {
        let g = lstat(&d.join(n)).gid();
        assert_eq!(
            g, G,
            "{n} made by root (gid 0) in a setgid dir of group {G} has gid {g}"
        );
    }
    for n in ["sub", "sub/deeper"] {
        assert_eq!(
            perm(&d.join(n)),
            0o2000 | (0o775 & !um),
            "mode of {n}: a subdirectory of a setgid dir inherits the bit"
        );
    }
    assert_eq!(
        perm(&d.join("file")),
        0o666 & !um,
        "a file does not take the bit"
    );
    mkfifo(&d.join("fifo"), 0o644).expect("mkfifo in a setgid dir");
    assert_eq!(
        lstat(&d.join("fifo")).gid(),
        G,
        "gid of a fifo made in a setgid dir"
    );
}

/// Issue 12, item 3, as other users (needs `poolfs up --allow-other`). A member of G
/// (through a supplementary group) creates entries of group G in a 2775 dir; a user not
/// in G who creates a file with mode 02755 in a 2777 dir of group G gets group G but
/// not the setgid bit.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn setgid_directories_work_for_other_users_with_allow_other() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with("setgid-users", 2, &["--allow-other"]);
    open_to_others(&pool);
    let d = pool.path("shared");
    mkdir_owned(&d, 0, G, 0o2775);
    let j = |n: &str| d.join(n);
    user_ok(&ALICE_IN_G, CREATE, &[&j("file")], "create in a setgid dir");
    user_ok(
        &ALICE_IN_G,
        "os.umask(0o002)\nos.mkdir(sys.argv[1], 0o775)\nos.mkdir(sys.argv[2], 0o775)",
        &[&j("sub"), &j("sub/deeper")],
        "mkdir in a setgid dir",
    );
    user_ok(
        &ALICE_IN_G,
        "os.symlink('file', sys.argv[1])",
        &[&j("link")],
        "symlink in a setgid dir",
    );
    user_ok(
        &ALICE_IN_G,
        "os.mkfifo(sys.argv[1], 0o644)",
        &[&j("fifo")],
        "mkfifo in a setgid dir",
    );
    for n in ["file", "sub", "sub/deeper", "link", "fifo"] {
        let m = lstat(&j(n));
        assert_eq!(
            (m.uid(), m.gid()),
            (1000, G),
            "owner and group of {n} made by uid 1000"
        );
    }
    for n in ["sub", "sub/deeper"] {
        assert_eq!(
            perm(&j(n)),
            0o2775,
            "mode of {n} made by uid 1000 with umask 002"
        );
    }

    let open = pool.path("open");
    mkdir_owned(&open, 0, G, 0o2777);
    user_ok(
        &BOB,
        "os.umask(0o022)\nos.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o2755))",
        &[&open.join("bob")],
        "create with mode 02755 by a non-member",
    );
    let m = lstat(&open.join("bob"));
    assert_eq!(
        m.gid(),
        G,
        "a non-member's file in a setgid dir still takes its group"
    );
    assert_eq!(
        m.mode() & 0o7777,
        0o755,
        "a non-member's file created 02755 in a setgid dir of another group keeps setgid"
    );
}
