//! Every program works on the pool (issue 12): other users with `--allow-other`, FIFOs,
//! sockets and device nodes, setgid directories, fallocate, the pool's own extended
//! attributes kept out of copies, atomic saves, a full disk, attributes exactly as set,
//! sparse files, and times that follow the writes. Each test runs real programs or
//! syscalls on a real mount of its own pool and checks what a user would check: the bytes
//! that come back, the errno of a call, stat fields, that nothing was lost.
//!
//! Tests that act as another user run `setpriv` (util-linux) with uids 1000 and 1001 and
//! the made-up group 4242; they need no entry in /etc/passwd.
//!
//! This file holds what the capability modules share: syscalls with their errno and
//! running code as another user.

use crate::harness;
use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::mount::{
    assert_same_file, can_mount, drop_cache, is_mounted, run, run_ok, wait_until, Pool, Rng, MIB,
};

mod editors;
mod fio;
mod full_disk;
mod sparse;
mod special;
mod times;
mod users;
mod xattr;

// ---------------------------------------------------------------------------------
// Syscalls with their errno
// ---------------------------------------------------------------------------------

/// The errno of a failed call; panics (naming `what`) if it succeeded.
fn errno_of<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

fn errname(errno: i32) -> String {
    format!("errno {errno} ({})", io::Error::from_raw_os_error(errno))
}

fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    let got = errno_of(r, what);
    assert_eq!(
        got,
        want,
        "{what}: {} instead of {}",
        errname(got),
        errname(want)
    );
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// mknod(2): `kind` is S_IFIFO, S_IFCHR, S_IFBLK (or S_IFREG), `perm` the mode bits.
fn mknod(p: &Path, kind: libc::mode_t, perm: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: a valid NUL-terminated path.
    cvt(unsafe { libc::mknod(cstr(p).as_ptr(), kind | perm, dev) })
}

fn mkfifo(p: &Path, perm: libc::mode_t) -> io::Result<()> {
    // SAFETY: a valid NUL-terminated path.
    cvt(unsafe { libc::mkfifo(cstr(p).as_ptr(), perm) })
}

/// truncate(2) by path.
fn truncate_path(p: &Path, len: u64) -> io::Result<()> {
    // SAFETY: a valid NUL-terminated path.
    cvt(unsafe { libc::truncate(cstr(p).as_ptr(), len as libc::off_t) })
}

fn timespec((secs, nanos): (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    }
}

/// utimensat(2) by path (following no symlink: the paths given are files and dirs).
fn set_times(p: &Path, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: a valid path and an array of two timespecs.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(p).as_ptr(), ts.as_ptr(), 0) })
}

/// futimens(3) on an open file.
fn set_times_fd(f: &File, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: a valid descriptor and an array of two timespecs.
    cvt(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })
}

/// fallocate(2).
fn fallocate(f: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    cvt(unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// lseek(2) with SEEK_DATA / SEEK_HOLE.
fn lseek(f: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: a valid descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// close(2) with its result, which `File`'s drop throws away.
fn close_checked(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: we own fd (taken out of the File) and close it once.
    cvt(unsafe { libc::close(fd) })
}

/// The names listxattr(2) gives for `p`.
fn list_xattrs(p: &Path) -> io::Result<Vec<String>> {
    let c = cstr(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid path and a writable buffer of the given length.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// getxattr(2).
fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// The pool's own attribute names among `names`.
fn pool_attrs(names: &[String]) -> Vec<&String> {
    names
        .iter()
        .filter(|n| n.starts_with("user.poolfs."))
        .collect()
}

/// Entries of `dir` with the type readdir(3) gives (d_type), sorted, without . and ..
fn d_types(dir: &Path) -> Vec<(String, u8)> {
    let c = cstr(dir);
    // SAFETY: a valid path; the stream is closed below.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(
        !d.is_null(),
        "opendir {}: {}",
        dir.display(),
        io::Error::last_os_error()
    );
    let mut out = Vec::new();
    loop {
        // SAFETY: `d` is an open directory stream.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry whose name is NUL-terminated.
        let (name, t) = unsafe {
            (
                CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*e).d_type,
            )
        };
        if name != "." && name != ".." {
            out.push((name, t));
        }
    }
    // SAFETY: closing the stream opened above, once.
    unsafe { libc::closedir(d) };
    out.sort();
    out
}

/// This process's umask (from /proc/self/status: reading it with umask(2) would set it
/// for every thread of the test binary).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line.trim(), 8).expect("octal umask")
}

/// (size, used) of the filesystem holding `p`, in bytes, as df computes them; and free
/// (f_bavail) bytes.
fn df(p: &Path) -> (u64, u64, u64) {
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out pointer.
    let r = unsafe { libc::statvfs(cstr(p).as_ptr(), &mut s) };
    assert_eq!(
        r,
        0,
        "statvfs {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    let unit = s.f_frsize as u64;
    (
        s.f_blocks as u64 * unit,
        (s.f_blocks as u64 - s.f_bfree as u64) * unit,
        s.f_bavail as u64 * unit,
    )
}

/// The /proc/mounts line of the filesystem mounted at `mnt`.
fn mount_line(mnt: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let want = mnt.to_str().expect("UTF-8 mount point");
    mounts
        .lines()
        .rfind(|l| l.split(' ').nth(1) == Some(want))
        .unwrap_or_else(|| panic!("{want} not in /proc/mounts"))
        .to_string()
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

/// The whole content of a file, read after dropping its cached pages so the bytes come
/// from the filesystem.
fn read_uncached(p: &Path) -> Vec<u8> {
    drop_cache(p);
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn mtime_ns(m: &fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn ctime_ns(m: &fs::Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

/// Is the time `t` (ns) between `t0` and `t1`, give or take the 50 ms a coarse kernel
/// clock may lag?
fn within(t: i128, t0: i128, t1: i128) -> bool {
    (t0 - 50_000_000..=t1 + 50_000_000).contains(&t)
}

fn secs(ns: i128) -> f64 {
    ns as f64 / 1e9
}

/// A command's stderr, for messages.
fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// The Python interpreter for scripts, also runnable by other uids (a pyenv shim under
/// /root is not).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A child process that is killed (by its pid) and reaped if the test ends first.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().expect("wait")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------
// Other users (setpriv)
// ---------------------------------------------------------------------------------

/// A process identity for `setpriv`.
struct Who {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

/// A group no test user has as primary group.
const G: u32 = 4242;
/// A user who is not the mounter.
const ALICE: Who = Who {
    uid: 1000,
    gid: 1000,
    groups: &[1000],
};
/// Alice, also a member of G through her supplementary groups only.
const ALICE_IN_G: Who = Who {
    uid: 1000,
    gid: 1000,
    groups: &[1000, G],
};
/// A third user, in no group of the others.
const BOB: Who = Who {
    uid: 1001,
    gid: 1001,
    groups: &[1001],
};

/// `setpriv --reuid --regid --groups` prefix for a command run as `who`.
fn as_user(who: &Who) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", who.uid))
        .arg(format!("--regid={}", who.gid));
    if who.groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = who.groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    c.arg("--").current_dir("/");
    c
}

/// Runs Python `code` as `who` (with `os` and `sys` imported, the paths in sys.argv[1:]):
/// Ok(its stdout), or Err(errno) of the OSError it raised.
fn py_as(who: &Who, code: &str, args: &[&Path]) -> Result<String, i32> {
    let body: String = code.lines().map(|l| format!("    {l}\n")).collect();
    let script = format!(
        "import os, sys\ntry:\n{body}except OSError as e:\n    print('ERRNO', e.errno)\n    sys.exit(99)\n"
    );
    let out = run(as_user(who).arg(python()).arg("-c").arg(&script).args(args));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(99) => Err(stdout
            .trim()
            .strip_prefix("ERRNO ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unparsable errno from {code}: {stdout}"))),
        _ => panic!(
            "python as uid {} failed ({}): {code}\n{}",
            who.uid,
            out.status,
            stderr_of(&out)
        ),
    }
}

/// `what` done by `who` succeeds.
fn user_ok(who: &Who, code: &str, args: &[&Path], what: &str) -> String {
    py_as(who, code, args).unwrap_or_else(|e| panic!("{what} as uid {}: {}", who.uid, errname(e)))
}

/// `what` done by `who` fails with `want`.
fn user_fails(who: &Who, code: &str, args: &[&Path], want: i32, what: &str) {
    match py_as(who, code, args) {
        Ok(_) => panic!(
            "{what} as uid {} succeeded; expected {}",
            who.uid,
            errname(want)
        ),
        Err(got) => assert_eq!(
            got,
            want,
            "{what} as uid {}: {} instead of {}",
            who.uid,
            errname(got),
            errname(want)
        ),
    }
}

const CREATE: &str = "os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))";
const MKDIR: &str = "os.mkdir(sys.argv[1])";
const RENAME: &str = "os.rename(sys.argv[1], sys.argv[2])";
const UNLINK: &str = "os.unlink(sys.argv[1])";
const LIST: &str = "print('\\n'.join(sorted(os.listdir(sys.argv[1]))))";
const STAT: &str = "os.stat(sys.argv[1])";
const READ: &str = "sys.stdout.write(open(sys.argv[1]).read())";
const WRITE_BYTE: &str = "fd = os.open(sys.argv[1], os.O_WRONLY)\nos.write(fd, b'x')\nos.close(fd)";
const TRUNCATE: &str = "os.truncate(sys.argv[1], 0)";

/// Lets other uids reach the mount point: a test dir is made 0700.
fn open_to_others(pool: &Pool) {
    fs::set_permissions(&pool.root, fs::Permissions::from_mode(0o755)).expect("chmod test dir");
}

fn mkdir_owned(p: &Path, uid: u32, gid: u32, mode: u32) {
    fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn perm(p: &Path) -> u32 {
    lstat(p).mode() & 0o7777
}
