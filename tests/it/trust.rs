//! Trust (issue 6): only holders of the pool key get in, a member's id is bound to its
//! static key, and every byte on the wire is encrypted.

use crate::harness;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::cluster::{assert_ok, Cluster, BIN};
use crate::harness::wire::{frame, noise_handshake, read_sealed_frame, request_frame, seal};
use poolfs::net::{Connection, NetError};
use poolfs::proto::{
    self, Assign, ControllerRequest, ErrorKind, Identity, NodeRequest, Response, SegmentRead,
    SegmentRef, ServiceRequest, MAGIC, PROTOCOL_VERSION,
};
use poolfs::trust::{identity_of, Credentials, PoolKey};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request of every verb of both services, each as its verb and its frame.
fn every_verb() -> Vec<(&'static str, Vec<u8>)> {
    let seg = SegmentRef {
        file: "f".into(),
        index: 0,
    };
    let me = Identity([7; 16]);
    let listen: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let controller = [
        ControllerRequest::Join {
            identity: me,
            listen,
            capacity: 1 << 20,
            used: 0,
            machine: "test".into(),
            disk: Default::default(),
            id: None,
        },
        ControllerRequest::Heartbeat {
            node_id: 1,
            identity: me,
            capacity: 1 << 20,
            used: 0,
            machine: "test".into(),
            disk: Default::default(),
        },
        ControllerRequest::Leave {
            node_id: 1,
            identity: me,
        },
        ControllerRequest::Drain {
            node_id: 1,
            identity: me,
        },
        ControllerRequest::Get { node_id: 1 },
        ControllerRequest::Pool,
        ControllerRequest::Scan,
    ];
    let node = [
        NodeRequest::Assign(Assign {
            controller: listen,
            node_id: 1,
            pool_size: 1,
            epoch: 1,
        }),
        NodeRequest::Store {
            segment: seg.clone(),
            offset: 0,
            len: 4,
        },
        NodeRequest::Fwd {
            segment: seg,
            what: SegmentRead::Range {
                offset: 0,
                len: 4,
                sealed: false,
            },
        },
        NodeRequest::Delete { file: "f".into() },
        NodeRequest::Stat,
    ];
    let controller = controller.iter().map(|r| (r.verb(), request_frame(r)));
    let node = node.iter().map(|r| (r.verb(), request_frame(r)));
    controller.chain(node).collect()
}

/// Everything the server sends until it closes (bounded by a deadline).
fn drain(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A stranger is refused on both ports for every verb: with a wrong key (the Noise
/// handshake fails and the server sends not one byte), and with no key at all (the old
/// plaintext protocol: closed without an answer). The members keep working meanwhile.
#[test]
fn a_wrong_or_missing_key_is_refused_on_every_port_and_verb() {
    let c = Cluster::start(2);
    let wrong = PoolKey::generate();
    let wrong_creds = Credentials::ephemeral(&wrong).unwrap();
    let rt = runtime();
    for addr in [c.ctrl(), c.nodes[0].addr] {
        for (verb, req) in every_verb() {
            // Wrong key, through the library: the handshake fails, no request is sent.
            let err = rt
                .block_on(Connection::connect(
                    addr,
                    &wrong_creds,
                    Duration::from_secs(5),
                ))
                .err()
                .unwrap_or_else(|| panic!("{addr} accepted a wrong key"));
            assert!(
                matches!(err, NetError::Handshake { .. }),
                "{addr}: {err} for {verb}"
            );

            // Wrong key, by hand: after our first message the server closes without
            // sending anything; then we try the request anyway.
            let mut s = TcpStream::connect(addr).unwrap();
            let refused = noise_handshake(&mut s, &wrong);
            assert!(
                refused.is_err(),
                "{addr}: handshake with a wrong key passed"
            );
            let _ = s.write_all(&req);
            assert!(drain(&mut s).is_empty(), "{addr} answered a wrong key");

            // No key: the plaintext protocol of old (hello, then the request).
            let mut s = TcpStream::connect(addr).unwrap();
            let hello = (MAGIC, PROTOCOL_VERSION);
            let _ = s.write_all(&[frame(&hello), req].concat());
            let _ = s.shutdown(Shutdown::Write);
            let got = drain(&mut s);
            assert!(
                got.is_empty(),
                "{addr} answered plaintext {verb} with {} bytes",
                got.len()
            );
        }
    }

    // The CLI with a wrong key: refused, and no pool view printed.
    let wrong_file = c.path("wrong.key");
    assert_ok(
        &std::process::Command::new(BIN)
            .args(["init", "--key"])
            .arg(&wrong_file)
            .output()
            .unwrap(),
        "init of a second key",
    );
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "-c", &c.ctrl().to_string(), "--key"])
        .arg(&wrong_file)
        .env_remove("POOLFS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "status with a wrong key succeeded");
    assert!(out.stdout.is_empty(), "status printed a view");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool's key"), "unclear error: {err}");

    // No key file: a clear error that names the file and tells the pool's key from the
    // new pool's that `poolfs init` makes, for every command.
    let missing = c.path("no-such.key");
    let missing = missing.to_str().unwrap();
    let ctrl = c.ctrl().to_string();
    let storage = c.path("s").display().to_string();
    let mnt = c.path("m").display().to_string();
    let catalog = c.path("catalog").display().to_string();
    for args in [
        vec!["status", "-c", &ctrl],
        vec!["scan", "-c", &ctrl],
        vec!["get", "x", "/dev/null", "-c", &ctrl, "--catalog", &catalog],
        vec!["put", "/dev/null", "-c", &ctrl, "--catalog", &catalog],
        vec!["node", "--storage", &storage, "--listen", "127.0.0.1:0"],
        vec!["controller", "--listen", "127.0.0.1:0", "--state", &storage],
        vec!["mount", &mnt, "--storage", &storage, "--foreground"],
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .args(["--key", missing])
            .env_remove("POOLFS_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} ran without a key");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("poolfs init") && err.contains(missing),
            "{args:?}: unclear error: {err}"
        );
    }

    // Members were never disturbed.
    c.wait_up(Duration::from_secs(5));
    let (src, data) = c.random_file("after", 100_003, 5);
    assert_eq!(c.round_trip("after", &src), data);
}

/// `init` makes a 0600 key, refuses to overwrite it, and says how to share it.
#[test]
fn init_creates_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k/pool.key");
    let out = std::process::Command::new(BIN)
        .args(["init", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert_ok(&out, "init");
    assert!(String::from_utf8_lossy(&out.stdout).contains("copy"));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(&key).unwrap();
    let again = std::process::Command::new(BIN)
        .args(["init", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success(), "init overwrote a key");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

/// With the right key everything works, including by hand through the Noise channel;
/// a member's id cannot be claimed or used by another key.
#[test]
fn the_right_key_works_and_ids_are_bound_to_keys() {
    let c = Cluster::start(2);
    let key = c.pool_key();
    // By hand: handshake, then an encrypted POOL request answered with the view.
    let mut s = TcpStream::connect(c.ctrl()).unwrap();
    let mut t = noise_handshake(&mut s, &key).unwrap();
    s.write_all(&seal(&mut t, &request_frame(&ControllerRequest::Pool)))
        .unwrap();
    let answer: Response = proto::decode(&read_sealed_frame(&mut s, &mut t).unwrap()).unwrap();
    let Response::Pool(view) = answer else {
        panic!("POOL answered {answer:?}");
    };
    assert_eq!(view.nodes.len(), 2);

    // A holder of the pool key but not of node 1's static key cannot heartbeat, leave
    // or join as node 1; it may join under its own identity.
    let status = c.status();
    let node1 = status.nodes.iter().find(|n| n.id == 1).unwrap().clone();
    let rt = runtime();
    rt.block_on(async {
        let creds = c.credentials();
        let mut conn = Connection::connect(c.ctrl(), &creds, Duration::from_secs(5))
            .await
            .unwrap();
        // The controller proves a static key too.
        assert_ne!(conn.remote_key(), creds.public_key());
        // Node 1's identity as it reports it on its own port.
        let mut n1 = Connection::connect(node1.addr, &creds, Duration::from_secs(5))
            .await
            .unwrap();
        let (Response::Stat(stat), _) = n1.call(&NodeRequest::Stat, None).await.unwrap() else {
            panic!("STAT answered otherwise");
        };
        assert_eq!(stat.identity, identity_of(n1.remote_key()));
        let victim = stat.identity;
        for req in [
            ControllerRequest::Heartbeat {
                node_id: 1,
                identity: victim,
                capacity: 1,
                used: 0,
                machine: "test".into(),
                disk: Default::default(),
            },
            ControllerRequest::Leave {
                node_id: 1,
                identity: victim,
            },
            ControllerRequest::Join {
                identity: victim,
                listen: "127.0.0.1:9".parse().unwrap(),
                capacity: 1,
                used: 0,
                machine: "test".into(),
                disk: Default::default(),
                id: Some(1),
            },
        ] {
            let err = conn.call(&req, None).await.unwrap_err();
            assert_eq!(err.remote_kind(), Some(ErrorKind::Unauthorized), "{err}");
        }
        let mine = ControllerRequest::Join {
            identity: creds.identity(),
            listen: "127.0.0.1:9".parse().unwrap(),
            capacity: 1,
            used: 0,
            machine: "test".into(),
            disk: Default::default(),
            id: None,
        };
        let (answer, _) = conn.call(&mine, None).await.unwrap();
        assert!(matches!(answer, Response::Assigned(_)), "{answer:?}");
        let (_, _) = conn
            .call(
                &ControllerRequest::Leave {
                    node_id: match answer {
                        Response::Assigned(a) => a.node_id,
                        _ => unreachable!(),
                    },
                    identity: creds.identity(),
                },
                None,
            )
            .await
            .unwrap();
    });
    // Node 1 is still up under its id and address.
    let after = c.status();
    let still = after.nodes.iter().find(|n| n.id == 1).unwrap();
    assert_eq!(still.addr, node1.addr);
    assert_eq!(still.state, poolfs::proto::NodeState::Up);
}

/// A loopback proxy that records every byte it forwards, both ways.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    /// Forwards exactly one connection to `target`.
    fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let thread = std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect(target) else {
                return;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream, seen: Arc<Mutex<Vec<u8>>>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
            let a = pipe(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                record.clone(),
            );
            let b = pipe(server, client, record);
            let _ = a.join();
            let _ = b.join();
        });
        Tap {
            addr,
            seen,
            thread: Some(thread),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A STORE of a body full of a marker, and the FWD that reads it back, cross the wire
/// without the marker (or the segment's name) appearing in the bytes.
#[test]
fn bytes_on_the_wire_are_not_plaintext() {
    let c = Cluster::start(1);
    let marker = b"PLAINTEXT-MARKER-0123456789";
    // Larger than one Noise message, so the body is split into several.
    let body: Vec<u8> = marker.iter().copied().cycle().take(300_000).collect();
    let seg = SegmentRef {
        file: "visible-file-name".into(),
        index: 0,
    };
    let mut tap = Tap::start(c.nodes[0].addr);
    let rt = runtime();
    rt.block_on(async {
        let mut conn = Connection::connect(tap.addr, &c.credentials(), Duration::from_secs(5))
            .await
            .unwrap();
        let store = NodeRequest::Store {
            segment: seg.clone(),
            offset: 0,
            len: body.len() as u32,
        };
        assert_eq!(
            conn.call(&store, Some(&body)).await.unwrap().0,
            Response::Ok
        );
        let fwd = NodeRequest::Fwd {
            segment: seg.clone(),
            what: SegmentRead::Range {
                offset: 0,
                len: body.len() as u32,
                sealed: false,
            },
        };
        let (_, data) = conn.call(&fwd, None).await.unwrap();
        assert_eq!(
            data.as_deref(),
            Some(&body[..]),
            "read back through the tap"
        );
    });
    let seen = tap.bytes();
    assert!(
        seen.len() > 2 * body.len(),
        "the tap saw {} bytes",
        seen.len()
    );
    assert!(
        !contains(&seen, marker),
        "the marker crossed the wire in clear"
    );
    assert!(
        !contains(&seen, &marker[..8]),
        "part of the marker is visible"
    );
    assert!(
        !contains(&seen, b"visible-file-name"),
        "the segment name crossed the wire in clear"
    );
}

// ---------------------------------------------------------------------------------------
// Owner isolation: segments belong to the static key that stored them.

/// Every segment file under `storage/segments/OWNER/` with its bytes, sorted by path.
fn owner_segments(
    storage: &std::path::Path,
    owner: Identity,
) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = storage.join("segments").join(hex::encode(owner.0));
    if !dir.exists() {
        return Vec::new();
    }
    let mut out: Vec<_> = harness::cluster::tree(&dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// `message` with `from` replaced by `to`, to compare two refusals that name different ids.
fn renamed(message: &str, from: &str, to: &str) -> String {
    message.replace(from, to)
}

#[test]
fn a_member_cannot_read_overwrite_or_delete_another_members_segments() {
    let c = Cluster::start(3);
    let (src, data) = c.random_file("a", 2_500_000, 61);
    assert_ok(&c.put(&src, "a"), "put a");
    let m = poolfs::client::catalog::Catalog::new(&c.catalog())
        .load("a")
        .unwrap();
    let owner_a = c.credentials().identity();
    let before: Vec<_> = (0..3)
        .map(|i| owner_segments(&c.storage(i), owner_a))
        .collect();
    assert!(
        before.iter().all(|segs| segs.len() == 1),
        "each node holds one segment of A's file: {:?}",
        before
            .iter()
            .map(|s| s.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );

    let b = c.stranger_credentials();
    assert_ne!(b.identity(), owner_a);
    let junk = vec![0xEEu8; 4096];
    let rt = runtime();
    rt.block_on(async {
        for (i, holder) in m.place.holders.iter().enumerate() {
            let seg = SegmentRef {
                file: m.place.file_id.clone(),
                index: i as u32,
            };
            let none = SegmentRef {
                file: "0123456789abcdef0123456789abcdef".into(),
                index: i as u32,
            };
            let fwd = |segment: &SegmentRef| NodeRequest::Fwd {
                segment: segment.clone(),
                what: SegmentRead::Range {
                    offset: 0,
                    len: 1000,
                    sealed: false,
                },
            };
            // A reads its own segment (so a refusal below is about the key, not the id).
            let mut a = Connection::connect(holder.addr, &c.credentials(), Duration::from_secs(5))
                .await
                .unwrap();
            let (_, own) = a.call(&fwd(&seg), None).await.unwrap();
            assert_eq!(own.map(|d| d.len()), Some(1000));

            let mut conn = Connection::connect(holder.addr, &b, Duration::from_secs(5))
                .await
                .unwrap();
            // B's FWD of A's segment is refused exactly like a segment that does not exist.
            let theirs = conn.call(&fwd(&seg), None).await.unwrap_err();
            let nothing = conn.call(&fwd(&none), None).await.unwrap_err();
            assert_eq!(theirs.remote_kind(), Some(ErrorKind::NotFound), "{theirs}");
            assert_eq!(
                nothing.remote_kind(),
                Some(ErrorKind::NotFound),
                "{nothing}"
            );
            assert_eq!(
                renamed(&theirs.to_string(), &m.place.file_id, &none.file),
                nothing.to_string(),
                "B learns nothing from the refusal"
            );
            // B's STORE under A's ids writes B's own segment, never A's bytes.
            let store = NodeRequest::Store {
                segment: seg.clone(),
                offset: 0,
                len: junk.len() as u32,
            };
            assert_eq!(
                conn.call(&store, Some(&junk)).await.unwrap().0,
                Response::Ok
            );
            let (_, mine) = conn
                .call(
                    &NodeRequest::Fwd {
                        segment: seg.clone(),
                        what: SegmentRead::Range {
                            offset: 0,
                            len: junk.len() as u32,
                            sealed: false,
                        },
                    },
                    None,
                )
                .await
                .unwrap();
            assert_eq!(
                mine.as_deref(),
                Some(&junk[..]),
                "B reads back only its own bytes"
            );
            // B's DELETE of A's file removes B's segment and nothing of A's.
            let delete = NodeRequest::Delete {
                file: m.place.file_id.clone(),
            };
            assert_eq!(conn.call(&delete, None).await.unwrap().0, Response::Ok);
            let gone = conn.call(&fwd(&seg), None).await.unwrap_err();
            assert_eq!(gone.remote_kind(), Some(ErrorKind::NotFound), "{gone}");
        }
    });

    // A's segments are byte for byte what they were, and A's file reads back whole.
    let after: Vec<_> = (0..3)
        .map(|i| owner_segments(&c.storage(i), owner_a))
        .collect();
    assert!(after == before, "A's segments changed on disk");
    let out = c.path("a.out");
    assert_ok(&c.get("a", &out), "get a after B's attempts");
    assert!(std::fs::read(&out).unwrap() == data, "A's bytes changed");
    // A still deletes its own file.
    rt.block_on(async {
        let client = poolfs::client::PoolClient::new(poolfs::client::ClientConfig::new(
            c.ctrl(),
            c.credentials(),
            c.owner(),
        ));
        client.delete(&m).await.unwrap();
    });
    for i in 0..3 {
        assert!(owner_segments(&c.storage(i), owner_a).is_empty(), "node{i}");
    }
}

#[test]
fn a_quota_bounds_each_member_on_each_node() {
    const KIB: usize = 1024;
    let quota = ["--quota", "256K"];
    let c = Cluster::with_node_args(&[quota.to_vec(), quota.to_vec()]);
    // Two nodes, no parity: a file of 400 KiB puts 200 KiB on each node, sealed: with
    // the tag of each 32 KiB chunk, in whole blocks of the disk (what a node counts).
    let block = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(c.storage(0)).unwrap().blksize()
    };
    let per_node = (poolfs::client::layout::sealed_len(200 * KIB) as u64).div_ceil(block) * block;
    let (first, first_data) = c.random_file("first", 400 * KIB, 71);
    assert_ok(&c.put(&first, "first"), "put first");
    let a = c.credentials();
    let used_by_a = |i: usize| {
        harness::cluster::dir_allocated(
            &c.storage(i)
                .join("segments")
                .join(hex::encode(a.identity().0)),
        )
    };
    let held: Vec<u64> = (0..2).map(used_by_a).collect();
    assert_eq!(held, vec![per_node; 2]);

    // A second one would take A past 256 KiB on each node: refused, clearly.
    let (second, _) = c.random_file("second", 400 * KIB, 72);
    let put = c.put(&second, "second");
    assert!(!put.status.success(), "put over quota succeeded");
    let err = String::from_utf8_lossy(&put.stderr).into_owned();
    eprintln!("put over quota: {}", err.trim());
    for want in [
        "over quota",
        "node ",
        &format!("holds {per_node}"),
        &format!("quota is {}", 256 * KIB),
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    // Nothing of the refused file stayed behind, and nothing is catalogued under it.
    assert_eq!((0..2).map(used_by_a).collect::<Vec<_>>(), held);
    assert!(!c.get("second", &c.path("second.out")).status.success());

    let rt = runtime();
    rt.block_on(async {
        // The same refusal, raw: a distinct error kind, the connection stays usable.
        let mut conn = Connection::connect(c.nodes[0].addr, &a, Duration::from_secs(5))
            .await
            .unwrap();
        let body = vec![1u8; 100 * KIB];
        let store = NodeRequest::Store {
            segment: SegmentRef {
                file: "rawfile".into(),
                index: 0,
            },
            offset: 0,
            len: body.len() as u32,
        };
        let err = conn.call(&store, Some(&body)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::Quota), "{err}");
        let (answer, _) = conn.call(&NodeRequest::Stat, None).await.unwrap();
        assert!(matches!(answer, Response::Stat(_)), "{answer:?}");

        // Through the client API the refusal is a quota error (EDQUOT on a mount: the
        // errno table in fs::fuse, unit-tested there).
        let client = poolfs::client::PoolClient::new(poolfs::client::ClientConfig::new(
            c.ctrl(),
            a.clone(),
            c.owner(),
        ));
        let big = vec![2u8; 200 * KIB];
        let err = client
            .put(&big[..], |_| {})
            .await
            .expect_err("client put over quota");
        assert!(
            matches!(err, poolfs::client::ClientError::Quota { .. }),
            "{err}"
        );

        // Another member still has its whole quota on the same nodes.
        let b = poolfs::client::PoolClient::new(poolfs::client::ClientConfig::new(
            c.ctrl(),
            c.stranger_credentials(),
            Some(std::sync::Arc::new(poolfs::trust::OwnerKey::from_bytes(
                [0x5b; 32],
            ))),
        ));
        let data = harness::cluster::random_bytes(400 * KIB, 73);
        let m = b
            .put(&data[..], |_| {})
            .await
            .expect("B stores within its own quota");
        let mut back = Vec::new();
        b.get(&m, &mut back, |_| {}).await.unwrap();
        assert!(back == data, "B's file reads back");
    });

    // Deleting gives A its quota back (the node's accounting follows deletes).
    rt.block_on(async {
        let m = poolfs::client::catalog::Catalog::new(&c.catalog())
            .load("first")
            .unwrap();
        let client = poolfs::client::PoolClient::new(poolfs::client::ClientConfig::new(
            c.ctrl(),
            a.clone(),
            c.owner(),
        ));
        let mut back = Vec::new();
        client.get(&m, &mut back, |_| {}).await.unwrap();
        assert!(back == first_data, "A's first file is intact");
        client.delete(&m).await.unwrap();
    });
    assert_ok(&c.put(&second, "second"), "put second after deleting first");
}

/// ASSIGN is pinned: a node waiting for its controller trusts the first key that
/// assigns it, and from then on refuses ASSIGN from any other key, even one that holds
/// the pool key, across a restart; the pinned controller may still move it.
#[test]
fn assign_is_pinned_to_the_first_controller() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("pool.key");
    let key = PoolKey::create(&key_path).unwrap();
    let storage = dir.path().join("node");
    let mut node =
        harness::cluster::Daemon::spawn("lonely", dir.path().join("node.log"), &[], |addr| {
            vec![
                "node".into(),
                "--storage".into(),
                storage.display().to_string(),
                "--listen".into(),
                addr.to_string(),
                "--key".into(),
                key_path.display().to_string(),
            ]
        });
    let controller = Credentials::ephemeral(&key).unwrap();
    let rogue = Credentials::ephemeral(&key).unwrap();
    let rt = runtime();
    let node_addr = node.addr;
    let call = |creds: &Credentials, req: NodeRequest| {
        rt.block_on(async {
            let mut conn = Connection::connect(node_addr, creds, Duration::from_secs(5)).await?;
            conn.call(&req, None).await.map(|(r, _)| r)
        })
    };
    // Discard-port addresses on loopback: the node's JOIN attempts go nowhere.
    let assign = |port: u16| {
        NodeRequest::Assign(Assign {
            controller: SocketAddr::from(([127, 0, 0, 1], port)),
            node_id: 1,
            pool_size: 1,
            epoch: 1,
        })
    };
    let reports_to = |port: u16| match call(&controller, NodeRequest::Stat) {
        Ok(Response::Stat(stat)) => {
            stat.controller == Some(SocketAddr::from(([127, 0, 0, 1], port)))
        }
        other => panic!("STAT: {other:?}"),
    };

    assert!(matches!(call(&controller, assign(9)), Ok(Response::Ok)));
    let refused = call(&rogue, assign(10)).expect_err("a second assigner");
    assert_eq!(
        refused.remote_kind(),
        Some(ErrorKind::Unauthorized),
        "{refused}"
    );
    assert!(
        reports_to(9),
        "the rogue ASSIGN changed the node's controller"
    );

    node.stop();
    node.restart();
    let refused = call(&rogue, assign(10)).expect_err("after a restart");
    assert_eq!(
        refused.remote_kind(),
        Some(ErrorKind::Unauthorized),
        "{refused}"
    );
    assert!(matches!(call(&controller, assign(11)), Ok(Response::Ok)));
    assert!(
        reports_to(11),
        "the pinned controller could not move the node"
    );
}
