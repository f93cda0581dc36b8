//! Every program works on the pool (issue 12): other users with `--allow-other`, FIFOs,
//! sockets and device nodes, setgid directories, fallocate, the pool's own extended
//! attributes kept out of copies, atomic saves, a full disk, attributes exactly as set,
//! sparse files, and times that follow the writes. Each test runs real programs or
//! syscalls on a real mount of its own pool and checks what a user would check: the bytes
//! that come back, the errno of a call, stat fields, that nothing was lost.
//!
//! Tests that act as another user run `setpriv` (util-linux) with uids 1000 and 1001 and
//! the made-up group 4242; they need no entry in /etc/passwd.

#[path = "common/mount.rs"]
mod harness;

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

use harness::{
    assert_same_file, can_mount, drop_cache, is_mounted, run, run_ok, wait_until, Pool, Rng, MIB,
};

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

// ---------------------------------------------------------------------------------
// 1. Other users
// ---------------------------------------------------------------------------------

/// Issue 12, item 1. Without `--allow-other` another uid is refused (EACCES); with it,
/// access follows the mode bits, owner, group and supplementary groups, sticky
/// directories protect other users' entries, and a write or truncate by a non-owner
/// clears setuid and setgid. (Needs `poolfs up --allow-other`.)
#[test]
fn other_users_get_access_by_mode_bits_with_allow_other() {
    if !can_mount() {
        return;
    }
    {
        let pool = Pool::up("noallow", 2);
        open_to_others(&pool);
        fs::write(pool.path("f"), b"root's\n").unwrap();
        let mnt = pool.mnt.as_path();
        user_fails(
            &ALICE,
            LIST,
            &[mnt],
            libc::EACCES,
            "ls of the root without --allow-other",
        );
        user_fails(
            &ALICE,
            STAT,
            &[&pool.path("f")],
            libc::EACCES,
            "stat without --allow-other",
        );
    }

    let pool = Pool::up_with("allow", 2, &["--allow-other"]);
    open_to_others(&pool);
    let p = |n: &str| pool.path(n);
    fs::write(p("hello"), b"hello from root\n").unwrap();
    let mnt = pool.mnt.as_path();

    // ls of the root, and reading a 0644 file of root's.
    let out = run(as_user(&ALICE).arg("ls").arg("-la").arg(mnt));
    assert!(
        out.status.success(),
        "ls -la of the root as uid 1000: {}",
        stderr_of(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello"),
        "ls as uid 1000 does not list the root's file: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        user_ok(&ALICE, READ, &[&p("hello")], "read a 0644 file"),
        "hello from root\n"
    );

    // A 0777 directory: create, mkdir and rename work, and the new entries are hers.
    mkdir_owned(&p("pub"), 0, 0, 0o777);
    user_ok(
        &ALICE,
        CREATE,
        &[&p("pub/a")],
        "open(O_CREAT) in a 0777 dir",
    );
    user_ok(&ALICE, MKDIR, &[&p("pub/d")], "mkdir in a 0777 dir");
    for n in ["pub/a", "pub/d"] {
        let m = lstat(&p(n));
        assert_eq!(
            (m.uid(), m.gid()),
            (1000, 1000),
            "owner of {n} made by uid 1000"
        );
    }
    user_ok(
        &ALICE,
        RENAME,
        &[&p("pub/a"), &p("pub/b")],
        "rename in a 0777 dir",
    );
    assert!(
        p("pub/b").exists() && !p("pub/a").exists(),
        "rename by uid 1000"
    );

    // A 0755 directory of root's refuses her, and so does root's 0644 file.
    mkdir_owned(&p("ro"), 0, 0, 0o755);
    user_fails(
        &ALICE,
        CREATE,
        &[&p("ro/x")],
        libc::EACCES,
        "create in root's 0755 dir",
    );
    user_fails(
        &ALICE,
        MKDIR,
        &[&p("ro/y")],
        libc::EACCES,
        "mkdir in root's 0755 dir",
    );
    user_fails(
        &ALICE,
        WRITE_BYTE,
        &[&p("hello")],
        libc::EACCES,
        "write to root's 0644 file",
    );
    assert!(!p("ro/x").exists() && !p("ro/y").exists());

    // A group-writable 0770 dir of group G: writable through a supplementary group only.
    mkdir_owned(&p("grp"), 0, G, 0o770);
    user_ok(
        &ALICE_IN_G,
        CREATE,
        &[&p("grp/m")],
        "create in a 0770 dir of a supplementary group",
    );
    user_fails(
        &BOB,
        CREATE,
        &[&p("grp/n")],
        libc::EACCES,
        "create in a 0770 dir of a group not held",
    );
    user_fails(
        &ALICE,
        LIST,
        &[&p("grp")],
        libc::EACCES,
        "ls of a 0770 dir without the group",
    );

    // A sticky 1777 dir: others' entries cannot be removed or renamed, one's own can.
    mkdir_owned(&p("tmp"), 0, 0, 0o1777);
    user_ok(&ALICE, CREATE, &[&p("tmp/alice")], "create in a sticky dir");
    user_ok(&BOB, CREATE, &[&p("tmp/bob")], "create in a sticky dir");
    user_fails(
        &BOB,
        UNLINK,
        &[&p("tmp/alice")],
        libc::EPERM,
        "unlink of another's file in a sticky dir",
    );
    user_fails(
        &BOB,
        RENAME,
        &[&p("tmp/alice"), &p("tmp/stolen")],
        libc::EPERM,
        "rename of another's file in a sticky dir",
    );
    assert!(
        p("tmp/alice").exists(),
        "the sticky dir lost uid 1000's file"
    );
    user_ok(
        &BOB,
        RENAME,
        &[&p("tmp/bob"), &p("tmp/bob2")],
        "rename of one's own file in a sticky dir",
    );
    user_ok(
        &BOB,
        UNLINK,
        &[&p("tmp/bob2")],
        "unlink of one's own file in a sticky dir",
    );
    assert!(!p("tmp/bob2").exists());

    // A write and a truncate by a non-owner with write permission clear setuid/setgid.
    for (name, op) in [("pub/suid-w", WRITE_BYTE), ("pub/suid-t", TRUNCATE)] {
        fs::write(p(name), b"0123456789").unwrap();
        fs::set_permissions(p(name), fs::Permissions::from_mode(0o6777)).unwrap();
        assert_eq!(perm(&p(name)), 0o6777, "{name} set up as 06777");
        user_ok(&ALICE, op, &[&p(name)], &format!("{name} by a non-owner"));
        assert_eq!(
            perm(&p(name)),
            0o777,
            "{name}: mode {:o} after a non-owner's write/truncate (setuid and setgid must go)",
            perm(&p(name))
        );
    }
    assert_eq!(fs::read(p("pub/suid-w")).unwrap(), b"x123456789");
    assert_eq!(lstat(&p("pub/suid-t")).len(), 0);

    // Set-group-ID without group-execute (Linux 6.x): a writer outside the file's group
    // clears it, a member keeps it.
    for (who, inside) in [(&ALICE, false), (&ALICE_IN_G, true)] {
        for (op_name, op) in [("write", WRITE_BYTE), ("truncate", TRUNCATE)] {
            let f = p(&format!("pub/sgid-{op_name}-{inside}"));
            fs::write(&f, b"0123456789").unwrap();
            std::os::unix::fs::chown(&f, None, Some(G)).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o2666)).unwrap();
            user_ok(who, op, &[&f], &format!("{op_name} of a 02666 file"));
            let want = if inside { 0o2666 } else { 0o666 };
            assert_eq!(
                perm(&f),
                want,
                "02666 file of group {G} after a {op_name} by uid {} (in the group: {inside})",
                who.uid
            );
        }
    }
}

/// `sudo poolfs up ~/pool` is for the user who ran sudo: the mount admits other users
/// and the pool's root directory is theirs, so they can copy files in without sudo.
#[test]
fn up_through_sudo_gives_the_pool_to_the_user_who_ran_it() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with_env(
        "sudo",
        2,
        &[],
        &[("SUDO_UID", "1000"), ("SUDO_GID", "1000")],
    );
    open_to_others(&pool);
    let root = lstat(&pool.mnt);
    assert_eq!(
        (root.uid(), root.gid()),
        (1000, 1000),
        "owner of the pool's root"
    );
    let f = pool.path("mine");
    user_ok(&ALICE, CREATE, &[&f], "create in the pool's root");
    user_ok(
        &ALICE,
        MKDIR,
        &[&pool.path("dir")],
        "mkdir in the pool's root",
    );
    assert_eq!(lstat(&f).uid(), 1000, "owner of the file alice made");
    user_fails(
        &BOB,
        CREATE,
        &[&pool.path("bob")],
        libc::EACCES,
        "create in alice's pool",
    );
}

// ---------------------------------------------------------------------------------
// 2. FIFOs, sockets and device nodes
// ---------------------------------------------------------------------------------

/// What a special file must look like: type bits, permission bits, rdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Special {
    kind: u32,
    perm: u32,
    rdev: u64,
}

fn special_of(p: &Path) -> Special {
    let m = lstat(p);
    Special {
        kind: m.mode() & libc::S_IFMT,
        perm: m.mode() & 0o7777,
        rdev: m.rdev(),
    }
}

fn d_type_of(kind: u32) -> u8 {
    match kind {
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        _ => libc::DT_REG,
    }
}

/// Makes a fifo, a socket and a char device (and a file) in `dir` (any filesystem).
fn make_special_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/file"), b"a regular file\n").unwrap();
    mkfifo(&dir.join("fifo"), 0o640).unwrap();
    mknod(&dir.join("null"), libc::S_IFCHR, 0o620, libc::makedev(1, 3)).unwrap();
    drop(UnixListener::bind(dir.join("sock")).unwrap());
}

/// Issue 12, item 2. mkfifo, mknod p/c/b and bind() of a unix socket create entries with
/// the right type, mode and rdev, listed with the right d_type, kept across a remount; a
/// FIFO carries bytes between processes; tar and cp -a of a tree holding them succeed and
/// reproduce them; the char device cannot be opened on the (nodev) mount.
#[test]
fn fifos_sockets_and_device_nodes_are_created_listed_and_kept() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("special", 2);
    let dir = pool.path("sp");
    fs::create_dir(&dir).unwrap();
    let um = umask();
    let want = [
        (
            "fifo",
            Special {
                kind: libc::S_IFIFO,
                perm: 0o640 & !um,
                rdev: 0,
            },
        ),
        (
            "pipe",
            Special {
                kind: libc::S_IFIFO,
                perm: 0o600 & !um,
                rdev: 0,
            },
        ),
        (
            "null",
            Special {
                kind: libc::S_IFCHR,
                perm: 0o644 & !um,
                rdev: libc::makedev(1, 3),
            },
        ),
        (
            "loop",
            Special {
                kind: libc::S_IFBLK,
                perm: 0o660 & !um,
                rdev: libc::makedev(7, 0),
            },
        ),
        (
            "sock",
            Special {
                kind: libc::S_IFSOCK,
                perm: 0o777 & !um,
                rdev: 0,
            },
        ),
    ];
    mkfifo(&dir.join("fifo"), 0o640).expect("mkfifo on the mount");
    mknod(&dir.join("pipe"), libc::S_IFIFO, 0o600, 0).expect("mknod p on the mount");
    mknod(&dir.join("null"), libc::S_IFCHR, 0o644, libc::makedev(1, 3)).expect("mknod c 1 3");
    mknod(&dir.join("loop"), libc::S_IFBLK, 0o660, libc::makedev(7, 0)).expect("mknod b 7 0");
    let listener = UnixListener::bind(dir.join("sock")).expect("bind() of a unix socket path");
    drop(listener);
    let check = |when: &str| {
        for (name, w) in &want {
            let got = special_of(&dir.join(name));
            assert_eq!(
                got,
                *w,
                "{name} {when}: type {:o} mode {:o} rdev {}:{}, want type {:o} mode {:o} rdev {}:{}",
                got.kind,
                got.perm,
                libc::major(got.rdev),
                libc::minor(got.rdev),
                w.kind,
                w.perm,
                libc::major(w.rdev),
                libc::minor(w.rdev)
            );
        }
        let mut types: Vec<(String, u8)> = want
            .iter()
            .map(|(n, w)| (n.to_string(), d_type_of(w.kind)))
            .collect();
        types.sort();
        assert_eq!(d_types(&dir), types, "readdir d_type {when}");
    };
    check("when made");

    // A FIFO carries bytes from one process to another.
    let msg = "bytes through a fifo on the pool";
    let writer = ChildGuard(Some(
        Command::new("sh")
            .arg("-c")
            .arg("printf %s \"$1\" > \"$2\"")
            .arg("sh")
            .arg(msg)
            .arg(dir.join("fifo"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a writer"),
    ));
    let got = fs::read(dir.join("fifo")).expect("read the fifo");
    let out = writer.wait();
    assert!(
        out.status.success(),
        "writer into the fifo: {}",
        stderr_of(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        msg,
        "bytes read from the fifo"
    );
    // The FIFO holds no bytes in the pool.
    assert_eq!(lstat(&dir.join("fifo")).len(), 0, "size of the fifo");

    // The mount is nodev: a device node on it cannot be opened.
    let line = mount_line(&pool.mnt);
    assert!(
        line.contains("nodev"),
        "mount options without nodev: {line}"
    );
    assert_errno(
        File::open(dir.join("null")),
        libc::EACCES,
        "open of a char device on the nodev mount",
    );

    // tar and cp -a of a tree holding a fifo, a socket and a char device.
    let scratch = pool.scratch();
    let tree = scratch.join("tree");
    make_special_tree(&tree);
    let tar = scratch.join("tree.tar");
    run_ok(
        Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&scratch)
            .arg("tree"),
    );
    fs::create_dir(pool.path("untar")).unwrap();
    let out = run(Command::new("tar")
        .arg("xpf")
        .arg(&tar)
        .arg("-C")
        .arg(pool.path("untar")));
    assert!(
        out.status.success(),
        "tar xf into the mount: {}",
        stderr_of(&out)
    );
    // tar does not archive sockets ("socket ignored"): it reproduces the rest.
    for name in ["fifo", "null", "sub/file"] {
        assert_eq!(
            special_of(&pool.path("untar/tree").join(name)),
            special_of(&tree.join(name)),
            "{name} extracted by tar"
        );
    }
    assert_eq!(
        fs::read(pool.path("untar/tree/sub/file")).unwrap(),
        b"a regular file\n"
    );
    let out = run(Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(pool.path("cpa")));
    assert!(
        out.status.success(),
        "cp -a into the mount: {}",
        stderr_of(&out)
    );
    for name in ["fifo", "null", "sock", "sub/file"] {
        assert_eq!(
            special_of(&pool.path("cpa").join(name)),
            special_of(&tree.join(name)),
            "{name} copied by cp -a"
        );
    }

    pool.unmount();
    pool.remount();
    check("after a remount");
    assert_eq!(
        special_of(&pool.path("cpa/null")),
        special_of(&tree.join("null")),
        "cp -a'd char device after a remount"
    );
}

// ---------------------------------------------------------------------------------
// 3. Setgid directories
// ---------------------------------------------------------------------------------

/// Issue 12, item 3, as root (/work/shared/cases/13-setgid-dir.sh). In a directory of
/// group G with mode 2775, a file, a subdirectory, a symlink and a fifo get group G, and
/// subdirectories keep the setgid bit, recursively.
#[test]
fn new_entries_in_a_setgid_directory_take_its_group() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("setgid", 2);
    let d = pool.path("shared");
    mkdir_owned(&d, 0, G, 0o2775);
    assert_eq!(
        (lstat(&d).gid(), perm(&d)),
        (G, 0o2775),
        "the setgid dir itself"
    );
    let um = umask();

    File::create(d.join("file")).unwrap();
    fs::write(d.join("written"), b"hi\n").unwrap();
    fs::DirBuilder::new()
        .mode(0o775)
        .create(d.join("sub"))
        .unwrap();
    fs::DirBuilder::new()
        .mode(0o775)
        .create(d.join("sub/deeper"))
        .unwrap();
    File::create(d.join("sub/deeper/file")).unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    for n in [
        "file",
        "written",
        "link",
        "sub",
        "sub/deeper",
        "sub/deeper/file",
    ] {
        let g = lstat(&d.join(n)).gid();
        assert_eq!(
            g, G,
            "{n} made by root (gid 0) in a setgid dir of group {G} has gid {g}"
        );
    }
    for n in ["sub", "sub/deeper"] {
        assert_eq!(
            perm(&d.join(n)),
            0o2000 | (0o775 & !um),
            "mode of {n}: a subdirectory of a setgid dir inherits the bit"
        );
    }
    assert_eq!(
        perm(&d.join("file")),
        0o666 & !um,
        "a file does not take the bit"
    );
    mkfifo(&d.join("fifo"), 0o644).expect("mkfifo in a setgid dir");
    assert_eq!(
        lstat(&d.join("fifo")).gid(),
        G,
        "gid of a fifo made in a setgid dir"
    );
}

/// Issue 12, item 3, as other users (needs `poolfs up --allow-other`). A member of G
/// (through a supplementary group) creates entries of group G in a 2775 dir; a user not
/// in G who creates a file with mode 02755 in a 2777 dir of group G gets group G but
/// not the setgid bit.
#[test]
fn setgid_directories_work_for_other_users_with_allow_other() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with("setgid-users", 2, &["--allow-other"]);
    open_to_others(&pool);
    let d = pool.path("shared");
    mkdir_owned(&d, 0, G, 0o2775);
    let j = |n: &str| d.join(n);
    user_ok(&ALICE_IN_G, CREATE, &[&j("file")], "create in a setgid dir");
    user_ok(
        &ALICE_IN_G,
        "os.umask(0o002)\nos.mkdir(sys.argv[1], 0o775)\nos.mkdir(sys.argv[2], 0o775)",
        &[&j("sub"), &j("sub/deeper")],
        "mkdir in a setgid dir",
    );
    user_ok(
        &ALICE_IN_G,
        "os.symlink('file', sys.argv[1])",
        &[&j("link")],
        "symlink in a setgid dir",
    );
    user_ok(
        &ALICE_IN_G,
        "os.mkfifo(sys.argv[1], 0o644)",
        &[&j("fifo")],
        "mkfifo in a setgid dir",
    );
    for n in ["file", "sub", "sub/deeper", "link", "fifo"] {
        let m = lstat(&j(n));
        assert_eq!(
            (m.uid(), m.gid()),
            (1000, G),
            "owner and group of {n} made by uid 1000"
        );
    }
    for n in ["sub", "sub/deeper"] {
        assert_eq!(
            perm(&j(n)),
            0o2775,
            "mode of {n} made by uid 1000 with umask 002"
        );
    }

    let open = pool.path("open");
    mkdir_owned(&open, 0, G, 0o2777);
    user_ok(
        &BOB,
        "os.umask(0o022)\nos.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o2755))",
        &[&open.join("bob")],
        "create with mode 02755 by a non-member",
    );
    let m = lstat(&open.join("bob"));
    assert_eq!(
        m.gid(),
        G,
        "a non-member's file in a setgid dir still takes its group"
    );
    assert_eq!(
        m.mode() & 0o7777,
        0o755,
        "a non-member's file created 02755 in a setgid dir of another group keeps setgid"
    );
}

// ---------------------------------------------------------------------------------
// 4. fallocate
// ---------------------------------------------------------------------------------

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
// 5. The pool's own attributes
// ---------------------------------------------------------------------------------

/// Issue 12, item 5 (/work/shared/cases/23-internal-xattr-rsync-X-cp-a.sh). listxattr
/// lists no `user.poolfs.*` name (they stay readable by name); rsync -aX into the mount
/// exits 0; copies out with cp -a, rsync -aX and shutil.copy2 carry no pool attribute; a
/// user attribute is listed, read, copied out, kept across a remount and removable.
#[test]
fn pool_attributes_stay_out_of_listings_and_copies() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("xattr", 2);
    let f = pool.path("f");
    fs::write(&f, b"hello\n").unwrap();
    for p in [&f, &pool.mnt] {
        let names = list_xattrs(p).unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()));
        assert!(
            pool_attrs(&names).is_empty(),
            "listxattr of {} lists the pool's own attributes: {names:?}",
            p.display()
        );
    }
    let out = run(Command::new("getfattr")
        .args(["-n", "user.poolfs.health"])
        .arg(&f));
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("user.poolfs.health="),
        "getfattr -n user.poolfs.health: {} {}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );

    // rsync -aX of plain files and one with a user attribute into the mount.
    let scratch = pool.scratch();
    let src = scratch.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("plain"), b"plain\n").unwrap();
    fs::write(src.join("big"), Rng::new(23).bytes(100_000)).unwrap();
    fs::write(src.join("tagged"), b"tagged\n").unwrap();
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.x", "-v", "y"])
            .arg(src.join("tagged")),
    );
    let d = pool.path("d");
    let out = run(Command::new("rsync")
        .arg("-aX")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", d.display())));
    assert!(
        out.status.success(),
        "rsync -aX into the mount exited {}: {}",
        out.status,
        stderr_of(&out)
    );
    assert_same_file(&src.join("big"), &d.join("big"));
    assert_eq!(
        get_xattr(&d.join("tagged"), "user.x").expect("user.x copied in by rsync -aX"),
        b"y"
    );

    // Copies out of the mount carry no pool attribute.
    let out1 = scratch.join("out1");
    let out2 = scratch.join("out2");
    let out3 = scratch.join("out3");
    fs::create_dir(&out1).unwrap();
    fs::create_dir(&out3).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(d.join("plain"))
            .arg(d.join("big"))
            .arg(&out1),
    );
    let out = run(Command::new("rsync")
        .arg("-aX")
        .arg(format!("{}/", d.display()))
        .arg(format!("{}/", out2.display())));
    assert!(
        out.status.success(),
        "rsync -aX out of the mount exited {}: {}",
        out.status,
        stderr_of(&out)
    );
    run_ok(
        Command::new(python())
            .arg("-c")
            .arg("import shutil, sys; shutil.copy2(sys.argv[1], sys.argv[2])")
            .arg(d.join("plain"))
            .arg(out3.join("plain")),
    );
    for c in [
        out1.join("plain"),
        out1.join("big"),
        out2.join("plain"),
        out2.join("big"),
        out2.join("tagged"),
        out3.join("plain"),
    ] {
        let names = list_xattrs(&c).unwrap();
        assert!(
            pool_attrs(&names).is_empty(),
            "copy {} carries {names:?}",
            c.display()
        );
    }
    assert_eq!(
        get_xattr(&out2.join("tagged"), "user.x").unwrap(),
        b"y",
        "rsync -aX out"
    );

    // A user attribute on the mount: set, listed, read, copied out by cp -a.
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.x", "-v", "y"])
            .arg(&f),
    );
    let names = list_xattrs(&f).unwrap();
    assert!(
        names.contains(&"user.x".to_string()),
        "user.x not listed: {names:?}"
    );
    assert!(pool_attrs(&names).is_empty(), "listed: {names:?}");
    let out = run_ok(
        Command::new("getfattr")
            .args(["--only-values", "-n", "user.x"])
            .arg(&f),
    );
    assert_eq!(out.stdout, b"y", "getfattr -n user.x");
    let out4 = scratch.join("out4");
    run_ok(Command::new("cp").arg("-a").arg(&f).arg(&out4));
    assert_eq!(
        get_xattr(&out4, "user.x").expect("user.x on the cp -a copy"),
        b"y"
    );
    assert_eq!(
        list_xattrs(&out4).unwrap(),
        vec!["user.x".to_string()],
        "attributes of the cp -a copy"
    );

    pool.unmount();
    pool.remount();
    assert_eq!(
        get_xattr(&f, "user.x").expect("user.x after a remount"),
        b"y"
    );
    assert_eq!(
        get_xattr(&d.join("tagged"), "user.x").expect("rsync'd user.x after a remount"),
        b"y"
    );
    assert!(
        pool_attrs(&list_xattrs(&f).unwrap()).is_empty(),
        "after a remount"
    );

    run_ok(Command::new("setfattr").args(["-x", "user.x"]).arg(&f));
    assert_errno(
        get_xattr(&f, "user.x"),
        libc::ENODATA,
        "getxattr after setfattr -x",
    );
    assert!(
        !list_xattrs(&f).unwrap().contains(&"user.x".to_string()),
        "listed after setfattr -x"
    );
}

/// The attribute rules of local filesystems at their edges: `trusted.*` names are
/// listed to root only, a user's own `user.poolfs.*` attribute is an ordinary one (only
/// the pool's three names are reserved), and a value of the kernel's largest size fits.
#[test]
fn attribute_names_and_sizes_follow_local_filesystems() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with("xattr-edges", 2, &["--allow-other"]);
    open_to_others(&pool);
    let f = pool.path("f");
    fs::write(&f, b"x").unwrap();
    let set = |name: &str, value: &[u8]| {
        let c = CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated strings and a value buffer of its length.
        cvt(unsafe {
            libc::setxattr(
                cstr(&f).as_ptr(),
                c.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    };
    set("trusted.t", b"1").expect("trusted.t as root");
    set("user.u", b"2").expect("user.u");
    set("user.poolfs.note", b"mine").expect("a user's own user.poolfs.* attribute");
    let big = vec![7u8; 65536];
    set("user.big", &big).expect("a 64 KiB value");
    assert_eq!(get_xattr(&f, "user.big").unwrap(), big);
    assert_eq!(get_xattr(&f, "user.poolfs.note").unwrap(), b"mine");
    let as_root = list_xattrs(&f).unwrap();
    assert!(
        as_root.contains(&"trusted.t".to_string()),
        "root lists {as_root:?}"
    );
    let listed = user_ok(
        &ALICE,
        "print('\\n'.join(sorted(os.listxattr(sys.argv[1]))))",
        &[&f],
        "listxattr",
    );
    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(
        listed,
        vec!["user.big", "user.poolfs.note", "user.u"],
        "what another user lists"
    );
    assert_errno(
        set("user.poolfs.health", b"x"),
        libc::EPERM,
        "setting the pool's own attribute",
    );
}

/// `renameat2(RENAME_EXCHANGE)` swaps two names atomically, as on ext4 (some programs
/// swap a directory or file into place this way).
#[test]
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
    harness::mmap_write(&f, want.len() as u64, 100_000, &patch).expect("write through a mapping");
    want[100_000..105_000].copy_from_slice(&patch);
    drop(appender);
    close_checked(f).unwrap();
    let got = read_uncached(&p);
    assert_eq!(got.len(), want.len(), "size after the mapped write");
    assert!(got == want, "the mapped write did not land at its offset");
}

// ---------------------------------------------------------------------------------
// 6. Atomic save
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

// ---------------------------------------------------------------------------------
// 7. A full disk
// ---------------------------------------------------------------------------------

/// A tmpfs mounted by the test; unmounted on drop, even after a panic.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "poolfs-test",
                ])
                .arg(path),
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg(&self.path).status();
        }
        if is_mounted(&self.path) {
            eprintln!("{} busy: lazy unmount", self.path.display());
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Total bytes of the `*.seg` files under `dir`.
fn seg_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => seg_bytes(&e.path()),
            Ok(_) if e.path().extension().is_some_and(|x| x == "seg") => {
                e.metadata().map_or(0, |m| m.len())
            }
            _ => 0,
        })
        .sum()
}

/// Writes zeros to `path` until the disk is full; returns the errno that stopped it.
fn fill(path: &Path) -> i32 {
    let mut f = File::create(path).expect("create the filler");
    let chunk = vec![0u8; MIB];
    for size in [MIB, 4096, 512] {
        loop {
            if let Err(e) = f.write_all(&chunk[..size]) {
                if e.raw_os_error() != Some(libc::ENOSPC) {
                    return e.raw_os_error().unwrap_or(0);
                }
                break;
            }
        }
    }
    let _ = f.sync_all();
    libc::ENOSPC
}

/// Issue 12, item 7 (/work/shared/cases/18b-disk-full-then-freed.sh). The disk under the
/// pool's storage (a 96 MiB tmpfs given to `up --data-dir`) fills with an unrelated
/// file: a 300 KB save fails with ENOSPC (never EIO), small creates fail only with
/// ENOSPC; once the filler is deleted, create, mkdir, rm, a 1 MiB save and reading what
/// was stored before all work without a remount; the failed file is absent or empty,
/// never a name whose read fails, and its bytes are not left on the nodes.
#[test]
fn a_full_disk_gives_enospc_and_service_resumes_once_space_is_freed() {
    if !can_mount() {
        return;
    }
    // Dropped last to first: the pool, then the tmpfs, then the test dir.
    let tmp = harness::test_dir("full");
    let root = tmp.path().canonicalize().unwrap();
    let data = root.join("data");
    fs::create_dir(&data).unwrap();
    let _disk = Tmpfs::mount(&data, "96m");
    let pool = Pool::up_at(&root, 3, &[]);
    let d = pool.path("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("before"), b"before\n").unwrap();
    let kept = Rng::new(18).bytes(1536 * 1024);
    fs::write(d.join("before-big"), &kept).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let segs_before = seg_bytes(&data);

    let filler = data.join("filler");
    assert_eq!(fill(&filler), libc::ENOSPC, "filling the tmpfs");
    eprintln!("filler: {} MiB", lstat(&filler).len() / MIB as u64);

    // A 300 KB save while the disk is full: ENOSPC at the write or at the close.
    let big = d.join("big-while-full");
    let bytes = Rng::new(19).bytes(300_000);
    let saved = File::create(&big).and_then(|mut f| {
        f.write_all(&bytes)?;
        close_checked(f)
    });
    assert_errno(saved, libc::ENOSPC, "a 300 KB save on a full disk");
    let mut small_ok = Vec::new();
    for i in 0..40 {
        let name = d.join(format!("while-full-{i}"));
        match fs::write(&name, format!("x{i}\n")) {
            Ok(()) => small_ok.push(i),
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "small save {i} on a full disk: {e}"
            ),
        }
    }
    if let Err(e) = fs::create_dir(d.join("dir-while-full")) {
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "mkdir on a full disk: {e}"
        );
    }
    eprintln!("while full: {} of 40 small saves succeeded", small_ok.len());

    fs::remove_file(&filler).unwrap();

    // What could not be stored left no broken name; what was stored reads back.
    for (name, want) in std::iter::once((big.clone(), None)).chain((0..40).map(|i| {
        (
            d.join(format!("while-full-{i}")),
            small_ok.contains(&i).then(|| format!("x{i}\n")),
        )
    })) {
        match fs::read(&name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("{} after the disk was freed: {e}", name.display()),
            Ok(got) => match &want {
                Some(w) => assert_eq!(got, w.as_bytes(), "{} saved while full", name.display()),
                None => assert!(
                    got.is_empty(),
                    "{} whose save failed holds {} bytes",
                    name.display(),
                    got.len()
                ),
            },
        }
    }
    if big.exists() {
        fs::remove_file(&big).unwrap_or_else(|e| panic!("rm of the failed file: {e}"));
    }
    let slack = 64 * 1024;
    let mut segs_now = 0;
    let freed = wait_until(Duration::from_secs(10), || {
        segs_now = seg_bytes(&data);
        segs_now <= segs_before + slack
    });
    assert!(
        freed,
        "segments hold {segs_now} bytes after the failed file is gone, {segs_before} before it"
    );

    // Service resumes without a remount.
    fs::write(d.join("after"), b"y\n").expect("create after space is freed");
    fs::create_dir(d.join("dir-after")).expect("mkdir after space is freed");
    fs::remove_file(d.join("before"))
        .and_then(|()| fs::write(d.join("before"), b"before\n"))
        .expect("rm after space is freed");
    let mib = Rng::new(20).bytes(MIB);
    let mut f = File::create(d.join("mib")).expect("create a 1 MiB file after space is freed");
    f.write_all(&mib).expect("write 1 MiB after space is freed");
    close_checked(f).expect("close of 1 MiB after space is freed");
    assert!(
        read_uncached(&d.join("mib")) == mib,
        "the 1 MiB file after space is freed"
    );
    assert_eq!(read_uncached(&d.join("before")), b"before\n");
    assert!(
        read_uncached(&d.join("before-big")) == kept,
        "a file stored before the disk filled"
    );
    assert_eq!(read_uncached(&d.join("after")), b"y\n");
}

/// Regression (found by a user's run): an overwrite or append that fails for lack of
/// space (here a node quota) rewrote the stripes it reached in place, then the file
/// went back to its committed manifest, whose shards those slots no longer held: the
/// old bytes read back as EIO forever. Rewrites now go to the stripe's other slot.
#[test]
fn a_rewrite_that_runs_out_of_space_leaves_the_old_bytes_readable() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up_with("full-rewrite", 3, &["--quota", "20M"]);
    let mut rng = Rng::new(7);
    // A child process does the writing: a descriptor of this process would also be
    // closed (and so flushed, committing part of the rewrite) by every fork and exec of
    // the other tests running in it.
    let scratch = pool.scratch();
    let (old_path, big_path) = (scratch.join("old"), scratch.join("big"));
    let old = rng.bytes(5_000_000);
    fs::write(&old_path, &old).unwrap();
    fs::write(&big_path, rng.bytes(40 * MIB)).unwrap();
    let writer = r#"
import mmap, os, sys
path, how = sys.argv[1], sys.argv[2]
old, big = open(sys.argv[3], "rb").read(), open(sys.argv[4], "rb").read()
flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | (os.O_APPEND if how == "append" else 0)
fd = os.open(path, flags, 0o644)
os.write(fd, old)
os.fsync(fd)  # the old bytes are stored and committed
try:
    if how == "overwrite":
        done = 0
        while done < len(big):
            done += os.pwrite(fd, big[done:], done)
    elif how == "append":
        done = 0
        while done < len(big):
            done += os.write(fd, big[done:])
    else:
        os.ftruncate(fd, len(big))
        m = mmap.mmap(fd, len(big))
        m[:] = big
        m.flush()
        m.close()
        os.fsync(fd)
    os.close(fd)
    print(0)
except OSError as e:
    try:
        os.close(fd)
    except OSError:
        pass
    print(e.errno)
"#;
    for how in ["overwrite", "append", "mmap"] {
        let p = pool.path(how);
        let out = run_ok(
            Command::new(python())
                .arg("-c")
                .arg(writer)
                .arg(&p)
                .arg(how)
                .arg(&old_path)
                .arg(&big_path),
        );
        let errno: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{how}: the writer said {}", stderr_of(&out)));
        let failed: io::Result<()> = match errno {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        };
        let errno = errno_of(failed, &format!("{how} of 40 MiB past a 20 MiB quota"));
        assert!(
            errno == libc::EDQUOT || errno == libc::ENOSPC,
            "{how}: {} instead of EDQUOT",
            errname(errno)
        );
        // The mmap case truncated to 40 MiB first, which succeeded: that much of the
        // change is the file's.
        let mut want = old.clone();
        if how == "mmap" {
            want.resize(40 * MIB, 0);
        }
        let got = read_uncached(&p);
        assert!(
            got == want,
            "{how}: the file from the pool is not the last one that was stored ({} bytes)",
            got.len()
        );
    }
}

// ---------------------------------------------------------------------------------
// 8. Attributes exactly as set
// ---------------------------------------------------------------------------------

/// Times the kernel accepts at the ends of its range and around the usual boundaries.
const EXTREME_TIMES: &[(i64, u32)] = &[
    (0, 0),
    (-1, 0),
    (-1, 999_999_999),
    (1, 1),
    (i32::MAX as i64, 999_999_999),
    (i32::MIN as i64, 1),
    (1 << 32, 0),
    (-(1 << 40), 500),
    (1 << 40, 999_999_999),
    // The kernel clamps a time at its upper limit to nanosecond 0.
    (i64::MAX, 0),
    (i64::MAX - 1, 999_999_999),
    (i64::MIN + 1, 0),
    (i64::MIN + 1, 123_456_789),
];

/// What a test file or directory must stat as.
#[derive(Debug, Clone)]
struct Attrs {
    path: PathBuf,
    dir: bool,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Files only.
    size: u64,
    nlink: u64,
    atime: (i64, u32),
    mtime: (i64, u32),
}

impl Attrs {
    fn random(path: PathBuf, dir: bool, rng: &mut Rng, case: usize) -> Attrs {
        // The first cases take every extreme once (for a file and for a directory).
        let mut time = |k: usize| {
            if let Some(&t) = EXTREME_TIMES.get(case * 2 + k) {
                t
            } else {
                let s = rng.below(1 << 41) as i64 - (1 << 40);
                (s, rng.below(1_000_000_000) as u32)
            }
        };
        let (atime, mtime) = (time(0), time(1));
        let size = match rng.below(3) {
            0 => rng.below(10_000),
            1 => rng.below(1 << 30),
            _ => rng.range(1, 1 << 40),
        };
        Attrs {
            path,
            dir,
            mode: rng.below(0o10000) as u32,
            uid: rng.below(1 << 31) as u32,
            gid: rng.below(1 << 31) as u32,
            size,
            nlink: 1 + rng.below(4),
            atime,
            mtime,
        }
    }

    /// Creates the entry and sets every attribute.
    fn make(&self, rng: &mut Rng) {
        let p = &self.path;
        if self.dir {
            fs::create_dir(p).unwrap_or_else(|e| self.fail("mkdir", e));
        } else {
            File::create(p).unwrap_or_else(|e| self.fail("create", e));
            truncate_path(p, self.size).unwrap_or_else(|e| self.fail("truncate", e));
            // Make more links than wanted, then unlink the extra ones.
            let extra = self.nlink - 1 + rng.below(3);
            for k in 0..extra {
                fs::hard_link(p, link_name(p, k)).unwrap_or_else(|e| self.fail("link", e));
            }
            for k in (self.nlink - 1)..extra {
                fs::remove_file(link_name(p, k)).unwrap_or_else(|e| self.fail("unlink", e));
            }
        }
        std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| self.fail("chown", e));
        fs::set_permissions(p, fs::Permissions::from_mode(self.mode))
            .unwrap_or_else(|e| self.fail("chmod", e));
        set_times(p, self.atime, self.mtime).unwrap_or_else(|e| self.fail("utimensat", e));
    }

    fn fail(&self, what: &str, e: io::Error) -> ! {
        panic!("{what} {}: {e} ({self:?})", self.path.display())
    }

    /// Differences between what stat gives and what was set.
    fn check(&self, when: &str, seed: u64) {
        let m = lstat(&self.path);
        let mut wrong = Vec::new();
        let mut field = |name: &str, got: String, want: String| {
            if got != want {
                wrong.push(format!("{name} {got} (set {want})"));
            }
        };
        let kind = if self.dir {
            libc::S_IFDIR
        } else {
            libc::S_IFREG
        };
        field(
            "type",
            format!("{:o}", m.mode() & libc::S_IFMT),
            format!("{kind:o}"),
        );
        field(
            "mode",
            format!("{:o}", m.mode() & 0o7777),
            format!("{:o}", self.mode),
        );
        field("uid", m.uid().to_string(), self.uid.to_string());
        field("gid", m.gid().to_string(), self.gid.to_string());
        field(
            "atime",
            format!("{}.{:09}", m.atime(), m.atime_nsec()),
            format!("{}.{:09}", self.atime.0, self.atime.1),
        );
        field(
            "mtime",
            format!("{}.{:09}", m.mtime(), m.mtime_nsec()),
            format!("{}.{:09}", self.mtime.0, self.mtime.1),
        );
        if !self.dir {
            field("size", m.len().to_string(), self.size.to_string());
            field("nlink", m.nlink().to_string(), self.nlink.to_string());
        }
        assert!(
            wrong.is_empty(),
            "{} {when} (seed {seed}; rerun with POOLFS_PROP_SEED={seed}): {}",
            self.path.display(),
            wrong.join(", ")
        );
    }
}

/// Sets both times of `p` to `t` from a child process given `limit` to return. A child
/// still blocked then is killed and left (it cannot be reaped before the mount answers
/// or goes, which the pool's teardown sees to).
fn set_times_in_child(p: &Path, t: (i64, u32), limit: Duration) -> Result<(), String> {
    let ns = t.0 as i128 * 1_000_000_000 + t.1 as i128;
    let mut child = Command::new(python())
        .arg("-c")
        .arg("import os, sys; t = int(sys.argv[2]); os.utime(sys.argv[1], ns=(t, t))")
        .arg(p)
        .arg(ns.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start python: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return match out.status.success() {
                true => Ok(()),
                false => Err(stderr_of(&out)),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "no answer within {limit:?}: the mount hangs on this request"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn link_name(p: &Path, k: u64) -> PathBuf {
    PathBuf::from(format!("{}.link{k}", p.display()))
}

/// Issue 12, item 8. A property over random values: for files and directories, times
/// set with utimensat (nanoseconds, negative and extreme seconds), modes 0..07777 with
/// setuid/setgid/sticky, owners and groups below 2^31, sizes up to 2^40 and link counts
/// stat back exactly as set, at once and after a remount. The seed is printed; set
/// POOLFS_PROP_SEED to replay one.
#[test]
fn attributes_stat_back_exactly_as_set_across_a_remount() {
    if !can_mount() {
        return;
    }
    let seed = std::env::var("POOLFS_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ns() as u64);
    eprintln!("POOLFS_PROP_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut pool = Pool::up("attrs", 2);
    let dir = pool.path("p");
    fs::create_dir(&dir).unwrap();
    let cases = 24;
    let mut all = Vec::new();
    for case in 0..cases {
        for is_dir in [false, true] {
            let name = format!("{}{case}", if is_dir { "d" } else { "f" });
            let a = Attrs::random(dir.join(name), is_dir, &mut rng, case);
            a.make(&mut rng);
            a.check("at once", seed);
            all.push(a);
        }
    }
    // The lowest time the kernel accepts, set from a child process: a mount that never
    // answers the request must fail the test, not hang it.
    for (case, is_dir) in [(cases, false), (cases + 1, true)] {
        let name = format!("{}-lowest", if is_dir { "d" } else { "f" });
        let mut a = Attrs::random(dir.join(name), is_dir, &mut rng, case);
        a.make(&mut rng);
        a.atime = (i64::MIN, 0);
        a.mtime = (i64::MIN, 0);
        if let Err(e) = set_times_in_child(&a.path, a.atime, Duration::from_secs(10)) {
            panic!("utimensat of {} to {:?}: {e}", a.path.display(), a.atime);
        }
        a.check("at once", seed);
        all.push(a);
    }
    pool.unmount();
    pool.remount();
    for a in &all {
        a.check("after a remount", seed);
    }
}

// ---------------------------------------------------------------------------------
// 9. Sparse files
// ---------------------------------------------------------------------------------

/// Issue 12, item 9 (/work/shared/cases/37-qemu-sparse-image.sh,
/// 52-thin-image-near-free.sh). A 2 GiB file with 4 MiB written at 1000 MiB: st_blocks
/// and du count only what is stored, SEEK_DATA/SEEK_HOLE find the data within a few MiB,
/// cp out of the mount makes a sparse, equal copy; a 1-byte write far beyond the pool's
/// free space succeeds, reads back and hardly moves df's used space.
#[test]
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

// ---------------------------------------------------------------------------------
// 10. Times follow the writes
// ---------------------------------------------------------------------------------

/// 2020-01-15 12:34:56.123456789 UTC.
const T2020: (i64, u32) = (1_579_091_696, 123_456_789);
const T2020_NS: i128 = 1_579_091_696_123_456_789;

/// (mtime, ctime) in ns as another process (not holding the file open) sees them.
fn stat_elsewhere(p: &Path) -> (i128, i128) {
    let out = run_ok(
        Command::new(python())
            .arg("-c")
            .arg("import os, sys; s = os.stat(sys.argv[1]); print(s.st_mtime_ns, s.st_ctime_ns)")
            .arg(p),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<i128> = text
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    (v[0], v[1])
}

/// Issue 12, item 10 (/work/shared/cases/48-mtime-ordering.py). After write() the new
/// mtime and ctime show at once in fstat and in another process's stat while the file is
/// open, and the close does not move them; a user-set mtime survives the close and later
/// flushes; a write after it moves mtime to now; reads and chmod leave mtime alone; files
/// written 30 ms apart sort by mtime; an in-place rewrite of a file held open shows.
#[test]
fn times_follow_the_writes_not_the_close() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("times", 2);
    let p = |n: &str| pool.path(n);
    let mut rng = Rng::new(48);
    let mtime_of = |n: &str| mtime_ns(&lstat(&pool.path(n)));

    // (c) mtime and ctime are the time of the last write, seen at once while open.
    File::create(p("c")).unwrap();
    set_times(&p("c"), T2020, T2020).unwrap();
    let mut f = OpenOptions::new().write(true).open(p("c")).unwrap();
    let bytes = rng.bytes(3 * MIB);
    let t0 = now_ns();
    f.write_all(&bytes).unwrap();
    let t1 = now_ns();
    let own = f.metadata().unwrap();
    let (own_m, own_c) = (mtime_ns(&own), ctime_ns(&own));
    let (other_m, other_c) = stat_elsewhere(&p("c"));
    for (what, t) in [
        ("fstat mtime", own_m),
        ("fstat ctime", own_c),
        ("another process's mtime", other_m),
        ("another process's ctime", other_c),
    ] {
        assert!(
            within(t, t0, t1),
            "(c) {what} of an open file is {:+.3}s from the start of its last write \
             (which took {:.3}s)",
            secs(t - t0),
            secs(t1 - t0)
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    close_checked(f).unwrap();
    let after = lstat(&p("c"));
    assert_eq!(
        (mtime_ns(&after), ctime_ns(&after)),
        (own_m, own_c),
        "(c) the close 1.5 s after the write moved mtime/ctime by {:+.3}s/{:+.3}s",
        secs(mtime_ns(&after) - own_m),
        secs(ctime_ns(&after) - own_c)
    );

    // (b) futimens on the open file before the close: the set mtime stays.
    let mut f = File::create(p("b")).unwrap();
    f.write_all(&rng.bytes(9 * MIB)).unwrap();
    set_times_fd(&f, T2020, T2020).unwrap();
    close_checked(f).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mtime_of("b"),
        T2020_NS,
        "(b) mtime set by futimens before the close"
    );
    assert_eq!(
        stat_elsewhere(&p("b")).0,
        T2020_NS,
        "(b) as another process sees it"
    );

    // (a) mtime set right after a 48 MiB write stays through later flushes.
    let mut f = File::create(p("a")).unwrap();
    f.write_all(&rng.bytes(48 * MIB)).unwrap();
    close_checked(f).unwrap();
    set_times(&p("a"), T2020, T2020).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(mtime_of("a"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen,
        [T2020_NS].into(),
        "(a) mtime set after a 48 MiB write, polled for 3 s"
    );

    // (d) a write after the user-set mtime moves it to now.
    let f = OpenOptions::new().write(true).open(p("b")).unwrap();
    f.write_all_at(b"x", 100).unwrap();
    close_checked(f).unwrap();
    let d = mtime_of("b") - now_ns();
    assert!(
        d.abs() < 2_000_000_000,
        "(d) a write after utimens left mtime {:+.1}s from now",
        secs(d)
    );

    // (e) reading and chmod do not change mtime.
    let m0 = mtime_of("c");
    drop_cache(&p("c"));
    fs::read(p("c")).unwrap();
    fs::set_permissions(p("c"), fs::Permissions::from_mode(0o600)).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(mtime_of("c"), m0, "(e) read and chmod changed mtime");

    // (f) files written 30 ms apart, small and large, sort by mtime.
    fs::create_dir(p("o")).unwrap();
    for i in 0..40 {
        let size = if i % 2 == 1 { 5000 } else { 3 * MIB };
        fs::write(p(&format!("o/f{i:02}")), rng.bytes(size)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let times: Vec<i128> = (0..40).map(|i| mtime_of(&format!("o/f{i:02}"))).collect();
    for i in 1..40 {
        assert!(
            times[i] > times[i - 1],
            "(f) f{i:02} written 30 ms after f{:02} has mtime {:+.3}s from it",
            i - 1,
            secs(times[i] - times[i - 1])
        );
    }
    let ls = run_ok(Command::new("ls").arg("-t").arg(p("o")));
    let order: Vec<String> = String::from_utf8_lossy(&ls.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    let want: Vec<String> = (0..40).rev().map(|i| format!("f{i:02}")).collect();
    assert_eq!(order, want, "(f) ls -t");

    // (g) an in-place rewrite + fsync of a file held open shows to another process.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(p("db"))
        .unwrap();
    f.write_all(&[b'A'; 65536]).unwrap();
    f.sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let (m1, _) = stat_elsewhere(&p("db"));
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = now_ns();
    f.write_all_at(&[b'B'; 4096], 8192).unwrap();
    f.sync_all().unwrap();
    let t1 = now_ns();
    let (m2, _) = stat_elsewhere(&p("db"));
    assert!(
        m2 > m1 && within(m2, t0, t1),
        "(g) after an in-place rewrite + fsync of an open file another process sees \
         mtime {:+.3}s from the write (before it: {:+.3}s)",
        secs(m2 - t0),
        secs(m1 - t0)
    );
    drop(f);
}

// ---------------------------------------------------------------------------------
// A verifying random-I/O run
// ---------------------------------------------------------------------------------

/// fio's random reads and writes of mixed sizes (4 KiB to 1 MiB) from two processes,
/// with an fsync every 64 writes, verified with crc32c: every byte it wrote comes back.
#[test]
fn fio_random_mixed_io_finds_every_byte_it_wrote() {
    if !can_mount() {
        return;
    }
    if Command::new("fio").arg("--version").output().is_err() {
        assert!(
            !harness::in_ci(),
            "CI=true but fio is missing (.ci/run installs it)"
        );
        eprintln!("SKIPPED: fio is not installed");
        return;
    }
    let pool = Pool::up("fio", 3);
    let out = run(Command::new("fio")
        .arg(format!("--directory={}", pool.mnt.display()))
        .args([
            "--name=verify",
            "--rw=randrw",
            "--bsrange=4k-1m",
            "--size=96m",
            "--numjobs=2",
            "--ioengine=psync",
            "--fsync=64",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--randseed=12",
            "--group_reporting",
        ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("err= 0"),
        "fio found wrong bytes or failed ({}):\n{text}\n{}",
        out.status,
        stderr_of(&out)
    );
}
