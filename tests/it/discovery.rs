//! Discovery on a LAN of namespaces: ARP sweep, port probe, ASSIGN, re-sweeps, link cuts, controller restarts, and a FUSE mount whose files land on the other hosts.
//!
//! Every packet stays inside namespaces the test creates (see `harness::lan`); the
//! controller sweeps the `eth0` of its own host namespace and nothing else. Mounts are
//! made in the LAN's private mount namespace, never the machine's.

use crate::harness;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::lan::Lan;
use poolfs::client::Manifest;
use poolfs::proto::{NodeId, NodeState, PoolView, ScanReport};

const NODE_PORT: u16 = 2001;
const CONTROLLER_PORT: u16 = 2000;
const WAIT: Duration = Duration::from_secs(30);

fn poolfs() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_poolfs"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The controller's address: it always runs on host 0.
fn controller(lan: &Lan) -> String {
    lan.addr(0, CONTROLLER_PORT).to_string()
}

/// Starts a node that waits for the controller's signal on host `h`.
fn start_node(lan: &Lan, h: usize, port: u16) -> u32 {
    let store = lan.dir().join(format!("store{h}-{port}"));
    let listen = format!("0.0.0.0:{port}");
    let pid = lan.spawn(
        h,
        "node",
        poolfs(),
        &[
            "node",
            "--storage",
            path_str(&store),
            "--listen",
            &listen,
            "--capacity",
            "1G",
        ],
    );
    lan.wait_log(pid, "awaiting the controller's signal", WAIT);
    pid
}

/// Starts the controller on host 0, sweeping host 0's `eth0` (the LAN's bridge).
fn start_controller(lan: &Lan, rescan_secs: u64) -> u32 {
    let state = lan.dir().join("controller");
    let listen = format!("0.0.0.0:{CONTROLLER_PORT}");
    let rescan = rescan_secs.to_string();
    let pid = lan.spawn(
        0,
        "controller",
        poolfs(),
        &[
            "controller",
            "--listen",
            &listen,
            "--state",
            path_str(&state),
            "--scan",
            "eth0",
            "--rescan-interval",
            &rescan,
        ],
    );
    lan.wait_log(pid, "controller listening on", WAIT);
    pid
}

/// The pool view from host `from`, or None if the controller does not answer.
fn status(lan: &Lan, from: usize) -> Option<PoolView> {
    let ctrl = controller(lan);
    let (st, out, _) = lan.run(
        from,
        poolfs(),
        &["status", "-c", &ctrl, "--json"],
        Duration::from_secs(20),
    );
    if !st.success() {
        return None;
    }
    Some(serde_json::from_str(&out).expect("status --json prints a pool view"))
}

/// Polls the view until `ok` holds; panics with the last view after `timeout`.
fn wait_view(lan: &Lan, what: &str, timeout: Duration, ok: impl Fn(&PoolView) -> bool) -> PoolView {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(view) = status(lan, 0) {
            if ok(&view) {
                return view;
            }
            last = Some(view);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the pool never reached '{what}' within {timeout:?}; last view: {last:#?}");
}

/// Address -> (id, state) of every member.
fn members(view: &PoolView) -> BTreeMap<SocketAddr, (NodeId, NodeState)> {
    view.nodes
        .iter()
        .map(|n| (n.addr, (n.id, n.state)))
        .collect()
}

fn scan(lan: &Lan, from: usize) -> ScanReport {
    let ctrl = controller(lan);
    let (st, out, err) = lan.run(
        from,
        poolfs(),
        &["scan", "-c", &ctrl, "--json"],
        Duration::from_secs(60),
    );
    assert!(st.success(), "poolfs scan failed: {err}");
    serde_json::from_str(&out).expect("scan --json prints a report")
}

/// Deterministic bytes that do not compress or repeat.
fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn put(lan: &Lan, from: usize, file: &Path, name: &str) {
    let ctrl = controller(lan);
    let catalog = lan.dir().join("catalog");
    let (st, _, err) = lan.run(
        from,
        poolfs(),
        &[
            "put",
            path_str(file),
            "--name",
            name,
            "-c",
            &ctrl,
            "--catalog",
            path_str(&catalog),
        ],
        Duration::from_secs(60),
    );
    assert!(st.success(), "put from host {from} failed: {err}");
}

fn get(lan: &Lan, from: usize, name: &str) -> Result<Vec<u8>, String> {
    let ctrl = controller(lan);
    let catalog = lan.dir().join("catalog");
    let out = lan.dir().join(format!("{name}.from{from}"));
    let _ = std::fs::remove_file(&out);
    let (st, _, err) = lan.run(
        from,
        poolfs(),
        &[
            "get",
            name,
            path_str(&out),
            "-c",
            &ctrl,
            "--catalog",
            path_str(&catalog),
        ],
        Duration::from_secs(60),
    );
    if !st.success() {
        return Err(err);
    }
    std::fs::read(&out).map_err(|e| e.to_string())
}

fn manifest(lan: &Lan, name: &str) -> Manifest {
    let path = lan
        .dir()
        .join("catalog")
        .join(format!("{name}.manifest.json"));
    let bytes = std::fs::read(&path).expect("the catalog entry exists");
    serde_json::from_slice(&bytes).expect("a manifest")
}

/// A service that is not poolfs, on a host's node port: it answers every connection
/// with an SSH banner. Counts the connections; stops when dropped.
struct ForeignService {
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignService {
    fn start(lan: &Lan, h: usize, port: u16) -> Self {
        let listener = lan.listen_tcp(h, lan.addr(h, port));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n");
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                        let _ = conn.read(&mut [0u8; 64]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ForeignService {
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for ForeignService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (a) Six hosts: four nodes, one host with nothing, one with a node on another port and
/// a foreign service on the node port. The sweep finds exactly the four nodes, numbered
/// 1..4 in address order, and each logs the ASSIGN it received.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn sweep_finds_exactly_the_nodes_and_numbers_them() {
    let Some(lan) = Lan::new("dsa", 1, 7) else {
        return;
    };
    let names = lan.names();
    let nodes: Vec<u32> = (1..=4).map(|h| start_node(&lan, h, NODE_PORT)).collect();
    let elsewhere = start_node(&lan, 6, NODE_PORT + 1);
    let foreign = ForeignService::start(&lan, 6, NODE_PORT);
    let ctrl = start_controller(&lan, 0);

    let view = wait_view(&lan, "4 nodes up", WAIT, |v| v.live().len() == 4);
    let expected: BTreeMap<SocketAddr, (NodeId, NodeState)> = (1..=4)
        .map(|h| (lan.addr(h, NODE_PORT), (h as NodeId, NodeState::Up)))
        .collect();
    assert_eq!(members(&view), expected, "exactly the four nodes, ids 1..4");

    let ctrl_ip = lan.ip(0);
    for (h, pid) in (1..=4).zip(&nodes) {
        lan.wait_log(*pid, &format!("received ASSIGN from {ctrl_ip}:"), WAIT);
        let log = lan.log(*pid);
        let line = format!("node id {h}, pool size 4, controller {ctrl_ip}:{CONTROLLER_PORT}");
        assert!(log.contains(&line), "node {h} log lacks {line:?}:\n{log}");
    }
    let log = lan.log(elsewhere);
    assert!(
        !log.contains("received ASSIGN"),
        "the node on another port was not found, so not signalled:\n{log}"
    );
    assert!(
        foreign.hits() >= 1,
        "the foreign service was probed and turned down"
    );
    lan.wait_log(ctrl, "ARP sweep of 10.77.1.0/24 on eth0", WAIT);

    // On request: the same four, nothing new, and the time a /24 takes.
    let started = Instant::now();
    let report = scan(&lan, 5);
    let wall = started.elapsed();
    assert_eq!(report.swept, 253, "a /24 less the controller's own address");
    let responders: Vec<IpAddr> = (1..=6).map(|h| IpAddr::V4(lan.ip(h))).collect();
    assert_eq!(report.responders, responders, "every host answers ARP");
    let found: Vec<(NodeId, SocketAddr, bool)> =
        report.nodes.iter().map(|n| (n.id, n.addr, n.new)).collect();
    let want: Vec<(NodeId, SocketAddr, bool)> = (1..=4)
        .map(|h| (h as NodeId, lan.addr(h, NODE_PORT), false))
        .collect();
    assert_eq!(found, want);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.elsewhere.is_empty(), "{:?}", report.elsewhere);
    let ctrl_addr = controller(&lan);
    let (st, text, _) = lan.run(5, poolfs(), &["scan", "-c", &ctrl_addr], WAIT);
    assert!(st.success());
    println!("poolfs scan prints:\n{text}");
    assert!(text.contains("swept 253 addresses") && text.contains("6 hosts answered, 4 nodes"));
    println!(
        "MEASURED sweep of a /24 (253 addresses, 6 hosts, 4 nodes): ARP {:.2}s + probe and \
         ASSIGN {:.3}s; `poolfs scan` wall time {:.2}s",
        report.arp_ms as f64 / 1000.0,
        report.probe_ms as f64 / 1000.0,
        wall.as_secs_f64()
    );
    assert!(
        report.arp_ms + report.probe_ms < 5000,
        "a /24 takes a few seconds"
    );

    drop(foreign);
    drop(lan);
    harness::lan::assert_root_clean(&names);
}

/// (b) A node that starts after the first sweep is found by the next periodic sweep and
/// by `poolfs scan`; it gets the next id even though its address is lower; the others
/// keep theirs and the epoch grows.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn a_node_started_later_is_found_by_the_next_sweep() {
    let Some(lan) = Lan::new("dsb", 2, 6) else {
        return;
    };
    let names = lan.names();
    for h in 2..=4 {
        start_node(&lan, h, NODE_PORT);
    }
    start_controller(&lan, 2);
    let first = wait_view(&lan, "3 nodes up", WAIT, |v| v.live().len() == 3);
    let mut expected: BTreeMap<SocketAddr, (NodeId, NodeState)> = (2..=4)
        .map(|h| (lan.addr(h, NODE_PORT), (h as NodeId - 1, NodeState::Up)))
        .collect();
    assert_eq!(members(&first), expected);

    // Host 1 (the lowest address) comes up late: the periodic sweep adds it as node 4.
    let late = start_node(&lan, 1, NODE_PORT);
    let second = wait_view(&lan, "4 nodes up", WAIT, |v| v.live().len() == 4);
    expected.insert(lan.addr(1, NODE_PORT), (4, NodeState::Up));
    assert_eq!(
        members(&second),
        expected,
        "ids in discovery order, others unchanged"
    );
    assert!(
        second.epoch > first.epoch,
        "the view changed, so did the epoch"
    );
    lan.wait_log(late, "node id 4, pool size 4", WAIT);

    // Host 5 comes up; `poolfs scan` (or a periodic sweep just before it) finds it.
    start_node(&lan, 5, NODE_PORT);
    let report = scan(&lan, 0);
    let n5 = report
        .nodes
        .iter()
        .find(|n| n.addr == lan.addr(5, NODE_PORT))
        .unwrap_or_else(|| panic!("scan did not find host 5: {report:?}"));
    assert_eq!(n5.id, 5);
    assert_eq!(report.nodes.len(), 5);
    let third = wait_view(&lan, "5 nodes up", WAIT, |v| v.live().len() == 5);
    expected.insert(lan.addr(5, NODE_PORT), (5, NodeState::Up));
    assert_eq!(members(&third), expected);
    assert!(third.epoch > second.epoch);

    drop(lan);
    harness::lan::assert_root_clean(&names);
}

/// (c) Cutting a node's cable gets it marked down within a few seconds; plugging it back
/// brings it back up with the same id.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn a_cut_link_marks_the_node_down_and_restoring_it_brings_it_back() {
    let Some(lan) = Lan::new("dsc", 3, 4) else {
        return;
    };
    let names = lan.names();
    for h in 1..=3 {
        start_node(&lan, h, NODE_PORT);
    }
    start_controller(&lan, 0);
    let before = wait_view(&lan, "3 nodes up", WAIT, |v| v.live().len() == 3);
    let addr2 = lan.addr(2, NODE_PORT);
    assert_eq!(members(&before)[&addr2], (2, NodeState::Up));

    lan.cut(2);
    let cut_at = Instant::now();
    let down = wait_view(&lan, "node 2 down", Duration::from_secs(15), |v| {
        v.node(2).is_some_and(|n| n.state == NodeState::Down)
    });
    let detection = cut_at.elapsed();
    println!(
        "MEASURED down-detection after a link cut: {:.2}s",
        detection.as_secs_f64()
    );
    assert!(
        detection < Duration::from_secs(6),
        "marked down after {detection:?}"
    );
    assert_eq!(down.live().len(), 2, "the others stay up");

    lan.restore(2);
    let restored_at = Instant::now();
    let back = wait_view(&lan, "node 2 up again", WAIT, |v| v.live().len() == 3);
    println!(
        "MEASURED back up after the link was restored: {:.2}s",
        restored_at.elapsed().as_secs_f64()
    );
    assert_eq!(members(&back), members(&before), "same ids, same addresses");

    drop(lan);
    harness::lan::assert_root_clean(&names);
}

/// (d) With the controller killed, nodes keep serving reads of stored files; once it is
/// back (same state directory), the view is rebuilt with the same ids.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn nodes_serve_reads_while_the_controller_is_down_and_ids_survive_its_restart() {
    let Some(lan) = Lan::new("dsd", 4, 6) else {
        return;
    };
    let names = lan.names();
    let nodes: Vec<u32> = (1..=4).map(|h| start_node(&lan, h, NODE_PORT)).collect();
    let ctrl = start_controller(&lan, 0);
    let before = wait_view(&lan, "4 nodes up", WAIT, |v| v.live().len() == 4);

    let data = test_bytes(3 << 20, 4);
    let file = lan.dir().join("input.bin");
    std::fs::write(&file, &data).expect("write the input");
    put(&lan, 5, &file, "f1");
    assert!(get(&lan, 5, "f1").expect("get") == data);

    assert_eq!(
        lan.kill_host(0),
        vec![ctrl],
        "host 0 runs just the controller"
    );
    assert!(status(&lan, 5).is_none(), "the controller is gone");
    lan.wait_log(nodes[0], "unreachable", WAIT);
    for from in [5, 1, 3] {
        let got = get(&lan, from, "f1")
            .unwrap_or_else(|e| panic!("get from host {from} with the controller down: {e}"));
        assert!(got == data, "host {from} read back different bytes");
    }

    start_controller(&lan, 0);
    let after = wait_view(&lan, "4 nodes up again", WAIT, |v| v.live().len() == 4);
    assert_eq!(
        members(&after),
        members(&before),
        "the same ids after a restart"
    );
    assert!(after.epoch > before.epoch);
    assert!(get(&lan, 2, "f1").expect("get after the restart") == data);

    drop(lan);
    harness::lan::assert_root_clean(&names);
}

/// (e) `put` on one host places segment i on node i, each on its own host, over the
/// bridge: the other hosts' segment files hold the bytes and their bridge ports carried them.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn put_from_one_host_lands_segments_on_the_nodes_of_other_hosts() {
    let Some(lan) = Lan::new("dse", 5, 5) else {
        return;
    };
    let names = lan.names();
    for h in 1..=4 {
        start_node(&lan, h, NODE_PORT);
    }
    start_controller(&lan, 0);
    wait_view(&lan, "4 nodes up", WAIT, |v| v.live().len() == 4);

    let data = test_bytes(6 << 20, 5);
    let file = lan.dir().join("input.bin");
    std::fs::write(&file, &data).expect("write the input");
    let counters: Vec<(u64, u64)> = (1..=4).map(|h| lan.port_bytes(h)).collect();
    put(&lan, 1, &file, "spread");

    let m = manifest(&lan, "spread");
    let holders: Vec<(NodeId, SocketAddr)> = m
        .place
        .holders
        .iter()
        .map(|h| (h.node_id, h.addr))
        .collect();
    let want: Vec<(NodeId, SocketAddr)> = (1..=4)
        .map(|h| (h as NodeId, lan.addr(h, NODE_PORT)))
        .collect();
    assert_eq!(holders, want, "one segment per node, at LAN addresses");

    let mut total = 0;
    for h in 1..=4usize {
        let store = lan.dir().join(format!("store{h}-{NODE_PORT}"));
        let seg: PathBuf = harness::cluster::segment_path(&store, &m.place.file_id, h as u32 - 1)
            .unwrap_or_else(|| panic!("host {h} lacks segment {}", h - 1));
        let len = std::fs::metadata(&seg)
            .unwrap_or_else(|e| panic!("host {h} lacks segment {}: {e}", h - 1))
            .len();
        assert!(
            len >= (data.len() / 4) as u64,
            "segment on host {h} is {len} bytes"
        );
        total += len;
        if h != 1 {
            let (tx, _) = lan.port_bytes(h);
            let carried = tx - counters[h - 1].0;
            assert!(
                carried >= len,
                "the bridge carried {carried} bytes to host {h}, less than its {len}-byte segment"
            );
        }
    }
    assert!(total >= data.len() as u64);
    let (_, rx) = lan.port_bytes(1);
    assert!(
        rx - counters[0].1 >= 3 * (data.len() / 4) as u64,
        "host 1 sent three segments out over its cable"
    );
    assert!(get(&lan, 3, "spread").expect("get from host 3") == data);

    drop(lan);
    harness::lan::assert_root_clean(&names);
}

/// The pool view's member with this id.
fn member(view: &PoolView, id: NodeId) -> Option<(SocketAddr, NodeState)> {
    view.node(id).map(|n| (n.addr, n.state))
}

/// The segment files of file data under `store/segments/OWNER/`: (file id, segment
/// file name, length). The mount's namespace (its root and blobs, under an identity of
/// its own) is left out: the test follows the copied file's bytes.
fn segment_files(store: &Path) -> Vec<(String, String, u64)> {
    assert!(
        store.join("segments").is_dir(),
        "{} holds no segments directory",
        store.display()
    );
    harness::cluster::data_segments(store)
        .into_iter()
        .map(|s| (s.file, s.name, s.len))
        .collect()
}

/// A line of `mounts` (a /proc/*/mounts table) that mounts something on `dir`.
fn mount_line<'a>(mounts: &'a str, dir: &Path) -> Option<&'a str> {
    let dir = dir.to_str().expect("UTF-8");
    mounts.lines().find(|l| l.split(' ').nth(1) == Some(dir))
}

/// `grep fuse /proc/self/mounts` in the test process, that is in the machine's own mount
/// namespace (the test process never changes namespace).
fn root_fuse_mounts() -> String {
    let out = std::process::Command::new("grep")
        .args(["fuse", "/proc/self/mounts"])
        .output()
        .expect("cannot run grep");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (f) A mount on host 0 (in the LAN's own mount namespace, never the machine's) joins
/// the pool of three swept nodes; a file copied in with `cp` is cut into four segments,
/// three of which cross the bridge to hosts 1..3 and one stays with the mount; `cat`
/// after the page cache is dropped fetches them back over the bridge, bit-exact; `umount`
/// makes the mount leave the pool and exit 0.
#[test]
#[cfg_attr(
    any(poolfs_no_netns, poolfs_no_fuse),
    ignore = "needs root and ip, unshare, nsenter (network namespaces); a /dev/fuse device and the kernel fuse filesystem"
)]
fn a_file_copied_into_a_mount_lands_on_the_other_hosts_and_reads_back() {
    let Some(lan) = Lan::with_fuse("dsh", 8, 4) else {
        return;
    };
    let started = Instant::now();
    let names = lan.names();
    for h in 1..=3 {
        start_node(&lan, h, NODE_PORT);
    }
    start_controller(&lan, 0);
    wait_view(&lan, "3 swept nodes up", WAIT, |v| v.live().len() == 3);

    // The mount joins by naming the controller, with its node on host 0's node port.
    let mp = lan.mount_dir("pool");
    let mps = path_str(&mp).to_string();
    let mount_store = lan.dir().join("mount-store");
    let ctrl = controller(&lan);
    let listen = format!("0.0.0.0:{NODE_PORT}");
    let mount = lan.spawn_mount(0, &mp, &mount_store, &ctrl, &["--listen", &listen]);
    lan.wait_log(mount, &format!("mounted {mps}"), WAIT);
    let view = wait_view(&lan, "4 members up", WAIT, |v| v.live().len() == 4);
    let mut expected: BTreeMap<SocketAddr, (NodeId, NodeState)> = (1..=3)
        .map(|h| (lan.addr(h, NODE_PORT), (h as NodeId, NodeState::Up)))
        .collect();
    expected.insert(lan.addr(0, NODE_PORT), (4, NodeState::Up));
    assert_eq!(
        members(&view),
        expected,
        "three swept nodes and the mount's"
    );

    // The mount exists in the LAN's mount namespace and nowhere on the machine.
    let lan_mounts = lan.lan_mounts();
    let line = mount_line(&lan_mounts, &mp)
        .unwrap_or_else(|| panic!("{mps} is not mounted in the LAN:\n{lan_mounts}"));
    let fields: Vec<&str> = line.split(' ').collect();
    assert!(
        fields[0] == ctrl && fields[2].starts_with("fuse"),
        "a poolfs FUSE mount whose source is its controller ({ctrl}): {line}"
    );
    let root = root_fuse_mounts();
    assert!(
        mount_line(&root, &mp).is_none() && !root.contains(&format!("poolfs-{}", lan.tag())),
        "the mount leaked into the machine's mount table:\n{root}"
    );
    assert!(
        !Path::new(&mp).exists(),
        "{mps} exists only in the LAN's namespace"
    );

    // Copy a random file in with cp, inside host 0.
    let size = (6 << 20) + 1000;
    let data = harness::cluster::random_bytes(size, 0xd5f);
    let input = lan.dir().join("input.bin");
    std::fs::write(&input, &data).expect("write the input");
    let inside = format!("{mps}/big.bin");
    let before: Vec<(u64, u64)> = (0..4).map(|h| lan.port_bytes(h)).collect();
    let t = Instant::now();
    lan.host_sh_shared(
        0,
        &format!("cp {} {inside}", path_str(&input)),
        Duration::from_secs(120),
    );
    let copy_time = t.elapsed();
    let after: Vec<(u64, u64)> = (0..4).map(|h| lan.port_bytes(h)).collect();

    // Four segments of one file (k = 3 data + 1 parity, the default on 4 nodes), about a
    // third of it each: segment i on node i + 1, but for the mount's node (4), which
    // takes segment 0 (the first data shard, read locally) and gives node 1 its own (3).
    let third = (size / 3) as u64;
    let mut file_ids = Vec::new();
    let mut seg_len = Vec::new();
    for h in 0..=3usize {
        let store = if h == 0 {
            mount_store.clone()
        } else {
            lan.dir().join(format!("store{h}-{NODE_PORT}"))
        };
        let id = if h == 0 { 4 } else { h };
        let segs = segment_files(&store);
        assert_eq!(segs.len(), 1, "host {h} holds one segment: {segs:?}");
        let (file, name, len) = segs.into_iter().next().expect("one segment");
        let index = match id {
            4 => 0,
            1 => 3,
            _ => id - 1,
        };
        assert_eq!(
            name,
            format!("{index}.seg"),
            "node {id} holds segment {index}"
        );
        assert!(
            (third..third + 4096).contains(&len),
            "host {h}'s segment is {len} bytes, not about a third of {size}"
        );
        file_ids.push(file);
        seg_len.push(len);
    }
    assert!(
        file_ids.iter().all(|f| *f == file_ids[0]),
        "the segments belong to one file: {file_ids:?}"
    );
    assert!(seg_len.iter().sum::<u64>() >= size as u64);

    // They crossed the bridge: each other host's cable carried its segment, host 0's
    // carried three segments out, and the mount's own segment never left host 0.
    for h in 1..=3 {
        let carried = after[h].0 - before[h].0;
        assert!(
            carried >= seg_len[h],
            "the bridge carried {carried} bytes to host {h}, less than its {}-byte segment",
            seg_len[h]
        );
    }
    let sent = after[0].1 - before[0].1;
    let three = seg_len[1] + seg_len[2] + seg_len[3];
    assert!(
        sent >= three && sent < three + seg_len[0] / 2,
        "host 0 sent {sent} bytes over its cable: three segments ({three}) plus headers, \
         not its own"
    );

    // Read back inside host 0 after dropping the file's cached pages (the mount keeps
    // the page cache across opens), so the bytes come from the nodes, over the bridge.
    let readback = lan.dir().join("readback.bin");
    let before: Vec<(u64, u64)> = (0..4).map(|h| lan.port_bytes(h)).collect();
    let t = Instant::now();
    let stat = lan.host_sh_shared(
        0,
        &format!(
            "dd if={inside} iflag=nocache count=0 status=none && stat -c %s {inside} && \
             cat {inside} > {out} && cmp {inside} {input}",
            out = path_str(&readback),
            input = path_str(&input)
        ),
        Duration::from_secs(120),
    );
    let read_time = t.elapsed();
    let after: Vec<(u64, u64)> = (0..4).map(|h| lan.port_bytes(h)).collect();
    assert_eq!(
        stat.trim(),
        size.to_string(),
        "the file's size on the mount"
    );
    let got = std::fs::read(&readback).expect("the bytes cat wrote");
    assert!(
        got.len() == data.len() && got == data,
        "cat returned different bytes"
    );
    // Data shards only, when all are there: segment 0 from the mount's own node, 1 and
    // 2 from hosts 2 and 3 over the bridge; host 1's parity is not read.
    for h in 2..=3 {
        let fetched = after[h].1 - before[h].1;
        assert!(
            fetched >= seg_len[h],
            "cat fetched {fetched} bytes from host {h} over the bridge, less than its \
             {}-byte segment",
            seg_len[h]
        );
    }
    let parity = after[1].1 - before[1].1;
    assert!(
        parity < seg_len[1] / 2,
        "cat fetched {parity} bytes from host 1, which holds the parity segment"
    );

    // umount inside host 0: the mount leaves the pool and exits 0.
    lan.host_sh_shared(0, &format!("umount {mps}"), Duration::from_secs(30));
    let (status, log) = lan
        .wait_exit(mount, Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "the mount still runs 30 s after umount:\n{}",
                lan.log(mount)
            )
        });
    assert!(status.success(), "the mount exited with {status}:\n{log}");
    assert!(log.contains("leaving the pool"), "{log}");
    let gone = wait_view(&lan, "the mount's node gone", WAIT, |v| {
        member(v, 4).is_some_and(|(_, s)| s == NodeState::Gone)
    });
    assert_eq!(
        member(&gone, 4),
        Some((lan.addr(0, NODE_PORT), NodeState::Gone))
    );
    assert_eq!(gone.live().len(), 3, "the three nodes stay up");
    let lan_mounts = lan.lan_mounts();
    assert!(
        mount_line(&lan_mounts, &mp).is_none(),
        "{mps} is still mounted:\n{lan_mounts}"
    );
    println!(
        "MEASURED mount test: cp of {size} bytes {:.2}s, cat {:.2}s, whole test {:.1}s",
        copy_time.as_secs_f64(),
        read_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    drop(lan);
    harness::lan::assert_root_clean(&names);
    assert!(
        !harness::lan::process_running(mount, "poolfs"),
        "the mount ended"
    );
    let root = root_fuse_mounts();
    assert!(mount_line(&root, &mp).is_none(), "{root}");
}

/// Sweeps that cannot run say why: unknown interface, a subnet not on any interface,
/// loopback, no permission for raw sockets; `poolfs scan` without `--scan` says so too.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn sweep_errors_name_their_cause() {
    let Some(lan) = Lan::new("dsf", 6, 2) else {
        return;
    };
    let names = lan.names();
    let state = lan.dir().join("controller");
    let listen = format!("0.0.0.0:{CONTROLLER_PORT}");
    let try_scan = |target: &str| {
        let (st, _, err) = lan.run(
            0,
            poolfs(),
            &[
                "controller",
                "--listen",
                &listen,
                "--state",
                path_str(&state),
                "--scan",
                target,
            ],
            Duration::from_secs(20),
        );
        assert!(!st.success(), "--scan {target} must fail");
        err
    };
    let err = try_scan("nosuch0");
    assert!(
        err.contains("no network interface named \"nosuch0\"") && err.contains("eth0"),
        "{err}"
    );
    let err = try_scan("10.99.0.0/24");
    assert!(
        err.contains("no interface is on a subnet that overlaps 10.99.0.0/24")
            && err.contains("10.77.6.1/24 on eth0"),
        "{err}"
    );
    let err = try_scan("lo");
    assert!(err.contains("loopback"), "{err}");

    // Without root: a user without CAP_NET_RAW is told what is missing.
    let open = tempfile::tempdir().expect("a temporary directory");
    set_mode(open.path(), 0o777);
    let mut bin = poolfs().to_path_buf();
    let (st, _, _) = lan.run(
        0,
        Path::new("setpriv"),
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "test",
            "-x",
            path_str(&bin),
        ],
        Duration::from_secs(10),
    );
    if !st.success() {
        // The build directory is not reachable by others: use a copy.
        let copy = open.path().join("poolfs");
        std::fs::copy(&bin, &copy).expect("copy the binary");
        set_mode(&copy, 0o755);
        bin = copy;
    }
    let user_state = open.path().join("state");
    // The unprivileged user gets a copy of the pool key it can read.
    let user_key = open.path().join("pool.key");
    std::fs::copy(harness::cluster::test_key(), &user_key).expect("copy the pool key");
    std::os::unix::fs::chown(&user_key, Some(65534), Some(65534)).expect("chown the key");
    let (st, _, err) = lan.run(
        0,
        Path::new("setpriv"),
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            path_str(&bin),
            "controller",
            "--listen",
            &listen,
            "--state",
            path_str(&user_state),
            "--key",
            path_str(&user_key),
            "--scan",
            "eth0",
        ],
        Duration::from_secs(20),
    );
    assert!(!st.success(), "an unprivileged sweep must fail");
    assert!(
        err.contains("cannot open a raw socket on eth0") && err.contains("CAP_NET_RAW"),
        "{err}"
    );

    // A controller started without --scan refuses `poolfs scan` with a reason.
    let ctrl = lan.spawn(
        0,
        "controller",
        poolfs(),
        &[
            "controller",
            "--listen",
            &listen,
            "--state",
            path_str(&state),
        ],
    );
    lan.wait_log(ctrl, "controller listening on", WAIT);
    let c = controller(&lan);
    let (st, _, err) = lan.run(1, poolfs(), &["scan", "-c", &c], Duration::from_secs(20));
    assert!(!st.success());
    assert!(err.contains("started without --scan"), "{err}");

    drop(lan);
    harness::lan::assert_root_clean(&names);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A test that panics still leaves nothing behind: its processes are ended, the
/// supervisor exits, and no name shows up in the root namespace.
#[test]
#[cfg_attr(
    poolfs_no_netns,
    ignore = "needs root and ip, unshare, nsenter (network namespaces)"
)]
fn the_lan_is_torn_down_even_when_a_test_panics() {
    type Seen = (Vec<String>, u32, u32, u32);
    let seen: Mutex<Option<Seen>> = Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(lan) = Lan::new("dsg", 7, 2) else {
            return;
        };
        let sleeper = lan.spawn(1, "sleeper", Path::new("sleep"), &["3617"]);
        let node = start_node(&lan, 1, NODE_PORT);
        *seen.lock().unwrap() = Some((lan.names(), lan.supervisor_pid(), sleeper, node));
        panic!("a deliberate failure with the LAN up");
    }));
    let Some((names, supervisor, sleeper, node)) = seen.into_inner().unwrap() else {
        return; // skipped: no LAN here
    };
    assert!(outcome.is_err(), "the closure panicked");
    assert!(
        !harness::lan::process_running(sleeper, "sleep"),
        "sleeper ended"
    );
    assert!(!harness::lan::process_running(node, "poolfs"), "node ended");
    assert!(
        !harness::lan::process_running(supervisor, "sh"),
        "supervisor ended"
    );
    harness::lan::assert_root_clean(&names);
}

/// A test that panics with a mount up, busy (a process has its working directory in it
/// and a file open there), still leaves nothing behind: the mount's daemon and the user
/// are ended by pid, the mount is detached, the supervisor exits, and neither the mount
/// nor any name shows up on the machine.
#[test]
#[cfg_attr(
    any(poolfs_no_netns, poolfs_no_fuse),
    ignore = "needs root and ip, unshare, nsenter (network namespaces); a /dev/fuse device and the kernel fuse filesystem"
)]
fn a_busy_mount_is_ended_and_detached_when_a_test_panics() {
    if let Some(reason) = harness::lan::fuse_missing() {
        harness::skip(&format!("FUSE is not available: {reason}"));
        return;
    }
    type Seen = (Vec<String>, u32, u32, u32, PathBuf);
    let seen: Mutex<Option<Seen>> = Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(lan) = Lan::new("dsi", 9, 2) else {
            return;
        };
        start_controller(&lan, 0);
        let mp = lan.mount_dir("pool");
        let mps = path_str(&mp).to_string();
        let store = lan.dir().join("mount-store");
        let ctrl = controller(&lan);
        let mount = lan.spawn_mount(1, &mp, &store, &ctrl, &[]);
        lan.wait_log(mount, &format!("mounted {mps}"), WAIT);
        let user = lan.spawn_shared(
            1,
            "user",
            Path::new("sh"),
            &[
                "-c",
                &format!("cd {mps} && exec 3>open.txt && echo busy && exec sleep 3617"),
            ],
        );
        lan.wait_log(user, "busy", WAIT);
        assert!(mount_line(&lan.lan_mounts(), &mp).is_some());
        *seen.lock().unwrap() = Some((lan.names(), lan.supervisor_pid(), mount, user, mp));
        panic!("a deliberate failure with a busy mount up");
    }));
    let Some((names, supervisor, mount, user, mp)) = seen.into_inner().unwrap() else {
        return; // skipped: no LAN here
    };
    assert!(outcome.is_err(), "the closure panicked");
    assert!(
        !harness::lan::process_running(mount, "poolfs"),
        "the mount ended"
    );
    assert!(
        !harness::lan::process_running(user, "sleep"),
        "its user ended"
    );
    assert!(
        !harness::lan::process_running(supervisor, "sh"),
        "supervisor ended"
    );
    let root = root_fuse_mounts();
    assert!(mount_line(&root, &mp).is_none(), "{root}");
    harness::lan::assert_root_clean(&names);
}
