//! The namespace and its errno: directories, renames, links, attributes, statfs, and
//! the error each failing call returns.

use super::*;

/// mkdir/rmdir/readdir nested, rename (over a file, across directories, directories),
/// chmod/chown/utimes, symlink/readlink, hard links, statfs; kept across a remount.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn namespace_attributes_links_and_statfs() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("names", 2);
    let m = pool.mnt.clone();

    // Nested directories and readdir.
    fs::create_dir_all(m.join("a/b/c")).unwrap();
    fs::write(m.join("a/x"), b"x-content").unwrap();
    fs::write(m.join("a/y"), b"y-content, longer").unwrap();
    fs::write(m.join("a/b/c/deep"), b"deep").unwrap();
    assert_eq!(names(&m), ["a"]);
    assert_eq!(names(&m.join("a")), ["b", "x", "y"]);
    assert_eq!(names(&m.join("a/b")), ["c"]);
    assert_eq!(names(&m.join("a/b/c")), ["deep"]);
    assert!(fs::metadata(m.join("a/b")).unwrap().is_dir());
    assert_eq!(
        fs::metadata(m.join("a")).unwrap().nlink(),
        3,
        "a: . .. and b"
    );

    // rename over an existing file: the target now has the source's bytes.
    fs::rename(m.join("a/x"), m.join("a/y")).unwrap();
    assert_eq!(names(&m.join("a")), ["b", "y"]);
    assert_eq!(fs::read(m.join("a/y")).unwrap(), b"x-content");
    // across directories.
    fs::rename(m.join("a/y"), m.join("a/b/c/z")).unwrap();
    assert_eq!(names(&m.join("a/b/c")), ["deep", "z"]);
    assert_eq!(fs::read(m.join("a/b/c/z")).unwrap(), b"x-content");
    // a directory, with its contents, to another parent.
    fs::rename(m.join("a/b"), m.join("b2")).unwrap();
    assert_eq!(names(&m), ["a", "b2"]);
    assert_eq!(fs::read(m.join("b2/c/deep")).unwrap(), b"deep");
    // a directory over an empty directory replaces it; over a non-empty one: ENOTEMPTY.
    fs::create_dir(m.join("empty")).unwrap();
    fs::create_dir(m.join("moving")).unwrap();
    fs::rename(m.join("moving"), m.join("empty")).unwrap();
    assert_eq!(names(&m), ["a", "b2", "empty"]);
    assert_errno(
        fs::rename(m.join("empty"), m.join("b2")),
        libc::ENOTEMPTY,
        "rename dir over non-empty dir",
    );

    // rmdir: nested removal once emptied.
    assert_errno(
        fs::remove_dir(m.join("b2")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    fs::remove_file(m.join("b2/c/deep")).unwrap();
    fs::remove_file(m.join("b2/c/z")).unwrap();
    fs::remove_dir(m.join("b2/c")).unwrap();
    fs::remove_dir(m.join("b2")).unwrap();
    fs::remove_dir(m.join("empty")).unwrap();
    assert_eq!(names(&m), ["a"]);
    assert_eq!(names(&m.join("a")), Vec::<String>::new());

    // chmod, chown, utimes: getattr shows them.
    let f = m.join("a/attrs");
    fs::write(&f, b"attributes").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    fs::set_permissions(m.join("a"), fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(fs::metadata(m.join("a")).unwrap().mode() & 0o7777, 0o711);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&f).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    let atime = SystemTime::UNIX_EPOCH + Duration::new(1_000_000_000, 123_000);
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_200_000_000, 456_000);
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
        .unwrap();
    close_checked(h).unwrap();
    let meta = fs::metadata(&f).unwrap();
    assert_eq!(meta.modified().unwrap(), mtime, "mtime after utimes");
    assert_eq!(meta.accessed().unwrap(), atime, "atime after utimes");
    assert_eq!(
        fs::read(&f).unwrap(),
        b"attributes",
        "data unchanged by setattr"
    );

    // symlink + readlink.
    std::os::unix::fs::symlink("attrs", m.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", m.join("a/dangling")).unwrap();
    assert_eq!(fs::read_link(m.join("a/link")).unwrap(), Path::new("attrs"));
    assert!(fs::symlink_metadata(m.join("a/link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(m.join("a/link")).unwrap(), b"attributes");
    assert_eq!(
        fs::read_link(m.join("a/dangling")).unwrap(),
        Path::new("/nowhere/at/all")
    );
    assert_errno(fs::metadata(m.join("a/dangling")), libc::ENOENT, "dangling");

    // hard link: one inode, two names.
    fs::write(m.join("a/orig"), b"shared bytes").unwrap();
    fs::hard_link(m.join("a/orig"), m.join("a/hard")).unwrap();
    let (mo, mh) = (
        fs::metadata(m.join("a/orig")).unwrap(),
        fs::metadata(m.join("a/hard")).unwrap(),
    );
    assert_eq!(mo.ino(), mh.ino());
    assert_eq!(mh.nlink(), 2);
    let h = OpenOptions::new()
        .write(true)
        .open(m.join("a/hard"))
        .unwrap();
    h.write_all_at(b"SHARED", 0).unwrap();
    close_checked(h).unwrap();
    assert_eq!(read_uncached(&m.join("a/orig")), b"SHARED bytes");
    fs::remove_file(m.join("a/orig")).unwrap();
    assert_eq!(fs::metadata(m.join("a/hard")).unwrap().nlink(), 1);
    assert_eq!(read_uncached(&m.join("a/hard")), b"SHARED bytes");

    // statfs, as df does it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and an out-parameter of the right type.
    assert_eq!(unsafe { libc::statvfs(cstr(&m).as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0, "statfs reports no capacity");
    assert!(st.f_bsize > 0 && st.f_frsize > 0);
    assert!(st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_blocks);
    assert_eq!(st.f_namemax, 255);
    let df = run_ok(Command::new("df").arg("-P").arg(&m));
    let df = String::from_utf8_lossy(&df.stdout);
    assert!(
        df.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&format!("{} ", pool.controller))),
        "df shows the pool by its controller's address ({}): {df}",
        pool.controller
    );
    // Stored bytes show as used (nodes report usage with their heartbeats).
    let used = |st: &libc::statvfs| (st.f_blocks - st.f_bfree) * st.f_frsize;
    let used_before = used(&st);
    fs::write(m.join("a/weight"), Rng::new(3).bytes(4 * MIB)).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            // SAFETY: as above.
            unsafe { libc::statvfs(cstr(&m).as_ptr(), &mut st) };
            used(&st) >= used_before + 4 * MIB as u64
        }),
        "statfs used went from {used_before} to {} after storing 4 MiB",
        used(&st)
    );
    fs::remove_file(m.join("a/weight")).unwrap();
    // `df -i`: each file is an inode in use, and plenty stay free.
    let inodes_used = |st: &libc::statvfs| st.f_files - st.f_ffree;
    // SAFETY: as above.
    unsafe { libc::statvfs(cstr(&m).as_ptr(), &mut st) };
    let before = inodes_used(&st);
    assert!(before >= 5, "df -i shows {before} inodes used");
    assert!(st.f_ffree > 1 << 30);
    fs::write(m.join("a/one-more"), b"x").unwrap();
    // SAFETY: as above.
    unsafe { libc::statvfs(cstr(&m).as_ptr(), &mut st) };
    assert_eq!(inodes_used(&st), before + 1, "one file created");
    fs::remove_file(m.join("a/one-more")).unwrap();

    // Everything above survives a remount.
    pool.unmount();
    pool.remount();
    let meta = fs::metadata(&f).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    assert_eq!(meta.modified().unwrap(), mtime);
    assert_eq!(fs::read(&f).unwrap(), b"attributes");
    assert_eq!(fs::read_link(m.join("a/link")).unwrap(), Path::new("attrs"));
    assert_eq!(fs::read(m.join("a/hard")).unwrap(), b"SHARED bytes");
    assert_eq!(names(&m.join("a")), ["attrs", "dangling", "hard", "link"]);
}

/// The errno of each failure case a program relies on.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn failures_report_the_right_errno() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("errno", 2);
    let m = pool.mnt.clone();
    fs::create_dir_all(m.join("dir/sub")).unwrap();
    fs::write(m.join("dir/sub/f"), b"f").unwrap();
    fs::write(m.join("file"), b"plain").unwrap();
    fs::create_dir(m.join("emptydir")).unwrap();

    // ENOENT
    assert_errno(File::open(m.join("missing")), libc::ENOENT, "open missing");
    assert_errno(
        fs::metadata(m.join("missing")),
        libc::ENOENT,
        "stat missing",
    );
    assert_errno(
        fs::remove_file(m.join("missing")),
        libc::ENOENT,
        "unlink missing",
    );
    assert_errno(
        fs::remove_dir(m.join("missing")),
        libc::ENOENT,
        "rmdir missing",
    );
    assert_errno(
        fs::rename(m.join("missing"), m.join("other")),
        libc::ENOENT,
        "rename missing",
    );
    assert_errno(
        File::create(m.join("nodir/f")),
        libc::ENOENT,
        "create in a missing directory",
    );
    assert_errno(
        fs::read_link(m.join("missing")),
        libc::ENOENT,
        "readlink missing",
    );

    // EEXIST
    assert_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("file")),
        libc::EEXIST,
        "O_EXCL existing",
    );
    assert_errno(
        fs::create_dir(m.join("dir")),
        libc::EEXIST,
        "mkdir existing",
    );
    assert_errno(
        fs::create_dir(m.join("file")),
        libc::EEXIST,
        "mkdir over a file",
    );
    assert_errno(
        fs::hard_link(m.join("file"), m.join("dir/sub/f")),
        libc::EEXIST,
        "link to an existing name",
    );
    assert_errno(
        std::os::unix::fs::symlink("x", m.join("file")),
        libc::EEXIST,
        "symlink at an existing name",
    );

    // ENOTEMPTY
    assert_errno(
        fs::remove_dir(m.join("dir")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    assert_errno(
        fs::rename(m.join("emptydir"), m.join("dir")),
        libc::ENOTEMPTY,
        "rename dir over non-empty dir",
    );

    // EISDIR
    assert_errno(
        OpenOptions::new().write(true).open(m.join("dir")),
        libc::EISDIR,
        "open a directory for writing",
    );
    assert_errno(
        fs::remove_file(m.join("dir")),
        libc::EISDIR,
        "unlink a directory",
    );
    assert_errno(
        fs::rename(m.join("file"), m.join("emptydir")),
        libc::EISDIR,
        "rename a file over a directory",
    );

    // ENOTDIR
    assert_errno(
        fs::metadata(m.join("file/x")),
        libc::ENOTDIR,
        "file as a directory",
    );
    assert_errno(
        File::create(m.join("file/x")),
        libc::ENOTDIR,
        "create under a file",
    );
    assert_errno(
        fs::read_dir(m.join("file")),
        libc::ENOTDIR,
        "readdir of a file",
    );
    assert_errno(
        fs::remove_dir(m.join("file")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    assert_errno(
        fs::rename(m.join("emptydir"), m.join("file")),
        libc::ENOTDIR,
        "rename a directory over a file",
    );

    // ENAMETOOLONG: 255 bytes is the limit.
    let ok = "n".repeat(255);
    fs::write(m.join(&ok), b"long name").unwrap();
    assert_eq!(fs::read(m.join(&ok)).unwrap(), b"long name");
    let long = "n".repeat(256);
    assert_errno(
        File::create(m.join(&long)),
        libc::ENAMETOOLONG,
        "create 256-byte name",
    );
    assert_errno(
        fs::create_dir(m.join(&long)),
        libc::ENAMETOOLONG,
        "mkdir 256-byte name",
    );
    assert_errno(
        fs::metadata(m.join(&long)),
        libc::ENAMETOOLONG,
        "stat 256-byte name",
    );
    assert_errno(
        fs::rename(m.join("file"), m.join(&long)),
        libc::ENAMETOOLONG,
        "rename to a 256-byte name",
    );

    // EINVAL: a directory into its own subdirectory.
    assert_errno(
        fs::rename(m.join("dir"), m.join("dir/sub/inner")),
        libc::EINVAL,
        "rename a directory into itself",
    );

    // Nothing above changed what is there.
    assert_eq!(fs::read(m.join("file")).unwrap(), b"plain");
    assert_eq!(fs::read(m.join("dir/sub/f")).unwrap(), b"f");
}
