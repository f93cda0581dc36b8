//! What the nodes hold and charge: quotas, ciphertext only, failing closes that keep
//! the previous file, small files kept in the metadata.

use super::*;

/// With `up --quota`, copying a file larger than what the mount may hold on each node
/// fails with EDQUOT ("Disk quota exceeded"), not a crash or a silent loss; removing it
/// leaves no segment behind and gives the quota back.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
        pool.storages().iter().all(|s| data_segment_usage(s).0 == 0)
    });
    let left: Vec<_> = pool
        .storages()
        .iter()
        .map(|s| data_segment_usage(s))
        .collect();
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
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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

/// A close whose stores fail (the quota is spent on every node) returns the error and
/// leaves the file as it was: a new file stays empty, an append to a full stripe
/// leaves the old size and bytes, also after a remount (what is on disk in the
/// metadata, not just what the mount remembers). The close commits the file's record
/// while its shards are being stored, so this checks that a failed store puts the
/// previous record back.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
        pool.storages().iter().all(|s| data_segment_usage(s).0 == 0)
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
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
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
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn small_files_live_in_the_metadata_until_they_grow() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("inline", 3);
    let mut rng = Rng::new(12);
    let on_nodes = |pool: &Pool| -> u64 {
        pool.storages()
            .iter()
            .map(|s| data_segment_usage(s).0)
            .sum()
    };
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
