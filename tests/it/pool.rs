//! The pool over TCP (issue 2): real controller and node processes on 127.0.0.1.

use std::fs;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::cluster::{
    assert_ok, dir_allocated, dir_bytes, random_bytes, tree, wait_until, Cluster,
};
use crate::harness::wire::{
    noise_handshake, read_sealed_frame, read_until_closed, request_frame, seal,
};
use poolfs::client::catalog::Catalog;
use poolfs::client::{ClientError, Manifest, PoolClient, DEFAULT_SHARD_SIZE};
use poolfs::net::Connection;
use poolfs::proto::{
    self, ControllerRequest, ErrorKind, NodeId, NodeRequest, NodeState, Response, SegmentRead,
    SegmentRef, ServiceRequest, MAX_BODY,
};
use poolfs::trust::PoolKey;

const NODES: usize = 4;
/// Data bytes of one full stripe on a 4-node pool with the default shard size.
// Pools of 3 or more nodes get one parity segment by default: k = NODES - 1.
const STRIPE: usize = (NODES - 1) * DEFAULT_SHARD_SIZE as usize;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(c: &Cluster) -> PoolClient {
    PoolClient::new(c.client_config())
}

fn manifest(c: &Cluster, name: &str) -> Manifest {
    Catalog::new(&c.catalog()).load(name).unwrap()
}

/// A field of the manifest `put` saved as JSON in the catalog, found by key wherever the
/// manifest nests it (so these tests do not depend on the manifest's Rust layout).
fn manifest_field(c: &Cluster, name: &str, key: &str) -> serde_json::Value {
    fn find<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
        let obj = v.as_object()?;
        obj.get(key)
            .or_else(|| obj.values().find_map(|v| find(v, key)))
    }
    let path = c.catalog().join(format!("{name}.manifest.json"));
    let json: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    find(&json, key)
        .cloned()
        .unwrap_or_else(|| panic!("no {key:?} in the manifest of {name}: {json}"))
}

/// Ids of the nodes holding segment 0, 1, ... of a file.
fn holder_ids(c: &Cluster, name: &str) -> Vec<NodeId> {
    let holders = manifest_field(c, name, "holders");
    let holders = holders.as_array().expect("holders is a list");
    holders
        .iter()
        .map(|h| h["node_id"].as_u64().expect("holder has a node_id") as NodeId)
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts two byte strings are equal without printing megabytes on failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes back for {} sent; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// True if `text` names node `id` ("node 3", not "node 31").
fn names_node(text: &str, id: NodeId) -> bool {
    let needle = format!("node {id}");
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn files_of_edge_sizes_round_trip_bit_exact() {
    let c = Cluster::start(NODES);
    let ids: Vec<NodeId> = (0..NODES).map(|i| c.node_id(i)).collect();
    let shard = DEFAULT_SHARD_SIZE as usize;
    let sizes = [
        0,
        1,
        NODES - 1,
        NODES,
        NODES + 1,
        shard + 1,
        STRIPE - 1,
        STRIPE,
        STRIPE + 1,
        2 * STRIPE + 12_345, // a multi-megabyte random binary file, three stripes
    ];
    for (seed, &size) in sizes.iter().enumerate() {
        let name = format!("size-{size}");
        let (src, data) = c.random_file(&name, size, seed as u64);
        let got = c.round_trip(&name, &src);
        assert_same(&got, &data, &name);
        let m = manifest(&c, &name);
        assert_eq!(m.size, size as u64, "{name}: manifest size");
        let mut holders = holder_ids(&c, &name);
        holders.sort();
        assert_eq!(holders, ids, "{name}: one segment on every node");
    }
}

#[test]
fn byte_ranges_at_odd_offsets() {
    let c = Cluster::start(NODES);
    let size = 2 * STRIPE + 777_777;
    let (src, data) = c.random_file("ranges", size, 42);
    assert_ok(&c.put(&src, "ranges"), "put");
    // `put` leaves the manifest in the catalog as JSON.
    let json = fs::read(c.catalog().join("ranges.manifest.json")).unwrap();
    let m: Manifest = serde_json::from_slice(&json).unwrap();
    assert_eq!(m, manifest(&c, "ranges"));

    let shard = DEFAULT_SHARD_SIZE as usize;
    let mut ranges = vec![
        (0, 1),
        (1, 3),
        (3, 5),
        (7, 0),
        (shard - 1, 3),           // across a shard boundary inside a stripe
        (STRIPE - 1, 2),          // across a stripe boundary
        (STRIPE - 3, STRIPE + 7), // three stripes
        (shard + 7, 2 * shard + 13),
        (0, size),
        (size - 3, 10), // runs past the end: shorter answer
        (size, 5),      // at the end: empty
        (size + 11, 1), // past the end: empty
    ];
    let mut rng = random_bytes(8 * 40, 7).into_iter();
    let mut next = || {
        let b: [u8; 8] = std::array::from_fn(|_| rng.next().unwrap());
        u64::from_le_bytes(b) as usize
    };
    for _ in 0..20 {
        let off = next() % size;
        ranges.push((off | 1, next() % 300_000));
    }
    let rt = runtime();
    let client = client(&c);
    for (off, len) in ranges {
        let got = rt
            .block_on(client.read_range(&m, off as u64, len as u64))
            .unwrap_or_else(|e| panic!("range {off}+{len}: {e}"));
        let want = &data[off.min(size)..(off + len).min(size)];
        assert_same(&got, want, &format!("range {off}+{len}"));
    }
}

#[test]
fn two_clients_write_different_files_at_once() {
    let c = Cluster::start(NODES);
    let (a, data_a) = c.random_file("a", 3 * STRIPE / 2 + 1, 1);
    let (b, data_b) = c.random_file("b", 3 * STRIPE / 2 + 3, 2);
    let spawn = |src: &std::path::Path, name: &str| {
        let src = src.display().to_string();
        c.cli(&["put", &src, "--name", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a, "a"), spawn(&b, "b"));
    assert_ok(&pa.wait_with_output().unwrap(), "put a");
    assert_ok(&pb.wait_with_output().unwrap(), "put b");
    assert_ne!(
        manifest_field(&c, "a", "file_id"),
        manifest_field(&c, "b", "file_id")
    );
    for (name, data) in [("a", &data_a), ("b", &data_b)] {
        let out = c.path(&format!("{name}.out"));
        assert_ok(&c.get(name, &out), name);
        assert_same(&fs::read(&out).unwrap(), data, name);
    }
}

#[test]
fn each_node_holds_one_kth_of_a_large_file() {
    let c = Cluster::start(NODES);
    let size = 2 * STRIPE + 333_333;
    let (src, _) = c.random_file("large", size, 9);
    assert_ok(&c.put(&src, "large"), "put");
    // 4 nodes: k = 3 data segments + 1 parity segment, each a third of the file.
    let share = (size / (NODES - 1)) as u64;
    let held: Vec<u64> = (0..NODES).map(|i| dir_bytes(&c.storage(i))).collect();
    for (i, &h) in held.iter().enumerate() {
        assert!(
            h.abs_diff(share) <= share / 100,
            "node{i} holds {h} bytes of a {size}-byte file; expected about {share} (all: {held:?})"
        );
    }
    assert!(held.iter().sum::<u64>() >= size as u64);
    // `status` reports the same usage once the next heartbeats carry it: the bytes the
    // segments take on the disk (whole blocks, so a little more than their lengths).
    let allocated: Vec<u64> = (0..NODES)
        .map(|i| dir_allocated(&c.storage(i).join("segments")))
        .collect();
    wait_until(
        "status to report each node's usage",
        Duration::from_secs(5),
        || {
            let view = c.try_status().ok()?;
            (0..NODES)
                .all(|i| {
                    Cluster::info(&view, &c.nodes[i])
                        .is_some_and(|n| n.used.abs_diff(allocated[i]) < 16 * 1024)
                })
                .then_some(())
        },
    );
}

#[test]
fn restarted_node_and_controller_keep_ids_and_files() {
    let mut c = Cluster::start(NODES);
    let view = c.status();
    let ids = |view: &poolfs::proto::PoolView, c: &Cluster| -> Vec<NodeId> {
        c.nodes
            .iter()
            .map(|d| Cluster::info(view, d).expect("member").id)
            .collect()
    };
    let before = ids(&view, &c);
    let mut sorted = before.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3, 4], "ids are short and sequential");
    let (src, data) = c.random_file("keep", STRIPE + 5, 3);
    assert_ok(&c.put(&src, "keep"), "put");
    let fetch = |c: &Cluster, what: &str| {
        let out = c.path("keep.out");
        let _ = fs::remove_file(&out);
        assert_ok(&c.get("keep", &out), what);
        assert_same(&fs::read(&out).unwrap(), &data, what);
    };

    // A node killed and restarted on the same storage comes back with its id.
    c.nodes[1].restart();
    let view = c.wait_up(Duration::from_secs(10));
    assert_eq!(ids(&view, &c), before, "ids after a node restart");
    assert_eq!(
        view.nodes.len(),
        NODES,
        "no new member for a restarted node"
    );
    fetch(&c, "get after the node restart");

    // A node stopped cleanly tells the controller (LEAVE) and is gone at once; started
    // again, it rejoins with its id.
    let status = c.nodes[2].stop();
    assert!(status.success(), "node2 exited with {status} on SIGTERM");
    let state = Cluster::info(&c.status(), &c.nodes[2]).unwrap().state;
    assert_eq!(state, NodeState::Gone, "a node that left");
    c.nodes[2].restart();
    let view = c.wait_up(Duration::from_secs(10));
    assert_eq!(
        ids(&view, &c),
        before,
        "ids after a node left and came back"
    );
    fetch(&c, "get after the node came back");

    // While the controller is down, nodes keep serving reads.
    let epoch = view.epoch;
    c.controller.kill();
    fetch(&c, "get while the controller is down");

    // The restarted controller recognises every node by its identity.
    c.controller.restart();
    let view = c.wait_up(Duration::from_secs(10));
    assert_eq!(ids(&view, &c), before, "ids after a controller restart");
    assert_eq!(view.nodes.len(), NODES);
    assert!(
        view.epoch > epoch,
        "epoch {} after restart, was {epoch}",
        view.epoch
    );
    fetch(&c, "get after the controller restart");
    let (src2, data2) = c.random_file("fresh", 100_001, 4);
    assert_same(
        &c.round_trip("fresh", &src2),
        &data2,
        "put/get after restarts",
    );
}

#[test]
fn killed_node_is_marked_down_and_named_by_fetch_errors() {
    let mut c = Cluster::start(NODES);
    let (src, _) = c.random_file("doomed", STRIPE + 3, 5);
    // Without parity every segment is needed: losing one node must fail loudly.
    let src_arg = src.display().to_string();
    let put = c
        .cli(&["put", &src_arg, "--name", "doomed", "--parity", "0"])
        .output()
        .unwrap();
    assert_ok(&put, "put");
    let victim = 2;
    let id = c.node_id(victim);

    c.nodes[victim].kill();
    let killed = Instant::now();
    let view = wait_until(
        "the killed node to be down",
        Duration::from_secs(10),
        || {
            let view = c.try_status().ok()?;
            let state = Cluster::info(&view, &c.nodes[victim])?.state;
            (state == NodeState::Down).then_some(view)
        },
    );
    let took = killed.elapsed();
    eprintln!("node {id} marked down {took:?} after the kill");
    assert!(took < Duration::from_secs(6), "down only after {took:?}");
    for (i, d) in c.nodes.iter().enumerate().filter(|(i, _)| *i != victim) {
        let state = Cluster::info(&view, d).unwrap().state;
        assert_eq!(state, NodeState::Up, "node{i} should still be up");
    }
    let table = c.cli(&["status"]).output().unwrap();
    assert_ok(&table, "status");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{id} ")) && l.contains("down")),
        "status table does not show node {id} down:\n{table}"
    );

    // The CLI fails, names the node, and leaves no output file behind.
    let out_dir = c.path("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("doomed.bin");
    let got = c.get("doomed", &out);
    assert!(!got.status.success(), "get succeeded without node {id}");
    eprintln!("get without node {id}: {}", stderr(&got).trim());
    assert!(
        names_node(&stderr(&got), id),
        "error does not name node {id}: {}",
        stderr(&got)
    );
    assert!(
        !out.exists(),
        "a partial file was left under the requested name"
    );
    let left: Vec<_> = fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");

    // The library reports the same, for whole files and ranges: an error, never bytes.
    let m = manifest(&c, "doomed");
    let rt = runtime();
    let client = client(&c);
    match rt.block_on(client.read_range(&m, 1, 10)) {
        Err(e @ ClientError::Unavailable { .. }) => {
            assert!(names_node(&e.to_string(), id), "{e}");
        }
        other => panic!("read_range without node {id}: {other:?}"),
    }
    let mut sink = Vec::new();
    assert!(rt.block_on(client.get(&m, &mut sink, |_| {})).is_err());

    // A down member may come back: new files keep the pool's shape (3+1 on 4 members)
    // with the dead node as a holder, but its shards are stored on the live nodes.
    let (src2, data2) = c.random_file("after", 200_003, 6);
    assert_same(
        &c.round_trip("after", &src2),
        &data2,
        "put/get without the dead node",
    );
    let holders = holder_ids(&c, "after");
    assert_eq!(holders.len(), NODES);
    let after = manifest(&c, "after");
    for (j, record) in after.records() {
        for i in 0..holders.len() {
            let on = record.holder(&after.place, i).node_id;
            assert_ne!(on, id, "stripe {j} shard {i} stored on dead node {id}");
        }
    }
}

#[test]
fn store_beyond_capacity_gets_no_space() {
    let cap = 256 * 1024;
    let c = Cluster::with_capacities(&[Some("256K"), Some("256K")]);
    let (small, small_data) = c.random_file("small", 100_000, 1);
    assert_same(
        &c.round_trip("small", &small),
        &small_data,
        "a file that fits",
    );

    let (big, _) = c.random_file("big", 1 << 20, 2);
    let put = c.put(&big, "big");
    assert!(!put.status.success(), "put beyond capacity succeeded");
    eprintln!("put beyond capacity: {}", stderr(&put).trim());
    assert!(
        stderr(&put).contains("no space"),
        "unclear error: {}",
        stderr(&put)
    );
    // Nothing is catalogued under the refused name, and no node went past its capacity.
    let out = c.path("big.out");
    assert!(!c.get("big", &out).status.success());
    assert!(!out.exists());
    for i in 0..2 {
        let held = dir_allocated(&c.storage(i).join("segments"));
        assert!(held <= cap, "node{i} holds {held} bytes, capacity {cap}");
    }

    // A raw STORE past the free space is refused; one far past the end of a segment
    // costs only the block it lands in (a node counts allocated bytes, not lengths),
    // and one past the largest segment a node keeps is a bad request.
    let rt = runtime();
    rt.block_on(async {
        let mut conn =
            Connection::connect(c.nodes[0].addr, &c.credentials(), Duration::from_secs(5))
                .await
                .unwrap();
        let seg = SegmentRef {
            file: "raw".into(),
            index: 0,
        };
        let body = vec![7u8; 300 * 1024];
        let store = |offset: u64, body: &[u8]| NodeRequest::Store {
            segment: seg.clone(),
            offset,
            len: body.len() as u32,
        };
        let err = conn.call(&store(0, &body), Some(&body)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::NoSpace), "{err}");
        assert!(err.to_string().contains("no space"), "{err}");
        conn.call(&store(1 << 40, &body[..1]), Some(&body[..1]))
            .await
            .expect("a byte far into a sparse segment");
        let err = conn
            .call(&store(1 << 50, &body[..1]), Some(&body[..1]))
            .await
            .unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::BadRequest), "{err}");
    });
    assert_same(
        &c.round_trip("small", &small),
        &small_data,
        "after refusals",
    );
}

#[test]
fn traversal_ids_are_refused() {
    let c = Cluster::start(1);
    let storage = c.storage(0);
    // Things a traversal could reach: a segment-shaped file next to the store, and a
    // directory next to the node's storage.
    fs::create_dir_all(storage.join("planted")).unwrap();
    fs::write(storage.join("planted/0.seg"), b"secret").unwrap();
    fs::create_dir_all(c.path("victim")).unwrap();
    fs::write(c.path("victim/0.seg"), b"keep").unwrap();

    let rt = runtime();
    rt.block_on(async {
        let mut conn =
            Connection::connect(c.nodes[0].addr, &c.credentials(), Duration::from_secs(5))
                .await
                .unwrap();
        let seg = |file: &str| SegmentRef {
            file: file.into(),
            index: 0,
        };
        let ok = NodeRequest::Store {
            segment: seg("fine"),
            offset: 0,
            len: 5,
        };
        assert_eq!(
            conn.call(&ok, Some(b"hello")).await.unwrap().0,
            Response::Ok
        );
        let before = tree(c.dir.path());

        for bad in [
            "../x",
            "../../x",
            "..",
            ".",
            "/tmp/x",
            "a/../../x",
            "x/..",
            "",
            "x\0y",
            "..\\x",
        ] {
            let store = NodeRequest::Store {
                segment: seg(bad),
                offset: 0,
                len: 1,
            };
            let fwd = NodeRequest::Fwd {
                segment: seg(bad),
                what: SegmentRead::Range {
                    offset: 0,
                    len: 1,
                    sealed: false,
                },
            };
            let delete = NodeRequest::Delete { file: bad.into() };
            for (req, body) in [(store, Some(&b"!"[..])), (fwd, None), (delete, None)] {
                let err = conn.call(&req, body).await.unwrap_err();
                assert_eq!(
                    err.remote_kind(),
                    Some(ErrorKind::BadRequest),
                    "{req:?}: {err}"
                );
            }
        }
        let read_planted = NodeRequest::Fwd {
            segment: seg("../planted"),
            what: SegmentRead::Range {
                offset: 0,
                len: 6,
                sealed: false,
            },
        };
        let err = conn.call(&read_planted, None).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::BadRequest), "{err}");
        for victim in ["../planted", "../../victim"] {
            let err = conn
                .call(
                    &NodeRequest::Delete {
                        file: victim.into(),
                    },
                    None,
                )
                .await;
            assert_eq!(err.unwrap_err().remote_kind(), Some(ErrorKind::BadRequest));
        }

        // The refusals were typed errors: the same connection still works.
        let fwd = NodeRequest::Fwd {
            segment: seg("fine"),
            what: SegmentRead::Range {
                offset: 0,
                len: 5,
                sealed: false,
            },
        };
        let (_, body) = conn.call(&fwd, None).await.unwrap();
        assert_eq!(body.as_deref(), Some(&b"hello"[..]));

        // Several ranges in one round trip come back in the order asked; too many
        // ranges, too many bytes, a range past the end or a bad id are refused.
        let parts = |file: &str, parts: Vec<(u64, u32)>| NodeRequest::Fwd {
            segment: seg(file),
            what: SegmentRead::Parts(parts),
        };
        let (_, body) = conn
            .call(&parts("fine", vec![(3, 2), (0, 1), (1, 0)]), None)
            .await
            .unwrap();
        assert_eq!(body.as_deref(), Some(&b"loh"[..]));
        // A sealed read's bytes travel outside the encryption, and the connection goes on.
        let sealed = |len: u32| NodeRequest::Fwd {
            segment: seg("fine"),
            what: SegmentRead::Range {
                offset: 1,
                len,
                sealed: true,
            },
        };
        let (resp, body) = conn.call(&sealed(3), None).await.unwrap();
        assert_eq!(resp, Response::SealedData { len: 3 });
        assert_eq!(body.as_deref(), Some(&b"ell"[..]));
        for (len, kind) in [
            (MAX_BODY + 1, ErrorKind::BadRequest),
            (5, ErrorKind::NotFound),
        ] {
            let err = conn.call(&sealed(len), None).await.unwrap_err();
            assert_eq!(err.remote_kind(), Some(kind), "{len}: {err}");
        }
        for (req, kind) in [
            (parts("fine", vec![(0, 1); 9]), ErrorKind::BadRequest),
            (
                parts("fine", vec![(0, u32::MAX), (0, 2)]),
                ErrorKind::BadRequest,
            ),
            (parts("fine", vec![(0, 1), (4, 2)]), ErrorKind::NotFound),
            (parts("../planted", vec![(0, 1)]), ErrorKind::BadRequest),
        ] {
            let err = conn.call(&req, None).await.unwrap_err();
            assert_eq!(err.remote_kind(), Some(kind), "{req:?}: {err}");
        }
        assert_eq!(tree(c.dir.path()), before, "files appeared or vanished");
    });
    assert_eq!(fs::read(storage.join("planted/0.seg")).unwrap(), b"secret");
    assert_eq!(fs::read(c.path("victim/0.seg")).unwrap(), b"keep");
}

// ---------------------------------------------------------------------------------------
// Hostile input

#[test]
fn hostile_input_on_the_controller_port() {
    let c = Cluster::start(2);
    survive_hostile_input(&c, c.ctrl(), c.controller.pid(), &ControllerRequest::Pool);
}

#[test]
fn hostile_input_on_a_node_port() {
    let c = Cluster::start(2);
    survive_hostile_input(&c, c.nodes[0].addr, c.nodes[0].pid(), &NodeRequest::Stat);
}

/// Two rounds of ~200 hostile connections (the first brings buffers and allocator arenas
/// to their steady size); each connection must be closed, the server must answer others
/// meanwhile, and its memory must not grow across the second round.
fn survive_hostile_input<R: ServiceRequest>(c: &Cluster, addr: SocketAddr, pid: u32, probe: &R) {
    let key = c.pool_key();
    hostile_round(addr, &key, probe, 0);
    let before = vm_rss_kib(pid);
    hostile_round(addr, &key, probe, 1);
    let after = vm_rss_kib(pid);
    eprintln!("VmRSS of {addr}: {before} KiB before, {after} KiB after 200 hostile connections");
    // The daemons run with a fixed malloc mmap threshold (see common), so freed
    // connection buffers go back to the system and VmRSS shows only what is kept.
    assert!(
        after < before + 2 * 1024,
        "VmRSS grew from {before} KiB to {after} KiB"
    );
    // Still serving: every node stayed up and the pool stores and fetches.
    c.wait_up(Duration::from_secs(5));
    let (src, data) = c.random_file("after-hostile", 300_007, 11);
    assert_same(
        &c.round_trip("after-hostile", &src),
        &data,
        "put/get after hostile input",
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hostile {
    RandomBytes,
    HugeFrame,
    HugeFrameAfterHello,
    HugeBodyAfterHello,
    GarbageFrameAfterHello,
    TruncatedThenEof,
    TruncatedAfterHelloThenEof,
    TruncatedThenSilence,
    TruncatedAfterHelloThenSilence,
    Silent,
}

impl Hostile {
    const ALL: [Hostile; 10] = [
        Hostile::RandomBytes,
        Hostile::HugeFrame,
        Hostile::HugeFrameAfterHello,
        Hostile::HugeBodyAfterHello,
        Hostile::GarbageFrameAfterHello,
        Hostile::TruncatedThenEof,
        Hostile::TruncatedAfterHelloThenEof,
        Hostile::TruncatedThenSilence,
        Hostile::TruncatedAfterHelloThenSilence,
        Hostile::Silent,
    ];

    /// How soon the server must close: at once when it can tell from the bytes, within
    /// its 5 s handshake/frame timeout (plus slack) when only silence follows.
    fn deadline(self) -> Duration {
        match self {
            Hostile::RandomBytes
            | Hostile::TruncatedThenSilence
            | Hostile::TruncatedAfterHelloThenSilence
            | Hostile::Silent => Duration::from_secs(9),
            _ => Duration::from_secs(3),
        }
    }

    /// Opens a connection, misbehaves, reports `sent`, and waits for the server to close.
    fn run(
        self,
        addr: SocketAddr,
        key: &PoolKey,
        seed: u64,
        sent: mpsc::Sender<()>,
    ) -> Result<Duration, String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        let start = Instant::now();
        let truncated = [&[0, 0, 0, 100][..], &[1; 10][..]].concat();
        // Writes may fail once the server has closed; only the close matters.
        let bytes = match self {
            Hostile::RandomBytes => random_bytes(64, seed),
            Hostile::HugeFrame => vec![0xff; 4],
            Hostile::TruncatedThenEof | Hostile::TruncatedThenSilence => truncated,
            Hostile::Silent => Vec::new(),
            _ => {
                let mut t = noise_handshake(&mut s, key)?;
                let plain = match self {
                    Hostile::HugeFrameAfterHello => vec![0xff; 4],
                    Hostile::HugeBodyAfterHello => request_frame(&NodeRequest::Store {
                        segment: SegmentRef {
                            file: "f".into(),
                            index: 0,
                        },
                        offset: 0,
                        len: u32::MAX,
                    }),
                    Hostile::GarbageFrameAfterHello => {
                        [&[0, 0, 0, 60][..], &random_bytes(60, seed)].concat()
                    }
                    _ => truncated,
                };
                seal(&mut t, &plain)
            }
        };
        let _ = s.write_all(&bytes);
        if matches!(
            self,
            Hostile::TruncatedThenEof | Hostile::TruncatedAfterHelloThenEof
        ) {
            let _ = s.shutdown(Shutdown::Write);
        }
        let _ = sent.send(());
        drop(sent);
        read_until_closed(&mut s, start, self.deadline()).map(|(took, _)| took)
    }
}

/// Runs every kind of hostile connection 20 times at once, and checks that the server
/// answers a well-formed `probe` while they are held open.
fn hostile_round<R: ServiceRequest>(addr: SocketAddr, key: &PoolKey, probe: &R, round: u64) {
    const PER_KIND: u64 = 20;
    let (tx, rx) = mpsc::channel();
    let results = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..PER_KIND {
            for kind in Hostile::ALL {
                let tx = tx.clone();
                let seed = round * 1000 + i;
                handles.push(s.spawn(move || (kind, kind.run(addr, key, seed, tx))));
            }
        }
        drop(tx);
        // Once every hostile connection has sent its bytes, others are still served.
        while rx.recv_timeout(Duration::from_secs(10)).is_ok() {}
        let answer = raw_call(addr, key, probe).expect("probe while hostile connections are open");
        assert!(
            matches!(answer, Response::Pool(_) | Response::Stat(_)),
            "probe answered {answer:?}"
        );
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "not closed properly: {failed:?}");
}

/// One well-formed request without a body, by hand inside the encrypted channel.
fn raw_call<R: ServiceRequest>(
    addr: SocketAddr,
    key: &PoolKey,
    req: &R,
) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    let mut t = noise_handshake(&mut s, key)?;
    s.write_all(&seal(&mut t, &request_frame(req)))
        .map_err(|e| format!("write: {e}"))?;
    proto::decode(&read_sealed_frame(&mut s, &mut t)?).map_err(|e| e.to_string())
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A second node on a storage directory in use is refused before it joins (it would
/// otherwise take over the running node's identity and place in the pool).
#[test]
fn a_second_node_on_the_same_storage_is_refused() {
    let c = Cluster::start(2);
    let storage = c.storage(0).display().to_string();
    // `cli` names the controller already.
    let mut second = c
        .cli(&["node", "--storage", &storage, "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(
        "the second node to give up",
        Duration::from_secs(10),
        || second.try_wait().unwrap(),
    );
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("in use"), "unclear refusal: {err}");
    let view = c.status();
    assert_eq!(view.live().len(), 2, "the running nodes stay up: {view:?}");
    assert_eq!(view.nodes.len(), 2, "no new member: {view:?}");
    let (src, data) = c.random_file("after", 10_000, 7);
    assert_same(
        &c.round_trip("after", &src),
        &data,
        "put/get after the refusal",
    );
}

/// `reserve` allocates the slots of a run of stripes on every holder, or nothing: a
/// holder without room refuses with NoSpace and the others give back what they took.
/// `punch` frees them again.
#[test]
fn reserve_is_all_or_nothing_and_punch_gives_it_back() {
    // Three nodes (k = 2, m = 1: a write needs all three); one can take only 2 MiB.
    let c = Cluster::with_capacities(&[Some("8M"), Some("8M"), Some("2M")]);
    let held = |c: &Cluster| -> Vec<u64> {
        (0..3)
            .map(|i| dir_allocated(&c.storage(i).join("segments")))
            .collect()
    };
    let slot = poolfs::client::layout::sealed_len(DEFAULT_SHARD_SIZE as usize) as u64;
    let rt = runtime();
    rt.block_on(async {
        let client = client(&c);
        let m = client.new_file().await.unwrap();
        assert_eq!(m.place.holders.len(), 3);
        // Three slots do not fit the small node: refused, and nothing stays anywhere.
        let err = client.reserve(&m, 0..3).await.unwrap_err();
        // (A mount reports it as ENOSPC: fs::fuse's errno table, unit-tested there.)
        assert!(matches!(err, ClientError::NoSpace { .. }), "{err}");
        assert_eq!(held(&c), vec![0, 0, 0]);
        // One slot fits every node: each holds it, in whole blocks.
        client.reserve(&m, 4..5).await.unwrap();
        for (i, h) in held(&c).into_iter().enumerate() {
            assert!(h >= slot && h < slot + 64 * 1024, "node{i} holds {h}");
        }
        // Punched, the slot is free again everywhere.
        client.punch(&m, 4..5).await.unwrap();
        assert_eq!(held(&c), vec![0, 0, 0]);
        // Nothing to do for an empty run.
        client.reserve(&m, 2..2).await.unwrap();
        client.punch(&m, 2..2).await.unwrap();
    });
}
