//! A pool started process by process on fixed loopback ports (below the kernel's
//! ephemeral range, 32768-60999, so no other test's connection can hold one), for the tests of a
//! mount's loss and recovery (issue 15): a controller, storage nodes each on a machine
//! name of its own (killed -9 and restarted on their port), and mounts made with
//! `poolfs mount` as a user runs it (killed -9, their storage removed, a namespace
//! recovered into another directory from the recovery code). Everything is under one
//! test dir and is stopped by pid and unmounted when the pool is finished or dropped.

use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::mount::{
    force_unmount, fuse_mounts_under, is_mounted, is_ours, kill_ours, poolfs, procs_under, run,
    run_ok, test_key, wait_members_up, wait_until, BIN,
};

/// What `poolfs mount --recover` says while another mount holds the owner's lease
/// (the CLI contract: "... is mounted on machine X ...").
pub const LEASE_HELD: &str = "is mounted on machine";

/// A server process of the pool (controller or storage node) on a fixed port: started
/// again with the same arguments, so it keeps its address, storage and id.
pub struct Proc {
    pub name: String,
    pub port: u16,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts it and waits (up to 10 s, retrying a port still held by a dead process)
    /// until it listens; panics with its log's tail if it does not.
    fn start(&mut self) {
        let mut last = String::new();
        for _ in 0..20 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("cannot start {}: {last}", self.name);
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("log {}: {e}", self.log.display()))?;
        let _ = writeln!(log, "=== poolfs {:?}", self.args);
        let child = Command::new(BIN)
            .args(&self.args)
            .env("POOLFS_KEY", test_key())
            .env("RUST_LOG", "info")
            .env_remove("POOLFS_CONTROLLER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {BIN}: {e}"))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err("not started".into());
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("exited with {status}: {}", tail(&self.log, 5)));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("does not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 by pid, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Is it running (started by us and not yet killed)?
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// The last `n` lines of a log file.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A mount made with `poolfs mount` (detached, as a user runs it).
#[derive(Debug, Clone)]
pub struct Mounted {
    pub mnt: PathBuf,
    pub storage: PathBuf,
    /// The detached mount process; None once killed or unmounted.
    pub pid: Option<u32>,
}

impl Mounted {
    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// A controller, storage nodes and the mounts a test made, all under `root`.
pub struct OwnerPool {
    pub root: PathBuf,
    pub controller: SocketAddr,
    ctrl: Proc,
    /// The storage-only nodes, `node-1` on machine `node-1`, and so on.
    pub nodes: Vec<Proc>,
    /// Every mount made, live or not, in order.
    pub mounts: Vec<Mounted>,
    next_port: u16,
    end_port: u16,
    /// The port each mount point's node listens on (a retried mount keeps its port).
    mount_ports: std::collections::BTreeMap<String, u16>,
    finished: bool,
}

impl OwnerPool {
    /// A controller on `ports.start` and `nodes` storage nodes on the ports after it,
    /// each on a machine named after it, all up; mounts take the ports after those. The
    /// test's ports are `ports` (its own range, so tests can run at once).
    pub fn start(root: &Path, ports: std::ops::Range<u16>, nodes: usize) -> OwnerPool {
        let root = root.canonicalize().expect("canonical test dir");
        let port = ports.start;
        let controller = SocketAddr::from(([127, 0, 0, 1], port));
        let state = root.join("controller");
        let mut ctrl = Proc {
            name: "controller".into(),
            port,
            args: vec![
                "controller".into(),
                "--listen".into(),
                controller.to_string().into(),
                "--state".into(),
                state.into(),
            ],
            log: root.join("controller.log"),
            child: None,
        };
        ctrl.start();
        let mut pool = OwnerPool {
            root,
            controller,
            ctrl,
            nodes: Vec::new(),
            mounts: Vec::new(),
            next_port: port + 1,
            end_port: ports.end,
            mount_ports: Default::default(),
            finished: false,
        };
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let port = pool.take_port();
            let storage = pool.root.join(&name);
            let mut node = Proc {
                name: name.clone(),
                port,
                args: vec![
                    "node".into(),
                    "--storage".into(),
                    storage.into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}").into(),
                    "--controller".into(),
                    controller.to_string().into(),
                    "--machine".into(),
                    name.clone().into(),
                ],
                log: pool.root.join(format!("{name}.log")),
                child: None,
            };
            node.start();
            pool.nodes.push(node);
        }
        wait_members_up(controller, nodes, "the storage nodes");
        pool
    }

    fn take_port(&mut self) -> u16 {
        assert!(
            self.next_port < self.end_port,
            "the test's port range is used up"
        );
        self.next_port += 1;
        self.next_port - 1
    }

    /// A directory outside the mounts for reference copies and the code file.
    pub fn scratch(&self) -> PathBuf {
        let d = self.root.join("scratch");
        std::fs::create_dir_all(&d).expect("create scratch dir");
        d
    }

    /// `poolfs mount ROOT/NAME --storage ROOT/NAME.storage -c CTRL --listen
    /// 127.0.0.1:PORT --machine MACHINE EXTRA...`, run as a user runs it (it returns once
    /// mounted). Ok: the mount's index in `mounts`. Err: what it printed on stderr when
    /// it failed; then nothing is mounted there and no process of it is left (checked).
    pub fn try_mount(
        &mut self,
        name: &str,
        machine: &str,
        extra: &[&str],
    ) -> Result<usize, String> {
        let mnt = self.root.join(name);
        let storage = self.root.join(format!("{name}.storage"));
        std::fs::create_dir_all(&mnt).expect("create the mount point");
        let port = match self.mount_ports.get(name) {
            Some(&p) => p,
            None => {
                let p = self.take_port();
                self.mount_ports.insert(name.to_string(), p);
                p
            }
        };
        let before = procs_under(&self.root);
        let out = run(poolfs(["mount"])
            .arg(&mnt)
            .arg("--storage")
            .arg(&storage)
            .args(["-c", &self.controller.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--machine", machine])
            .args(extra));
        let started: Vec<u32> = procs_under(&self.root)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            // A refused mount leaves nothing behind: no process, nothing mounted.
            let gone = wait_until(Duration::from_secs(10), || {
                started.iter().all(|&p| !is_ours(p, &self.root))
            });
            kill_ours(&started, &self.root, libc::SIGKILL);
            assert!(
                gone,
                "a failed mount left processes {started:?} running; it said: {stderr}"
            );
            assert!(
                !is_mounted(&mnt),
                "a failed mount left {} mounted; it said: {stderr}",
                mnt.display()
            );
            return Err(stderr);
        }
        let index = self.mounts.len();
        self.mounts.push(Mounted {
            mnt: mnt.clone(),
            storage,
            pid: started.first().copied(),
        });
        assert!(
            is_mounted(&mnt),
            "poolfs mount returned but nothing is mounted at {}",
            mnt.display()
        );
        assert_eq!(
            started.len(),
            1,
            "expected one new mount process: {started:?}"
        );
        Ok(index)
    }

    /// `try_mount` that must succeed.
    pub fn mount(&mut self, name: &str, machine: &str, extra: &[&str]) -> Mounted {
        let i = self
            .try_mount(name, machine, extra)
            .unwrap_or_else(|e| panic!("poolfs mount {name} failed: {e}"));
        self.mounts[i].clone()
    }

    /// `poolfs mount ROOT/NAME ... --recover [--code-file CODE] EXTRA...` (see
    /// `try_mount`; without a code file the code is the one `key import` left in its
    /// storage), tried again while it is refused for the owner's lease, up to
    /// `timeout`. Returns the mount and how long it took from the first try; panics
    /// on any other failure or if the lease still refuses it at the timeout.
    pub fn recover_within(
        &mut self,
        timeout: Duration,
        name: &str,
        machine: &str,
        code: Option<&Path>,
        extra: &[&str],
    ) -> (Mounted, Duration) {
        let code = code.map(|c| c.to_string_lossy().into_owned());
        let mut args = vec!["--recover"];
        if let Some(code) = &code {
            args.extend(["--code-file", code.as_str()]);
        }
        args.extend_from_slice(extra);
        let since = Instant::now();
        loop {
            match self.try_mount(name, machine, &args) {
                Ok(i) => return (self.mounts[i].clone(), since.elapsed()),
                Err(e) if e.contains(LEASE_HELD) && since.elapsed() < timeout => {
                    eprintln!(
                        "recover refused after {:.1}s (lease): {}",
                        since.elapsed().as_secs_f64(),
                        e.trim()
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!(
                    "poolfs mount --recover failed {:.1}s after the first try: {e}",
                    since.elapsed().as_secs_f64()
                ),
            }
        }
    }

    /// kill -9 of the mount process of `m`, then a lazy unmount of the dead mount (what
    /// a user does after a crash: `fusermount3 -uz`).
    pub fn kill_mount(&mut self, m: &Mounted) {
        let pid = m.pid.expect("the mount is live");
        kill_ours(&[pid], &self.root, libc::SIGKILL);
        assert!(!is_ours(pid, &self.root), "mount process survived kill -9");
        run_ok(Command::new("fusermount3").args(["-u", "-z"]).arg(&m.mnt));
        assert!(!is_mounted(&m.mnt), "still mounted after a lazy unmount");
        for mine in self.mounts.iter_mut().filter(|x| x.pid == Some(pid)) {
            mine.pid = None;
        }
    }

    /// The disk of `m` is lost: its whole storage directory removed (`rm -rf`).
    pub fn lose_disk(&self, m: &Mounted) {
        assert!(
            m.pid.is_none_or(|p| !is_ours(p, &self.root)),
            "the mount is live"
        );
        std::fs::remove_dir_all(&m.storage)
            .unwrap_or_else(|e| panic!("rm -rf {}: {e}", m.storage.display()));
    }

    /// `poolfs key export --storage S` into `ROOT/scratch/NAME` (mode 0600), checked to
    /// be what the contract says: one line of 24 words on stdout.
    pub fn export_code(&self, storage: &Path, name: &str) -> PathBuf {
        let out = run_ok(poolfs(["key", "export", "--storage"]).arg(storage));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            text.trim_end_matches('\n').lines().count(),
            1,
            "key export prints one line: {text:?}"
        );
        let words = text.split_whitespace().count();
        assert_eq!(words, 24, "the recovery code is 24 words: {text:?}");
        let path = self.scratch().join(name);
        write_private(&path, text.as_bytes());
        path
    }

    /// `poolfs key import --storage S --code-file CODE`, which must succeed.
    pub fn import_code(&self, storage: &Path, code: &Path) {
        run_ok(
            poolfs(["key", "import", "--storage"])
                .arg(storage)
                .arg("--code-file")
                .arg(code),
        );
    }

    /// kill -9 of storage node `i` (it can be started again with `restart_node`).
    pub fn kill_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_running(), "node {i} is not running");
        self.nodes[i].kill();
        eprintln!("killed {}", self.nodes[i].name);
    }

    /// Starts storage node `i` again on its port with its storage.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].start();
        eprintln!("restarted {}", self.nodes[i].name);
    }

    /// Stops everything: each live mount unmounted the way a user does (then its
    /// process waited for), the nodes and controller killed by pid, every file under
    /// the root removed. Panics if a mount does not go.
    pub fn finish(mut self) {
        self.stop();
        let left = fuse_mounts_under(&self.root);
        assert!(left.is_empty(), "mounts left after the test: {left:?}");
    }

    fn stop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        for m in &self.mounts {
            if is_mounted(&m.mnt) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg(&m.mnt)
                    .stderr(Stdio::null())
                    .status();
            }
            force_unmount(&m.mnt);
        }
        let root = self.root.clone();
        let pids: Vec<u32> = self.mounts.iter().filter_map(|m| m.pid).collect();
        wait_until(Duration::from_secs(10), || {
            pids.iter().all(|&p| !is_ours(p, &root))
        });
        kill_ours(&pids, &root, libc::SIGTERM);
        kill_ours(&pids, &root, libc::SIGKILL);
        for node in &mut self.nodes {
            node.kill();
        }
        self.ctrl.kill();
        // Any other process of ours (a mount whose pid we missed) goes too, by pid.
        let strays = procs_under(&root);
        kill_ours(&strays, &root, libc::SIGKILL);
        // Never recurse into a mount that is still there.
        if fuse_mounts_under(&root).is_empty() {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }

    /// Keeps the logs (`POOLFS_KEEP_LOGS=DIR`) for a failure's diagnosis.
    fn keep_logs(&self) {
        let Some(keep) = std::env::var_os("POOLFS_KEEP_LOGS") else {
            return;
        };
        let to = Path::new(&keep).join(self.root.file_name().unwrap_or_default());
        if std::fs::create_dir_all(&to).is_err() {
            return;
        }
        let logs = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain(self.mounts.iter().map(|m| m.storage.join("mount.log")));
        for log in logs.filter(|p| p.extension().is_some_and(|e| e == "log")) {
            let name = log
                .strip_prefix(&self.root)
                .map(|p| p.to_string_lossy().replace('/', "_"))
                .unwrap_or_default();
            let _ = std::fs::copy(&log, to.join(name));
        }
    }
}

impl Drop for OwnerPool {
    fn drop(&mut self) {
        self.keep_logs();
        self.stop();
    }
}

/// Writes `bytes` to a new file only its owner may read (a secret: the code).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
