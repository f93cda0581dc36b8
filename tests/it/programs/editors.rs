//! What editors and databases do: rename exchange, failed writes, mmap writes, and
//! atomic saves that readers never see torn.

use super::*;

/// `renameat2(RENAME_EXCHANGE)` swaps two names atomically, as on ext4 (some programs
/// swap a directory or file into place this way).
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn rename_exchange_swaps_two_names() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("exchange", 2);
    fs::write(pool.path("a"), b"aaa").unwrap();
    fs::create_dir(pool.path("d")).unwrap();
    fs::write(pool.path("d/inner"), b"in").unwrap();
    let exchange = |x: &str, y: &str| {
        // SAFETY: valid NUL-terminated paths.
        cvt(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cstr(&pool.path(x)).as_ptr(),
                libc::AT_FDCWD,
                cstr(&pool.path(y)).as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        })
    };
    exchange("a", "d").expect("exchange a file and a directory");
    assert_eq!(fs::read(pool.path("d")).unwrap(), b"aaa");
    assert_eq!(fs::read(pool.path("a/inner")).unwrap(), b"in");
    assert_errno(
        exchange("a", "missing"),
        libc::ENOENT,
        "exchange with a missing name",
    );
}

/// A failed write changes nothing, not even the size seen while the file is open; and
/// a truncate to the size a file already has still moves its mtime, as on ext4.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_failed_write_leaves_the_size_and_a_truncate_moves_mtime() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with("failed-size", 3, &["--quota", "8M"]);
    // A child process writes, so that no fork of this test process closes (and so
    // flushes and commits) its descriptor in between. After the failure the kernel is
    // told to drop what it cached of the file; that reaches it a moment later (not from
    // inside the failing request, whose page locks it would wait for).
    let writer = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
chunk = os.urandom(1 << 20)
err = None
for i in range(64):
    try:
        os.write(fd, chunk)
    except OSError as e:
        err = e.errno
        break
deadline = time.time() + 2
while os.fstat(fd).st_size != 0 and time.time() < deadline:
    time.sleep(0.02)
size = os.fstat(fd).st_size
back = len(os.pread(fd, 1 << 20, 0))
try:
    os.close(fd)
except OSError:
    pass
print(err, size, back)
"#;
    let out = run_ok(
        Command::new(python())
            .arg("-c")
            .arg(writer)
            .arg(pool.path("f")),
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        said,
        format!("{} 0 0", libc::EDQUOT),
        "errno of the failed write, then the size and the bytes read back (nothing was \
         ever committed)"
    );
    fs::write(pool.path("t"), b"twelve bytes").unwrap();
    let before = lstat(&pool.path("t")).mtime_nsec() as i128
        + lstat(&pool.path("t")).mtime() as i128 * 1_000_000_000;
    std::thread::sleep(Duration::from_millis(50));
    truncate_path(&pool.path("t"), 12).unwrap();
    let m = lstat(&pool.path("t"));
    let after = m.mtime_nsec() as i128 + m.mtime() as i128 * 1_000_000_000;
    assert!(after > before, "mtime after a truncate to the same size");
}

/// Pages written through a shared mapping land where they were written while another
/// descriptor of the file appends. The kernel writes mapped pages back with the handle
/// of some writable descriptor of the file, which may be an `O_APPEND` one; the mount
/// places every write at the kernel's offset, never by the handle's flags.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn mmap_writes_land_in_place_while_an_appender_has_the_file_open() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("mmap-append", 2);
    let p = pool.path("f");
    let mut want = Rng::new(21).bytes(300_000);
    fs::write(&p, &want).unwrap();
    // The appender first: the kernel writes mapped pages back with the handle of the
    // file's longest-open writable descriptor.
    let appender = OpenOptions::new().append(true).open(&p).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let patch = Rng::new(22).bytes(5000);
    harness::mount::mmap_write(&f, want.len() as u64, 100_000, &patch)
        .expect("write through a mapping");
    want[100_000..105_000].copy_from_slice(&patch);
    drop(appender);
    close_checked(f).unwrap();
    let got = read_uncached(&p);
    assert_eq!(got.len(), want.len(), "size after the mapped write");
    assert!(got == want, "the mapped write did not land at its offset");
}

// ---------------------------------------------------------------------------------
// Atomic save
// ---------------------------------------------------------------------------------

/// Version `i` of the saved file: its number, then padding of a varying length.
fn version(i: usize) -> Vec<u8> {
    format!("v{i} {}\n", "p".repeat(i * 37 % 9000)).into_bytes()
}

/// Reads `sys.argv[1]` in a loop (stat, then open and read) until `sys.argv[2]` exists;
/// prints reads, ENOENTs, bad contents and examples.
const SAVE_READER: &str = r#"
import errno, json, os, sys
S, stop = sys.argv[1], sys.argv[2]
def version(i): return ("v%d %s\n" % (i, "p" * (i * 37 % 9000))).encode()
n = bad = 0; errors = {}; examples = []
while not os.path.exists(stop):
    n += 1
    try:
        os.stat(S)
        with open(S, "rb") as f: b = f.read()
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        errors[name] = errors.get(name, 0) + 1
        continue
    try: ok = b == version(int(b[1:b.index(b" ")]))
    except ValueError: ok = False
    if not ok:
        bad += 1
        if len(examples) < 5: examples.append("%d bytes: %r" % (len(b), b[:20]))
print(json.dumps({"reads": n, "errors": errors, "bad": bad, "examples": examples}))
"#;

/// Issue 12, item 6 (/work/shared/cases/16-min-rename-race.py, 16-rename-open-file.sh).
/// While one process saves a name 300 times by writing a temporary file, fsync and
/// rename over it, another that stats, opens and reads the name never gets ENOENT nor a
/// torn or empty file; a reader holding the old file open reads all its old bytes.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn atomic_saves_never_show_readers_a_missing_or_torn_file() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("save", 2);
    let s = pool.path("state");
    fs::write(&s, version(0)).unwrap();
    let stop = pool.scratch().join("stop");
    let reader = ChildGuard(Some(
        Command::new(python())
            .arg("-c")
            .arg(SAVE_READER)
            .arg(&s)
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the reader"),
    ));
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=300 {
        let tmp = pool.path(&format!(".state.{i}"));
        let mut f = File::create(&tmp).unwrap();
        f.write_all(&version(i)).unwrap();
        f.sync_all().unwrap();
        close_checked(f).unwrap();
        fs::rename(&tmp, &s).unwrap_or_else(|e| panic!("rename over the name, save {i}: {e}"));
    }
    fs::write(&stop, b"").unwrap();
    let out = reader.wait();
    assert!(out.status.success(), "reader: {}", stderr_of(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reader's report");
    eprintln!("reader: {r}");
    assert_eq!(
        r["errors"],
        serde_json::json!({}),
        "errors (ENOENT and others) for a name always present during 300 atomic saves: {r}"
    );
    assert_eq!(
        r["bad"], 0,
        "torn or empty reads during 300 atomic saves: {r}"
    );
    assert!(
        r["reads"].as_u64().unwrap() >= 100,
        "the reader hardly ran: {r}"
    );
    assert!(read_uncached(&s) == version(300), "final content");

    // A reader holding the old file keeps reading its old bytes after the rename.
    let a = pool.path("A");
    let mut rng = Rng::new(16);
    let (old, new) = (rng.bytes(3 * MIB), rng.bytes(3 * MIB));
    fs::write(&a, &old).unwrap();
    let mut held = File::open(&a).unwrap();
    let mut first = vec![0u8; MIB];
    held.read_exact(&mut first).unwrap();
    let tmp = pool.path(".A.tmp");
    fs::write(&tmp, &new).unwrap();
    fs::rename(&tmp, &a).unwrap();
    // SAFETY: a valid descriptor.
    unsafe { libc::posix_fadvise(held.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut rest = Vec::new();
    held.read_to_end(&mut rest)
        .expect("read the replaced file through the old descriptor");
    first.extend_from_slice(&rest);
    assert!(
        first == old,
        "the open old file read {} bytes, old: {}, new: {}",
        first.len(),
        first == old,
        first == new
    );
    assert!(read_uncached(&a) == new, "a new open sees the new bytes");
}
