//! Real kernel mounts of poolfs (issue 3): cp/cat/dd round trips, POSIX operations and
//! their errno, a randomized model test, persistence, spreading, up/down, mount -t
//! poolfs, mount errors, nodes that fail, what the nodes hold, and `poolfs status`. This file holds the
//! helpers the capability modules share.

use crate::harness;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::mount::{
    assert_same_file, can_mount, data_segment_usage, drop_cache, health, is_mounted, member_states,
    mmap_write, poolfs, procs_under, random_file, run, run_ok, segment_usage, wait_until, Pool,
    Rng, MIB,
};

mod failover;
mod helper;
mod lifecycle;
mod listing;
mod messages;
mod model;
mod posix;
mod round_trips;
mod status;
mod storage;

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

/// Bytes and count of the segments of file data over every node of the pool (the
/// mount's namespace left out: its blobs come and go with every change, not with the
/// files a test writes or removes).
fn total_segments(pool: &Pool) -> (u64, usize) {
    pool.storages()
        .iter()
        .map(|s| data_segment_usage(s))
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
