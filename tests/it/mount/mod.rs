//! Real kernel mounts of poolfs (issue 3): cp/cat/dd round trips, POSIX operations and their errno, a randomized model test, persistence, spreading, up/down, mount -t poolfs, mount errors and failing closes.

#[path = "common/mount.rs"]
mod harness;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use harness::{
    assert_same_file, can_mount, drop_cache, health, is_mounted, member_states, mmap_write, poolfs,
    procs_under, random_file, run, run_ok, segment_usage, wait_until, Pool, Rng, MIB,
};

/// The errno of a failed call; panics (naming `what`) if it succeeded.
fn errno_of<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    let got = errno_of(r, what);
    assert_eq!(
        got,
        want,
        "{what}: errno {got} ({}) instead of {want} ({})",
        io::Error::from_raw_os_error(got),
        io::Error::from_raw_os_error(want)
    );
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// truncate(2) by path.
fn truncate_path(p: &Path, len: u64) -> io::Result<()> {
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::truncate(cstr(p).as_ptr(), len as libc::off_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// close(2) with its result, which `File`'s drop throws away.
fn close_checked(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: we own fd (taken out of the File) and close it once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `len` bytes at `offset` (fewer at the end of the file) with pread.
fn pread(f: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// The whole content of a file, read through the kernel after dropping its cache so
/// the bytes come from the filesystem and not from pages kept by an earlier write.
fn read_uncached(p: &Path) -> Vec<u8> {
    drop_cache(p);
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn cp(src: &Path, dst: &Path) -> std::process::Output {
    run(Command::new("cp").arg(src).arg(dst))
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

fn total_segments(pool: &Pool) -> (u64, usize) {
    pool.storages()
        .iter()
        .map(|s| segment_usage(s))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// pread at random offsets of the mounted copy, compared with the source.
fn compare_random_reads(src: &Path, copy: &Path, rng: &mut Rng, count: usize) {
    let (a, b) = (File::open(src).unwrap(), File::open(copy).unwrap());
    let size = a.metadata().unwrap().len();
    for _ in 0..count {
        let off = rng.below(size + 1);
        let len = match rng.below(3) {
            0 => rng.range(1, 16) as usize,
            1 => rng.range(1, 64 * 1024) as usize,
            _ => rng.range(1, 3 * MIB as u64) as usize,
        };
        let want = pread(&a, off, len).unwrap();
        let got = pread(&b, off, len)
            .unwrap_or_else(|e| panic!("pread {} at {off}+{len}: {e}", copy.display()));
        assert!(
            want == got,
            "pread {}+{} of {} ({} bytes): {} bytes read, contents differ",
            off,
            len,
            copy.display(),
            size,
            got.len()
        );
    }
}

/// cp of files of 0 B, 1 B, sizes around the shard and stripe boundaries (stripe = 3
/// MiB in a 3-node pool), and 100 MiB, then cmp, cat, dd-style random reads; all again
/// after an unmount and remount.
#[test]
fn cp_cmp_cat_and_random_reads_survive_remount() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("cp", 3);
    let src_dir = pool.scratch();
    let stripe = 3 * MIB;
    let sizes = [
        0,
        1,
        2,
        4095,
        MIB - 1,
        MIB + 1,
        stripe - 1,
        stripe,
        stripe + 1,
        2 * stripe + 7,
        100 * MIB,
    ];
    let mut rng = Rng::new(0x5eed_cafe);
    let mut files = Vec::new();
    for &size in &sizes {
        let name = format!("f{size}");
        let src = src_dir.join(&name);
        random_file(&src, size);
        let dst = pool.path(&name);
        let started = Instant::now();
        let out = cp(&src, &dst);
        assert!(
            out.status.success(),
            "cp of {size} bytes failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if size >= 10 * MIB {
            eprintln!(
                "cp of {} MiB took {:.2}s",
                size / MIB,
                started.elapsed().as_secs_f64()
            );
        }
        assert_eq!(fs::metadata(&dst).unwrap().len(), size as u64, "{name}");
        drop_cache(&dst);
        assert_same_file(&src, &dst);
        files.push((src, dst));
    }
    // cat back a few, the way a user would.
    for size in [1, stripe + 1, 2 * stripe + 7] {
        let (src, dst) = &files[sizes.iter().position(|&s| s == size).unwrap()];
        drop_cache(dst);
        let out = run_ok(Command::new("cat").arg(dst));
        assert!(out.stdout == fs::read(src).unwrap(), "cat of {size} bytes");
    }
    for (src, dst) in &files {
        drop_cache(dst);
        compare_random_reads(src, dst, &mut rng, 12);
    }
    let mut listed = names(&pool.mnt);
    let mut want: Vec<String> = sizes.iter().map(|s| format!("f{s}")).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "ls of the mount");

    // Several cp at once (the filesystem serves requests on several threads).
    let parallel: Vec<(PathBuf, PathBuf)> = (0..6)
        .map(|i| {
            let src = src_dir.join(format!("par{i}"));
            random_file(&src, 2 * MIB + 1000 * i);
            (src, pool.path(&format!("par{i}")))
        })
        .collect();
    let children: Vec<_> = parallel
        .iter()
        .map(|(src, dst)| Command::new("cp").arg(src).arg(dst).spawn().unwrap())
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a parallel cp failed");
    }
    for (src, dst) in &parallel {
        drop_cache(dst);
        assert_same_file(src, dst);
    }
    files.extend(parallel);
    let listed = names(&pool.mnt);

    pool.unmount();
    pool.remount();
    assert_eq!(names(&pool.mnt), listed, "ls after remount");
    for (src, dst) in &files {
        assert_same_file(src, dst);
        compare_random_reads(src, dst, &mut rng, 6);
    }
}

/// create, O_EXCL, O_TRUNC, O_APPEND, overwrite in the middle, append, truncate and
/// ftruncate (grow and shrink), each checked against an in-memory model.
#[test]
fn open_flags_overwrite_append_and_truncate() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("flags", 2);
    let stripe = 2 * MIB; // 2 nodes x 1 MiB shards
    let p = pool.path("file");
    let mut rng = Rng::new(7);

    // create: an empty file appears.
    let f = File::create(&p).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    close_checked(f).unwrap();
    assert!(names(&pool.mnt).contains(&"file".to_string()));

    // O_EXCL on an existing name: EEXIST; on a new one: created.
    assert_errno(
        OpenOptions::new().write(true).create_new(true).open(&p),
        libc::EEXIST,
        "O_CREAT|O_EXCL on an existing file",
    );
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(pool.path("excl"))
        .unwrap();
    close_checked(f).unwrap();

    // A file of 2.5 stripes.
    let mut model = rng.bytes(stripe * 2 + stripe / 2 + 3);
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all(&model).unwrap();
    close_checked(f).unwrap();
    assert_eq!(read_uncached(&p), model, "after the first write");

    // Overwrite in the middle: across a stripe boundary, and inside a later stripe.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    for (off, len) in [(stripe - 100, 300), (stripe * 2 + 5, 10), (17, 1)] {
        let patch = rng.bytes(len);
        f.write_all_at(&patch, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&patch);
    }
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    close_checked(f).unwrap();
    assert_eq!(read_uncached(&p), model, "after overwrites in the middle");

    // O_APPEND: writes land at the end even after a seek to the start.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let tail = rng.bytes(1000);
    f.write_all(&tail).unwrap();
    model.extend_from_slice(&tail);
    let tail = rng.bytes(stripe); // crosses into a new stripe
    f.write_all(&tail).unwrap();
    model.extend_from_slice(&tail);
    close_checked(f).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), model.len() as u64);
    assert_eq!(read_uncached(&p), model, "after O_APPEND writes");

    // Append with a plain write at the end.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let tail = rng.bytes(777);
    f.write_all_at(&tail, model.len() as u64).unwrap();
    model.extend_from_slice(&tail);
    close_checked(f).unwrap();
    assert_eq!(read_uncached(&p), model, "after an append");

    // truncate(2) by path: shrink to an odd size inside a stripe, then grow (zeros).
    for new_len in [stripe + 12345, stripe * 3 + 1, 5, stripe - 1] {
        let old_len = model.len();
        truncate_path(&p, new_len as u64).unwrap();
        model.resize(new_len, 0);
        assert_eq!(fs::metadata(&p).unwrap().len(), new_len as u64);
        let got = read_uncached(&p);
        if new_len > old_len {
            assert!(
                got[old_len..].iter().all(|&b| b == 0),
                "the area grown by truncate {old_len} -> {new_len} is not zeros"
            );
        }
        assert_eq!(got, model, "after truncate to {new_len}");
    }
    // ftruncate on an open file, with writes around it; grown area reads as zeros.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    for new_len in [4 * stripe + 3, stripe / 2, 2 * stripe, 0, 100] {
        f.set_len(new_len as u64).unwrap();
        model.resize(new_len, 0);
        assert_eq!(f.metadata().unwrap().len(), new_len as u64);
        assert_eq!(
            pread(&f, 0, model.len() + 10).unwrap(),
            model,
            "ftruncate {new_len}"
        );
        let at = new_len / 3;
        let patch = rng.bytes(50);
        f.write_all_at(&patch, at as u64).unwrap();
        if model.len() < at + 50 {
            model.resize(at + 50, 0);
        }
        model[at..at + 50].copy_from_slice(&patch);
    }
    close_checked(f).unwrap();
    assert_eq!(read_uncached(&p), model, "after ftruncate rounds");

    // O_TRUNC empties the file; it can be written again.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0, "O_TRUNC");
    f.write_all(b"fresh").unwrap();
    close_checked(f).unwrap();
    assert_eq!(read_uncached(&p), b"fresh");
    // File::create (O_CREAT|O_TRUNC) on an existing file truncates too.
    close_checked(File::create(&p).unwrap()).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(read_uncached(&p), b"");

    // mmap: shared mappings read the file and write it back (across a stripe edge).
    let mm = pool.path("mapped");
    let mut model = rng.bytes(stripe + MIB + 5);
    fs::write(&mm, &model).unwrap();
    drop_cache(&mm);
    let f = OpenOptions::new().read(true).write(true).open(&mm).unwrap();
    let len = model.len();
    // SAFETY: a fresh shared mapping of an open file of `len` bytes, unmapped below
    // and accessed only within its bounds meanwhile.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        let map = std::slice::from_raw_parts_mut(ptr as *mut u8, len);
        assert!(map[..] == model[..], "mmap read differs");
        for at in [3, stripe - 3, len - 4] {
            map[at..at + 4].copy_from_slice(b"MMAP");
            model[at..at + 4].copy_from_slice(b"MMAP");
        }
        assert_eq!(libc::msync(ptr, len, libc::MS_SYNC), 0, "msync");
        assert_eq!(libc::munmap(ptr, len), 0, "munmap");
    }
    close_checked(f).unwrap();
    assert_eq!(read_uncached(&mm), model, "after writes through mmap");
}

/// unlink: the name goes, and the segment files on every node are removed (also for a
/// file unlinked while open, once it is closed); a replaced rename target likewise.
#[test]
fn unlink_and_replace_remove_segments_on_the_nodes() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("unlink", 3);
    let src = pool.scratch().join("src");
    random_file(&src, 8 * MIB + 5);
    let empty = total_segments(&pool);

    assert!(cp(&src, &pool.path("a")).status.success());
    let one = total_segments(&pool);
    assert!(
        one.0 >= 8 * MIB as u64 && one.1 >= 3,
        "segments of an 8 MiB file: {one:?} (before: {empty:?})"
    );
    for s in pool.storages() {
        assert!(segment_usage(&s).1 > 0, "{} holds no segment", s.display());
    }
    fs::remove_file(pool.path("a")).unwrap();
    assert_errno(
        fs::metadata(pool.path("a")),
        libc::ENOENT,
        "stat after unlink",
    );
    assert!(
        wait_until(Duration::from_secs(5), || total_segments(&pool) == empty),
        "segments not removed after unlink: {:?}, expected {empty:?}",
        total_segments(&pool)
    );

    // Unlinked while open: still readable through the descriptor; removed on close.
    assert!(cp(&src, &pool.path("b")).status.success());
    let f = File::open(pool.path("b")).unwrap();
    fs::remove_file(pool.path("b")).unwrap();
    assert!(!names(&pool.mnt).contains(&"b".to_string()));
    let mut bytes = Vec::new();
    (&f).read_to_end(&mut bytes).unwrap();
    assert!(
        bytes == fs::read(&src).unwrap(),
        "read of an unlinked open file"
    );
    assert!(
        total_segments(&pool).0 >= 8 * MIB as u64,
        "deleted while still open"
    );
    drop(f);
    assert!(
        wait_until(Duration::from_secs(5), || total_segments(&pool) == empty),
        "segments of a file unlinked while open not removed after close: {:?}",
        total_segments(&pool)
    );

    // rename over an existing file drops the replaced file's segments.
    assert!(cp(&src, &pool.path("c")).status.success());
    fs::write(pool.path("d"), b"small").unwrap();
    let two = total_segments(&pool);
    fs::rename(pool.path("d"), pool.path("c")).unwrap();
    assert_eq!(fs::read(pool.path("c")).unwrap(), b"small");
    assert!(
        wait_until(Duration::from_secs(5), || total_segments(&pool).0
            < two.0 - 8 * MIB as u64 + 1),
        "replaced file's segments remain: {:?} (before {two:?})",
        total_segments(&pool)
    );
}

/// mkdir/rmdir/readdir nested, rename (over a file, across directories, directories),
/// chmod/chown/utimes, symlink/readlink, hard links, statfs; kept across a remount.
#[test]
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
    assert!(df.contains("poolfs"), "df shows the pool: {df}");
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

/// One side of the model test: a file in the mount or in a plain local directory.
struct Side {
    dir: PathBuf,
    name: &'static str,
    file: Option<File>,
}

impl Side {
    fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    fn open(&mut self, create: bool) {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create {
            o.create_new(true);
        }
        self.file = Some(
            o.open(self.path())
                .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display())),
        );
    }

    fn f(&self) -> &File {
        self.file.as_ref().expect("file open")
    }

    fn close(&mut self) -> io::Result<()> {
        match self.file.take() {
            Some(f) => close_checked(f),
            None => Ok(()),
        }
    }
}

const MODEL_NAMES: [&str; 3] = ["m0", "m1", "sub/m2"];
const MODEL_MAX: u64 = 6 * MIB as u64;

fn model_seed() -> u64 {
    match std::env::var("POOLFS_SEED") {
        Ok(s) => s.trim().parse().expect("POOLFS_SEED must be a number"),
        Err(_) => {
            let mut b = [0u8; 8];
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut b))
                .expect("read /dev/urandom");
            u64::from_le_bytes(b)
        }
    }
}

/// Compares both sides completely (dropping the mount's cached pages first).
fn model_compare_all(mount: &Side, local: &Side, what: &str) {
    // SAFETY: a valid descriptor.
    unsafe { libc::posix_fadvise(mount.f().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let want = pread(local.f(), 0, MODEL_MAX as usize * 2).unwrap();
    let got = pread(mount.f(), 0, MODEL_MAX as usize * 2)
        .unwrap_or_else(|e| panic!("{what}: full read: {e}"));
    if want != got {
        let i = want.iter().zip(&got).position(|(a, b)| a != b);
        panic!(
            "{what}: contents differ (local {} bytes, mount {} bytes, first difference at {:?})",
            want.len(),
            got.len(),
            i
        );
    }
}

fn model_step(
    rng: &mut Rng,
    step: usize,
    stripe: u64,
    mount: &mut Side,
    local: &mut Side,
) -> String {
    let size = local.f().metadata().unwrap().len();
    let roll = rng.below(100);
    let what;
    let mut check: Option<(u64, u64)> = None;
    if roll < 34 {
        // write at a random offset: inside, at a stripe boundary, past the end, at the end
        let off = match rng.below(4) {
            0 => rng.below(size + 1),
            1 => (rng.below(size / stripe + 2) * stripe).saturating_sub(rng.below(64)),
            2 => size + rng.below(512 * 1024),
            _ => size,
        };
        let len = match rng.below(20) {
            0 => rng.range(256 * 1024, 2 * MIB as u64 + 100),
            1..=6 => rng.range(4097, 256 * 1024),
            _ => rng.range(1, 4096),
        };
        let off = off.min(MODEL_MAX - 1);
        let len = len.min(MODEL_MAX - off);
        // Some writes are all zeros: a stripe that ends up all zeros is stored as a hole.
        let zeros = rng.below(5) == 0;
        let data = match zeros {
            true => vec![0; len as usize],
            false => rng.bytes(len as usize),
        };
        what = format!("write {off}+{len}{}", if zeros { " of zeros" } else { "" });
        local.f().write_all_at(&data, off).unwrap();
        mount
            .f()
            .write_all_at(&data, off)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        check = Some((off.saturating_sub(20), len + 40));
    } else if roll < 56 {
        let off = if rng.below(4) == 0 {
            let boundary = rng.below(size / stripe + 1) * stripe;
            boundary.saturating_sub(rng.below(3000))
        } else {
            rng.below(size + 100)
        };
        let len = match rng.below(10) {
            0 => rng.range(64 * 1024, 3 * MIB as u64),
            _ => rng.range(1, 64 * 1024),
        };
        what = format!("read {off}+{len}");
        if rng.below(2) == 0 {
            // Past the kernel's page cache, so the bytes come from the daemon.
            // SAFETY: a valid descriptor.
            unsafe { libc::posix_fadvise(mount.f().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        check = Some((off, len));
    } else if roll < 62 {
        let new = match rng.below(10) {
            0 => 0,
            1..=5 => rng.below(size + 1),
            _ => (size + rng.below(2 * MIB as u64)).min(MODEL_MAX),
        };
        what = format!("ftruncate {size} -> {new}");
        local.f().set_len(new).unwrap();
        mount
            .f()
            .set_len(new)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        check = Some((new.saturating_sub(4096), 8192));
    } else if roll < 65 {
        let new = match rng.below(2) {
            0 => rng.below(size + 1),
            _ => (size + rng.below(MIB as u64)).min(MODEL_MAX),
        };
        what = format!("truncate(path) {size} -> {new}");
        truncate_path(&local.path(), new).unwrap();
        truncate_path(&mount.path(), new).unwrap_or_else(|e| panic!("{what}: {e}"));
        check = Some((new.saturating_sub(4096), 8192));
    } else if roll < 69 {
        let next = MODEL_NAMES[(MODEL_NAMES.iter().position(|n| *n == local.name).unwrap()
            + 1
            + rng.below(2) as usize)
            % MODEL_NAMES.len()];
        what = format!("rename {} -> {next}", local.name);
        for side in [&mut *local, &mut *mount] {
            fs::rename(side.path(), side.dir.join(next))
                .unwrap_or_else(|e| panic!("{what} in {}: {e}", side.dir.display()));
            side.name = next;
        }
    } else if roll < 72 {
        // O_APPEND through a second descriptor.
        let n = rng.range(1, 64 * 1024) as usize;
        let data = rng.bytes(n);
        what = format!("append {} bytes", data.len());
        if size + data.len() as u64 <= MODEL_MAX {
            for side in [&*local, &*mount] {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(side.path())
                    .unwrap_or_else(|e| panic!("{what}: open: {e}"));
                f.write_all(&data).unwrap_or_else(|e| panic!("{what}: {e}"));
                close_checked(f).unwrap_or_else(|e| panic!("{what}: close: {e}"));
            }
            check = Some((size.saturating_sub(10), data.len() as u64 + 20));
        }
    } else if roll < 78 {
        what = "close + reopen".to_string();
        local.close().unwrap();
        mount
            .close()
            .unwrap_or_else(|e| panic!("{what}: close: {e}"));
        drop_cache(&mount.path());
        local.open(false);
        mount.open(false);
        model_compare_all(mount, local, &format!("step {step}: after reopen"));
    } else if roll < 80 {
        what = "fsync".to_string();
        local.f().sync_all().unwrap();
        mount
            .f()
            .sync_all()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    } else if roll < 86 && size > 0 {
        // Through a shared writable mapping, as programs that mmap their files do.
        let off = rng.below(size);
        let len = rng.range(1, (size - off).min(300 * 1024) + 1);
        let data = rng.bytes(len as usize);
        what = format!("mmap write {off}+{len}");
        local.f().write_all_at(&data, off).unwrap();
        mmap_write(mount.f(), size, off, &data).unwrap_or_else(|e| panic!("{what}: {e}"));
        check = Some((off.saturating_sub(20), len + 40));
    } else if roll < 95 {
        // fallocate: punch a hole, zero a range, or reserve (growing or not).
        let off = rng.below(size + 256 * 1024).min(MODEL_MAX - 1);
        let len = rng.range(1, 3 * MIB as u64).min(MODEL_MAX - off);
        let (mode, name) = match rng.below(5) {
            0 => (FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, "punch hole"),
            1 => (FALLOC_ZERO_RANGE, "zero range"),
            2 => (
                FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE,
                "zero range, keep size",
            ),
            3 => (0, "allocate"),
            _ => (FALLOC_KEEP_SIZE, "allocate, keep size"),
        };
        what = format!("fallocate {name} {off}+{len}");
        // SAFETY: a valid descriptor.
        let r = unsafe { libc::fallocate(mount.f().as_raw_fd(), mode, off as i64, len as i64) };
        if r != 0 {
            panic!("{what}: {}", io::Error::last_os_error());
        }
        // The local side, by its meaning: zeros where punched or zeroed, a size that
        // grows unless asked to keep it.
        let end = off + len;
        if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) != 0 && off < size {
            let zeros = vec![0u8; (end.min(size) - off) as usize];
            local.f().write_all_at(&zeros, off).unwrap();
        }
        if mode & FALLOC_KEEP_SIZE == 0 && end > size {
            local.f().set_len(end).unwrap();
        }
        check = Some((off.saturating_sub(20), len + 40));
    } else if roll < 97 {
        what = "fsync".to_string();
        local.f().sync_all().unwrap();
        mount
            .f()
            .sync_all()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    } else {
        // unlink while open, read the old bytes through the descriptor, recreate.
        what = format!("unlink {} while open + recreate", local.name);
        for side in [&mut *local, &mut *mount] {
            fs::remove_file(side.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        model_compare_all(mount, local, &format!("step {step}: unlinked, still open"));
        local.close().unwrap();
        mount
            .close()
            .unwrap_or_else(|e| panic!("{what}: close: {e}"));
        assert_errno(
            fs::metadata(mount.path()),
            libc::ENOENT,
            "stat after unlink",
        );
        local.open(true);
        mount.open(true);
    }
    // After every step: holes are where the local file has only zeros, sizes agree
    // (through the descriptor and by path), and the touched range reads the same.
    let probe = rng.below(local.f().metadata().unwrap().len() + 10);
    check_holes(mount, local, probe, &format!("step {step} ({what})"));
    let want = local.f().metadata().unwrap().len();
    let got = mount.f().metadata().unwrap().len();
    assert_eq!(
        got, want,
        "step {step} ({what}): size through the descriptor"
    );
    let by_path = fs::metadata(mount.path())
        .unwrap_or_else(|e| panic!("step {step} ({what}): stat: {e}"))
        .len();
    assert_eq!(by_path, want, "step {step} ({what}): size by path");
    if let Some((off, len)) = check {
        let a = pread(local.f(), off, len as usize).unwrap();
        let b = pread(mount.f(), off, len as usize)
            .unwrap_or_else(|e| panic!("step {step} ({what}): read {off}+{len}: {e}"));
        if a != b {
            let i = a.iter().zip(&b).position(|(x, y)| x != y);
            panic!(
                "step {step} ({what}): read {off}+{len} differs: local {} bytes, mount {} \
                 bytes, first difference at {:?}",
                a.len(),
                b.len(),
                i.map(|i| off + i as u64)
            );
        }
    }
    what
}

const FALLOC_KEEP_SIZE: i32 = 0x01;
const FALLOC_PUNCH_HOLE: i32 = 0x02;
const FALLOC_ZERO_RANGE: i32 = 0x10;

/// `lseek(fd, off, whence)` on the mount: the offset, or the errno.
fn seek(f: &File, off: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: a valid descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as u64)
    }
}

/// What SEEK_DATA and SEEK_HOLE report from `off` on the mount agrees with the bytes:
/// every byte they call a hole is zero in the local file.
fn check_holes(mount: &Side, local: &Side, off: u64, what: &str) {
    let size = local.f().metadata().unwrap().len();
    let zero = |from: u64, to: u64| {
        let b = pread(local.f(), from, (to - from) as usize).unwrap();
        if let Some(i) = b.iter().position(|x| *x != 0) {
            panic!(
                "{what}: the mount reports a hole over {from}..{to}, but byte {} is not zero",
                from + i as u64
            );
        }
    };
    match seek(mount.f(), off, libc::SEEK_DATA) {
        Err(libc::ENXIO) => {
            if off < size {
                zero(off, size);
            }
        }
        Ok(d) => {
            assert!(
                off < size && d >= off && d < size,
                "{what}: SEEK_DATA {off} -> {d} (size {size})"
            );
            zero(off, d);
        }
        Err(e) => panic!("{what}: SEEK_DATA {off}: errno {e}"),
    }
    match seek(mount.f(), off, libc::SEEK_HOLE) {
        Err(libc::ENXIO) => assert!(off >= size, "{what}: SEEK_HOLE {off} in a file of {size}"),
        Ok(h) => {
            assert!(
                off < size && h >= off && h <= size,
                "{what}: SEEK_HOLE {off} -> {h} (size {size})"
            );
            if h < size {
                let next = match seek(mount.f(), h, libc::SEEK_DATA) {
                    Ok(d) => d,
                    Err(libc::ENXIO) => size,
                    Err(e) => panic!("{what}: SEEK_DATA {h}: errno {e}"),
                };
                zero(h, next);
            }
        }
        Err(e) => panic!("{what}: SEEK_HOLE {off}: errno {e}"),
    }
}

/// Thousands of random operations on a file in the mount and on a plain local file,
/// compared after every step. A failure prints the seed; `POOLFS_SEED=N` replays it
/// (`POOLFS_STEPS=N` changes the length, `POOLFS_MODEL_NODES=N` the pool size).
#[test]
fn random_operations_match_a_local_file() {
    if !can_mount() {
        return;
    }
    let seed = model_seed();
    let steps: usize = std::env::var("POOLFS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    eprintln!("model test: seed {seed}, {steps} steps (replay: POOLFS_SEED={seed})");
    // Stripe = nodes x 1 MiB; 2 nodes by default (POOLFS_MODEL_NODES changes it).
    let nodes: u32 = std::env::var("POOLFS_MODEL_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut pool = Pool::up("model", nodes);
    let local_dir = pool.scratch();
    for d in [&local_dir, &pool.mnt] {
        fs::create_dir(d.join("sub")).unwrap();
    }
    let mut local = Side {
        dir: local_dir,
        name: MODEL_NAMES[0],
        file: None,
    };
    let mut mount = Side {
        dir: pool.mnt.clone(),
        name: MODEL_NAMES[0],
        file: None,
    };
    local.open(true);
    mount.open(true);
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut history: Vec<String> = Vec::new();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for step in 0..steps {
            let what = model_step(
                &mut rng,
                step,
                nodes as u64 * MIB as u64,
                &mut mount,
                &mut local,
            );
            history.push(what);
            if step % 250 == 249 {
                model_compare_all(&mount, &local, &format!("step {step}: periodic check"));
            }
        }
        model_compare_all(&mount, &local, "at the end");
        local.close().unwrap();
        mount.close().expect("final close");
    }));
    if let Err(panic) = run {
        let tail: Vec<&String> = history.iter().rev().take(8).rev().collect();
        eprintln!(
            "MODEL TEST FAILED: replay with POOLFS_SEED={seed} POOLFS_STEPS={steps} \
             POOLFS_MODEL_NODES={nodes}; last operations: {tail:#?}"
        );
        drop(local.file.take());
        drop(mount.file.take());
        std::panic::resume_unwind(panic);
    }
    eprintln!(
        "model test: {steps} steps in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // What was stored is what a fresh mount reads.
    pool.unmount();
    pool.remount();
    assert_same_file(&local.path(), &mount.path());
}

/// Files are there after an unmount and remount, and after kill -9 of the mount
/// process (once their close returned success), a lazy unmount and a remount.
#[test]
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
/// holds about a third of it, and the mounting node does not hold the whole file.
#[test]
fn bytes_are_spread_over_the_nodes() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("spread", 4);
    let src = pool.scratch().join("src");
    let size = 32 * MIB as u64;
    random_file(&src, size as usize);
    let before: Vec<u64> = pool.storages().iter().map(|s| segment_usage(s).0).collect();
    assert!(cp(&src, &pool.path("big")).status.success());
    let share = size as f64 / 3.0;
    for (i, s) in pool.storages().iter().enumerate() {
        let held = (segment_usage(s).0 - before[i]) as f64;
        assert!(
            (held - share).abs() <= share * 0.15,
            "{} holds {held} bytes of a {size}-byte file; expected about {share}",
            s.display()
        );
    }
    let mine = segment_usage(&pool.mount_storage).0 - before[0];
    assert!(
        mine < size / 2,
        "the mounting node holds {mine} of {size} bytes"
    );
    assert_same_file(&src, &pool.path("big"));
}

/// `poolfs up` mounts a pool one can cp into at once; `poolfs down` unmounts it and
/// stops every process; a second `up` finds the files again.
#[test]
fn up_and_down_end_to_end() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("updown", 3);
    assert_eq!(pool.pids.len(), 4, "mount + 2 nodes + controller");
    // A second `up` on the same mount point is refused and leaves the pool alone.
    let again = run(harness::poolfs(["up"])
        .arg(&pool.mnt)
        .arg("--data-dir")
        .arg(&pool.data));
    assert!(
        !again.status.success(),
        "a second up on a live mount succeeded"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "stderr: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let src = pool.scratch().join("src");
    random_file(&src, 5 * MIB + 1);
    assert!(cp(&src, &pool.path("f")).status.success());
    assert_same_file(&src, &pool.path("f"));

    // down while a file is open: refused (like umount), and the pool keeps working.
    let busy = File::open(pool.path("f")).unwrap();
    let out = pool.down();
    assert!(!out.status.success(), "down succeeded with a file open");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not unmount"),
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
    let out = run(harness::poolfs(["up"])
        .arg(&pool.mnt)
        .args(["--nodes", "3", "--data-dir"])
        .arg(&pool.data)
        .env_remove("POOLFS_KEY"));
    let state: Option<poolfs::up::UpState> = fs::read(pool.state.join("up.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(s) = &state {
        pool.pids = s.pids.clone();
        pool.mount_pid = s.pids[0];
        pool.controller = s.controller;
    }
    pool.mark_up();
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
    let status = |key: &Path| run(harness::poolfs(["status", "-c", &ctrl, "--key"]).arg(key));
    assert!(status(&own_key).status.success(), "status with up's key");
    let old = status(harness::test_key());
    assert!(!old.status.success(), "status with another key succeeded");
    assert!(old.stdout.is_empty(), "the view leaked: {:?}", old.stdout);
}

/// `mount -t poolfs CONTROLLER DIR -o storage=...` through mount-helper/mount.poolfs,
/// and `umount DIR`; the helper refuses a missing storage= option with a clear message.
#[test]
fn mount_t_poolfs_through_the_helper() {
    if !can_mount() {
        return;
    }
    let tmp = harness::test_dir("helper");
    let root = tmp.path().canonicalize().unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.poolfs");
    let installed = Path::new("/sbin/mount.poolfs");
    let _link = HelperLink::install(installed, &helper);

    let ctrl = harness::ControllerProc::start(&root.join("controller"), &root.join("ctrl.log"));
    let mnt = root.join("mnt");
    let storage = root.join("storage");
    fs::create_dir(&mnt).unwrap();
    let _guard = harness::MountGuard {
        mnt: mnt.clone(),
        root: root.clone(),
    };

    // Without storage=: refused, with a message that names the option.
    let out = run(Command::new("mount")
        .args(["-t", "poolfs", &ctrl.addr.to_string()])
        .arg(&mnt)
        .args(["-o", "listen=127.0.0.1:0"])
        .env("POOLFS_BIN", harness::BIN)
        .env("POOLFS_KEY", harness::test_key()));
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
        .env("POOLFS_BIN", harness::BIN)
        .env("POOLFS_KEY", harness::test_key()));
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
    let pids = mount_procs();
    assert_eq!(pids.len(), 1, "one mount process: {pids:?}");
    run_ok(Command::new("umount").arg(&mnt));
    assert!(!is_mounted(&mnt), "still mounted after umount");
    assert!(
        wait_until(Duration::from_secs(10), || mount_procs().is_empty()),
        "the mount process did not exit after umount: {pids:?}"
    );
    assert_eq!(
        harness::member_states(ctrl.addr),
        ["Gone"],
        "umount makes the node leave the pool"
    );
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

/// Mounting over a non-empty directory, over a mounted one, or with no reachable
/// controller fails with a clear message, and leaves nothing mounted or running.
#[test]
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
        let out = run(harness::poolfs(["mount"])
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
    assert!(err.contains("not empty"), "stderr: {err}");
    assert!(!is_mounted(&full));
    assert_eq!(fs::read(full.join("keep")).unwrap(), b"mine");

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
    let nobody = format!("127.0.0.1:{}", harness::free_port());
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
        let out = run_ok(&mut harness::poolfs(["status", "--json", "-c", &ctrl]));
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
    let out = run(harness::poolfs(["mount"])
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
    std::thread::sleep(Duration::from_millis(700)); // past the client's view cache
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
        harness::fuse_mounts_under(&pool.root).len() == 1,
        "mounts: {:?}",
        harness::fuse_mounts_under(&pool.root)
    );
}

/// With a storage node killed (kill -9), writes into the pool fail visibly: `cp` of a
/// 10 MiB file exits non-zero, and close() of a small file returns EIO. Nothing
/// reports success for bytes that are not stored.
/// Writes route around a dead holder, before and after the controller knows it is
/// dead: a file placed while it was alive, a small file and a large `cp` all store
/// their stripes on the live nodes, read back bit-exact, and report that they need
/// repair.
#[test]
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
    harness::kill_ours(&[victim], &pool.root, libc::SIGKILL);
    assert!(
        !harness::is_ours(victim, &pool.root),
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
    harness::kill_ours(&[victim], &pool.root, libc::SIGKILL);
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
    harness::wait_members_up(pool.controller, 5, "the spare node");
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
        wait_until(Duration::from_secs(10), || !harness::is_ours(
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
fn an_unmount_hands_off_the_mounts_own_segments() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("umountleave", 4);
    let src = pool.scratch().join("src");
    let size = 6 * MIB + 99;
    random_file(&src, size);
    let want = fs::read(&src).unwrap();
    assert!(cp(&src, &pool.path("f")).status.success());
    let spare = pool.add_node("spare");
    harness::wait_members_up(pool.controller, 5, "the spare node");
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
fn new_and_empty_files_use_nodes_that_joined_later() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("grow", 3);
    let early = pool.path("early");
    fs::write(&early, b"").unwrap();
    pool.add_node("late");
    harness::wait_members_up(pool.controller, 4, "the late node");
    // The mount's view of the pool is at most a second old.
    std::thread::sleep(Duration::from_millis(1200));
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
fn scrub_heals_a_corrupt_parity_shard() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("scrub", 3);
    let f = pool.path("f");
    let want: Vec<u8> = (0..5 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&f, &want).unwrap();
    // The parity segment is the last one (index 2 of k = 2 + m = 1): find its file.
    let parity: Vec<PathBuf> = pool
        .storages()
        .iter()
        .flat_map(|s| walk(&s.join("segments")))
        .filter(|p| p.file_name().is_some_and(|n| n == "2.seg"))
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

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// With `up --quota`, copying a file larger than what the mount may hold on each node
/// fails with EDQUOT ("Disk quota exceeded"), not a crash or a silent loss; removing it
/// leaves no segment behind and gives the quota back.
#[test]
fn cp_past_the_quota_fails_with_edquot() {
    if !can_mount() {
        return;
    }
    // Three nodes, one parity: a stripe puts 1 MiB on each node, the quota holds one.
    let pool = Pool::up_with("quota", 3, &["--quota", "1M"]);
    let big = pool.scratch().join("big");
    random_file(&big, 4 * MIB);
    let out = run(Command::new("cp").arg(&big).arg(pool.path("big")));
    assert!(!out.status.success(), "cp past the quota succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Disk quota exceeded"), "cp said: {err}");

    // The same at the system call: close (or an earlier write) reports EDQUOT.
    let data = vec![5u8; 3 * MIB];
    let r = File::create(pool.path("raw")).and_then(|mut f| {
        f.write_all(&data)?;
        f.sync_all()
    });
    assert_eq!(errno_of(r, "write past the quota"), libc::EDQUOT);

    fs::remove_file(pool.path("big")).unwrap();
    fs::remove_file(pool.path("raw")).unwrap();
    let gone = wait_until(Duration::from_secs(10), || {
        pool.storages().iter().all(|s| segment_usage(s).0 == 0)
    });
    let left: Vec<_> = pool.storages().iter().map(|s| segment_usage(s)).collect();
    assert!(gone, "segments left behind: {left:?}");
    // Within the quota (a shard's chunk tags count too: 16 bytes per 32 KiB), a file
    // fits and reads back.
    let small = pool.scratch().join("small");
    random_file(&small, 2 * MIB - 2048);
    run_ok(Command::new("cp").arg(&small).arg(pool.path("small")));
    drop_cache(&pool.path("small"));
    assert_same_file(&small, &pool.path("small"));
}

/// Shannon entropy of `bytes`, in bits per byte (8 for uniformly random bytes).
fn entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Peers learn nothing but sizes: after a file full of a marker string is copied in,
/// no file in any member's storage contains the marker and the shard bytes look
/// random. The control pool, with `--no-encryption`, shows the marker on its nodes,
/// so the scan does find plaintext where there is some.
#[test]
fn nodes_hold_only_ciphertext() {
    if !can_mount() {
        return;
    }
    let marker = b"POOLFS-PRIVATE-MARKER-7f3a9c";
    let mut data = Vec::new();
    while data.len() < 3 * MIB {
        data.extend_from_slice(marker);
    }
    for encrypt in [true, false] {
        let pool = if encrypt {
            Pool::up("sealed", 3)
        } else {
            Pool::up_with("clear", 3, &["--no-encryption"])
        };
        let src = pool.scratch().join("src");
        fs::write(&src, &data).unwrap();
        assert!(cp(&src, &pool.path("secret")).status.success());
        assert!(read_uncached(&pool.path("secret")) == data, "bytes differ");
        let mut with_marker = Vec::new();
        let mut shard_bytes = Vec::new();
        for storage in pool.storages() {
            for file in walk(&storage) {
                let Ok(bytes) = fs::read(&file) else { continue };
                if bytes.windows(marker.len()).any(|w| w == marker) {
                    with_marker.push(file.clone());
                }
                if file.extension().is_some_and(|e| e == "seg") {
                    shard_bytes.extend_from_slice(&bytes);
                }
            }
        }
        assert!(
            shard_bytes.len() >= data.len(),
            "only {} shard bytes found",
            shard_bytes.len()
        );
        let bits = entropy(&shard_bytes);
        if encrypt {
            assert!(with_marker.is_empty(), "plaintext on disk: {with_marker:?}");
            assert!(
                bits > 7.99,
                "shard bytes are not random: {bits:.4} bits/byte"
            );
        } else {
            assert!(
                !with_marker.is_empty() && bits < 6.0,
                "the control pool stored no plaintext ({bits:.4} bits/byte)"
            );
        }
    }
}

/// Regression: `poolfs down` recognised the pool's processes by their binary's name, so
/// a pool started from a copy named otherwise (`poolfs-new`, say) was unmounted but its
/// controller and nodes kept running.
#[test]
fn down_stops_a_pool_started_from_a_renamed_binary() {
    if !can_mount() {
        return;
    }
    let tmp = harness::test_dir("renamed");
    let root = tmp.path().canonicalize().unwrap();
    let bin = root.join("pf-renamed");
    fs::copy(harness::BIN, &bin).unwrap();
    let (mnt, data) = (root.join("mnt"), root.join("data"));
    let up = harness::run(
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
    let down = harness::run(
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
    assert!(!harness::is_mounted(&mnt), "still mounted after down");
}

/// A close whose stores fail (the quota is spent on every node) returns the error and
/// leaves the file as it was: a new file stays empty, an append to a full stripe
/// leaves the old size and bytes, also after a remount (what is on disk in the
/// metadata, not just what the mount remembers). The close commits the file's record
/// while its shards are being stored, so this checks that a failed store puts the
/// previous record back.
#[test]
fn a_close_whose_stores_fail_leaves_the_previous_file() {
    if !can_mount() {
        return;
    }
    // Three nodes, one parity: a stripe of 2 × (1 MiB − 512) bytes puts a shard of
    // 1 MiB − 512 and its 32 chunk tags (512 bytes) on each node: all the quota.
    let mut pool = Pool::up_with("closefail", 3, &["--quota", "1M"]);
    let mut rng = Rng::new(7);
    let full = rng.bytes(2 * (MIB - 512));
    let mut f = File::create(pool.path("full")).unwrap();
    f.write_all(&full).unwrap();
    close_checked(f).expect("the file that fills the quota is stored");

    // Past the 4 KiB a file may keep in its record: it must go to the pool.
    let small = rng.bytes(8192);
    let mut f = File::create(pool.path("new")).unwrap();
    f.write_all(&small).unwrap();
    assert_eq!(
        errno_of(close_checked(f), "close of a new file past the quota"),
        libc::EDQUOT
    );
    // The append completes stripe 0, whose upload starts at once: its refusal may
    // reach a later write of the same call (the kernel may split it) or the close.
    let mut f = OpenOptions::new()
        .append(true)
        .open(pool.path("full"))
        .unwrap();
    let appended = f.write_all(&small).and_then(|()| close_checked(f));
    assert_eq!(errno_of(appended, "append past the quota"), libc::EDQUOT);
    for round in ["before remount", "after remount"] {
        assert_eq!(
            fs::metadata(pool.path("new")).unwrap().len(),
            0,
            "size of the new file {round}"
        );
        assert!(
            read_uncached(&pool.path("new")).is_empty(),
            "new file {round}"
        );
        assert_eq!(
            fs::metadata(pool.path("full")).unwrap().len(),
            full.len() as u64,
            "size of the appended file {round}"
        );
        assert!(
            read_uncached(&pool.path("full")) == full,
            "bytes of the appended file {round}"
        );
        if round == "before remount" {
            pool.unmount();
            pool.remount();
        }
    }
    // Once there is room again, the same small file closes and reads back.
    fs::remove_file(pool.path("full")).unwrap();
    let freed = wait_until(Duration::from_secs(10), || {
        pool.storages().iter().all(|s| segment_usage(s).0 == 0)
    });
    assert!(freed, "segments of the removed file left behind");
    fs::write(pool.path("new"), &small).unwrap();
    assert!(
        read_uncached(&pool.path("new")) == small,
        "small file after room"
    );
}

/// Small files of every size around the shard boundaries read back byte-exact, from
/// the mount and after a remount (their records were committed while their shards
/// were being stored).
#[test]
fn small_files_read_back_exact_after_remount() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("smallfiles", 3);
    let mut rng = Rng::new(11);
    let sizes = [
        0usize,
        1,
        2,
        3,
        511,
        4095,
        4096,
        4097,
        65_536,
        100_001,
        2 * MIB + 3,
    ];
    let mut files = Vec::new();
    fs::create_dir(pool.path("d")).unwrap();
    for i in 0..110 {
        let bytes = rng.bytes(sizes[i % sizes.len()]);
        let name = format!("d/f{i}");
        let mut f = File::create(pool.path(&name)).unwrap();
        f.write_all(&bytes).unwrap();
        close_checked(f).unwrap();
        files.push((name, bytes));
    }
    for round in ["mounted", "remounted"] {
        for (name, bytes) in &files {
            assert_eq!(
                fs::metadata(pool.path(name)).unwrap().len(),
                bytes.len() as u64,
                "size of {name} {round}"
            );
            assert!(
                &read_uncached(&pool.path(name)) == bytes,
                "bytes of {name} ({} long) {round}",
                bytes.len()
            );
        }
        if round == "mounted" {
            pool.unmount();
            pool.remount();
        }
    }
}

#[test]
fn small_files_live_in_the_metadata_until_they_grow() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("inline", 3);
    let mut rng = Rng::new(12);
    let on_nodes =
        |pool: &Pool| -> u64 { pool.storages().iter().map(|s| segment_usage(s).0).sum() };
    let small = rng.bytes(4096);
    let mut f = File::create(pool.path("small")).unwrap();
    f.write_all(&small).unwrap();
    close_checked(f).unwrap();
    assert_eq!(on_nodes(&pool), 0, "a 4 KiB file put bytes on the nodes");
    let h = health(&pool.path("small"));
    assert!(h.starts_with("healthy"), "{h}");

    // Appending past 4 KiB moves the whole file to the pool; nothing is lost on the way.
    let more = rng.bytes(3000);
    let mut f = OpenOptions::new()
        .append(true)
        .open(pool.path("small"))
        .unwrap();
    f.write_all(&more).unwrap();
    close_checked(f).unwrap();
    let grown = [small.clone(), more].concat();
    assert!(
        on_nodes(&pool) >= grown.len() as u64,
        "the grown file is not on the pool"
    );
    assert!(read_uncached(&pool.path("small")) == grown);

    // A small file rewritten in place, truncated and extended, across a remount.
    let mut f = File::create(pool.path("edit")).unwrap();
    f.write_all(&small[..1000]).unwrap();
    close_checked(f).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .open(pool.path("edit"))
        .unwrap();
    f.seek(SeekFrom::Start(500)).unwrap();
    f.write_all(b"middle").unwrap();
    f.set_len(2000).unwrap();
    close_checked(f).unwrap();
    let mut want = small[..1000].to_vec();
    want[500..506].copy_from_slice(b"middle");
    want.resize(2000, 0);
    pool.unmount();
    pool.remount();
    assert!(read_uncached(&pool.path("edit")) == want);
    assert!(read_uncached(&pool.path("small")) == grown);

    // Deleting the small one leaves nothing behind; deleting the grown one frees the pool.
    fs::remove_file(pool.path("edit")).unwrap();
    fs::remove_file(pool.path("small")).unwrap();
    let gone = wait_until(Duration::from_secs(10), || on_nodes(&pool) == 0);
    assert!(gone, "segments left behind");
}
