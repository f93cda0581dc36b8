//! The sweep on an in-memory pool: each kind of dead segment the issue lists is
//! reclaimed once older than the grace, and nothing of a live file ever is, even while
//! repair rebuilds it and its writer closes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::client::{DataConfig, Manifest, MemSegments, PoolClient};
use crate::fs::meta::{MetaStore, ROOT};
use crate::fs::repair;
use crate::proto::NodeId;

const SHARD: usize = 4000;
/// The grace of these tests, in ms of the pool's clock.
const GRACE: Duration = Duration::from_secs(600);
const GRACE_MS: u64 = 600_000;

/// A mount's metadata, runtime and in-memory pool; `vfs()` starts a mount over them
/// (again after a crash: the metadata stays, the open files are gone).
struct Pool {
    mem: Arc<MemSegments>,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

fn pool(nodes: usize) -> Pool {
    Pool {
        mem: MemSegments::new(nodes),
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(i as u32 / 997) as u8 ^ seed)
        .collect()
}

impl Pool {
    fn vfs(&self) -> Vfs {
        let meta = MetaStore::open(&self.dir.path().join("meta.redb"), 1000, 1000).expect("meta");
        let mut cfg = DataConfig::new(None);
        cfg.shard_size = SHARD as u32;
        let client = Arc::new(PoolClient::in_memory(self.mem.clone(), cfg));
        Vfs::new(meta, client, self.rt.handle().clone()).expect("vfs")
    }

    /// Every segment on every node, as (node, file id, index).
    fn all_segments(&self) -> Vec<(NodeId, String, u32)> {
        let view = self.mem.view();
        let mut out = Vec::new();
        for n in view.nodes {
            for (f, i) in self.mem.segment_refs(n.id) {
                out.push((n.id, f, i));
            }
        }
        out
    }
}

fn write_file(vfs: &Vfs, name: &[u8], data: &[u8]) -> u64 {
    let (inode, fh) = vfs.create(ROOT, name, 0o644, 1000, 1000).expect("create");
    assert_eq!(vfs.write(fh, 0, data).expect("write"), data.len() as u32);
    vfs.release(fh).expect("close");
    inode.ino
}

fn contents(vfs: &Vfs, ino: u64) -> Vec<u8> {
    let fh = vfs.open(ino, libc::O_RDONLY).expect("open");
    let mut back = Vec::new();
    loop {
        let piece = vfs.read(fh, back.len() as u64, 5000).expect("read");
        if piece.is_empty() {
            break;
        }
        back.extend_from_slice(&piece);
    }
    vfs.release(fh).expect("close");
    back
}

fn manifest(vfs: &Vfs, ino: u64) -> Manifest {
    vfs.getattr(ino)
        .expect("getattr")
        .manifest
        .expect("manifest")
}

/// The segments on live nodes no committed manifest of `vfs` names: what the pool
/// leaks (a node that left for good takes its segments with it).
fn unnamed(p: &Pool, vfs: &Vfs) -> Vec<(NodeId, String, u32)> {
    let files = vfs.meta().files().expect("files");
    let live = named_segments(files.iter().filter_map(|i| i.manifest.as_ref()));
    let up = p.mem.view().live().iter().map(|n| n.id).collect::<Vec<_>>();
    p.all_segments()
        .into_iter()
        .filter(|(n, _, _)| up.contains(n))
        .filter(|(n, f, i)| {
            !live
                .get(n)
                .is_some_and(|s| s.contains_key(&(f.clone(), *i)))
        })
        .collect()
}

/// A sweep after the grace (and the margin a reclaim adds for its way to the node):
/// what it reclaimed.
fn sweep_aged(p: &Pool, vfs: &Vfs) -> SweepReport {
    p.mem.advance(GRACE_MS + 10_000);
    sweep_pass(vfs, GRACE).expect("sweep")
}

#[test]
fn shards_stored_away_are_reclaimed_once_brought_home() {
    let p = pool(3);
    let vfs = p.vfs();
    let data = pattern(5 * 2 * SHARD, 1);
    let (inode, fh) = vfs.create(ROOT, b"f", 0o644, 1000, 1000).expect("create");
    // The first stripe fixes the placement over nodes 1 to 3; then node 3 goes down.
    let first = 2 * SHARD;
    vfs.write(fh, 0, &data[..first]).expect("write");
    vfs.flush(fh).expect("flush");
    p.mem.kill(3);
    vfs.run(vfs.client().refresh_view()).expect("view");
    vfs.write(fh, first as u64, &data[first..]).expect("write");
    vfs.release(fh).expect("close");
    let m = manifest(&vfs, inode.ino);
    assert!(
        m.has_moved(),
        "node 3 was down: its shards went elsewhere: {m:?}"
    );
    p.mem.set_fault(3, None);
    p.mem.set_state(3, Some(crate::proto::NodeState::Up));
    vfs.run(vfs.client().refresh_view()).expect("view");
    repair::repair_pass(&vfs, Duration::from_secs(60)).expect("repair");
    assert!(!manifest(&vfs, inode.ino).has_moved(), "brought home");
    let away = unnamed(&p, &vfs);
    assert!(
        !away.is_empty(),
        "the away copies are still on the stand-in"
    );
    // Within the grace nothing goes; after it, the away copies do.
    let early = sweep_pass(&vfs, GRACE).expect("sweep");
    assert_eq!((early.reclaimed, early.waiting), (0, away.len()));
    let r = sweep_aged(&p, &vfs);
    assert_eq!(r.reclaimed, away.len());
    assert!(r.freed > 0);
    assert_eq!(unnamed(&p, &vfs), vec![]);
    p.mem.kill(1);
    vfs.run(vfs.client().refresh_view()).expect("view");
    assert_eq!(contents(&vfs, inode.ino), data);
}

#[test]
fn old_copies_on_a_node_back_after_its_data_was_rebuilt_elsewhere_are_reclaimed() {
    let p = pool(3);
    let vfs = p.vfs();
    let data = pattern(4 * 2 * SHARD + 77, 2);
    let ino = write_file(&vfs, b"f", &data);
    let file = manifest(&vfs, ino).place.file_id;
    p.mem.kill(2);
    p.mem.set_state(2, Some(crate::proto::NodeState::Gone));
    let new = p.mem.add_node();
    vfs.run(vfs.client().refresh_view()).expect("view");
    repair::repair_pass(&vfs, Duration::ZERO).expect("repair");
    assert_eq!(p.mem.segments_of(new, &file), 1, "rebuilt on the new node");
    // Node 2 comes back with its old copy.
    p.mem.set_fault(2, None);
    p.mem.set_state(2, Some(crate::proto::NodeState::Up));
    assert_eq!(p.mem.segments_of(2, &file), 1);
    let r = sweep_aged(&p, &vfs);
    assert_eq!(r.reclaimed, 1);
    assert_eq!(p.mem.segments_of(2, &file), 0);
    assert_eq!(p.mem.segments_of(new, &file), 1);
    assert_eq!(unnamed(&p, &vfs), vec![]);
    assert_eq!(contents(&vfs, ino), data);
}

#[test]
fn shards_of_a_file_in_flight_when_the_mount_crashed_are_reclaimed() {
    let p = pool(3);
    let kept = pattern(3 * 2 * SHARD, 3);
    let (kept_ino, in_flight) = {
        let vfs = p.vfs();
        let kept_ino = write_file(&vfs, b"kept", &kept);
        let (inode, fh) = vfs.create(ROOT, b"cp", 0o644, 1000, 1000).expect("create");
        // Several stripes go out while the file is being written; no close follows.
        vfs.write(fh, 0, &pattern(8 * 2 * SHARD, 4)).expect("write");
        let open = vfs.open_file_ids();
        // The crash: the mount goes, its open file never committed.
        (kept_ino, (inode.ino, open))
    };
    // Stores already sent still land, as they would on the nodes.
    std::thread::sleep(Duration::from_millis(300));
    let vfs = p.vfs();
    let (_, open_ids) = in_flight;
    let leaked: Vec<_> = p
        .all_segments()
        .into_iter()
        .filter(|(_, f, _)| open_ids.contains(f))
        .collect();
    assert!(
        !leaked.is_empty(),
        "the in-flight stripes reached the nodes"
    );
    assert_eq!(unnamed(&p, &vfs), leaked);
    let r = sweep_aged(&p, &vfs);
    assert_eq!(r.reclaimed, leaked.len());
    assert_eq!(unnamed(&p, &vfs), vec![]);
    assert_eq!(contents(&vfs, kept_ino), kept);
}

#[test]
fn shards_a_rebuild_wrote_without_recording_them_are_reclaimed() {
    let p = pool(3);
    let vfs = p.vfs();
    let data = pattern(6 * 2 * SHARD, 5);
    let ino = write_file(&vfs, b"f", &data);
    let m = manifest(&vfs, ino);
    // A rebuild of segment 0 onto a new node whose manifest is never committed (the
    // repair failed half way, or the file changed meanwhile).
    let new = rebuild_unrecorded(&p, &vfs, &m, 0);
    assert_eq!(p.mem.segments_of(new, &m.place.file_id), 1);
    let r = sweep_aged(&p, &vfs);
    assert_eq!(r.reclaimed, 1);
    assert_eq!(p.mem.segments_of(new, &m.place.file_id), 0);
    assert_eq!(unnamed(&p, &vfs), vec![]);
    assert_eq!(contents(&vfs, ino), data);
}

#[test]
fn a_sweep_cut_short_by_the_mounts_stop_removes_nothing() {
    let p = pool(3);
    let vfs = p.vfs();
    let data = pattern(6 * 2 * SHARD, 6);
    let ino = write_file(&vfs, b"f", &data);
    let m = manifest(&vfs, ino);
    let new = rebuild_unrecorded(&p, &vfs, &m, 0);
    let before = p.all_segments();
    // The mount stops while the sweep would walk its files: it has not seen which
    // segments they name, so it must not judge any.
    vfs.stop_background();
    p.mem.advance(GRACE_MS + 10_000);
    let r = sweep_pass(&vfs, GRACE).expect("sweep");
    assert_eq!(r.reclaimed, 0, "{r:?}");
    assert_eq!(p.all_segments(), before);
    assert_eq!(p.mem.segments_of(new, &m.place.file_id), 1);
    assert_eq!(contents(&vfs, ino), data);
}

#[test]
fn segments_of_files_deleted_while_their_node_was_away_are_reclaimed_on_its_return() {
    let p = pool(3);
    let vfs = p.vfs();
    let ino = write_file(&vfs, b"gone", &pattern(3 * 2 * SHARD, 6));
    let kept = pattern(2 * 2 * SHARD, 7);
    let kept_ino = write_file(&vfs, b"kept", &kept);
    let file = manifest(&vfs, ino).place.file_id;
    p.mem.kill(2);
    vfs.run(vfs.client().refresh_view()).expect("view");
    vfs.unlink(ROOT, b"gone").expect("unlink");
    vfs.forget(ino, 1); // the kernel's reference from the create
    assert_eq!(p.mem.segments_of(1, &file), 0);
    assert_eq!(p.mem.segments_of(2, &file), 1, "node 2 missed the delete");
    // While node 2 is away, a sweep cannot reach it: nothing changes there.
    assert_eq!(
        sweep_aged(&p, &vfs).unreachable,
        0,
        "a down node is not listed"
    );
    p.mem.set_fault(2, None);
    p.mem.set_state(2, Some(crate::proto::NodeState::Up));
    let r = sweep_aged(&p, &vfs);
    assert_eq!(r.reclaimed, 1);
    assert_eq!(p.mem.segments_of(2, &file), 0);
    assert_eq!(unnamed(&p, &vfs), vec![]);
    assert_eq!(contents(&vfs, kept_ino), kept);
}

#[test]
fn held_and_live_bytes_per_node_show_what_a_sweep_would_free() {
    let p = pool(3);
    let vfs = p.vfs();
    let ino = write_file(&vfs, b"f", &pattern(3 * 2 * SHARD, 8));
    let m = manifest(&vfs, ino);
    let new = rebuild_unrecorded(&p, &vfs, &m, 1);
    let space = held_and_live(&vfs).expect("space");
    let of = |id| space.iter().find(|s| s.node == id).copied().expect("node");
    // Held is the segment's length on the in-memory nodes: the shards, and the gaps
    // between slots (room for a sealed shard's tags).
    let slots = 3 * SHARD as u64 + 2 * 16;
    for id in 1..=3 {
        let s = of(id);
        assert_eq!(s.live, 3 * SHARD as u64, "node {id}: a shard of 3 stripes");
        assert_eq!(s.held, slots, "node {id}: all it holds is live");
    }
    assert_eq!((of(new).held, of(new).live), (slots, 0));
    sweep_aged(&p, &vfs);
    assert_eq!(of_after(&vfs, new), (0, 0));
}

fn of_after(vfs: &Vfs, id: NodeId) -> (u64, u64) {
    let space = held_and_live(vfs).expect("space");
    space
        .iter()
        .find(|s| s.node == id)
        .map_or((0, 0), |s| (s.held, s.live))
}

/// Repair and the sweep run as the mount runs them (one after the other, with no
/// grace at all, the harshest setting), while a writer keeps reopening, rewriting and
/// closing the file repair is rebuilding, and copies new files in: every close that
/// succeeded is read back exact, nothing live is reclaimed, and once it settles
/// nothing is left unnamed.
#[test]
fn a_closed_file_is_never_reclaimed_while_repair_rebuilds_it() {
    let p = pool(3);
    let vfs = Arc::new(p.vfs());
    let size = 6 * 2 * SHARD;
    let ino = write_file(&vfs, b"f", &pattern(size, 0));
    p.mem.kill(2);
    p.mem.set_state(2, Some(crate::proto::NodeState::Gone));
    p.mem.add_node();
    vfs.run(vfs.client().refresh_view()).expect("view");
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (vfs, stop) = (vfs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reclaimed = 0;
            while !stop.load(Ordering::SeqCst) {
                let _ = repair::repair_pass(&vfs, Duration::ZERO);
                reclaimed += sweep_pass(&vfs, Duration::ZERO).expect("sweep").reclaimed;
            }
            reclaimed
        })
    };
    let mut expect = pattern(size, 0);
    let mut copies = Vec::new();
    for round in 1..=20u8 {
        let fh = vfs.open(ino, libc::O_RDWR).expect("open");
        let at = (round as usize * 1777) % (size - 3000);
        let piece = pattern(3000, round);
        vfs.write(fh, at as u64, &piece).expect("write");
        vfs.release(fh).expect("close");
        expect[at..at + 3000].copy_from_slice(&piece);
        assert_eq!(contents(&vfs, ino), expect, "round {round}");
        // A new file copied in stripe by stripe, sweeps passing while it is open: its
        // stored stripes are named by no manifest until its close.
        let name = format!("copy{round}");
        let copy = pattern(4 * 2 * SHARD, round.wrapping_mul(7));
        let (inode, fh) = vfs
            .create(ROOT, name.as_bytes(), 0o644, 1000, 1000)
            .expect("create");
        for (n, piece) in copy.chunks(2 * SHARD).enumerate() {
            vfs.write(fh, (n * 2 * SHARD) as u64, piece).expect("write");
            std::thread::sleep(Duration::from_millis(5));
        }
        vfs.release(fh).expect("close");
        copies.push((inode.ino, copy));
    }
    for (ino, copy) in &copies {
        assert_eq!(
            &contents(&vfs, *ino),
            copy,
            "a copy closed during the sweeps"
        );
    }
    stop.store(true, Ordering::SeqCst);
    background.join().expect("background thread");
    repair::repair_pass(&vfs, Duration::ZERO).expect("repair");
    // What the last passes left unnamed is reclaimed once it is older than the time
    // since the sweep's listing plus `LISTING_MARGIN`: on a loaded machine the sweep's
    // (paced) walk makes that longer than the wall-clock age of a slice the last
    // repair pass compacted away. Pool time moves on for it.
    p.mem.advance(10_000);
    sweep_pass(&vfs, Duration::ZERO).expect("sweep");
    assert_eq!(unnamed(&p, &vfs), vec![], "nothing leaks");
    // The rebuilt file stands without node 1 too (it has k + m shards again).
    p.mem.kill(1);
    vfs.run(vfs.client().refresh_view()).expect("view");
    assert_eq!(contents(&vfs, ino), expect);
}

/// Rebuilds segment `i` of every stored stripe of `m` onto a node that joins for it,
/// without committing a manifest that names it; returns the node.
fn rebuild_unrecorded(p: &Pool, vfs: &Vfs, m: &Manifest, i: usize) -> NodeId {
    let new = p.mem.add_node();
    vfs.run(vfs.client().refresh_view()).expect("view");
    let to = crate::client::Holder {
        node_id: new,
        addr: MemSegments::addr_of(new),
    };
    let stripes: Vec<u64> = m.records().map(|(j, _)| j).collect();
    vfs.run(vfs.client().rebuild_onto(m, i, &to, &stripes, NO_PACE))
        .expect("rebuild");
    new
}

/// Repair's pace with no pause: the tests do not wait.
const NO_PACE: crate::client::Pace = crate::client::Pace {
    bytes_per_sec: 0,
    floor: Duration::ZERO,
};
