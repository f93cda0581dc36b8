//! A pool on loopback: a controller and N nodes as real `poolfs` processes on 127.0.0.1.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use poolfs::proto::{NodeId, NodeInfo, NodeState, PoolView};
use rand::{rngs::StdRng, RngCore, SeedableRng};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_poolfs");

/// How long a freshly spawned cluster may take to report every node up.
pub const STARTUP: Duration = Duration::from_secs(20);

/// The pool key every process of this test binary proves, made once per build in the
/// target's test scratch directory (so nothing is left outside the build tree).
pub fn test_key() -> &'static Path {
    static KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("poolfs-test-pool.key");
        poolfs::trust::PoolKey::load_or_create(&path).expect("test pool key");
        path
    })
}

/// A free loopback port (released again: the caller retries if someone takes it first).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// `len` reproducible random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Polls `f` until it returns Some, or panics after `timeout` describing `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Panics with the command's stderr unless it succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes of every file under `dir`, recursively (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    dir_sum(dir, &|m| m.len())
}

/// Bytes the files under `dir` take on the disk (their allocated blocks), recursively
/// (0 if it does not exist): what a node counts against its capacity and quotas.
pub fn dir_allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    dir_sum(dir, &|m| m.blocks() * 512)
}

/// `measure` summed over every file under `dir`, recursively (0 if it does not exist).
/// A running node deletes shards while this walks (sweep, compaction), so an entry
/// that vanishes between the listing and its stat counts as 0, not as a failure.
fn dir_sum(dir: &Path, measure: &dyn Fn(&fs::Metadata) -> u64) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type().map(|t| t.is_dir()) {
            Ok(true) => dir_sum(&e.path(), measure),
            Ok(false) => e.metadata().map_or(0, |m| measure(&m)),
            Err(_) => 0,
        })
        .sum()
}

/// The path of segment `index` of `file` in a node's storage, whichever member owns
/// it (segments live in `STORAGE/segments/OWNER/FILE/INDEX.seg`); None if no owner has it.
pub fn segment_path(storage: &Path, file: &str, index: u32) -> Option<PathBuf> {
    fs::read_dir(storage.join("segments"))
        .ok()?
        .filter_map(Result::ok)
        .map(|owner| owner.path().join(file).join(format!("{index}.seg")))
        .find(|p| p.is_file())
}

/// Whether `owner_dir` (a `STORAGE/segments/OWNER` directory) holds a mount's
/// namespace rather than file data: it has the root record's directory
/// (`poolfs::fs::journal::root::ROOT_FILE`).
///
/// Why: every mount also stores its namespace in the pool (a root on every up node and
/// small blobs) under a second identity of its own, so a test that counts "the file
/// data on the nodes" must leave that owner out. The mount writes its first root in
/// the flush before it reports `mounted`, and every later blob goes with a root to
/// every up node, so from then on each namespace owner directory has the root.
pub fn is_namespace_owner(owner_dir: &Path) -> bool {
    owner_dir
        .join(poolfs::fs::journal::root::ROOT_FILE)
        .is_dir()
}

/// One segment file of file data on a node: `STORAGE/segments/OWNER/FILE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSegment {
    /// The file id (the directory the segment is in).
    pub file: String,
    /// The segment's file name, `INDEX.seg`.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Bytes its blocks take on the disk (what a node counts against capacity).
    pub allocated: u64,
}

/// The segments of file data a node holds: every owner's but a namespace's (see
/// `is_namespace_owner`), sorted by file id and name; empty if the storage holds none.
/// Entries that vanish while listed (a delete under way) are left out.
pub fn data_segments(storage: &Path) -> Vec<DataSegment> {
    use std::os::unix::fs::MetadataExt;
    let list = |d: &Path| fs::read_dir(d).into_iter().flatten().flatten();
    let mut out = Vec::new();
    for owner in list(&storage.join("segments")) {
        if is_namespace_owner(&owner.path()) {
            continue;
        }
        for file in list(&owner.path()) {
            for seg in list(&file.path()) {
                let Ok(meta) = seg.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                out.push(DataSegment {
                    file: file.file_name().to_string_lossy().into_owned(),
                    name: seg.file_name().to_string_lossy().into_owned(),
                    len: meta.len(),
                    allocated: meta.blocks() * 512,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.file, &a.name).cmp(&(&b.file, &b.name)));
    out
}

/// Every path under `dir`, recursively, sorted.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().map(|e| e.unwrap()) {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out.sort();
    out
}

/// One `poolfs` server process, restartable with the same arguments and port.
pub struct Daemon {
    pub name: String,
    pub addr: SocketAddr,
    args: Vec<String>,
    /// Extra environment (e.g. lower server limits for a test).
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `poolfs ARGS` where `args(addr)` builds the arguments for a listen address;
    /// a port taken in between is retried with another one.
    pub fn spawn(
        name: &str,
        log: PathBuf,
        env: &[(String, String)],
        args: impl Fn(SocketAddr) -> Vec<String>,
    ) -> Daemon {
        let mut last = String::new();
        for _ in 0..5 {
            let addr = free_addr();
            let mut d = Daemon {
                name: name.to_string(),
                addr,
                args: args(addr),
                env: env.to_vec(),
                log: log.clone(),
                child: None,
            };
            match d.try_start() {
                Ok(()) => return d,
                Err(e) => last = e,
            }
        }
        panic!("cannot start {name}: {last}");
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "=== poolfs {}", self.args.join(" ")).unwrap();
        let child = Command::new(BIN)
            .args(&self.args)
            .env_remove("POOLFS_CONTROLLER")
            .env_remove("POOLFS_KEY")
            .env("RUST_LOG", "info")
            // A fixed glibc mmap threshold returns freed connection buffers (256 KiB)
            // to the system at once, so VmRSS measures what a daemon keeps rather than
            // what the allocator caches.
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .env("MALLOC_ARENA_MAX", "2")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {BIN}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "{} exited with {status}: {}",
                    self.name,
                    self.log_tail(5)
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} does not listen on {}", self.name, self.addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (panics if it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon is running").id()
    }

    /// SIGKILL, by pid, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, by pid, then waits for the process to exit; returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        // A node hands off before it leaves: it may wait for owners that never come
        // (poolfs::node::handoff::HANDOFF_IDLE) before it goes.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} ignored SIGTERM for 20s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again with the same arguments (same port, same directories).
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..20 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("cannot restart {}: {last}", self.name);
    }

    /// The last `n` lines of this daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A controller and nodes on loopback, each with its own directories under one temp dir.
pub struct Cluster {
    pub controller: Daemon,
    pub nodes: Vec<Daemon>,
    /// The pool key (made by `poolfs init`) every process of the cluster is given.
    pub key: PathBuf,
    // Declared last so the processes are gone before their directories are removed.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A controller and `n` nodes, all up.
    pub fn start(n: usize) -> Cluster {
        Cluster::with_capacities(&vec![None; n])
    }

    /// A controller and one node per entry (`Some("256K")` sets `--capacity`), all up.
    pub fn with_capacities(capacities: &[Option<&str>]) -> Cluster {
        let args: Vec<Vec<&str>> = capacities
            .iter()
            .map(|cap| cap.map_or_else(Vec::new, |c| vec!["--capacity", c]))
            .collect();
        Cluster::build(&args, &[])
    }

    /// A controller and one node per entry, each started with these extra arguments
    /// (e.g. `["--quota", "256K"]`), all up.
    pub fn with_node_args(node_args: &[Vec<&str>]) -> Cluster {
        Cluster::build(node_args, &[])
    }

    /// A controller and `n` nodes, all up, every process started with `env` added.
    pub fn with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        Cluster::build(&vec![Vec::new(); n], env)
    }

    fn build(node_args: &[Vec<&str>], env: &[(&str, &str)]) -> Cluster {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("poolfs-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir(root.join("logs")).unwrap();
        let key = root.join("pool.key");
        let init = Command::new(BIN)
            .arg("init")
            .arg("--key")
            .arg(&key)
            .output()
            .unwrap();
        assert_ok(&init, "poolfs init");
        let key_arg = key.display().to_string();
        let state = root.join("controller").display().to_string();
        let controller = Daemon::spawn("controller", root.join("logs/controller.log"), &env, |a| {
            strings(&[
                "controller",
                "--listen",
                &a.to_string(),
                "--state",
                &state,
                "--key",
                &key_arg,
            ])
        });
        let ctrl = controller.addr.to_string();
        let nodes = node_args
            .iter()
            .enumerate()
            .map(|(i, extra)| {
                let storage = root.join(format!("node{i}")).display().to_string();
                let log = root.join(format!("logs/node{i}.log"));
                Daemon::spawn(&format!("node{i}"), log, &env, |a| {
                    let mut args = strings(&[
                        "node",
                        "--storage",
                        &storage,
                        "--listen",
                        &a.to_string(),
                        "--controller",
                        &ctrl,
                        "--key",
                        &key_arg,
                    ]);
                    args.extend(strings(extra));
                    args
                })
            })
            .collect();
        let cluster = Cluster {
            controller,
            nodes,
            key,
            dir,
        };
        cluster.wait_up(STARTUP);
        cluster
    }

    /// The controller's address.
    pub fn ctrl(&self) -> SocketAddr {
        self.controller.addr
    }

    /// Storage directory of node `i`.
    pub fn storage(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// The catalog directory `put` and `get` use.
    pub fn catalog(&self) -> PathBuf {
        self.dir.path().join("catalog")
    }

    /// A path in the cluster's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `len` random bytes to a file in the temp dir; returns its path and bytes.
    pub fn random_file(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let data = random_bytes(len, seed);
        let path = self.path(name);
        fs::write(&path, &data).unwrap();
        (path, data)
    }

    /// A `poolfs` command aimed at this cluster's controller (and catalog for put/get).
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(["-c", &self.ctrl().to_string()])
            .arg("--key")
            .arg(&self.key)
            .env_remove("POOLFS_CONTROLLER")
            .env_remove("POOLFS_KEY")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        if matches!(args.first(), Some(&"put") | Some(&"get")) {
            cmd.arg("--catalog").arg(self.catalog());
        }
        cmd
    }

    /// `poolfs put FILE --name NAME`.
    pub fn put(&self, file: &Path, name: &str) -> Output {
        let file = file.display().to_string();
        self.cli(&["put", &file, "--name", name]).output().unwrap()
    }

    /// `poolfs get NAME OUT`.
    pub fn get(&self, name: &str, out: &Path) -> Output {
        let out = out.display().to_string();
        self.cli(&["get", name, &out]).output().unwrap()
    }

    /// Puts `data` under `name` and fetches it back into a fresh file; returns the bytes read.
    pub fn round_trip(&self, name: &str, src: &Path) -> Vec<u8> {
        assert_ok(&self.put(src, name), &format!("put {name}"));
        let out = self.path(&format!("{name}.out"));
        assert_ok(&self.get(name, &out), &format!("get {name}"));
        fs::read(&out).unwrap()
    }

    /// The pool view from `poolfs status --json`, or why it could not be had.
    pub fn try_status(&self) -> Result<PoolView, String> {
        let out = self.cli(&["status", "--json"]).output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad status JSON: {e}"))
    }

    /// The pool view; panics if `status` fails.
    pub fn status(&self) -> PoolView {
        self.try_status()
            .unwrap_or_else(|e| panic!("status failed: {e}"))
    }

    /// The member listening where node `i` listens, if the controller knows it.
    pub fn info(view: &PoolView, node: &Daemon) -> Option<NodeInfo> {
        view.nodes.iter().find(|n| n.addr == node.addr).cloned()
    }

    /// Waits until every node of this cluster is up in `status`; returns that view.
    pub fn wait_up(&self, timeout: Duration) -> PoolView {
        wait_until("every node up", timeout, || {
            let view = self.try_status().ok()?;
            let all = self
                .nodes
                .iter()
                .all(|d| Self::info(&view, d).is_some_and(|n| n.state == NodeState::Up));
            all.then_some(view)
        })
    }

    /// The id the controller gave node `i`.
    pub fn node_id(&self, i: usize) -> NodeId {
        Self::info(&self.status(), &self.nodes[i])
            .unwrap_or_else(|| panic!("node{i} is not a member"))
            .id
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for d in std::iter::once(&self.controller).chain(&self.nodes) {
                eprintln!(
                    "----- {} ({}) log tail -----\n{}",
                    d.name,
                    d.addr,
                    d.log_tail(30)
                );
            }
        }
        // Daemons kill their processes by pid as they drop, before `dir` is removed.
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Cluster {
    /// The cluster's pool key.
    pub fn pool_key(&self) -> poolfs::trust::PoolKey {
        poolfs::trust::PoolKey::load(&self.key).unwrap()
    }

    /// A client config for this cluster that encrypts as `put` does, with the owner
    /// key of the cluster's catalog (so it reads what `put` stored, and vice versa).
    pub fn client_config(&self) -> poolfs::client::ClientConfig {
        poolfs::client::ClientConfig::new(self.ctrl(), self.credentials(), self.owner())
    }

    /// The owner key of the cluster's catalog (created if missing).
    pub fn owner(&self) -> Option<std::sync::Arc<poolfs::trust::OwnerKey>> {
        let owner = poolfs::client::catalog::Catalog::new(&self.catalog())
            .owner_key()
            .unwrap();
        Some(std::sync::Arc::new(owner))
    }

    /// Client credentials proving the cluster's pool key with the static key of the
    /// catalog `put` and `get` use (created if missing): the owner of the segments of
    /// the files they put.
    pub fn credentials(&self) -> std::sync::Arc<poolfs::trust::Credentials> {
        let path = self.catalog().join(poolfs::trust::CLIENT_KEY_FILE);
        std::sync::Arc::new(
            poolfs::trust::Credentials::persistent_at(&self.pool_key(), &path).unwrap(),
        )
    }

    /// Credentials of another member: the cluster's pool key with a static key of its
    /// own (a fresh one on every call).
    pub fn stranger_credentials(&self) -> std::sync::Arc<poolfs::trust::Credentials> {
        std::sync::Arc::new(poolfs::trust::Credentials::ephemeral(&self.pool_key()).unwrap())
    }
}
