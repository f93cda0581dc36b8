//! A randomized model test: the same operations on a mounted file and a local one,
//! compared byte for byte (holes and seeks included).

use super::*;

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
        // `range` is inclusive: at most the bytes left before the end.
        let len = rng.range(1, (size - off).min(300 * 1024));
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
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
