//! Real-mount harness: a whole pool from `poolfs up` in a private temp dir, torn down by `poolfs down` (or lazy unmount and kill by pid) even when the test panics.

use std::ffi::OsStr;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_poolfs");
/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// Why this machine cannot run real mounts, if it cannot.
fn missing_capability() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mount tests need root and /dev/fuse)".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    match Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => None,
        Err(e) => Some(format!("fusermount3 not runnable (install fuse3): {e}")),
    }
}

/// Whether real mounts can run here; if not, the test is skipped (see
/// `harness::skip`: under CI it fails instead).
pub fn can_mount() -> bool {
    match missing_capability() {
        None => true,
        Some(why) => {
            super::skip(&format!("mount tests cannot run: {why}"));
            false
        }
    }
}

/// Is `path` a mount point right now (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let want = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    poolfs::fs::mount::is_mountpoint(&want)
}

/// Lines of /proc/mounts that are FUSE mounts under `root`.
pub fn fuse_mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("fuse") && l.contains(&root))
        .map(str::to_string)
        .collect()
}

/// The command line of `pid` (empty if gone or a zombie).
fn cmdline(pid: u32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// Is `pid` a live poolfs process started for the test rooted at `root` (some argument
/// mentions that unique directory)? Guards against recycled pids.
pub fn is_ours(pid: u32, root: &Path) -> bool {
    let args = cmdline(pid);
    let root = root.as_os_str().as_bytes();
    args.first().is_some_and(|exe| exe.ends_with(b"poolfs"))
        && args
            .iter()
            .any(|a| a.windows(root.len()).any(|w| w == root))
}

/// Nothing a run started is left under `root`: no process (waited for up to 10 s), no
/// mount that `mounts_under` lists, no file.
pub fn assert_nothing_left(root: &Path, mounts_under: impl Fn(&Path) -> Vec<String>) {
    assert!(
        wait_until(Duration::from_secs(10), || procs_under(root).is_empty()),
        "processes left behind: {:?}",
        procs_under(root)
    );
    assert_eq!(
        mounts_under(root),
        Vec::<String>::new(),
        "mounts left behind"
    );
    let left: Vec<_> = std::fs::read_dir(root)
        .expect("test dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Live poolfs processes whose command line mentions `root`.
pub fn procs_under(root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_ours(pid, root))
        .collect()
}

/// Waits until `cond` holds, up to `timeout`; returns whether it did.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends `sig` to each pid that is still ours, then waits for them to be gone.
pub fn kill_ours(pids: &[u32], root: &Path, sig: i32) {
    for &pid in pids {
        if is_ours(pid, root) {
            // SAFETY: a signal to a process this test started (checked just above).
            unsafe { libc::kill(pid as i32, sig) };
        }
    }
    wait_until(Duration::from_secs(5), || {
        pids.iter().all(|&p| !is_ours(p, root))
    });
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics (showing its output) unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `poolfs ARGS`.
pub fn poolfs<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("POOLFS_KEY", test_key());
    cmd
}

/// The pool key every process of this test binary proves (`up` is given it too), made
/// once per build in the target's test scratch directory.
pub fn test_key() -> &'static Path {
    static KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("poolfs-test-pool.key");
        poolfs::trust::PoolKey::load_or_create(&path).expect("test pool key");
        path
    })
}

/// Lazily unmounts `mnt` if it is mounted (the fallback for a dead or busy mount).
pub fn force_unmount(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(mnt) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// A unique temporary directory for one test (canonical path, so it can be matched in
/// command lines and mount tables).
pub fn test_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("poolfs-mt-{name}-"))
        .tempdir()
        .expect("cannot create a temp dir")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port")
        .port()
}

/// The health a file reports through `user.poolfs.health`.
pub fn health(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.poolfs.health".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "getxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

/// States of the pool's members as `poolfs status --json` reports them, sorted.
pub fn member_states(controller: SocketAddr) -> Vec<String> {
    let out = run_ok(&mut poolfs([
        "status",
        "--json",
        "-c",
        &controller.to_string(),
    ]));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let mut states: Vec<String> = view["nodes"]
        .as_array()
        .expect("nodes in the view")
        .iter()
        .map(|n| n["state"].as_str().unwrap_or("?").to_string())
        .collect();
    states.sort();
    states
}

/// Waits until `n` members of the pool are up, else fails naming `who` as missing.
pub fn wait_members_up(controller: SocketAddr, n: usize, who: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || member_states(controller)
            .iter()
            .filter(|s| *s == "Up")
            .count()
            == n),
        "{who} did not join: {:?}",
        member_states(controller)
    );
}

/// A storage member of a pool: its storage directory and pid.
#[derive(Debug, Clone)]
pub struct Member {
    pub storage: PathBuf,
    pub pid: u32,
}

/// A pool started with `poolfs up` in a private temp dir. Dropping it runs `poolfs
/// down`; if that fails, it lazily unmounts and kills the recorded pids (only those).
pub struct Pool {
    tmp: Option<tempfile::TempDir>,
    /// The test's private directory: everything of this pool is below it.
    pub root: PathBuf,
    pub mnt: PathBuf,
    pub data: PathBuf,
    /// Where `up` keeps this pool's state (logs, storage dirs, up.json).
    pub state: PathBuf,
    pub controller: SocketAddr,
    /// The pids `up` recorded: the mount first.
    pub pids: Vec<u32>,
    /// The current mount process.
    pub mount_pid: u32,
    /// The mounting node's storage directory.
    pub mount_storage: PathBuf,
    /// The storage-only nodes.
    pub nodes: Vec<Member>,
    /// What `poolfs up` wrote to standard error (its notices).
    pub up_stderr: String,
    /// Processes started after `up` (remounts).
    extra_pids: Vec<u32>,
    /// Children started by `add_node`, reaped on drop.
    children: Vec<std::process::Child>,
    is_down: bool,
}

fn storage_arg(pid: u32) -> Option<PathBuf> {
    let args = cmdline(pid);
    let i = args.iter().position(|a| a == b"--storage")?;
    args.get(i + 1).map(|a| PathBuf::from(OsStr::from_bytes(a)))
}

impl Pool {
    /// `poolfs up <tmp>/mnt --nodes N --data-dir <tmp>/data`.
    pub fn up(name: &str, nodes: u32) -> Pool {
        Pool::up_with(name, nodes, &[])
    }

    /// `poolfs up <tmp>/mnt --nodes N --data-dir <tmp>/data EXTRA...`.
    pub fn up_with(name: &str, nodes: u32, extra: &[&str]) -> Pool {
        let tmp = test_dir(name);
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        Pool::start(Some(tmp), root, nodes, extra, &[])
    }

    /// `up_with`, with `env` set for `poolfs up` (for example what sudo sets).
    pub fn up_with_env(name: &str, nodes: u32, extra: &[&str], env: &[(&str, &str)]) -> Pool {
        let tmp = test_dir(name);
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        Pool::start(Some(tmp), root, nodes, extra, env)
    }

    /// `poolfs up ROOT/mnt --nodes N --data-dir ROOT/data EXTRA...` in a test dir the
    /// caller made and keeps (for example to put a small filesystem on ROOT/data
    /// first); the caller removes it after the pool is dropped.
    pub fn up_at(root: &Path, nodes: u32, extra: &[&str]) -> Pool {
        let root = root.canonicalize().expect("canonical test dir");
        Pool::start(None, root, nodes, extra, &[])
    }

    fn start(
        tmp: Option<tempfile::TempDir>,
        root: PathBuf,
        nodes: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Pool {
        let mnt = root.join("mnt");
        let data = root.join("data");
        let started = Instant::now();
        let out = run(poolfs(["up"])
            .arg(&mnt)
            .args(["--nodes", &nodes.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .envs(env.iter().copied()));
        let state = poolfs::up::state_dir(&data, &mnt);
        // Record whatever was started before judging, so a failed `up` is cleaned too.
        let recorded: Option<poolfs::up::UpState> = std::fs::read(state.join("up.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut pool = Pool {
            tmp,
            root,
            mnt,
            data,
            state: state.clone(),
            controller: recorded
                .as_ref()
                .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |s| s.controller),
            pids: recorded
                .as_ref()
                .map(|s| s.pids.clone())
                .unwrap_or_default(),
            mount_pid: 0,
            mount_storage: state.join("mount"),
            nodes: Vec::new(),
            up_stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            extra_pids: Vec::new(),
            children: Vec::new(),
            is_down: false,
        };
        assert!(
            out.status.success(),
            "poolfs up failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(recorded.is_some(), "poolfs up left no readable up.json");
        assert!(
            is_mounted(&pool.mnt),
            "poolfs up returned but nothing is mounted"
        );
        pool.mount_pid = pool.pids[0];
        for &pid in &pool.pids[1..] {
            if let Some(storage) = storage_arg(pid) {
                pool.nodes.push(Member { storage, pid });
            }
        }
        assert_eq!(
            pool.nodes.len() as u32,
            nodes - 1,
            "expected {} storage nodes among pids {:?}",
            nodes - 1,
            pool.pids
        );
        assert_eq!(
            storage_arg(pool.mount_pid).as_deref(),
            Some(pool.mount_storage.as_path()),
            "the first pid of up.json is not the mount"
        );
        eprintln!(
            "pool of {nodes} up at {} in {:.2}s",
            pool.mnt.display(),
            started.elapsed().as_secs_f64()
        );
        pool
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A directory outside the mount for source files and reference copies.
    pub fn scratch(&self) -> PathBuf {
        let d = self.root.join("scratch");
        std::fs::create_dir_all(&d).expect("create scratch dir");
        d
    }

    /// Storage dirs of every member, the mounting node first.
    pub fn storages(&self) -> Vec<PathBuf> {
        std::iter::once(self.mount_storage.clone())
            .chain(self.nodes.iter().map(|n| n.storage.clone()))
            .collect()
    }

    /// Starts one more storage node (`poolfs node`) in this pool's controller; it is
    /// stopped with the pool.
    pub fn add_node(&mut self, name: &str) -> Member {
        let storage = self.root.join(name);
        let log = std::fs::File::create(self.root.join(format!("{name}.log"))).expect("node log");
        let child = Command::new(BIN)
            .arg("node")
            .env("POOLFS_KEY", test_key())
            .arg("--storage")
            .arg(&storage)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--controller",
                &self.controller.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start poolfs node");
        let pid = child.id();
        self.extra_pids.push(pid);
        self.children.push(child);
        Member { storage, pid }
    }

    /// Takes charge of a process started for this pool outside `up` (a member restarted
    /// by the test): it is ended, by pid, with the pool.
    pub fn adopt(&mut self, child: std::process::Child) {
        self.extra_pids.push(child.id());
        self.children.push(child);
    }

    fn all_pids(&self) -> Vec<u32> {
        let mut all = self.pids.clone();
        all.extend(&self.extra_pids);
        all.push(self.mount_pid);
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Unmounts the way a user does (`fusermount3 -u`) and waits for the mount
    /// process to exit by itself.
    pub fn unmount(&mut self) {
        run_ok(Command::new("fusermount3").arg("-u").arg(&self.mnt));
        assert!(!is_mounted(&self.mnt), "still mounted after fusermount3 -u");
        let (pid, root) = (self.mount_pid, self.root.clone());
        assert!(
            wait_until(Duration::from_secs(10), || !is_ours(pid, &root)),
            "the mount process {pid} did not exit after the unmount"
        );
        // It left the pool (LEAVE), rather than going silent.
        let states = member_states(self.controller);
        assert_eq!(
            states.iter().filter(|s| *s == "Gone").count(),
            1,
            "after an unmount the mount's node is gone, the others up: {states:?}"
        );
    }

    /// Mounts again with `poolfs mount` on the same storage and controller.
    pub fn remount(&mut self) {
        let _ = self.remount_with(&[]);
    }

    /// `remount`, with `extra` options for `poolfs mount`; returns what `poolfs mount`
    /// printed.
    pub fn remount_with(&mut self, extra: &[&str]) -> Output {
        let before = procs_under(&self.root);
        let out = run(poolfs(["mount"])
            .arg(&self.mnt)
            .arg("--storage")
            .arg(&self.mount_storage)
            .args(["-c", &self.controller.to_string()])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra));
        // Find the detached mount process, to end it even if the mount failed.
        let started: Vec<u32> = procs_under(&self.root)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        self.extra_pids.extend(&started);
        assert!(
            out.status.success(),
            "poolfs mount failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&self.mnt),
            "poolfs mount returned but nothing is mounted"
        );
        assert_eq!(
            started.len(),
            1,
            "expected one new mount process: {started:?}"
        );
        self.mount_pid = started[0];
        out
    }

    /// kill -9 of the mount process, then a lazy unmount of the dead mount.
    pub fn kill_mount(&mut self) {
        kill_ours(&[self.mount_pid], &self.root, libc::SIGKILL);
        assert!(
            !is_ours(self.mount_pid, &self.root),
            "mount process survived kill -9"
        );
        run_ok(
            Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt),
        );
        assert!(!is_mounted(&self.mnt), "still mounted after a lazy unmount");
    }

    /// `poolfs down`; the guard then has nothing left to do unless it failed.
    pub fn down(&mut self) -> Output {
        let data = self.data.clone();
        self.down_with(|cmd| {
            cmd.arg("--data-dir").arg(data);
        })
    }

    /// `poolfs down MNT`, with `configure` applied to the command (to give it
    /// `--data-dir`, or an environment); as `down` otherwise.
    pub fn down_with(&mut self, configure: impl FnOnce(&mut Command)) -> Output {
        let mut cmd = poolfs(["down"]);
        cmd.arg(&self.mnt);
        configure(&mut cmd);
        let out = run(&mut cmd);
        if out.status.success() {
            self.is_down = true;
        }
        out
    }

    /// `poolfs up` again on the same mount point and data dir (after `down`, or after
    /// the mount was killed), with `configure` applied to the command; takes the new
    /// processes from its up.json. Returns what `up` printed, success or not.
    pub fn up_again(&mut self, configure: impl FnOnce(&mut Command)) -> Output {
        let mut cmd = poolfs(["up"]);
        cmd.arg(&self.mnt)
            .args(["--nodes", &(self.nodes.len() + 1).to_string(), "--data-dir"])
            .arg(&self.data);
        configure(&mut cmd);
        let out = run(&mut cmd);
        let state: Option<poolfs::up::UpState> = std::fs::read(self.state.join("up.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(s) = &state {
            self.pids = s.pids.clone();
            self.mount_pid = s.pids[0];
            self.controller = s.controller;
        }
        self.mark_up();
        out
    }

    /// `poolfs up` again on this pool's mount point and data dir, where the test expects
    /// it refused (`what` names the case in the failure): asserts that it failed and
    /// returns its standard error. The pool's state is not touched.
    pub fn up_refused(&self, what: &str) -> String {
        let out = run(poolfs(["up"])
            .arg(&self.mnt)
            .arg("--data-dir")
            .arg(&self.data));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: up succeeded");
        err
    }

    /// After a successful `up` run by the test itself: `down` is needed again.
    pub fn mark_up(&mut self) {
        self.is_down = false;
    }

    /// Asserts that every process of this pool exits within 10 s (after a `down`).
    pub fn assert_stopped(&self) {
        assert!(
            wait_until(Duration::from_secs(10), || self.any_alive().is_empty()),
            "alive after down: {:?}",
            self.any_alive()
        );
    }

    /// Is any process of this pool still running?
    pub fn any_alive(&self) -> Vec<u32> {
        self.all_pids()
            .into_iter()
            .filter(|&p| is_ours(p, &self.root))
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.is_down && !self.pids.is_empty() {
            match Command::new(BIN)
                .arg("down")
                .arg(&self.mnt)
                .arg("--data-dir")
                .arg(&self.data)
                .stdin(Stdio::null())
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "poolfs down failed ({}): {}; cleaning up by hand",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cannot run poolfs down: {e}; cleaning up by hand"),
            }
        }
        force_unmount(&self.mnt);
        // POOLFS_KEEP_LOGS=DIR keeps every test pool's logs there (for a failure).
        if let Some(keep) = std::env::var_os("POOLFS_KEEP_LOGS") {
            let to = Path::new(&keep).join(self.root.file_name().unwrap_or_default());
            if std::fs::create_dir_all(&to).is_ok() {
                for log in std::fs::read_dir(&self.state)
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if log.path().extension().is_some_and(|e| e == "log") {
                        let _ = std::fs::copy(log.path(), to.join(log.file_name()));
                    }
                }
            }
        }
        let pids = self.all_pids();
        // A remounted process exits once unmounted; give it a moment, then insist.
        wait_until(Duration::from_secs(5), || {
            pids.iter().all(|&p| !is_ours(p, &self.root))
        });
        kill_ours(&pids, &self.root, libc::SIGTERM);
        kill_ours(&pids, &self.root, libc::SIGKILL);
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        finish_dir(&mut self.tmp, &self.mnt);
    }
}

/// Removes a test dir unless a mount is still stuck in it (removing it would recurse
/// into the mount); then it is left behind with a message.
fn finish_dir(tmp: &mut Option<tempfile::TempDir>, mnt: &Path) {
    if let Some(t) = tmp.take() {
        if is_mounted(mnt) {
            eprintln!(
                "{} is still mounted; leaving {}",
                mnt.display(),
                t.path().display()
            );
            let _ = t.keep();
        }
    }
}

/// A controller run by the test (`poolfs controller`), killed by pid on drop.
pub struct ControllerProc {
    child: Child,
    pub addr: SocketAddr,
}

impl ControllerProc {
    /// Starts a controller on a free loopback port with its state in `state`.
    pub fn start(state: &Path, log: &Path) -> ControllerProc {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(log).expect("controller log");
        let child = poolfs(["controller", "--listen", &addr.to_string(), "--state"])
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start the controller");
        let ctrl = ControllerProc { child, addr };
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "the controller did not start listening on {addr}"
        );
        ctrl
    }
}

impl ControllerProc {
    /// The controller's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mount made by the test without `up` (e.g. through `mount -t poolfs`): on drop,
/// unmounts it if still mounted and ends the poolfs processes it started (found by
/// the unique test dir in their command lines), by pid.
pub struct MountGuard {
    pub mnt: PathBuf,
    pub root: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
        }
        force_unmount(&self.mnt);
        let root = self.root.clone();
        wait_until(Duration::from_secs(5), || procs_under(&root).is_empty());
        let pids = procs_under(&self.root);
        kill_ours(&pids, &self.root, libc::SIGTERM);
        kill_ours(&pids, &self.root, libc::SIGKILL);
    }
}

/// A small deterministic generator (splitmix64) so a seed replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// Writes `len` random bytes to `path` (from `/dev/urandom`, in chunks).
pub fn random_file(path: &Path, len: usize) {
    use std::io::Write;
    let mut src = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = std::fs::File::create(path).expect("create source file");
    let mut buf = vec![0u8; 4 * MIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        src.read_exact(&mut buf[..n]).expect("read /dev/urandom");
        out.write_all(&buf[..n]).expect("write source file");
        left -= n;
    }
}

/// Asks the kernel to drop its cached pages of `path`, so the next reads reach the
/// filesystem daemon instead of the page cache.
pub fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("open {} to drop its cache: {e}", path.display()));
    // SAFETY: a valid descriptor for the duration of the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Asserts two files hold the same bytes (like `cmp`), naming the first difference.
pub fn assert_same_file(expected: &Path, actual: &Path) {
    let open = |p: &Path| {
        std::fs::File::open(p).unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()))
    };
    let (mut a, mut b) = (open(expected), open(actual));
    let (mut ba, mut bb) = (vec![0u8; 4 * MIB], vec![0u8; 4 * MIB]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba)
            .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", expected.display()));
        let nb = read_full(&mut b, &mut bb)
            .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", actual.display()));
        if ba[..na.min(nb)] != bb[..na.min(nb)] {
            let i = (0..na.min(nb)).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                expected.display(),
                actual.display(),
                offset + i as u64
            );
        }
        assert_eq!(
            na,
            nb,
            "{} and {} differ in length after byte {offset}",
            expected.display(),
            actual.display()
        );
        if na == 0 {
            return;
        }
        offset += na as u64;
    }
}

/// Reads until `buf` is full or the end; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Total bytes of the segment files under `storage/segments`, and their count.
pub fn segment_usage(storage: &Path) -> (u64, usize) {
    fn walk(dir: &Path, acc: &mut (u64, usize)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                walk(&e.path(), acc);
            } else {
                acc.0 += meta.len();
                acc.1 += 1;
            }
        }
    }
    let mut acc = (0, 0);
    walk(&storage.join("segments"), &mut acc);
    acc
}

/// Total bytes of the file-data segment files on a node, and their count: what
/// `segment_usage` counts without the mount's namespace (its root and blobs, see
/// `cluster::is_namespace_owner`), so a test sees only what its files put there.
pub fn data_segment_usage(storage: &Path) -> (u64, usize) {
    let segs = super::cluster::data_segments(storage);
    (segs.iter().map(|s| s.len).sum(), segs.len())
}

/// Writes `data` at `off` of a file of `size` bytes through a shared mapping, then
/// msync(MS_SYNC) so the bytes reach the filesystem (as programs that mmap their files
/// do).
pub fn mmap_write(f: &std::fs::File, size: u64, off: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = size as usize;
    assert!(
        off as usize + data.len() <= len,
        "a mapped write past the end"
    );
    // SAFETY: maps `len` bytes of a valid descriptor; the copy stays inside the mapping
    // (checked above), which is unmapped before returning.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if m == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), (m as *mut u8).add(off as usize), data.len());
        let synced = libc::msync(m, len, libc::MS_SYNC);
        let err = std::io::Error::last_os_error();
        libc::munmap(m, len);
        if synced != 0 {
            return Err(err);
        }
    }
    Ok(())
}
