//! fallocate and sparse files: reservations, punched holes, and a charge for what a
//! file holds.

use super::*;

const FALLOC_FL_COLLAPSE_RANGE: libc::c_int = 0x08;
const FALLOC_FL_ZERO_RANGE: libc::c_int = 0x10;
const FALLOC_FL_INSERT_RANGE: libc::c_int = 0x20;

/// Issue 12, item 4 (/work/shared/cases/14-fallocate.sh). fallocate -l gives a file of
/// zeros of that size, as does posix_fallocate; --keep-size keeps the size; a punched
/// hole reads back as zeros and nothing else changes; ZERO_RANGE zeroes (or is refused
/// with EOPNOTSUPP and no effect); collapse and insert range are refused with EOPNOTSUPP
/// and no effect; a fallocate past the pool's room fails with ENOSPC or EDQUOT and leaves
/// size and bytes.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn fallocate_reserves_punches_and_refuses_what_it_cannot_do() {
    if !can_mount() {
        return;
    }
    // 32 MiB per member on each of 2 nodes: 64 MiB in all.
    let pool = Pool::up_with("falloc", 2, &["--quota", "32M"]);
    let p = |n: &str| pool.path(n);

    let out = run(Command::new("fallocate").args(["-l", "8M"]).arg(p("a")));
    assert!(out.status.success(), "fallocate -l 8M: {}", stderr_of(&out));
    assert_eq!(
        lstat(&p("a")).len(),
        8 * MIB as u64,
        "size after fallocate -l 8M"
    );
    assert!(
        read_uncached(&p("a")).iter().all(|&b| b == 0),
        "fallocate -l 8M: not all zeros"
    );

    let out = run(Command::new(python()).arg("-c").arg(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)\nos.posix_fallocate(fd, 0, 3 << 20)\nos.close(fd)",
    ).arg(p("b")));
    assert!(
        out.status.success(),
        "os.posix_fallocate: {}",
        stderr_of(&out)
    );
    assert_eq!(
        lstat(&p("b")).len(),
        3 * MIB as u64,
        "size after posix_fallocate"
    );
    assert!(
        read_uncached(&p("b")).iter().all(|&b| b == 0),
        "posix_fallocate: not zeros"
    );

    // Keep-size on a file with data, then a punched hole and a zeroed range in it.
    let mut expect = Rng::new(14).bytes(100_000);
    fs::write(p("c"), &expect).unwrap();
    let out = run(Command::new("fallocate")
        .args(["-n", "-l", "1M"])
        .arg(p("c")));
    assert!(
        out.status.success(),
        "fallocate --keep-size: {}",
        stderr_of(&out)
    );
    assert_eq!(
        lstat(&p("c")).len(),
        100_000,
        "fallocate --keep-size changed the size"
    );
    assert!(
        read_uncached(&p("c")) == expect,
        "fallocate --keep-size changed the bytes"
    );

    let out = run(Command::new("fallocate")
        .args(["-p", "-o", "4096", "-l", "4096"])
        .arg(p("c")));
    assert!(
        out.status.success(),
        "fallocate --punch-hole: {}",
        stderr_of(&out)
    );
    expect[4096..8192].fill(0);
    assert_eq!(lstat(&p("c")).len(), 100_000, "punch-hole changed the size");
    assert!(
        read_uncached(&p("c")) == expect,
        "after a punched hole: bytes differ"
    );

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("c"))
        .unwrap();
    match fallocate(&f, FALLOC_FL_ZERO_RANGE, 16384, 8192) {
        Ok(()) => expect[16384..24576].fill(0),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "fallocate ZERO_RANGE: {e} (zero the range, or refuse with EOPNOTSUPP)"
        ),
    }
    for (mode, name) in [
        (FALLOC_FL_COLLAPSE_RANGE, "COLLAPSE_RANGE"),
        (FALLOC_FL_INSERT_RANGE, "INSERT_RANGE"),
    ] {
        assert_errno(fallocate(&f, mode, 4096, 4096), libc::EOPNOTSUPP, name);
    }
    drop(f);
    assert_eq!(
        lstat(&p("c")).len(),
        100_000,
        "size after ZERO_RANGE and refused modes"
    );
    assert!(
        read_uncached(&p("c")) == expect,
        "bytes after ZERO_RANGE and refused modes"
    );

    // More than the pool can hold: refused, with nothing changed.
    let data = Rng::new(15).bytes(64 * 1024);
    fs::write(p("e"), &data).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("e"))
        .unwrap();
    let got = errno_of(
        fallocate(&f, 0, 0, 1 << 30),
        "fallocate of 1 GiB in a 64 MiB pool",
    );
    assert!(
        got == libc::ENOSPC || got == libc::EDQUOT,
        "fallocate of 1 GiB in a 64 MiB pool: {} (want ENOSPC or EDQUOT)",
        errname(got)
    );
    drop(f);
    assert_eq!(
        lstat(&p("e")).len(),
        data.len() as u64,
        "size after a refused fallocate"
    );
    assert!(
        read_uncached(&p("e")) == data,
        "bytes after a refused fallocate"
    );
}

// ---------------------------------------------------------------------------------
// Sparse files
// ---------------------------------------------------------------------------------

/// Issue 12, item 9 (/work/shared/cases/37-qemu-sparse-image.sh,
/// 52-thin-image-near-free.sh). A 2 GiB file with 4 MiB written at 1000 MiB: st_blocks
/// and du count only what is stored, SEEK_DATA/SEEK_HOLE find the data within a few MiB,
/// cp out of the mount makes a sparse, equal copy; a 1-byte write far beyond the pool's
/// free space succeeds, reads back and hardly moves df's used space.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn sparse_files_stay_sparse_and_are_charged_for_what_they_hold() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("sparse", 3);
    let (g, m) = (1u64 << 30, MIB as u64);
    let s = pool.path("s2g");
    let data = Rng::new(37).bytes(4 * MIB);
    let f = File::create(&s).unwrap();
    f.set_len(2 * g).unwrap();
    f.write_all_at(&data, 1000 * m).unwrap();
    close_checked(f).expect("close of the sparse file");
    let meta = lstat(&s);
    assert_eq!(meta.len(), 2 * g, "size");
    assert!(
        meta.blocks() * 512 < 64 * m,
        "st_blocks*512 of a 2 GiB file holding 4 MiB: {} MiB",
        meta.blocks() * 512 / m
    );
    let du = run_ok(Command::new("du").arg("--block-size=1").arg(&s));
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output");
    assert!(
        du < 64 * m,
        "du of a 2 GiB file holding 4 MiB: {} MiB",
        du / m
    );

    let f = File::open(&s).unwrap();
    let data_at = lseek(&f, 0, libc::SEEK_DATA).expect("SEEK_DATA from 0");
    assert!(
        (992 * m..=1000 * m).contains(&data_at),
        "SEEK_DATA from 0 lands at {} MiB (data at 1000 MiB)",
        data_at as f64 / m as f64
    );
    let hole_at = lseek(&f, data_at, libc::SEEK_HOLE).expect("SEEK_HOLE");
    assert!(
        (1004 * m..=1012 * m).contains(&hole_at),
        "SEEK_HOLE after the data lands at {} MiB (data ends at 1004 MiB)",
        hole_at as f64 / m as f64
    );
    assert_errno(
        lseek(&f, hole_at, libc::SEEK_DATA),
        libc::ENXIO,
        "SEEK_DATA past the last data",
    );
    drop(f);
    drop_cache(&s);
    let f = File::open(&s).unwrap();
    let mut back = vec![0u8; 4 * MIB];
    f.read_exact_at(&mut back, 1000 * m).unwrap();
    assert!(back == data, "the 4 MiB written at 1000 MiB");
    f.read_exact_at(&mut back, 990 * m).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "the hole before the data reads as zeros"
    );
    drop(f);

    let copy = pool.scratch().join("s2g.copy");
    let started = Instant::now();
    let out = run(Command::new("cp").arg(&s).arg(&copy));
    assert!(
        out.status.success(),
        "cp out of the mount: {}",
        stderr_of(&out)
    );
    eprintln!(
        "cp of the sparse file took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let cm = lstat(&copy);
    assert!(
        cm.blocks() * 512 < 64 * m,
        "cp out of the mount allocates {} MiB for 4 MiB of data",
        cm.blocks() * 512 / m
    );
    assert_same_file(&s, &copy);
    fs::remove_file(&copy).unwrap();

    // A thin image: one byte far beyond the free space.
    let (_, used0, free) = df(&pool.mnt);
    let off = (free * 10) & !4095;
    let thin = pool.path("thin");
    let f = File::create(&thin).unwrap();
    f.write_all_at(b"X", off)
        .expect("1-byte write at 10x the free space");
    close_checked(f).unwrap_or_else(|e| {
        panic!(
            "close of a 1-byte write at {} GiB, df free {} GiB: {e}",
            off >> 30,
            free >> 30
        )
    });
    assert_eq!(lstat(&thin).len(), off + 1, "size of the thin file");
    drop_cache(&thin);
    let mut one = [0u8; 1];
    File::open(&thin)
        .unwrap()
        .read_exact_at(&mut one, off)
        .unwrap();
    assert_eq!(&one, b"X", "the byte read back");
    let mut grew = 0;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        grew = grew.max(df(&pool.mnt).1.saturating_sub(used0));
    }
    assert!(
        grew < 64 * m,
        "df's used space grew by {} MiB for one byte at {} GiB",
        grew / m,
        off >> 30
    );
}

/// Regression (found by the model test): a stripe that became a hole (written all
/// zeros, or cut off by a shrink) and was written again before the file was committed
/// kept its new bytes in the same slot on the nodes, and the commit then freed that
/// slot as the hole's: the file read back with EIO.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_stripe_made_a_hole_and_rewritten_before_the_close_keeps_its_bytes() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("hole-reuse", 3);
    let stripe = 2 * MIB; // 3 nodes: k = 2 data shards of 1 MiB
    let mut rng = Rng::new(12);
    for (name, how) in [("zeroed", "zeros"), ("shrunk", "shrink")] {
        let p = pool.path(name);
        let first = rng.bytes(2 * stripe);
        fs::write(&p, &first).unwrap();
        let again = rng.bytes(stripe);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        match how {
            // A whole stripe of zeros goes out at once, as a hole.
            "zeros" => f.write_all_at(&vec![0; stripe], stripe as u64).unwrap(),
            // A shrink cuts the second stripe off.
            _ => f.set_len(stripe as u64).unwrap(),
        }
        f.write_all_at(&again, stripe as u64).unwrap();
        close_checked(f).unwrap_or_else(|e| panic!("{name}: close: {e}"));
        let mut want = first[..stripe].to_vec();
        want.extend_from_slice(&again);
        let got = read_uncached(&p);
        assert!(
            got == want,
            "{name}: the rewritten stripe does not read back"
        );
    }
}
