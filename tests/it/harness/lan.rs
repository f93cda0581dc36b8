//! A LAN of network namespaces for tests: a bridge and one namespace per host, all inside a private network and mount namespace that the test owns.
//!
//! How it stays out of the machine's own network:
//!
//! * A **supervisor** process is started under `unshare --net --mount --propagation
//!   private`. Its network namespace holds the bridge; its private mount namespace gets
//!   a tmpfs on `/run`, so the `/run/netns/*` entries that `ip netns add` creates exist
//!   only there (nothing is created on the machine, not even `/run/netns`).
//! * Every `ip` command and every process runs through `nsenter --target SUPERVISOR
//!   --net --mount`, and processes of a host through `ip netns exec HOST` on top of it.
//!   The test process itself never changes namespace (a multithreaded process cannot
//!   `unshare(CLONE_NEWNS)`), and nothing is ever created in the root namespace.
//! * `ip netns exec` gives every command a mount namespace of its own, so a mount made
//!   there is seen by nothing else. Processes that mount, or use a mount, run instead in
//!   the supervisor's mount namespace with only the host's network namespace entered
//!   (`spawn_shared`, `host_sh_shared`); mount points live on its private `/run`
//!   (`mount_dir`). Its propagation is private: no mount reaches the machine's own
//!   mount table. `/dev` is the machine's devtmpfs, untouched, so `/dev/fuse` is there.
//! * Teardown: `Drop` kills every process the harness started, by pid, lazily unmounts
//!   every `mount_dir` (a FUSE mount whose daemon is dead would otherwise answer
//!   ENOTCONN until its namespace goes), then closes the supervisor's stdin. The
//!   supervisor then kills whatever still runs in the host namespaces, lazily unmounts
//!   any FUSE mount left on a `mount_dir`, deletes the host namespaces and exits, and its
//!   namespaces (bridge, veths, mounts) vanish with it. If the test process dies without
//!   unwinding, the closed pipe triggers the same.
//!
//! Set `POOLFS_TEST_KEEP_LOGS=1` to keep each LAN's directory (process logs, stores).
//!
//! Host `i` is `{tag}{i}` with address `10.77.{net}.{i+1}/24` on its `eth0`; its cable is
//! the bridge port `v{tag}{i}`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// The supervisor: holds the namespaces until its stdin closes, then cleans up.
const SUPERVISOR: &str = r#"
set -e
mount -t tmpfs -o mode=0755 poolfs-test-lan /run
ip link set lo up
echo ready
exec 1>&2
set +e
# Wait until the test drops the LAN (or dies): stdin reaches its end.
cat >/dev/null
for ns in $(ip netns list | cut -d' ' -f1); do
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null; done
done
# FUSE mounts the test made on its mount_dirs: this namespace's copies of the machine's
# own mounts (another program's FUSE mount, say) are left alone.
for mp in $(grep -E '^[^ ]+ /run/poolfs-[^ ]+ fuse(\.[^ ]+)? ' /proc/self/mounts | cut -d' ' -f2); do
    umount -l -c "$mp"
done
for ns in $(ip netns list | cut -d' ' -f1); do ip netns del "$ns"; done
exit 0
"#;

/// One host of the LAN.
#[derive(Clone, Debug)]
pub struct Host {
    /// Name of its network namespace.
    pub name: String,
    /// Its address on the LAN.
    pub ip: Ipv4Addr,
    /// The bridge-side end of its veth pair (its "cable").
    pub port: String,
}

struct Proc {
    pid: u32,
    host: usize,
    child: Child,
    log: PathBuf,
}

/// A bridge with hosts, inside namespaces of the test's own.
pub struct Lan {
    tag: String,
    supervisor: Child,
    keep_alive: Option<ChildStdin>,
    hosts: Vec<Host>,
    procs: Mutex<Vec<Proc>>,
    mount_dirs: Mutex<Vec<PathBuf>>,
    dir: tempfile::TempDir,
}

/// The capability is missing: under `CI=true` that fails the test, elsewhere the test is
/// skipped with the reason printed.
fn unavailable(reason: String) -> Option<Lan> {
    super::skip(&format!("the namespace LAN cannot run here: {reason}"));
    None
}

/// Why a FUSE mount cannot be made here, if it cannot: no `/dev/fuse` character device
/// or no `fuse` filesystem in the kernel. (Mounting needs root too, which `Lan::new`
/// checks; as root poolfs calls mount(2) itself, no fusermount3 needed.)
pub fn fuse_missing() -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        Ok(_) => return Some("/dev/fuse is not a character device".into()),
        Err(e) => {
            return Some(format!(
                "no /dev/fuse ({e}; `mknod -m 666 /dev/fuse c 10 229`, `modprobe fuse`)"
            ))
        }
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("fuse"))
    {
        return Some("the kernel has no fuse filesystem (`modprobe fuse`)".into());
    }
    None
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Lan {
    /// `Lan::new` for a test that mounts: `None`, the test skipped saying why, where
    /// FUSE is not available.
    pub fn with_fuse(tag: &str, net: u8, hosts: usize) -> Option<Lan> {
        if let Some(reason) = fuse_missing() {
            super::skip(&format!("FUSE is not available: {reason}"));
            return None;
        }
        Lan::new(tag, net, hosts)
    }

    /// Builds a LAN named `tag` (at most 8 characters, unique per test) on subnet
    /// 10.77.`net`.0/24 with `hosts` hosts. None when the machine cannot host it and
    /// CI is not set (the reason is printed); panics under CI=true.
    pub fn new(tag: &str, net: u8, hosts: usize) -> Option<Lan> {
        assert!(
            !tag.is_empty() && tag.len() <= 8 && tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "a LAN tag is 1 to 8 letters or digits"
        );
        assert!((1..=200).contains(&hosts));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return unavailable("namespaces, veths and raw sockets need root".into());
        }
        for tool in ["ip", "unshare", "nsenter"] {
            if !on_path(tool) {
                return unavailable(format!(
                    "`{tool}` is not installed (apt-get install iproute2 util-linux)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("poolfs-lan-{tag}-"))
            .tempdir()
            .expect("a temporary directory");
        let mut supervisor = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", SUPERVISOR])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot run unshare");
        let keep_alive = supervisor.stdin.take();
        let mut ready = String::new();
        if let Some(out) = supervisor.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut ready);
        }
        if ready.trim() != "ready" {
            drop(keep_alive);
            let status = supervisor.wait();
            return unavailable(format!(
                "unshare --net --mount could not set up a private namespace ({status:?}); \
                 see its message above"
            ));
        }
        let hosts: Vec<Host> = (0..hosts)
            .map(|i| Host {
                name: format!("{tag}{i}"),
                ip: Ipv4Addr::new(10, 77, net, i as u8 + 1),
                port: format!("v{tag}{i}"),
            })
            .collect();
        let lan = Lan {
            tag: tag.to_string(),
            supervisor,
            keep_alive,
            hosts,
            procs: Mutex::new(Vec::new()),
            mount_dirs: Mutex::new(Vec::new()),
            dir,
        };
        let bridge = lan.bridge();
        let mut script =
            format!("set -e\nip link add {bridge} type bridge\nip link set {bridge} up\n");
        for h in &lan.hosts {
            script.push_str(&format!(
                "ip netns add {n}\n\
                 ip link add {p} type veth peer name eth0 netns {n}\n\
                 ip link set {p} master {bridge} up\n\
                 ip -n {n} addr add {ip}/24 dev eth0\n\
                 ip -n {n} link set eth0 up\n\
                 ip -n {n} link set lo up\n",
                n = h.name,
                p = h.port,
                ip = h.ip
            ));
        }
        lan.lan_sh(&script);
        Some(lan)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("br{}", self.tag)
    }

    /// The LAN's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Every name this LAN creates (bridge, bridge ports, host namespaces), to check
    /// with `assert_root_clean` that none of them shows up in the root namespace.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.bridge()];
        for h in &self.hosts {
            names.push(h.name.clone());
            names.push(h.port.clone());
        }
        names
    }

    /// Address of host `i`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].ip
    }

    /// `ip(i):port`.
    pub fn addr(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(i), port))
    }

    /// A directory for files of this LAN's test (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "--target",
            &self.supervisor.id().to_string(),
            "--net",
            "--mount",
            "--",
        ]);
        c
    }

    /// Runs a shell script in the LAN's own namespace (where the bridge is); panics if
    /// it fails. Returns its standard output.
    pub fn lan_sh(&self, script: &str) -> String {
        let out = self
            .enter()
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run nsenter");
        assert!(
            out.status.success(),
            "LAN command failed ({}):\n{script}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn host_command(&self, i: usize, program: &Path, args: &[&str]) -> Command {
        let mut c = self.enter();
        c.args(["ip", "netns", "exec", &self.hosts[i].name])
            .arg(program)
            .args(args)
            .env_remove("POOLFS_CONTROLLER")
            .env("POOLFS_KEY", super::cluster::test_key())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    /// Like `host_command`, but in the supervisor's mount namespace (shared by every
    /// such command, so they all see the same mounts) instead of a fresh one per command
    /// as `ip netns exec` makes. Both namespace files are opened from here before nsenter
    /// enters either: the host's through the supervisor's root, where `/run/netns` is.
    fn host_command_shared(&self, i: usize, program: &Path, args: &[&str]) -> Command {
        let sup = self.supervisor.id();
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{sup}/ns/mnt"))
            .arg(format!(
                "--net=/proc/{sup}/root/run/netns/{}",
                self.hosts[i].name
            ))
            .arg("--")
            .arg(program)
            .args(args)
            .env_remove("POOLFS_CONTROLLER")
            .env("POOLFS_KEY", super::cluster::test_key())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    /// A directory `/run/poolfs-{tag}/{name}` in the LAN's own mount namespace (on its
    /// private tmpfs: it does not exist on the machine) to mount on from `spawn_shared`
    /// processes. `Drop` lazily unmounts it before the supervisor goes.
    pub fn mount_dir(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(format!("/run/poolfs-{}/{name}", self.tag));
        self.lan_sh(&format!(
            "mkdir -p {}",
            sh_quote(dir.to_str().expect("UTF-8"))
        ));
        self.mount_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(dir.clone());
        dir
    }

    /// The mount table (`/proc/self/mounts`) of the LAN's own mount namespace.
    pub fn lan_mounts(&self) -> String {
        self.lan_sh("cat /proc/self/mounts")
    }

    /// Starts `program args` inside host `i`, its output going to a log file; returns
    /// its pid (nsenter and `ip netns exec` exec in place, so it is the program's own).
    pub fn spawn(&self, i: usize, label: &str, program: &Path, args: &[&str]) -> u32 {
        let command = self.host_command(i, program, args);
        self.spawn_command(i, label, command)
    }

    /// Like `spawn`, but in the LAN's shared mount namespace (see `host_command_shared`):
    /// for a process that mounts a filesystem others must see, such as `poolfs mount`.
    pub fn spawn_shared(&self, i: usize, label: &str, program: &Path, args: &[&str]) -> u32 {
        let command = self.host_command_shared(i, program, args);
        self.spawn_command(i, label, command)
    }

    /// Starts `poolfs mount MOUNT_POINT --storage STORAGE -c CONTROLLER EXTRA...
    /// --foreground` on host `i`, in the LAN's shared mount namespace; returns its pid.
    pub fn spawn_mount(
        &self,
        i: usize,
        mount_point: &Path,
        storage: &Path,
        controller: &str,
        extra: &[&str],
    ) -> u32 {
        let utf8 = |p: &Path| p.to_str().expect("test paths are UTF-8").to_string();
        let (mp, store) = (utf8(mount_point), utf8(storage));
        let mut args = vec!["mount", &mp, "--storage", &store, "-c", controller];
        args.extend_from_slice(extra);
        args.push("--foreground");
        self.spawn_shared(i, "mount", Path::new(env!("CARGO_BIN_EXE_poolfs")), &args)
    }

    fn spawn_command(&self, i: usize, label: &str, mut command: Command) -> u32 {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let log = self.dir.path().join(format!(
            "{}-{label}-{}.log",
            self.hosts[i].name,
            procs.len()
        ));
        let out = File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("cannot run nsenter");
        let pid = child.id();
        procs.push(Proc {
            pid,
            host: i,
            child,
            log,
        });
        pid
    }

    /// Runs `program args` inside host `i` to completion (killed after `timeout`);
    /// returns its exit status, standard output and standard error.
    pub fn run(
        &self,
        i: usize,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> (ExitStatus, String, String) {
        let what = format!("{} {args:?} on {}", program.display(), self.hosts[i].name);
        self.run_command(i, self.host_command(i, program, args), &what, timeout)
    }

    /// Runs a shell script inside host `i`, in the LAN's shared mount namespace (where
    /// `spawn_shared` processes mount), to completion (killed after `timeout`); panics
    /// if it fails. Returns its standard output.
    pub fn host_sh_shared(&self, i: usize, script: &str, timeout: Duration) -> String {
        let command = self.host_command_shared(i, Path::new("sh"), &["-c", script]);
        let what = format!("`{script}` on {}", self.hosts[i].name);
        let (status, out, err) = self.run_command(i, command, &what, timeout);
        assert!(status.success(), "{what} failed ({status}):\n{err}");
        out
    }

    fn run_command(
        &self,
        i: usize,
        mut command: Command,
        what: &str,
        timeout: Duration,
    ) -> (ExitStatus, String, String) {
        let stamp = format!(
            "{}-run-{}",
            self.hosts[i].name,
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let out_path = self.dir.path().join(format!("{stamp}.out"));
        let err_path = self.dir.path().join(format!("{stamp}.err"));
        let mut child = command
            .stdout(File::create(&out_path).expect("an output file"))
            .stderr(File::create(&err_path).expect("an output file"))
            .spawn()
            .expect("cannot run nsenter");
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait().expect("cannot wait for a child") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{what} did not finish within {timeout:?}; stderr:\n{}",
                        std::fs::read_to_string(&err_path).unwrap_or_default()
                    );
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (status, read(&out_path), read(&err_path))
    }

    /// Everything process `pid` (started with `spawn`) wrote so far.
    pub fn log(&self, pid: u32) -> String {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .find(|p| p.pid == pid)
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_else(|| panic!("no process {pid} was started by this LAN"))
    }

    /// Waits until the log of `pid` contains `needle`; panics with the log if not.
    pub fn wait_log(&self, pid: u32, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log(pid);
            if log.contains(needle) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("process {pid} did not log {needle:?} within {timeout:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take(&self, pid: u32) -> Proc {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let at = procs
            .iter()
            .position(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("no process {pid} was started by this LAN"));
        procs.remove(at)
    }

    /// Kills process `pid` (started with `spawn`) with SIGKILL and reaps it; returns its log.
    pub fn kill(&self, pid: u32) -> String {
        let mut p = self.take(pid);
        let _ = p.child.kill();
        let _ = p.child.wait();
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for process `pid` (started with `spawn`) to exit by itself;
    /// returns its exit status and log, or None if it still runs (it stays held, so
    /// `Drop` still kills it).
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> Option<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                let p = procs
                    .iter_mut()
                    .find(|p| p.pid == pid)
                    .unwrap_or_else(|| panic!("no process {pid} was started by this LAN"));
                if let Some(status) = p.child.try_wait().expect("cannot wait for a child") {
                    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                    drop(procs);
                    self.take(pid);
                    return Some((status, log));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills every process started with `spawn` on host `i` (SIGKILL, by pid); returns
    /// their pids.
    pub fn kill_host(&self, i: usize) -> Vec<u32> {
        let pids: Vec<u32> = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs
                .iter()
                .filter(|p| p.host == i)
                .map(|p| p.pid)
                .collect()
        };
        for pid in &pids {
            self.kill(*pid);
        }
        pids
    }

    /// The supervisor's pid.
    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor.id()
    }

    /// Unplugs host `i`: its bridge port goes down, so no frame reaches it or leaves it.
    pub fn cut(&self, i: usize) {
        self.lan_sh(&format!("ip link set {} down", self.hosts[i].port));
    }

    /// Plugs host `i` back in.
    pub fn restore(&self, i: usize) {
        self.lan_sh(&format!("ip link set {} up", self.hosts[i].port));
    }

    /// Bytes the bridge sent to host `i` and received from it, from the counters of its
    /// bridge port.
    pub fn port_bytes(&self, i: usize) -> (u64, u64) {
        let json = self.lan_sh(&format!("ip -j -s link show dev {}", self.hosts[i].port));
        let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        let stats = &v[0]["stats64"];
        let get = |dir: &str| stats[dir]["bytes"].as_u64().expect("byte counters");
        (get("tx"), get("rx"))
    }

    /// A TCP listener bound to `addr` inside host `i`'s network namespace, owned by the
    /// test process (closed when dropped, so it can never outlive the test). A short-lived
    /// thread enters the namespace to bind it; sockets keep the namespace they were made in.
    pub fn listen_tcp(&self, i: usize, addr: SocketAddr) -> TcpListener {
        let path = format!(
            "/proc/{}/root/run/netns/{}",
            self.supervisor.id(),
            self.hosts[i].name
        );
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            // SAFETY: `ns` is an open namespace file; this only moves this thread, which
            // ends right after binding.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"))
        })
        .join()
        .expect("the binding thread panicked")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if std::env::var_os("POOLFS_TEST_KEEP_LOGS").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temporary directory"),
            );
            eprintln!("LAN {} logs kept in {}", self.tag, kept.keep().display());
        }
        let procs = std::mem::take(self.procs.get_mut().unwrap_or_else(|p| p.into_inner()));
        for mut p in procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // With their daemons gone, detach the mounts (lazily: nothing may block here).
        // Not through `lan_sh`, which panics: a panic while unwinding would abort.
        let dirs = std::mem::take(self.mount_dirs.get_mut().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs {
            let dir = dir.to_string_lossy();
            let script = format!(
                "while grep -qF {pattern} /proc/self/mounts; do umount -l -c {dir} || break; done",
                pattern = sh_quote(&format!(" {dir} ")),
                dir = sh_quote(&dir),
            );
            let _ = self
                .enter()
                .args(["sh", "-c", &script])
                .stdin(Stdio::null())
                .output();
        }
        // Closing its stdin lets the supervisor clean up and exit.
        drop(self.keep_alive.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.supervisor.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("the LAN supervisor did not exit in time; killing it");
                    let _ = self.supervisor.kill();
                    let _ = self.supervisor.wait();
                    break;
                }
            }
        }
    }
}

/// Asserts that none of `names` (from `Lan::names`) exists in the machine's own network
/// namespace: no such link (bridge, veth) and no such `ip netns` entry.
pub fn assert_root_clean(names: &[String]) {
    let run = |args: &[&str]| {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("cannot run ip");
        assert!(out.status.success(), "ip {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // `ip -o link` lines read "7: name@peer: <FLAGS> ..." or "7: name: <FLAGS> ...".
    let links: Vec<String> = run(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    let netns: Vec<String> = run(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    for name in names {
        assert!(
            !links.contains(name),
            "link {name} leaked into the root namespace: {links:?}"
        );
        assert!(!netns.contains(name), "namespace {name} leaked: {netns:?}");
    }
}

/// Whether a process with this pid exists and runs `comm` (to tell ours from a reused pid).
pub fn process_running(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
}
