//! Special files: FIFOs, sockets and device nodes are created, listed and kept.

use super::*;

/// What a special file must look like: type bits, permission bits, rdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Special {
    kind: u32,
    perm: u32,
    rdev: u64,
}

fn special_of(p: &Path) -> Special {
    let m = lstat(p);
    Special {
        kind: m.mode() & libc::S_IFMT,
        perm: m.mode() & 0o7777,
        rdev: m.rdev(),
    }
}

fn d_type_of(kind: u32) -> u8 {
    match kind {
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        _ => libc::DT_REG,
    }
}

/// Makes a fifo, a socket and a char device (and a file) in `dir` (any filesystem).
fn make_special_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/file"), b"a regular file\n").unwrap();
    mkfifo(&dir.join("fifo"), 0o640).unwrap();
    mknod(&dir.join("null"), libc::S_IFCHR, 0o620, libc::makedev(1, 3)).unwrap();
    drop(UnixListener::bind(dir.join("sock")).unwrap());
}

/// Issue 12, item 2. mkfifo, mknod p/c/b and bind() of a unix socket create entries with
/// the right type, mode and rdev, listed with the right d_type, kept across a remount; a
/// FIFO carries bytes between processes; tar and cp -a of a tree holding them succeed and
/// reproduce them; the char device cannot be opened on the (nodev) mount.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn fifos_sockets_and_device_nodes_are_created_listed_and_kept() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("special", 2);
    let dir = pool.path("sp");
    fs::create_dir(&dir).unwrap();
    let um = umask();
    let want = [
        (
            "fifo",
            Special {
                kind: libc::S_IFIFO,
                perm: 0o640 & !um,
                rdev: 0,
            },
        ),
        (
            "pipe",
            Special {
                kind: libc::S_IFIFO,
                perm: 0o600 & !um,
                rdev: 0,
            },
        ),
        (
            "null",
            Special {
                kind: libc::S_IFCHR,
                perm: 0o644 & !um,
                rdev: libc::makedev(1, 3),
            },
        ),
        (
            "loop",
            Special {
                kind: libc::S_IFBLK,
                perm: 0o660 & !um,
                rdev: libc::makedev(7, 0),
            },
        ),
        (
            "sock",
            Special {
                kind: libc::S_IFSOCK,
                perm: 0o777 & !um,
                rdev: 0,
            },
        ),
    ];
    mkfifo(&dir.join("fifo"), 0o640).expect("mkfifo on the mount");
    mknod(&dir.join("pipe"), libc::S_IFIFO, 0o600, 0).expect("mknod p on the mount");
    mknod(&dir.join("null"), libc::S_IFCHR, 0o644, libc::makedev(1, 3)).expect("mknod c 1 3");
    mknod(&dir.join("loop"), libc::S_IFBLK, 0o660, libc::makedev(7, 0)).expect("mknod b 7 0");
    let listener = UnixListener::bind(dir.join("sock")).expect("bind() of a unix socket path");
    drop(listener);
    let check = |when: &str| {
        for (name, w) in &want {
            let got = special_of(&dir.join(name));
            assert_eq!(
                got,
                *w,
                "{name} {when}: type {:o} mode {:o} rdev {}:{}, want type {:o} mode {:o} rdev {}:{}",
                got.kind,
                got.perm,
                libc::major(got.rdev),
                libc::minor(got.rdev),
                w.kind,
                w.perm,
                libc::major(w.rdev),
                libc::minor(w.rdev)
            );
        }
        let mut types: Vec<(String, u8)> = want
            .iter()
            .map(|(n, w)| (n.to_string(), d_type_of(w.kind)))
            .collect();
        types.sort();
        assert_eq!(d_types(&dir), types, "readdir d_type {when}");
    };
    check("when made");

    // A FIFO carries bytes from one process to another.
    let msg = "bytes through a fifo on the pool";
    let writer = ChildGuard(Some(
        Command::new("sh")
            .arg("-c")
            .arg("printf %s \"$1\" > \"$2\"")
            .arg("sh")
            .arg(msg)
            .arg(dir.join("fifo"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a writer"),
    ));
    let got = fs::read(dir.join("fifo")).expect("read the fifo");
    let out = writer.wait();
    assert!(
        out.status.success(),
        "writer into the fifo: {}",
        stderr_of(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        msg,
        "bytes read from the fifo"
    );
    // The FIFO holds no bytes in the pool.
    assert_eq!(lstat(&dir.join("fifo")).len(), 0, "size of the fifo");

    // The mount is nodev: a device node on it cannot be opened.
    let line = mount_line(&pool.mnt);
    assert!(
        line.contains("nodev"),
        "mount options without nodev: {line}"
    );
    assert_errno(
        File::open(dir.join("null")),
        libc::EACCES,
        "open of a char device on the nodev mount",
    );

    // tar and cp -a of a tree holding a fifo, a socket and a char device.
    let scratch = pool.scratch();
    let tree = scratch.join("tree");
    make_special_tree(&tree);
    let tar = scratch.join("tree.tar");
    run_ok(
        Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&scratch)
            .arg("tree"),
    );
    fs::create_dir(pool.path("untar")).unwrap();
    let out = run(Command::new("tar")
        .arg("xpf")
        .arg(&tar)
        .arg("-C")
        .arg(pool.path("untar")));
    assert!(
        out.status.success(),
        "tar xf into the mount: {}",
        stderr_of(&out)
    );
    // tar does not archive sockets ("socket ignored"): it reproduces the rest.
    for name in ["fifo", "null", "sub/file"] {
        assert_eq!(
            special_of(&pool.path("untar/tree").join(name)),
            special_of(&tree.join(name)),
            "{name} extracted by tar"
        );
    }
    assert_eq!(
        fs::read(pool.path("untar/tree/sub/file")).unwrap(),
        b"a regular file\n"
    );
    let out = run(Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(pool.path("cpa")));
    assert!(
        out.status.success(),
        "cp -a into the mount: {}",
        stderr_of(&out)
    );
    for name in ["fifo", "null", "sock", "sub/file"] {
        assert_eq!(
            special_of(&pool.path("cpa").join(name)),
            special_of(&tree.join(name)),
            "{name} copied by cp -a"
        );
    }

    pool.unmount();
    pool.remount();
    check("after a remount");
    assert_eq!(
        special_of(&pool.path("cpa/null")),
        special_of(&tree.join("null")),
        "cp -a'd char device after a remount"
    );
}
