//! Bytes in and out of a mount: cp/cmp/cat round trips over shard and stripe
//! boundaries, open flags (overwrite, append, truncate), and unlinks that free segments
//! (rm of many files, files unlinked while open or while an `O_PATH` descriptor holds
//! them).

use super::*;
use std::os::unix::fs::OpenOptionsExt;

/// cp of files of 0 B, 1 B, sizes around the shard and stripe boundaries (stripe = 3
/// MiB in a 3-node pool), and 100 MiB, then cmp, cat, dd-style random reads; all again
/// after an unmount and remount.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
        assert!(
            data_segment_usage(&s).1 > 0,
            "{} holds no segment of the file",
            s.display()
        );
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

/// rm of many files, small (kept in the namespace) and stored on the pool, each
/// unlinked while nothing has it open (its record goes with the unlink, issue 16):
/// nothing of them stays on the nodes, and after a remount nothing of them stays in
/// the namespace either (no orphan left to purge, no name).
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn rm_of_many_files_leaves_nothing_on_the_nodes_after_the_sweep() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("rm-many", 3);
    let empty = total_segments(&pool);
    let dir = pool.path("d");
    fs::create_dir(&dir).unwrap();
    let small = vec![7u8; 4096];
    for i in 0..300 {
        fs::write(dir.join(format!("s{i}")), &small).unwrap();
    }
    let src = pool.scratch().join("big");
    random_file(&src, 2 * MIB + 3);
    for i in 0..4 {
        assert!(cp(&src, &dir.join(format!("b{i}"))).status.success());
    }
    assert!(total_segments(&pool).0 >= 8 * MIB as u64);
    for name in names(&dir) {
        fs::remove_file(dir.join(name)).unwrap();
    }
    fs::remove_dir(&dir).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || total_segments(&pool) == empty),
        "segments left after rm: {:?}, expected {empty:?}",
        total_segments(&pool)
    );
    pool.unmount();
    pool.remount();
    assert!(names(&pool.mnt).is_empty(), "{:?}", names(&pool.mnt));
    assert_eq!(total_segments(&pool), empty, "after the remount's sweep");
}

/// A file removed while only an `O_PATH` descriptor refers to it (no open of its
/// data, so its record goes with the unlink): fstat of the descriptor still answers,
/// with no links and the file's size; a reopen through /proc fails cleanly.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn fstat_of_an_o_path_descriptor_of_a_removed_file_says_no_links() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("opath", 3);
    let p = pool.path("f");
    fs::write(&p, vec![1u8; 5000]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&p)
        .unwrap();
    fs::remove_file(&p).unwrap();
    assert_errno(fs::metadata(&p), libc::ENOENT, "stat of the name");
    let md = f.metadata().expect("fstat of the O_PATH descriptor");
    assert_eq!((md.nlink(), md.len()), (0, 5000));
    let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
    let e = errno_of(File::open(&proc), "reopen through /proc");
    assert!(
        e == libc::ESTALE || e == libc::ENOENT,
        "reopen: {}",
        io::Error::from_raw_os_error(e)
    );
    drop(f);
    assert!(names(&pool.mnt).is_empty());
}

/// A small file (its bytes kept in its record) unlinked while open keeps its bytes,
/// and takes writes, until its last close; then it is gone.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn an_unlinked_small_file_still_open_keeps_its_bytes_until_closed() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("unlinked-open", 3);
    let p = pool.path("f");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    fs::write(&p, &data).unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(names(&pool.mnt).is_empty());
    assert_eq!(pread(&f, 0, 8192).unwrap(), data);
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"tail").unwrap();
    f.sync_all().expect("fsync of an unlinked file");
    // SAFETY: a valid descriptor for the duration of the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut back = pread(&f, 0, 8192).unwrap();
    assert_eq!(back.split_off(4096), b"tail");
    assert_eq!(back, data);
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    close_checked(f).expect("close");
    assert!(names(&pool.mnt).is_empty());
}
