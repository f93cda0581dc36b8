//! poolfs as a service (issue 17, item 5): the systemd units of dist/systemd/ run as
//! systemd would run them (their Environment=, specifiers and ExecStart=, with
//! $NOTIFY_SOCKET) serve, say READY=1 once serving and STOPPING=1 on SIGTERM, and
//! leave the pool; the shell completions and man pages name every subcommand.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness;
use crate::harness::mount::{
    can_mount, free_port, is_mounted, member_states, poolfs, run_ok, test_dir, test_key,
    wait_until, ControllerProc, MountGuard, BIN,
};

/// The unit file `name` of dist/systemd/.
fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What systemd would run for a unit here: its Environment= (then `env`, as an
/// EnvironmentFile= would), specifiers replaced by `specifiers`, and the paths the
/// package installs (/usr/bin/poolfs, /var/lib/poolfs) by this build's binary and
/// `state`.
struct UnitRun {
    text: String,
    env: BTreeMap<String, String>,
    specifiers: Vec<(&'static str, String)>,
    state: PathBuf,
}

impl UnitRun {
    fn new(name: &str, specifiers: &[(&'static str, &Path)], state: &Path) -> UnitRun {
        let text = unit_text(name);
        let mut env: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The test pool's key in place of the package's /etc/poolfs/pool.key.
        env.insert("POOLFS_KEY".into(), test_key().display().to_string());
        UnitRun {
            text,
            env,
            specifiers: specifiers
                .iter()
                .map(|(s, p)| (*s, p.display().to_string()))
                .collect(),
            state: state.to_path_buf(),
        }
    }

    /// Sets a variable as /etc/default/poolfs (or ~/.config/poolfs/NAME.env) would.
    fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_string(), value.into());
        self
    }

    /// The words of the unit's `key=` line (the first, which must exist), as systemd
    /// splits and expands them: single quotes, `$VAR` words split on white space, `$$`.
    fn words(&self, key: &str) -> Vec<String> {
        let line = self
            .text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"));
        let mut line = line
            .trim_start_matches(['-', '@', '+', '!', ':'])
            .to_string();
        for (spec, value) in &self.specifiers {
            line = line.replace(spec, value);
        }
        let mut words = Vec::new();
        let mut rest = line.as_str();
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let (word, quoted, tail) = match rest.strip_prefix('\'') {
                Some(q) => {
                    let end = q.find('\'').expect("closing quote");
                    (&q[..end], true, &q[end + 1..])
                }
                None => {
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    (&rest[..end], false, &rest[end..])
                }
            };
            match word.strip_prefix('$').filter(|_| !quoted) {
                Some(var) if !var.starts_with('$') => words.extend(
                    self.env
                        .get(var)
                        .map(String::as_str)
                        .unwrap_or("")
                        .split_whitespace()
                        .map(str::to_string),
                ),
                _ => words.push(word.replace("$$", "$")),
            }
            rest = tail;
        }
        let state = self.state.display().to_string();
        for w in &mut words {
            if w == "/usr/bin/poolfs" {
                *w = BIN.to_string();
            } else if let Some(tail) = w.strip_prefix("/var/lib/poolfs") {
                *w = format!("{state}{tail}");
            }
        }
        words
    }

    /// The unit's `key=` command, with its environment and `$NOTIFY_SOCKET`.
    fn command(&self, key: &str, notify: &Path) -> Command {
        let words = self.words(key);
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .envs(&self.env)
            .env("NOTIFY_SOCKET", notify)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }
}

impl UnitRun {
    /// Starts the unit's ExecStart= as systemd would, its log in `log`.
    fn start(&self, notify: &Notify, log: &Path) -> KillOnDrop {
        let log_file = std::fs::File::create(log).expect("log file");
        KillOnDrop(
            self.command("ExecStart", &notify.path)
                .stderr(log_file)
                .spawn()
                .expect("cannot run the unit's ExecStart"),
        )
    }
}

/// The socket systemd listens on for a `Type=notify` unit.
struct Notify {
    path: PathBuf,
    sock: UnixDatagram,
}

impl Notify {
    fn bind(path: PathBuf) -> Notify {
        let sock = UnixDatagram::bind(&path).expect("notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Notify { path, sock }
    }

    /// Waits up to `secs` for a datagram holding the line `line` (READY=1...),
    /// failing with what `child` logged if it exits first.
    fn expect(&self, line: &str, secs: u64, child: &mut Child, log: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == line) {
                    return;
                }
                got.push(msg);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "exited ({status}) before {line}; notified {got:?}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        panic!(
            "no {line} within {secs} s; notified {got:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Sends SIGTERM (what `systemctl stop` sends) to a child of the test.
fn sigterm(child: &Child) {
    // SAFETY: a signal to this test's own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Waits up to 60 s for `child` to exit after SIGTERM, and that it exited 0 (systemd
/// counts anything else as a failure, and Restart=on-failure would start it again).
fn exits_cleanly(child: &mut Child, what: &str, log: &Path) {
    let mut status = None;
    wait_until(Duration::from_secs(60), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not exit within 60 s of SIGTERM");
    };
    assert!(
        status.success(),
        "{what} exited with {status} after SIGTERM; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Kills a child if it still runs (a failed test).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn controller_and_node_units_notify_readiness_and_a_stopped_node_leaves() {
    let tmp = test_dir("svc-units");
    let root = tmp.path().canonicalize().unwrap();
    let port = free_port();
    let ctrl_addr = format!("127.0.0.1:{port}");

    let mut unit = UnitRun::new("poolfs-controller.service", &[], &root);
    unit.set("POOLFS_CONTROLLER_OPTS", format!("--listen {ctrl_addr}"));
    let ctrl_notify = Notify::bind(root.join("controller.notify"));
    let ctrl_log = root.join("controller.log");
    let mut ctrl = unit.start(&ctrl_notify, &ctrl_log);
    ctrl_notify.expect("READY=1", 30, &mut ctrl.0, &ctrl_log);
    assert!(
        std::net::TcpStream::connect(&ctrl_addr).is_ok(),
        "READY=1 before the controller listens"
    );
    assert!(
        root.join("controller").is_dir(),
        "the unit keeps the registry under /var/lib/poolfs"
    );

    let mut unit = UnitRun::new("poolfs-node.service", &[], &root);
    unit.set("POOLFS_CONTROLLER", &ctrl_addr)
        .set("POOLFS_NODE_OPTS", "--listen 127.0.0.1:0 --capacity 1G");
    let node_notify = Notify::bind(root.join("node.notify"));
    let node_log = root.join("node.log");
    let mut node = unit.start(&node_notify, &node_log);
    node_notify.expect("READY=1", 30, &mut node.0, &node_log);
    let addr = ctrl_addr.parse().unwrap();
    harness::mount::wait_members_up(addr, 1, "the node of the unit");
    assert!(
        root.join("node").is_dir(),
        "the node stores under /var/lib/poolfs/node"
    );

    // `systemctl stop`: SIGTERM; the node says it is stopping, leaves, exits 0.
    sigterm(&node.0);
    node_notify.expect("STOPPING=1", 30, &mut node.0, &node_log);
    exits_cleanly(&mut node.0, "the node", &node_log);
    assert_eq!(
        member_states(addr),
        ["Gone"],
        "a stopped node leaves the pool"
    );

    sigterm(&ctrl.0);
    ctrl_notify.expect("STOPPING=1", 30, &mut ctrl.0, &ctrl_log);
    exits_cleanly(&mut ctrl.0, "the controller", &ctrl_log);
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn mount_unit_notifies_once_mounted_unmounts_and_leaves_on_stop_and_clears_a_dead_mount() {
    if !can_mount() {
        return;
    }
    let tmp = test_dir("svc-mount");
    let root = tmp.path().canonicalize().unwrap();
    let ctrl = ControllerProc::start(&root.join("controller"), &root.join("ctrl.log"));
    let home = root.join("home");
    let config = home.join(".config");
    let mnt = home.join("pool");
    let _guard = MountGuard {
        mnt: mnt.clone(),
        root: root.clone(),
    };
    // poolfs-mount@pool.service: %i and %I are "pool".
    let pool = PathBuf::from("pool");
    let mut unit = UnitRun::new(
        "poolfs-mount@.service",
        &[("%h", &home), ("%E", &config), ("%I", &pool), ("%i", &pool)],
        &root,
    );
    unit.set("POOLFS_CONTROLLER", ctrl.addr.to_string())
        .set("POOLFS_MOUNT_OPTS", "--listen 127.0.0.1:0");
    let notify = Notify::bind(root.join("mount.notify"));
    let log = root.join("mount.log");
    let start = |notify: &Notify| {
        run_ok(&mut unit.command("ExecStartPre", &notify.path));
        assert!(mnt.is_dir(), "ExecStartPre makes ~/pool");
        unit.start(notify, &log)
    };

    let mut mount = start(&notify);
    notify.expect("READY=1", 60, &mut mount.0, &log);
    assert!(is_mounted(&mnt), "READY=1 before ~/pool is mounted");
    std::fs::write(mnt.join("f"), b"kept across a restart").unwrap();
    assert!(
        home.join(".local/share/poolfs/mount-pool/meta.redb")
            .exists(),
        "the mount's storage is under ~/.local/share/poolfs"
    );

    // `systemctl --user stop`: unmounted, left the pool, exit 0.
    sigterm(&mount.0);
    notify.expect("STOPPING=1", 30, &mut mount.0, &log);
    exits_cleanly(&mut mount.0, "the mount", &log);
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    assert_eq!(member_states(ctrl.addr), ["Gone"], "the stopped mount left");
    // ExecStopPost leaves a directory that is not a dead mount alone.
    run_ok(&mut unit.command("ExecStopPost", &notify.path));
    assert!(mnt.is_dir());

    // A crash (kill -9) leaves a dead mount; ExecStopPost clears it, and the unit
    // starts again (what Restart=on-failure does) with the file still there.
    let mut mount = start(&notify);
    notify.expect("READY=1", 60, &mut mount.0, &log);
    mount.0.kill().unwrap();
    mount.0.wait().unwrap();
    assert!(
        std::fs::metadata(&mnt).is_err(),
        "a killed mount leaves a dead mount"
    );
    run_ok(&mut unit.command("ExecStopPost", &notify.path));
    assert!(
        !is_mounted(&mnt),
        "ExecStopPost did not clear the dead mount"
    );
    let mut mount = start(&notify);
    notify.expect("READY=1", 60, &mut mount.0, &log);
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"kept across a restart"
    );
    sigterm(&mount.0);
    exits_cleanly(&mut mount.0, "the restarted mount", &log);
    assert!(!is_mounted(&mnt));
}

/// The subcommands `poolfs --help` lists (the clap grammar's visible ones).
fn subcommands() -> Vec<String> {
    let help = run_ok(&mut poolfs(["--help"])).stdout;
    let help = String::from_utf8_lossy(&help).into_owned();
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(
        names.len() >= 10,
        "subcommands in --help: {names:?}\n{help}"
    );
    names
}

#[test]
fn completions_and_man_pages_name_every_subcommand() {
    let names = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ok(&mut poolfs(["completions", shell])).stdout;
        let script = String::from_utf8_lossy(&out);
        for name in &names {
            assert!(
                script.contains(name.as_str()),
                "{shell} completion lacks `{name}`"
            );
        }
        // Options of a subcommand complete too.
        assert!(script.contains("--storage"), "{shell}: no --storage");
    }
    let bash = run_ok(&mut poolfs(["completions", "bash"])).stdout;
    let bash = String::from_utf8_lossy(&bash);
    assert!(
        bash.contains("complete -F _poolfs"),
        "not a bash completion"
    );
    assert!(
        bash.contains("poolfs__subcmd__mount)"),
        "no completion for `poolfs mount`"
    );

    // The main page lists every subcommand (roff escapes the hyphen).
    let page = run_ok(&mut poolfs(["manpage"])).stdout;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.starts_with(".ie") || page.contains(".TH poolfs 1"),
        "not roff"
    );
    for name in &names {
        assert!(
            page.contains(&format!("poolfs\\-{name}(1)")),
            "poolfs(1) lacks `{name}`"
        );
    }
    // And each has a page of its own.
    let tmp = test_dir("manpages");
    let out = run_ok(poolfs(["manpage", "--dir"]).arg(tmp.path())).stdout;
    let listed = String::from_utf8_lossy(&out);
    for page in
        std::iter::once("poolfs.1".to_string()).chain(names.iter().map(|n| format!("poolfs-{n}.1")))
    {
        let path = tmp.path().join(&page);
        assert!(path.is_file(), "no {page}; wrote:\n{listed}");
        assert!(listed.contains(&page), "{page} not named on stdout");
    }
    let mount = std::fs::read_to_string(tmp.path().join("poolfs-mount.1")).unwrap();
    assert!(
        mount.contains("\\-\\-foreground"),
        "poolfs-mount(1) lacks --foreground"
    );
}
