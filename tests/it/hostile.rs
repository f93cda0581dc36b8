//! Hostile peers on an established or half-made connection: replayed and reordered
//! encrypted frames, clients that trickle bytes past the deadlines, thousands of idle
//! connections. Each is refused (its connection closed), others are served meanwhile,
//! and the server's memory and descriptors stay bounded.

use crate::harness;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::cluster::Cluster;
use crate::harness::wire::{
    noise_handshake, read_sealed_frame, read_until_closed, request_frame, seal,
};

/// How long the peer took to close, counted from `start`; an error if it is still open
/// `within` after `start`, or if it sent anything instead of closing.
fn closed_within(s: &mut TcpStream, start: Instant, within: Duration) -> Result<Duration, String> {
    match read_until_closed(s, start, within)? {
        (took, 0) => Ok(took),
        (_, n) => Err(format!("the server sent {n} bytes instead of closing")),
    }
}
use poolfs::proto::{self, NodeRequest, Response, SegmentRead, SegmentRef};
use poolfs::trust::PoolKey;

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect")
}

/// One STAT, by hand inside the encrypted channel: the node answers others.
fn stat(addr: SocketAddr, key: &PoolKey) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    let mut t = noise_handshake(&mut s, key)?;
    s.write_all(&seal(&mut t, &request_frame(&NodeRequest::Stat)))
        .map_err(|e| format!("write: {e}"))?;
    proto::decode(&read_sealed_frame(&mut s, &mut t)?).map_err(|e| e.to_string())
}

fn assert_served(addr: SocketAddr, key: &PoolKey, when: &str) {
    match stat(addr, key) {
        Ok(Response::Stat(_)) => {}
        other => panic!("STAT {when} answered {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Replayed and reordered frames

#[test]
fn a_replayed_frame_closes_the_connection_and_others_are_served() {
    let c = Cluster::start(1);
    let (addr, key) = (c.nodes[0].addr, c.pool_key());
    let mut s = connect(addr);
    let mut t = noise_handshake(&mut s, &key).unwrap();
    let msg = seal(&mut t, &request_frame(&NodeRequest::Stat));
    s.write_all(&msg).unwrap();
    let first: Response = proto::decode(&read_sealed_frame(&mut s, &mut t).unwrap()).unwrap();
    assert!(matches!(first, Response::Stat(_)), "{first:?}");

    // The very same bytes again: authentic once, a replay now (the nonce moved on).
    let start = Instant::now();
    s.write_all(&msg).unwrap();
    let took = closed_within(&mut s, start, Duration::from_secs(3)).expect("replay refused");
    eprintln!("replayed frame: closed after {took:?}");
    assert_served(addr, &key, "after a replay");
    c.wait_up(Duration::from_secs(5));
}

#[test]
fn a_reordered_frame_closes_the_connection_and_others_are_served() {
    let c = Cluster::start(1);
    let (addr, key) = (c.nodes[0].addr, c.pool_key());
    let mut s = connect(addr);
    let mut t = noise_handshake(&mut s, &key).unwrap();
    let first = seal(&mut t, &request_frame(&NodeRequest::Stat));
    let second = seal(&mut t, &request_frame(&NodeRequest::Stat));
    let start = Instant::now();
    s.write_all(&[second, first].concat()).unwrap();
    // Not one answer: the first message the server opens is out of order.
    let took = closed_within(&mut s, start, Duration::from_secs(3)).expect("reorder refused");
    eprintln!("reordered frames: closed after {took:?}");
    assert_served(addr, &key, "after a reordered frame");

    // A message that skips one (a frame dropped in between) is refused the same way.
    let mut s = connect(addr);
    let mut t = noise_handshake(&mut s, &key).unwrap();
    let _dropped = seal(&mut t, &request_frame(&NodeRequest::Stat));
    let start = Instant::now();
    s.write_all(&seal(&mut t, &request_frame(&NodeRequest::Stat)))
        .unwrap();
    closed_within(&mut s, start, Duration::from_secs(3)).expect("gap refused");
    assert_served(addr, &key, "after a dropped frame");
}

// ---------------------------------------------------------------------------------------
// Slow clients

/// Node limits for the slow-client tests: short enough to watch them act.
const SLOW_LIMITS: [(&str, &str); 3] = [
    ("POOLFS_HANDSHAKE_TIMEOUT_MS", "2000"),
    ("POOLFS_FRAME_TIMEOUT_MS", "2000"),
    ("POOLFS_BODY_TIMEOUT_MS", "3000"),
];

/// Sends `bytes` one at a time, `every` apart, until the server closes; returns when it
/// closed (measured from the first byte) or an error if it is still open at `within`.
fn trickle(
    s: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    within: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    for b in bytes {
        if s.write_all(&[*b]).is_err() {
            break; // closed under us: the close itself is checked below
        }
        // Waiting for the close doubles as the pause between bytes.
        match closed_within(s, Instant::now(), every) {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) if e.starts_with("still open") => {}
            Err(e) => return Err(e),
        }
        if start.elapsed() > within {
            return Err(format!("still open after {within:?} of trickling"));
        }
    }
    closed_within(s, start, within)
}

#[test]
fn slow_clients_are_cut_off_by_the_deadlines_while_others_are_served() {
    let c = Cluster::with_env(1, &SLOW_LIMITS);
    let (addr, key) = (c.nodes[0].addr, c.pool_key());
    let every = Duration::from_millis(400);
    // Each deadline plus slack for a loaded machine; far less than the bytes would take.
    let slack = Duration::from_millis(1500);

    std::thread::scope(|scope| {
        // 1. The handshake's first message, one byte at a time.
        let handshake = scope.spawn(|| {
            let mut s = connect(addr);
            let hello = [&[0u8, 48][..], &[1u8; 48]].concat();
            trickle(&mut s, &hello, every, Duration::from_millis(2000) + slack)
        });
        // 2. A request frame, one encrypted byte per message.
        let frame_part = scope.spawn(|| {
            let mut s = connect(addr);
            let mut t = noise_handshake(&mut s, &key)?;
            let msgs: Vec<u8> = request_frame(&NodeRequest::Stat)
                .iter()
                .flat_map(|b| seal(&mut t, &[*b]))
                .collect();
            // Whole messages, but slowly: the frame must complete within its deadline.
            trickle(&mut s, &msgs, every, Duration::from_millis(2000) + slack)
        });
        // 3. A STORE whose body trickles in.
        let body = scope.spawn(|| {
            let mut s = connect(addr);
            let mut t = noise_handshake(&mut s, &key)?;
            let header = request_frame(&NodeRequest::Store {
                segment: SegmentRef {
                    file: "slow".into(),
                    index: 0,
                },
                offset: 0,
                len: 1000,
            });
            s.write_all(&seal(&mut t, &header))
                .map_err(|e| e.to_string())?;
            let msgs: Vec<u8> = (0..1000u32)
                .flat_map(|i| seal(&mut t, &[i as u8]))
                .collect();
            trickle(
                &mut s,
                &msgs,
                every / 8,
                Duration::from_millis(3000) + slack,
            )
        });
        // Meanwhile others are served at once.
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_served(addr, &key, "while slow clients trickle");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "STAT took {:?}",
            t0.elapsed()
        );

        for (what, h) in [
            ("handshake", handshake),
            ("frame", frame_part),
            ("body", body),
        ] {
            let took = h
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("slow {what}: {e}"));
            eprintln!("slow {what}: closed after {took:?}");
        }
    });
    // Nothing of the trickled STORE was written.
    assert!(!c.storage(0).join("segments/slow").exists());
    assert_served(addr, &key, "after the slow clients");
}

// ---------------------------------------------------------------------------------------
// Thousands of idle connections

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Has the server closed `s` (without sending anything)? Does not wait.
fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let gone = match (&mut &*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != IoKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    gone
}

/// Lets this test process hold a few thousand sockets.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "need {want} descriptors, the hard limit is {}",
        lim.rlim_max
    );
}

/// The server's connection cap (the default, `ServerLimits::max_connections`).
const CAP: usize = 256;

#[test]
fn thousands_of_idle_connections_hold_the_cap_and_members_are_still_served() {
    const IDLE: usize = 2000;
    raise_fd_limit(IDLE as u64 + 500);
    let c = Cluster::start(1);
    let (addr, key, pid) = (c.nodes[0].addr, c.pool_key(), c.nodes[0].pid());
    assert_served(addr, &key, "before");
    let fds_before = open_fds(pid);
    let rss_before = vm_rss_kib(pid);

    // Strangers that connect and say nothing.
    let start = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| connect(addr)).collect();
    eprintln!("{IDLE} idle connections opened in {:?}", start.elapsed());
    // A member is served at once, however many strangers wait.
    let t0 = Instant::now();
    assert_served(addr, &key, "with 2000 idle connections open");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "STAT took {:?}",
        t0.elapsed()
    );

    // The cap holds: the node keeps at most CAP of them and has closed the others.
    std::thread::sleep(Duration::from_millis(300));
    let fds = open_fds(pid);
    let rss = vm_rss_kib(pid);
    eprintln!(
        "node: {fds_before} -> {fds} descriptors, VmRSS {rss_before} -> {rss} KiB with {IDLE} idle connections"
    );
    assert!(
        fds <= fds_before + CAP,
        "{fds} descriptors open (cap {CAP})"
    );
    let closed = idle.iter().filter(|s| is_closed(s)).count();
    assert!(
        closed >= IDLE - CAP,
        "only {closed} of {IDLE} idle connections were closed (cap {CAP})"
    );
    // The oldest went first: the first connection made room long ago.
    let mut first = idle.remove(0);
    closed_within(&mut first, Instant::now(), Duration::from_secs(1)).expect("oldest evicted");
    // Held connections cost little: no buffer is touched before a handshake.
    assert!(
        rss < rss_before + 32 * 1024,
        "VmRSS grew from {rss_before} to {rss} KiB"
    );

    // Members that completed the handshake and went idle are bounded the same way.
    let mut members: Vec<(TcpStream, snow::TransportState)> = (0..CAP + 100)
        .map(|i| {
            let mut s = connect(addr);
            let t = noise_handshake(&mut s, &key).unwrap_or_else(|e| panic!("member {i}: {e}"));
            (s, t)
        })
        .collect();
    // Let the server finish the last handshakes: a connection still in its handshake
    // counts as a stranger, and strangers are the first to make room.
    std::thread::sleep(Duration::from_millis(300));
    assert_served(addr, &key, "with idle members at the cap");
    let fds = open_fds(pid);
    let rss_members = vm_rss_kib(pid);
    eprintln!("node with idle members: {fds} descriptors, VmRSS {rss_members} KiB");
    assert!(
        fds <= fds_before + CAP,
        "{fds} descriptors open (cap {CAP})"
    );
    // The newest member is still held, and answers.
    let (s, t) = members.last_mut().unwrap();
    s.write_all(&seal(t, &request_frame(&NodeRequest::Stat)))
        .unwrap();
    let answer: Response = proto::decode(&read_sealed_frame(s, t).unwrap()).unwrap();
    assert!(matches!(answer, Response::Stat(_)), "{answer:?}");

    drop(members);
    drop(idle);
    // Everything is let go: descriptors return to where they were.
    harness::cluster::wait_until("descriptors released", Duration::from_secs(5), || {
        (open_fds(pid) <= fds_before + 2).then_some(())
    });
    let (src, data) = c.random_file("after-idle", 200_003, 5);
    assert_eq!(
        c.round_trip("after-idle", &src),
        data,
        "put/get after the flood"
    );
}

// ---------------------------------------------------------------------------------------
// Regression: a FWD longer than any body was read into memory whole before the reader
// refused it (a member could make a node allocate up to 4 GiB with one request).

#[test]
fn fwd_longer_than_a_body_is_refused_before_allocating() {
    use poolfs::net::Connection;
    use poolfs::proto::{ErrorKind, MAX_BODY};

    let c = Cluster::start(1);
    let (addr, pid) = (c.nodes[0].addr, c.nodes[0].pid());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = Connection::connect(addr, &c.credentials(), Duration::from_secs(5))
            .await
            .unwrap();
        let seg = SegmentRef {
            file: "big".into(),
            index: 0,
        };
        // One byte far out makes a (sparse) segment longer than a body.
        let end = u64::from(MAX_BODY) * 2;
        let store = NodeRequest::Store {
            segment: seg.clone(),
            offset: end - 1,
            len: 1,
        };
        assert_eq!(conn.call(&store, Some(b"!")).await.unwrap().0, Response::Ok);
        let rss_before = vm_rss_kib(pid);
        let fwd = NodeRequest::Fwd {
            segment: seg.clone(),
            what: SegmentRead::Range {
                offset: 0,
                len: (end) as u32,
                sealed: false,
            },
        };
        let err = conn.call(&fwd, None).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::BadRequest), "{err}");
        assert!(
            err.to_string().contains("exceeds"),
            "unclear refusal: {err}"
        );
        let rss_after = vm_rss_kib(pid);
        assert!(
            rss_after < rss_before + 8 * 1024,
            "VmRSS {rss_before} -> {rss_after} KiB"
        );
        // A typed refusal: the same connection goes on, and a body-sized FWD works.
        let fwd = NodeRequest::Fwd {
            segment: seg,
            what: SegmentRead::Range {
                offset: end - 1,
                len: 1,
                sealed: false,
            },
        };
        let (_, body) = conn.call(&fwd, None).await.unwrap();
        assert_eq!(body.as_deref(), Some(&b"!"[..]));
    });
}
