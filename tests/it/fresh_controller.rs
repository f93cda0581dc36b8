//! The controller's state is rebuildable (issue 15): with its state directory deleted,
//! a fresh controller on the same address gives every node its old id back (manifests
//! name a shard's holder by id), every file reads back exact through a fresh mount, and
//! a node new to the pool gets an id above all the old ones. Real processes on
//! loopback, on the ports 27100-27199 of this test (below the kernel's ephemeral range, so no other test's connection holds one).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::mount::{
    assert_same_file, can_mount, force_unmount, is_mounted, poolfs, random_file, run, run_ok,
    test_dir, wait_until, MIB,
};

/// Where this test's controller listens, before and after it loses its state.
const CONTROLLER: &str = "127.0.0.1:27100";
/// The storage nodes' ports: 27101..=27104; the new node's is `NEW_NODE_PORT`.
const FIRST_NODE_PORT: u16 = 27101;
/// The mount's own node.
const MOUNT_PORT: u16 = 27105;
/// The node that joins the fresh controller as a stranger.
const NEW_NODE_PORT: u16 = 27106;
/// Storage nodes besides the mount.
const NODES: u16 = 4;

/// The processes of this test, each ended by its own pid on drop (and the mount
/// unmounted first), whatever the test's outcome.
struct Procs {
    root: PathBuf,
    mnt: PathBuf,
    children: Vec<Child>,
}

impl Procs {
    /// Starts `poolfs ARGS` with its log in `root/NAME.log`.
    fn spawn(&mut self, name: &str, args: &[&str]) -> u32 {
        let log_path = self.root.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let child = poolfs(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start poolfs {args:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// The controller, with its state in `state`.
    fn controller(&mut self, name: &str, state: &Path) -> u32 {
        let state = state.to_string_lossy().into_owned();
        let pid = self.spawn(
            name,
            &["controller", "--listen", CONTROLLER, "--state", &state],
        );
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                CONTROLLER
            )
            .is_ok()),
            "the controller did not start listening on {CONTROLLER}"
        );
        pid
    }

    /// A storage node on `port` with its storage in `root/NAME`.
    fn node(&mut self, name: &str, port: u16) -> u32 {
        let storage = self.root.join(name).to_string_lossy().into_owned();
        let listen = format!("127.0.0.1:{port}");
        self.spawn(
            name,
            &[
                "node",
                "--storage",
                &storage,
                "--listen",
                &listen,
                "--controller",
                CONTROLLER,
                "--capacity",
                "1G",
            ],
        )
    }

    /// Mounts the pool (in the foreground, as a child) on the storage `root/mount`.
    fn mount(&mut self, name: &str) -> u32 {
        let storage = self.root.join("mount").to_string_lossy().into_owned();
        let mnt = self.mnt.to_string_lossy().into_owned();
        let listen = format!("127.0.0.1:{MOUNT_PORT}");
        let pid = self.spawn(
            name,
            &[
                "mount",
                &mnt,
                "--storage",
                &storage,
                "-c",
                CONTROLLER,
                "--listen",
                &listen,
                "--capacity",
                "1G",
                "-f",
            ],
        );
        assert!(
            wait_until(Duration::from_secs(20), || is_mounted(&self.mnt)),
            "the pool was not mounted on {}; log:\n{}",
            self.mnt.display(),
            self.log(name)
        );
        pid
    }

    /// Kills one child by its pid (kill -9) and reaps it.
    fn kill(&mut self, pid: u32) {
        let i = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .unwrap_or_else(|| panic!("{pid} is not a child of this test"));
        let mut child = self.children.remove(i);
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Unmounts as a user does and waits for the mount process `pid` to exit.
    fn unmount(&mut self, pid: u32) {
        run_ok(Command::new("fusermount3").arg("-u").arg(&self.mnt));
        let i = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .expect("the mount is a child of this test");
        let mut child = self.children.remove(i);
        assert!(
            wait_until(Duration::from_secs(15), || child
                .try_wait()
                .ok()
                .flatten()
                .is_some()),
            "the mount process {pid} did not exit after the unmount"
        );
    }

    /// The last lines of `root/NAME.log`, for a failure message.
    fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.root.join(format!("{name}.log")))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
        }
        force_unmount(&self.mnt);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pool's members as `poolfs status --json` shows them: address to (id, state).
fn members() -> Result<BTreeMap<SocketAddr, (u32, String)>, String> {
    let out = run(&mut poolfs(["status", "--json", "-c", CONTROLLER]));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let view: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status --json: {e}"))?;
    let nodes = view["nodes"].as_array().ok_or("no nodes in the view")?;
    nodes
        .iter()
        .map(|n| {
            let addr: SocketAddr = n["addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no address in {n}"))?;
            let id = n["id"].as_u64().ok_or_else(|| format!("no id in {n}"))? as u32;
            let state = n["state"].as_str().unwrap_or("?").to_string();
            Ok((addr, (id, state)))
        })
        .collect()
}

/// Waits until the members at `addrs` are all up, and returns the members then.
fn wait_up(addrs: &[SocketAddr], what: &str) -> BTreeMap<SocketAddr, (u32, String)> {
    let mut last = Err(String::from("not asked yet"));
    let up = wait_until(Duration::from_secs(30), || {
        last = members();
        last.as_ref().is_ok_and(|m| {
            addrs
                .iter()
                .all(|a| m.get(a).is_some_and(|(_, s)| s == "Up"))
        })
    });
    assert!(up, "{what}: not all of {addrs:?} are up: {last:?}");
    last.expect("checked above")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_fresh_controller_gives_every_node_its_old_id_and_files_read_back() {
    if !can_mount() {
        return;
    }
    let tmp = test_dir("fresh-controller");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).expect("create the mount point");
    let mut procs = Procs {
        root: root.clone(),
        mnt: mnt.clone(),
        children: Vec::new(),
    };
    let state = root.join("controller-state");
    let controller = procs.controller("controller", &state);
    for i in 0..NODES {
        procs.node(&format!("node-{i}"), FIRST_NODE_PORT + i);
    }
    let mut addrs: Vec<SocketAddr> = (0..NODES).map(|i| addr(FIRST_NODE_PORT + i)).collect();
    wait_up(&addrs, "the storage nodes joined");
    let mount = procs.mount("mount");
    addrs.push(addr(MOUNT_PORT));
    let before = wait_up(&addrs, "the mount's node joined");
    assert_eq!(before.len(), addrs.len(), "{before:?}");

    // Files of several stripes, of one, and small ones, written the way a user does.
    let scratch = root.join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let files = [
        ("several-mib", 7 * MIB + 4321),
        ("one-mib", MIB),
        ("small", 40 * 1024 + 7),
        ("tiny", 3000),
    ];
    for (name, len) in files {
        let want = scratch.join(name);
        random_file(&want, len);
        run_ok(Command::new("cp").arg(&want).arg(mnt.join(name)));
    }
    run_ok(&mut Command::new("sync"));

    // The controller dies and its state with it; a fresh one takes its address.
    procs.kill(controller);
    std::fs::remove_dir_all(&state).expect("delete the controller's state");
    // Long enough for every node to notice its controller is gone.
    std::thread::sleep(Duration::from_secs(2));
    procs.controller("controller-fresh", &state);
    let after = wait_up(&addrs, "every node came back to the fresh controller");
    for a in &addrs {
        assert_eq!(
            after[a].0, before[a].0,
            "the member at {a} has another id than before: before {before:?}, after {after:?}"
        );
    }
    assert_eq!(after.len(), before.len(), "no member twice: {after:?}");

    // A fresh mount of the same storage knows nothing cached: every byte it reads
    // comes from the holders its manifests name by id.
    procs.unmount(mount);
    procs.mount("mount-again");
    let again = wait_up(&addrs, "the mount came back");
    assert_eq!(again[&addr(MOUNT_PORT)].0, before[&addr(MOUNT_PORT)].0);
    for (name, _) in files {
        assert_same_file(&scratch.join(name), &mnt.join(name));
    }

    // A node new to the pool gets an id above every old one.
    procs.node("node-new", NEW_NODE_PORT);
    let with_new = wait_up(&[addr(NEW_NODE_PORT)], "the new node joined");
    let newest = with_new[&addr(NEW_NODE_PORT)].0;
    let oldest_max = before.values().map(|(id, _)| *id).max().expect("members");
    assert!(
        newest > oldest_max,
        "the new node got id {newest}, not above the old ids {before:?}"
    );
    drop(procs);
    assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
}
