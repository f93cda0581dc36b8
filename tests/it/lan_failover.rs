//! Failover on a LAN of namespaces: a mount on one host reads a file while another
//! host's cable is pulled, and no read() waits a second for the missing host.
//!
//! Every packet stays inside namespaces the test creates (see `harness::lan`). The
//! mount lives in the LAN's private mount namespace; the test reads it through
//! `/proc/SUPERVISOR/root`, so every read(2) is timed here, in the test process.

use crate::harness;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::lan::Lan;
use crate::harness::mount::wait_until;
use poolfs::proto::{NodeState, PoolView};

const NODE_PORT: u16 = 2001;
const CONTROLLER_PORT: u16 = 2000;
const WAIT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn poolfs() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_poolfs"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The pool view as `poolfs status --json` on host 0 prints it, if the controller answers.
fn view(lan: &Lan, ctrl: &str) -> Option<PoolView> {
    let (st, out, _) = lan.run(
        0,
        poolfs(),
        &["status", "-c", ctrl, "--json"],
        Duration::from_secs(20),
    );
    st.success()
        .then(|| serde_json::from_str(&out).expect("status --json prints a pool view"))
}

/// Polls the view until `ok` holds; panics with the last view after `timeout`.
fn wait_view(lan: &Lan, ctrl: &str, what: &str, ok: impl Fn(&PoolView) -> bool) -> PoolView {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(v) = view(lan, ctrl) {
            if ok(&v) {
                return v;
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the pool never reached '{what}' within {WAIT:?}; last view: {last:#?}");
}

/// Bytes each host has sent over its cable so far.
fn sent_by(lan: &Lan) -> Vec<u64> {
    (0..4).map(|h| lan.port_bytes(h).1).collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

/// Reads `f` to its end in `chunk`-byte read(2) calls, calling `at(bytes so far)` before
/// each; returns the bytes' BLAKE3 hash, their count and the slowest call.
fn timed_read(
    f: &mut File,
    chunk: usize,
    mut at: impl FnMut(usize),
) -> (blake3::Hash, usize, Duration) {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; chunk];
    let (mut total, mut slowest) = (0usize, Duration::ZERO);
    loop {
        at(total);
        let t = Instant::now();
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read() at byte {total} failed: {e}"));
        slowest = slowest.max(t.elapsed());
        if n == 0 {
            return (hasher.finalize(), total, slowest);
        }
        hasher.update(&buf[..n]);
        total += n;
    }
}

/// 4 hosts, each a member (the mount's node on host 0, with the controller), k = 3 and
/// m = 1. A 96 MiB file written through the mount is read back from the pool while host
/// 2's cable is pulled a quarter of the way through: the bytes are the same, and no
/// read() call stalls for a second. Then the cable is plugged back in.
#[test]
#[cfg_attr(
    any(poolfs_no_netns, poolfs_no_fuse),
    ignore = "needs root and ip, unshare, nsenter (network namespaces); a /dev/fuse device and the kernel fuse filesystem"
)]
fn a_link_cut_mid_read_never_stalls_a_reader() {
    let Some(lan) = Lan::with_fuse("dcut", 21, 4) else {
        return;
    };
    let names = lan.names();
    let ctrl = lan.addr(0, CONTROLLER_PORT).to_string();
    let listen = format!("0.0.0.0:{NODE_PORT}");
    let state = lan.dir().join("controller");
    let controller = lan.spawn(
        0,
        "controller",
        poolfs(),
        &[
            "controller",
            "--listen",
            &format!("0.0.0.0:{CONTROLLER_PORT}"),
            "--state",
            path_str(&state),
        ],
    );
    lan.wait_log(controller, "controller listening on", WAIT);
    for h in 1..=3 {
        let store = lan.dir().join(format!("store{h}"));
        let node = lan.spawn(
            h,
            "node",
            poolfs(),
            &[
                "node",
                "--storage",
                path_str(&store),
                "--listen",
                &listen,
                "-c",
                &ctrl,
                "--capacity",
                "1G",
            ],
        );
        lan.wait_log(node, "node listening on", WAIT);
    }
    wait_view(&lan, &ctrl, "3 nodes up", |v| v.live().len() == 3);
    let mp = lan.mount_dir("pool");
    let mps = path_str(&mp).to_string();
    let mount_store = lan.dir().join("mount-store");
    let mount = lan.spawn_mount(
        0,
        &mp,
        &mount_store,
        &ctrl,
        &["--listen", &listen, "--parity", "1"],
    );
    lan.wait_log(mount, &format!("mounted {mps}"), WAIT);
    wait_view(&lan, &ctrl, "4 members up", |v| v.live().len() == 4);
    // The host whose cable is pulled: its node's id.
    let cut_host = 2;
    let cut_addr = lan.addr(cut_host, NODE_PORT);
    let cut_id = view(&lan, &ctrl)
        .and_then(|v| v.nodes.iter().find(|n| n.addr == cut_addr).map(|n| n.id))
        .expect("host 2's node in the view");

    // The mount as the test process sees it: through the supervisor's root, which is in
    // the LAN's mount namespace. Every byte still goes through the FUSE daemon on host 0.
    let file: PathBuf = PathBuf::from(format!("/proc/{}/root{mps}/big.bin", lan.supervisor_pid()));
    let size = 96 * MIB + 12345;
    let data = harness::cluster::random_bytes(size, 0xc07);
    let want = blake3::hash(&data);
    let t = Instant::now();
    {
        let mut f =
            File::create(&file).unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
        for part in data.chunks(MIB) {
            f.write_all(part).expect("write into the mount");
        }
        f.sync_all().expect("fsync the file in the mount");
    }
    let write_time = t.elapsed();
    drop(data);

    // Each read starts by dropping the kernel's cached pages of the file, so every
    // read() reaches the mount, and the pool.
    let read_all = |at: &mut dyn FnMut(usize)| {
        let mut f = File::open(&file).expect("open the file in the mount");
        // SAFETY: a valid descriptor for the duration of the call.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let t = Instant::now();
        let (got, total, slowest) = timed_read(&mut f, MIB, at);
        (got, total, slowest, t.elapsed())
    };
    let check =
        |what: &str, (got, total, slowest, took): (blake3::Hash, usize, Duration, Duration)| {
            println!(
                "MEASURED {what}: read {total} bytes in {:.2}s, slowest read() {slowest:?}",
                took.as_secs_f64()
            );
            assert_eq!(total, size, "{what}: the read returned the whole file");
            assert!(
                got == want,
                "{what}: the bytes read back differ from those written"
            );
            assert!(
                slowest < Duration::from_secs(1),
                "{what}: a read() stalled {slowest:?}"
            );
        };
    println!(
        "MEASURED wrote {size} bytes through the mount in {:.2}s",
        write_time.as_secs_f64()
    );

    // 1. The cable is pulled a quarter of the way through: in-flight requests to host 2
    //    go unanswered (no reset), and the controller still counts it up for seconds.
    let mut cut_at = None;
    let first = read_all(&mut |done| {
        if cut_at.is_none() && done >= size / 4 {
            lan.cut(cut_host);
            cut_at = Some(Instant::now());
        }
    });
    let cut_at = cut_at.expect("the cable was pulled during the read");
    check("link cut mid-read", first);

    // 2. Later, with the cable still out: the controller counts the node down, and a
    //    whole read goes around it from the start.
    wait_view(&lan, &ctrl, "the cut node down", |v| {
        v.node(cut_id).is_some_and(|n| n.state == NodeState::Down)
    });
    println!(
        "MEASURED the cut node was counted down {:.2}s after the cut",
        cut_at.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(6).saturating_sub(cut_at.elapsed()));
    let before = sent_by(&lan);
    check("read with the cable out", read_all(&mut |_| {}));
    let sent = delta(&before, &sent_by(&lan));
    // Host 0 holds the parity segment itself; hosts 1 and 3 send their thirds.
    for h in [1, 3] {
        assert!(
            sent[h] >= (size / 3) as u64,
            "host {h} sent {} bytes, less than its segment: the read did not reach the pool",
            sent[h]
        );
    }

    // 3. The cable is back: so is the node, and reads use it again without stalling on
    //    connections left from before the cut.
    lan.restore(cut_host);
    wait_view(&lan, &ctrl, "the cut node up again", |v| {
        v.live().len() == 4
    });
    // The mount sees the controller's view up to half a second late (its client
    // caches it): until then the node still counts as down and is read around. The
    // file's health is computed from the mount's own view, fetched again once stale:
    // wait until it no longer names the node missing.
    let missing = format!("node {cut_id} ");
    assert!(
        wait_until(Duration::from_secs(10), || !harness::mount::health(&file)
            .contains(&missing)),
        "the mount still counts node {cut_id} out: {}",
        harness::mount::health(&file)
    );
    let before = sent_by(&lan);
    check("read after the cable came back", read_all(&mut |_| {}));
    let sent = delta(&before, &sent_by(&lan));
    assert!(
        sent[cut_host] >= (size / 3) as u64,
        "host {cut_host} sent {} bytes after it came back, less than its segment",
        sent[cut_host]
    );

    lan.host_sh_shared(0, &format!("umount {mps}"), Duration::from_secs(30));
    let (status, log) = lan
        .wait_exit(mount, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the mount still runs 30 s after umount"));
    assert!(status.success(), "the mount exited with {status}:\n{log}");
    drop(lan);
    harness::lan::assert_root_clean(&names);
}
