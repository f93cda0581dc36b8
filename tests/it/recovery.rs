//! Your files outlive your disk (issue 15), proved with real processes on loopback: a
//! mount killed -9 and its whole storage directory deleted is recovered on another
//! directory from the exported recovery code, and every file closed more than 1 s
//! before the loss reads back exact with its mode, owner, times, xattrs, links and
//! symlinks; a file being rewritten at the loss is an old version or absent, never
//! garbage; recovery works with a node down, which then returns; and a second mount of
//! the same owner is refused while the first holds the lease, and succeeds once the
//! first is killed and the lease runs out.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::faults::{pick, seed, shape_of};
use crate::harness::mount::{
    assert_same_file, can_mount, drop_cache, fuse_mounts_under, health, poolfs, random_file,
    run_ok, test_dir, wait_until, Rng, MIB,
};
use crate::harness::owner::{Mounted, OwnerPool, LEASE_HELD};
use crate::harness::tree::{
    assert_same_tree, chmod, chown, set_times, set_xattr, snapshot, user_xattrs,
};

/// The owner's lease the tests mount with (`--lease`), in seconds.
const LEASE: u64 = 3;
/// How long after a close the change must be in the pool (the issue: 1 s), with the
/// margin the tests wait beyond it.
const SETTLE: Duration = Duration::from_millis(1500);

/// `--lease 3`, as the tests mount.
fn lease_arg() -> [&'static str; 2] {
    ["--lease", "3"]
}

/// The longest a recovery may wait for a killed mount's lease: the lease and 10 s.
fn lease_wait() -> Duration {
    Duration::from_secs(LEASE + 10)
}

/// A file of the test: its path in the mount and its reference copy outside.
struct Kept {
    rel: String,
    want: PathBuf,
}

/// Creates (or truncates) `path`, writes `bytes` and closes it, reporting a failed
/// close (which `File`'s drop would hide): what `cp` or a shell redirection does.
fn write_and_close(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` is ours alone (taken out of the File), closed once here.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `bytes` both to the reference copy and into the mount (create, write, close).
fn put(m: &Mounted, scratch: &Path, rel: &str, bytes: &[u8]) -> Kept {
    let want = scratch.join(rel.replace('/', "_"));
    fs::write(&want, bytes).expect("write the reference copy");
    write_and_close(&m.path(rel), bytes)
        .unwrap_or_else(|e| panic!("write {rel} in the mount: {e}"));
    Kept {
        rel: rel.to_string(),
        want,
    }
}

/// Copies a random file of `len` bytes into the mount with `cp` (which reports a failed
/// close).
fn cp_random(m: &Mounted, scratch: &Path, rel: &str, len: usize) -> Kept {
    let want = scratch.join(rel.replace('/', "_"));
    random_file(&want, len);
    run_ok(std::process::Command::new("cp").arg(&want).arg(m.path(rel)));
    Kept {
        rel: rel.to_string(),
        want,
    }
}

/// Every kept file reads back exact from mount `m` (not from the page cache).
fn assert_all_read_back(m: &Mounted, kept: &[Kept], when: &str) {
    for k in kept {
        let got = m.path(&k.rel);
        drop_cache(&got);
        eprintln!("{when}: reading {}", k.rel);
        assert_same_file(&k.want, &got);
    }
}

/// A new file written into mount `m` and read back: the mount is writable.
fn assert_writable(m: &Mounted, scratch: &Path, rel: &str) {
    let kept = cp_random(m, scratch, rel, 2 * MIB + 17);
    let small = put(
        m,
        scratch,
        &format!("{rel}.small"),
        b"written after the recovery\n",
    );
    assert_all_read_back(m, &[kept, small], "written after the recovery");
}

/// Nanosecond times the tree is given (seconds, nanoseconds).
const T_MEDIUM: (i64, i64) = (1_600_000_000, 123_456_789);
const T_SECRET: (i64, i64) = (1_500_000_000, 987_654_321);
const T_DEEP_DIR: (i64, i64) = (1_400_000_000, 500_000_001);
const DEEP: usize = 12;

/// The deep directory's path: d01/d02/.../d12.
fn deep_dir() -> String {
    (1..=DEEP)
        .map(|i| format!("d{i:02}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Writes the mixed tree of the disk-loss test into `m`; returns its regular files
/// with their reference copies. Big and medium files (several stripes, one stripe),
/// files of 4 KiB or less (kept inline), an empty file, symlinks (to a file, up a
/// directory, dangling), a hard link pair across directories, a directory 12 levels
/// deep with a file at the bottom, user xattrs on a file and a directory, modes 0600,
/// 0755 and a setgid directory, a file owned by 1000:1000, and times to the nanosecond.
fn write_mixed_tree(m: &Mounted, scratch: &Path) -> Vec<Kept> {
    let mut rng = Rng::new(15);
    let mut kept = vec![
        cp_random(m, scratch, "big", 20 * MIB + 123),
        cp_random(m, scratch, "medium", 3 * MIB + 45),
    ];
    for (rel, len) in [
        ("tiny", 1),
        ("small-100", 100),
        ("small-4000", 4000),
        ("small-4096", 4096),
    ] {
        kept.push(put(m, scratch, rel, &rng.bytes(len)));
    }
    kept.push(put(m, scratch, "empty", b""));
    fs::create_dir(m.path("docs")).expect("mkdir docs");
    chmod(&m.path("docs"), 0o2775);
    kept.push(put(m, scratch, "docs/secret", &rng.bytes(2048)));
    chmod(&m.path("docs/secret"), 0o600);
    kept.push(put(m, scratch, "docs/run.sh", b"#!/bin/sh\necho poolfs\n"));
    chmod(&m.path("docs/run.sh"), 0o755);
    kept.push(put(m, scratch, "docs/owned", &rng.bytes(500)));
    chown(&m.path("docs/owned"), 1000, 1000);
    std::os::unix::fs::symlink("big", m.path("link-to-big")).expect("symlink");
    std::os::unix::fs::symlink("../medium", m.path("docs/up")).expect("symlink up");
    std::os::unix::fs::symlink("nowhere/at/all", m.path("dangling")).expect("symlink");
    kept.push(put(m, scratch, "hl-a", &rng.bytes(6000)));
    fs::hard_link(m.path("hl-a"), m.path("docs/hl-b")).expect("hard link");
    let deep = deep_dir();
    fs::create_dir_all(m.path(&deep)).expect("mkdir -p the deep directory");
    kept.push(put(m, scratch, &format!("{deep}/bottom"), &rng.bytes(777)));
    set_xattr(&m.path("docs/secret"), "user.color", b"blue");
    set_xattr(&m.path("docs/secret"), "user.bin", &[0, 1, 2, 255]);
    set_xattr(&m.path("docs"), "user.project", b"poolfs");
    // Times last: creating an entry moves its directory's mtime.
    set_times(&m.path("medium"), T_MEDIUM, T_MEDIUM);
    set_times(&m.path("docs/secret"), T_SECRET, T_SECRET);
    set_times(&m.path("d01"), T_DEEP_DIR, T_DEEP_DIR);
    kept
}

/// What the mixed tree was given is what the mount shows (so a comparison with the
/// recovered tree compares what the user set, not defaults).
fn assert_tree_as_set(tree: &crate::harness::tree::Tree) {
    let e = |p: &str| {
        tree.entries
            .get(Path::new(p))
            .unwrap_or_else(|| panic!("{p} is not in the tree"))
    };
    assert_eq!(e("docs").mode, 0o2775, "setgid directory");
    assert_eq!(e("docs/secret").mode, 0o600);
    assert_eq!(e("docs/run.sh").mode, 0o755);
    assert_eq!((e("docs/owned").uid, e("docs/owned").gid), (1000, 1000));
    assert_eq!(e("medium").mtime, T_MEDIUM);
    assert_eq!(e("docs/secret").mtime, T_SECRET);
    assert_eq!(e("d01").mtime, T_DEEP_DIR);
    assert_eq!(e("link-to-big").target.as_deref(), Some(Path::new("big")));
    assert_eq!(e("dangling").kind, 'l');
    assert_eq!(e("docs/secret").xattrs.len(), 2, "xattrs of docs/secret");
    assert_eq!(
        e("docs").xattrs.get("user.project").map(Vec::as_slice),
        Some(&b"poolfs"[..])
    );
    assert_eq!(e("hl-a").nlink, Some(2));
    assert_eq!(e("empty").size, Some(0));
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn files_outlive_the_disk_of_their_mount() {
    if !can_mount() {
        return;
    }
    let dir = test_dir("recover-disk");
    let mut pool = OwnerPool::start(dir.path(), 27300..27310, 2);
    let scratch = pool.scratch();
    let a = pool.mount("a", "alpha", &lease_arg());
    let kept = write_mixed_tree(&a, &scratch);
    let before = snapshot(&a.mnt);
    assert_tree_as_set(&before);
    let code = pool.export_code(&a.storage, "code");
    std::thread::sleep(SETTLE);

    pool.kill_mount(&a);
    pool.lose_disk(&a);
    let (b, took) = pool.recover_within(lease_wait(), "b", "beta", Some(&code), &lease_arg());
    eprintln!("recovered {:.1}s after the loss", took.as_secs_f64());

    let after = snapshot(&b.mnt);
    assert_same_tree(&before, &after, "the recovered tree");
    assert_all_read_back(&b, &kept, "recovered");
    assert_eq!(
        after.ino.get(Path::new("hl-a")),
        after.ino.get(Path::new("docs/hl-b")),
        "the hard links share one inode after the recovery"
    );
    assert_eq!(
        user_xattrs(&b.path("docs/secret")).get("user.bin"),
        Some(&vec![0u8, 1, 2, 255]),
        "a binary xattr reads back"
    );
    assert_writable(&b, &scratch, &format!("{}/new", deep_dir()));
    pool.finish();
    crate::harness::mount::assert_nothing_left(dir.path(), fuse_mounts_under);
}

/// Round `n` of the rewritten file: a header naming the round and the length, then
/// bytes only that round has. Even rounds are kept inline (<= 4 KiB), odd ones go to
/// the pool (one stripe, or several every fourth round).
fn version(n: u64) -> Vec<u8> {
    let len = match n % 4 {
        0 | 2 => 2500,
        1 => 300_000 + n as usize,
        _ => 5 * MIB + n as usize,
    };
    let mut out = format!("poolfs-version {n:08} len {len:010}\n").into_bytes();
    let rest = len - out.len();
    // The body as `WRITER` makes it: a pattern that differs from round to round (31 is
    // odd, so rounds up to 256 apart differ in every byte) and from block to block.
    out.extend((0..rest as u64).map(|i| ((i * 7 + (i >> 12) * 13 + n * 31) & 0xff) as u8));
    out
}

/// The writer of the rewritten file, in a process of its own: a descriptor held by
/// this test process would be duplicated by every fork of the other tests running in
/// it, and closed (FLUSH: a commit of the half-rewritten file) at their exec. It
/// rewrites `argv[1]` round after round (open with O_TRUNC, one write, close) with
/// `version(n)`'s bytes and prints each round's number once its close returned.
const WRITER: &str = r#"
import sys
path = sys.argv[1]
base = bytes((j * 7) & 255 for j in range(4096))
n = 0
while True:
    length = {0: 2500, 1: 300000 + n, 2: 2500, 3: 5 * 1048576 + n}[n % 4]
    head = b"poolfs-version %08d len %010d\n" % (n, length)
    rest = length - len(head)
    blocks = []
    for b in range((rest + 4095) // 4096):
        k = (b * 13 + n * 31) & 255
        blocks.append(base.translate(bytes((x + k) & 255 for x in range(256))))
    data = head + b"".join(blocks)[:rest]
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        print("error", e, flush=True)
        sys.exit(0)
    print(n, flush=True)
    n += 1
"#;

/// For a failure's message: where garbage that names round N in its header parts from
/// round N, and which nearby round's bytes (if any) it holds from there on.
fn garbage_detail(bytes: &[u8]) -> String {
    let Some(n) = named_round(bytes) else {
        return "no round's header".into();
    };
    let want = version(n);
    let Some(at) = (0..bytes.len().min(want.len())).find(|&i| bytes[i] != want[i]) else {
        return format!(
            "round {n}'s bytes, length {} not {}",
            bytes.len(),
            want.len()
        );
    };
    let from = (n.saturating_sub(6)..=n + 2)
        .filter(|&m| m != n)
        .filter(|&m| {
            let v = version(m);
            v.len() >= bytes.len() && v[at..bytes.len()] == bytes[at..]
        })
        .collect::<Vec<_>>();
    let zeros = bytes[at..].iter().all(|&b| b == 0);
    format!("parts from round {n} at byte {at}; the rest is rounds {from:?}'s, all zero: {zeros}")
}

/// The round a rewritten file's content is, if it is exactly one of them.
fn which_version(bytes: &[u8]) -> Option<u64> {
    let n = named_round(bytes)?;
    (version(n) == bytes).then_some(n)
}

/// The round a content's header names ("poolfs-version N len L\n", its first line).
fn named_round(bytes: &[u8]) -> Option<u64> {
    let end = bytes.iter().take(64).position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    head.strip_prefix("poolfs-version ")?.get(..8)?.parse().ok()
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_file_being_written_at_the_loss_is_old_or_absent_never_garbage() {
    if !can_mount() {
        return;
    }
    // The check below tells every round from every other (else garbage could hide).
    for n in 0..8 {
        assert_eq!(which_version(&version(n)), Some(n), "round {n}");
        assert_eq!(which_version(&version(n)[..100]), None, "a cut round {n}");
    }
    let dir = test_dir("recover-inflight");
    let mut pool = OwnerPool::start(dir.path(), 27310..27320, 2);
    let scratch = pool.scratch();
    let a = pool.mount("a", "alpha", &lease_arg());
    let code = pool.export_code(&a.storage, "code");
    let anchors = vec![
        cp_random(&a, &scratch, "anchor-big", 4 * MIB + 1),
        put(
            &a,
            &scratch,
            "anchor-small",
            b"closed long before the loss\n",
        ),
    ];
    std::thread::sleep(SETTLE);

    // Rewrites `hot` round after round (open with O_TRUNC, one write, close), noting
    // when each close returned.
    let hot = a.path("hot");
    let closed: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(WRITER)
        .arg(&hot)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let out = child.stdout.take().expect("the writer's stdout");
    let writer = {
        let closed = closed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return None };
                match line.trim().parse::<u64>() {
                    Ok(n) => closed.lock().expect("lock").push((n, Instant::now())),
                    Err(_) => return Some(line), // the mount died under it
                }
            }
            None
        })
    };
    let rounds = || closed.lock().expect("lock").len();
    let since = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || rounds() >= 12
            && since.elapsed() > Duration::from_secs(3)),
        "the writer closed only {} rounds in 30 s",
        rounds()
    );
    let killed_at = Instant::now();
    pool.kill_mount(&a);
    let _ = child.kill();
    let _ = child.wait();
    let ended = writer.join().expect("the writer thread");
    let closed = closed.lock().expect("lock").clone();
    eprintln!(
        "{} rounds closed before the kill; the writer ended with {ended:?}",
        closed.len()
    );
    // The newest round closed more than 1 s (and a margin) before the kill: its change
    // is in the pool, so the recovered file is that round or a later state.
    let floor = closed
        .iter()
        .rev()
        .find(|(_, at)| *at + Duration::from_millis(1250) <= killed_at)
        .map(|(n, _)| *n);
    pool.lose_disk(&a);

    let (b, _) = pool.recover_within(lease_wait(), "b", "beta", Some(&code), &lease_arg());
    assert_all_read_back(&b, &anchors, "recovered");
    let got = b.path("hot");
    match fs::read(&got) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                floor.is_none(),
                "hot is absent, but round {floor:?} was closed over 1 s before the loss"
            );
        }
        Err(e) => panic!("reading the file rewritten at the loss: {e}"),
        // Not even the empty file open(O_TRUNC) leaves for a moment: the issue asks for
        // the previous version or nothing, as ext4's auto_da_alloc gives a program that
        // rewrites a file in place.
        Ok(bytes) if bytes.is_empty() => panic!(
            "hot is empty after the recovery (a round's truncation without its data), \
             neither absent nor a version; round {floor:?} was closed over 1 s before the \
             loss, round {:?} last",
            closed.last().map(|(n, _)| n)
        ),
        Ok(bytes) => {
            let n = which_version(&bytes).unwrap_or_else(|| {
                panic!(
                    "hot is garbage after the recovery: {} bytes starting {:?}; {}; round \
                     {floor:?} was closed over 1 s before the loss, round {:?} last",
                    bytes.len(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)]),
                    garbage_detail(&bytes),
                    closed.last().map(|(n, _)| n)
                )
            });
            eprintln!("hot recovered as round {n} (floor {floor:?})");
            assert!(
                floor.is_none_or(|f| n >= f),
                "hot is round {n}, older than round {floor:?}, closed over 1 s before the loss"
            );
        }
    }
    assert_writable(&b, &scratch, "after");
    pool.finish();
    crate::harness::mount::assert_nothing_left(dir.path(), fuse_mounts_under);
}

/// `poolfs status --json --mount MNT`: whether every file of the mount is healthy, its
/// risk report names nothing degraded and says `machines_off` machines may be off at
/// once with every file readable; and the report, for a message.
fn nothing_degraded(
    controller: std::net::SocketAddr,
    mnt: &Path,
    machines_off: u64,
) -> (bool, String) {
    let out = crate::harness::mount::run(
        poolfs(["status", "--json", "-c", &controller.to_string(), "--mount"]).arg(mnt),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return (false, format!("status failed: {text}"));
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return (false, text);
    };
    let mount = &json["mounts"][0];
    let files = mount["files"].as_array().cloned().unwrap_or_default();
    let healthy = !files.is_empty() && files.iter().all(|f| f["health"] == "healthy");
    let risk = &mount["risk"];
    let risk_clean = risk["degraded"].as_u64() == Some(0)
        && risk["machines_off"]
            .as_u64()
            .is_some_and(|n| n >= machines_off);
    (healthy && risk_clean, text)
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn recovery_works_with_a_node_down_that_returns_later() {
    if !can_mount() {
        return;
    }
    let dir = test_dir("recover-node-down");
    // 4 members (the mount and 3 nodes) with 2 parity shards: the lost disk takes one
    // shard of every stripe and the node down another, and k = 2 remain.
    let mut pool = OwnerPool::start(dir.path(), 27320..27330, 3);
    let scratch = pool.scratch();
    let shape = ["--redundancy", "2+2", "--repair-grace", "3", "--lease", "3"];
    let a = pool.mount("a", "alpha", &shape);
    let kept = vec![
        cp_random(&a, &scratch, "big", 6 * MIB + 1),
        cp_random(&a, &scratch, "one-stripe", 700 * 1024),
        put(&a, &scratch, "inline", &Rng::new(3).bytes(3000)),
    ];
    fs::create_dir(a.path("dir")).expect("mkdir");
    let mut kept = kept;
    kept.push(cp_random(&a, &scratch, "dir/nested", 2 * MIB + 5));
    assert_eq!(
        shape_of(&health(&a.path("big"))),
        Some((2, 2)),
        "{}",
        health(&a.path("big"))
    );
    let code = pool.export_code(&a.storage, "code");
    std::thread::sleep(SETTLE);

    let mut rng = Rng::new(seed());
    let down = pick(&mut rng, &[0, 1, 2], 1)[0];
    pool.kill_node(down);
    pool.kill_mount(&a);
    pool.lose_disk(&a);
    let (b, _) = pool.recover_within(lease_wait(), "b", "beta", Some(&code), &shape);
    assert_all_read_back(&b, &kept, "recovered with a node down");
    // The node comes back later: after its grace (3 s) and a repair pass (every 2 s) of
    // the recovered mount, which has then worked around it.
    std::thread::sleep(Duration::from_secs(3 + 2 + 1));

    pool.restart_node(down);
    assert_all_read_back(&b, &kept, "the node back");
    // Status must say so for 5 s in a row (over two repair passes, every 2 s): a pass
    // still at work on the files could change it right after one look.
    let limit = Duration::from_secs(30);
    let mut last = String::new();
    let mut whole_since: Option<Instant> = None;
    let clean = wait_until(limit, || {
        let (ok, text) = nothing_degraded(pool.controller, &b.mnt, 2);
        last = text;
        // And in their shape again (a file narrowed while the node was away is widened).
        let whole = ok
            && kept.iter().all(|k| {
                let h = health(&b.path(&k.rel));
                shape_of(&h).is_none_or(|s| s == (2, 2))
            });
        whole_since = whole.then(|| whole_since.unwrap_or_else(Instant::now));
        std::thread::sleep(Duration::from_millis(500)); // status is a process: not too often
        whole_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(5))
    });
    assert!(
        clean,
        "{limit:?} after the node came back, status still shows damage, or fewer than 2 \
         machines may be off, or a file is not 2+2 again:\n{last}\n{}",
        kept.iter()
            .map(|k| format!("{}: {}", k.rel, health(&b.path(&k.rel))))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What status says must hold: the lost disk's shards and the down node's are whole
    // again, on 4 machines, so the pool survives losing 2 members, as it now promises.
    for i in (0..3).filter(|&i| i != down) {
        pool.kill_node(i);
    }
    assert_all_read_back(&b, &kept, "two other nodes killed after the repair");
    pool.finish();
    crate::harness::mount::assert_nothing_left(dir.path(), fuse_mounts_under);
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_second_mount_of_the_same_owner_is_refused_until_the_lease_runs_out() {
    if !can_mount() {
        return;
    }
    let dir = test_dir("recover-lease");
    let mut pool = OwnerPool::start(dir.path(), 27330..27340, 2);
    let scratch = pool.scratch();
    let a = pool.mount("a", "alpha", &lease_arg());
    let mut kept = vec![
        cp_random(&a, &scratch, "before", 3 * MIB + 3),
        put(&a, &scratch, "small", b"a small file of the first mount\n"),
    ];
    let code = pool.export_code(&a.storage, "code");
    // B's storage holds only the imported key; the code comes from there.
    let b_storage = pool.root.join("b.storage");
    fs::create_dir_all(&b_storage).expect("mkdir b.storage");
    pool.import_code(&b_storage, &code);
    std::thread::sleep(SETTLE);

    let mut recover = vec!["--recover"];
    recover.extend(lease_arg());
    let refused = pool
        .try_mount("b", "beta", &recover)
        .map(|i| pool.mounts[i].mnt.clone());
    let said = match refused {
        Ok(mnt) => panic!(
            "a second mount of the owner at {} succeeded while the first lives",
            mnt.display()
        ),
        Err(said) => said,
    };
    assert!(
        said.contains(LEASE_HELD) && said.contains("alpha"),
        "the refusal does not name the machine holding the lease (alpha): {said}"
    );
    // The first mount is untouched by the attempt: it still writes and reads.
    kept.push(cp_random(&a, &scratch, "after-refusal", MIB + 9));
    assert_all_read_back(&a, &kept, "the first mount after the refusal");
    std::thread::sleep(SETTLE);

    let killed_at = Instant::now();
    pool.kill_mount(&a);
    let (b, took) = pool.recover_within(lease_wait(), "b", "beta", None, &lease_arg());
    eprintln!(
        "recovered {:.1}s after the kill (lease {LEASE}s)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(took <= lease_wait(), "recovery took {took:?}");
    assert_all_read_back(&b, &kept, "recovered after the lease ran out");
    assert_writable(&b, &scratch, "new");
    pool.finish();
    crate::harness::mount::assert_nothing_left(dir.path(), fuse_mounts_under);
}
