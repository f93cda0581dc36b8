//! The journal over an in-memory pool: what a mount changes reaches the pool's copy,
//! and that copy rebuilds the same namespace; a flush that fails loses nothing; the
//! lease keeps a second mount out; segments a change frees wait for its flush.

use std::sync::Arc;
use std::time::Duration;

use super::root::{self, read_latest};
use super::{check_lease, restore, Journal, JournalConfig, JournalError, SnapshotPace};
use crate::client::{DataConfig, MemSegments, PoolClient};
use crate::fs::meta::{MetaStore, ROOT};
use crate::fs::vfs::Vfs;
use crate::trust::OwnerKey;

const SHARD: u32 = 4000;
/// Snapshots in parts of about 1500 bytes of records, unpaced: every test's snapshot
/// is stored in several parts.
const PACE: SnapshotPace = SnapshotPace {
    part_bytes: 1500,
    rate: 1 << 30,
};

struct Mount {
    mem: Arc<MemSegments>,
    vfs: Arc<Vfs>,
    data: Arc<PoolClient>,
    ns: Arc<PoolClient>,
    owner: Arc<OwnerKey>,
    journal: Arc<Journal>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn client(mem: &Arc<MemSegments>, owner: &Arc<OwnerKey>) -> Arc<PoolClient> {
    let mut cfg = DataConfig::new(Some(owner.clone()));
    cfg.shard_size = SHARD;
    Arc::new(PoolClient::in_memory(mem.clone(), cfg))
}

fn mount(nodes: usize) -> Mount {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mem = MemSegments::new(nodes);
    let owner = Arc::new(OwnerKey::from_bytes([9; 32]));
    let meta = MetaStore::open(&dir.path().join("meta.redb"), 1000, 1000).expect("meta");
    let data = client(&mem, &owner);
    let ns = client(&mem, &owner);
    let vfs = Arc::new(Vfs::new(meta, data.clone(), rt.handle().clone()).expect("vfs"));
    let journal = Journal::start(
        vfs.meta_store(),
        journal_config(&ns, &data, &owner, rt.handle(), None, PACE),
    )
    .expect("journal");
    vfs.set_journal(journal.clone());
    Mount {
        mem,
        vfs,
        data,
        ns,
        owner,
        journal,
        rt,
        _dir: dir,
    }
}

fn journal_config(
    ns: &Arc<PoolClient>,
    data: &Arc<PoolClient>,
    owner: &Arc<OwnerKey>,
    rt: &tokio::runtime::Handle,
    found: Option<root::Root>,
    pace: SnapshotPace,
) -> JournalConfig {
    JournalConfig {
        ns: ns.clone(),
        data: data.clone(),
        owner: owner.clone(),
        rt: rt.clone(),
        lease: Duration::from_secs(3),
        machine: "alpha".into(),
        node_key: [4; 32],
        node_id: Some(1),
        found,
        pace,
    }
}

impl Mount {
    /// Closes the journal as an unmount does and starts another over the same store
    /// as the next mount would, snapshotting at `pace`. (The Vfs keeps the first
    /// journal: sync through the one returned.)
    fn next_journal(&self, pace: SnapshotPace) -> Arc<Journal> {
        self.journal.close();
        let found = self
            .rt
            .block_on(read_latest(&self.ns, &self.owner))
            .expect("root read")
            .root;
        Journal::start(
            self.vfs.meta_store(),
            journal_config(
                &self.ns,
                &self.data,
                &self.owner,
                self.rt.handle(),
                found,
                pace,
            ),
        )
        .expect("journal")
    }

    fn file(&self, parent: u64, name: &[u8], data: &[u8]) -> u64 {
        let (inode, fh) = self
            .vfs
            .create(parent, name, 0o640, 1000, 1000)
            .expect("create");
        self.vfs.write(fh, 0, data).expect("write");
        self.vfs.release(fh).expect("close");
        inode.ino
    }

    /// The namespace rebuilt from the pool's copy into a fresh store, with a Vfs over
    /// it that reads the same pool.
    fn recovered(&self) -> (Vfs, tempfile::TempDir) {
        let found = self
            .rt
            .block_on(read_latest(&self.ns, &self.owner))
            .expect("root read");
        let root = found.root.expect("a root in the pool");
        assert_eq!(root.node_key, [4; 32], "the node key travels in the root");
        let dir = tempfile::tempdir().expect("temp dir");
        restore::rebuild(self.rt.handle(), &self.ns, &root, dir.path(), 1000, 1000)
            .expect("rebuild");
        let meta = MetaStore::open(&dir.path().join(restore::META_FILE), 1000, 1000).expect("open");
        let vfs = Vfs::new(
            meta,
            client(&self.mem, &self.owner),
            self.rt.handle().clone(),
        )
        .expect("vfs");
        (vfs, dir)
    }
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

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31) as u8 ^ seed)
        .collect()
}

#[test]
fn a_synced_namespace_rebuilds_from_the_pool_with_every_name_attribute_and_byte() {
    let m = mount(3);
    let big = pattern(40_000, 1);
    let small = pattern(300, 2);
    let dir = m
        .vfs
        .mkdir(ROOT, b"docs", 0o2750, 1000, 1000)
        .expect("mkdir");
    let f_big = m.file(dir.ino, b"big", &big);
    let f_small = m.file(ROOT, b"small", &small);
    m.vfs.link(f_small, dir.ino, b"again").expect("link");
    m.vfs
        .symlink(ROOT, b"ln", b"docs/big", 1000, 1000)
        .expect("symlink");
    m.vfs
        .setxattr(f_big, b"user.tag", b"blue", 0)
        .expect("setxattr");
    let gone = m.file(ROOT, b"gone", &pattern(9000, 3));
    m.vfs.unlink(ROOT, b"gone").expect("unlink");
    m.vfs.forget(gone, 1);
    m.vfs
        .rename(ROOT, b"small", ROOT, b"small2", 0)
        .expect("rename");
    m.vfs.sync_namespace().expect("sync");

    let (back, _dir) = m.recovered();
    let d = back.lookup(ROOT, b"docs").expect("docs");
    assert_eq!(d.perm & 0o7777, 0o2750);
    let b = back.lookup(d.ino, b"big").expect("big");
    assert_eq!(contents(&back, b.ino), big);
    assert_eq!(back.getxattr(b.ino, b"user.tag").expect("xattr"), b"blue");
    let s = back.lookup(ROOT, b"small2").expect("renamed");
    assert_eq!(contents(&back, s.ino), small);
    assert_eq!(back.lookup(d.ino, b"again").expect("link").ino, s.ino);
    assert_eq!(s.nlink, 2);
    let l = back.lookup(ROOT, b"ln").expect("symlink");
    assert_eq!(back.readlink(l.ino).expect("readlink"), b"docs/big");
    assert!(
        back.lookup(ROOT, b"gone").is_err(),
        "an unlinked file stays gone"
    );
    assert!(
        back.lookup(ROOT, b"small").is_err(),
        "the old name of a rename stays gone"
    );
    assert_eq!(
        back.getattr(f_big).expect("attr").mtime,
        m.vfs.getattr(f_big).expect("attr").mtime,
        "times come back to the nanosecond"
    );
    // Both stores hold the same records.
    let mut ours = m.vfs.meta_store().dump().expect("dump");
    let mut theirs = back.meta_store().dump().expect("dump");
    ours.counters.retain(|(k, _)| k != "next_ino");
    theirs.counters.retain(|(k, _)| k != "next_ino");
    assert_eq!(ours, theirs);
    m.journal.close();
}

#[test]
fn a_closed_file_is_in_the_pool_within_a_second_without_a_sync() {
    let m = mount(3);
    m.file(ROOT, b"late", &pattern(5000, 4));
    std::thread::sleep(Duration::from_millis(1000));
    let (back, _dir) = m.recovered();
    let f = back
        .lookup(ROOT, b"late")
        .expect("in the pool within a second of its close");
    assert_eq!(contents(&back, f.ino), pattern(5000, 4));
    m.journal.close();
}

#[test]
fn a_flush_that_fails_loses_nothing_and_sync_reports_it() {
    let m = mount(3);
    m.file(ROOT, b"before", &pattern(100, 5));
    m.vfs.sync_namespace().expect("sync");
    // Every node down: nothing can be stored.
    for id in 1..=3 {
        m.mem.kill(id);
    }
    m.vfs
        .mkdir(ROOT, b"during", 0o755, 1000, 1000)
        .expect("mkdir is local");
    let e = m.vfs.sync_namespace().expect_err("sync cannot succeed");
    assert!(e.to_string().contains("namespace"), "{e}");
    for id in 1..=3 {
        m.mem.set_state(id, Some(crate::proto::NodeState::Up));
        m.mem.set_fault(id, None);
    }
    m.vfs
        .sync_namespace()
        .expect("sync once the nodes are back");
    let (back, _dir) = m.recovered();
    back.lookup(ROOT, b"during")
        .expect("the change made while the pool refused");
    back.lookup(ROOT, b"before").expect("and the one before");
    m.journal.close();
}

#[test]
fn a_second_mount_is_refused_while_the_lease_lasts_and_admitted_after_release() {
    let m = mount(3);
    let found = m.rt.block_on(read_latest(&m.ns, &m.owner)).expect("read");
    match check_lease(found.root.as_ref(), root::now_ms()) {
        Err(JournalError::Leased { machine, secs }) => {
            assert_eq!(machine, "alpha");
            assert!((1..=3).contains(&secs), "{secs}");
            let text = JournalError::Leased { machine, secs }.to_string();
            assert!(text.contains("mounted on machine alpha"), "{text}");
        }
        other => panic!("a live mount's lease must refuse: {other:?}"),
    }
    m.journal.close();
    let found = m.rt.block_on(read_latest(&m.ns, &m.owner)).expect("read");
    check_lease(found.root.as_ref(), root::now_ms()).expect("released at unmount");
}

#[test]
fn segments_a_deletion_frees_stay_until_the_flush_that_records_it() {
    let m = mount(3);
    let ino = m.file(ROOT, b"doomed", &pattern(20_000, 6));
    let file_id = m
        .vfs
        .getattr(ino)
        .expect("attr")
        .manifest
        .expect("stored")
        .place
        .file_id;
    m.vfs.sync_namespace().expect("sync");
    let held = |mem: &MemSegments| {
        (1..=3)
            .map(|id| mem.segments_of(id, &file_id))
            .sum::<usize>()
    };
    assert_eq!(held(&m.mem), 3);
    m.vfs.unlink(ROOT, b"doomed").expect("unlink");
    m.vfs.forget(ino, 1);
    // The pool's copy still names the file until the next flush: its segments stay.
    assert_eq!(
        held(&m.mem),
        3,
        "freed before the pool's copy forgot the file"
    );
    m.vfs.sync_namespace().expect("sync");
    for _ in 0..50 {
        if held(&m.mem) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(held(&m.mem), 0, "freed after the flush");
    m.journal.close();
}

#[test]
fn a_blob_no_root_names_is_removed_once_old_and_named_ones_stay() {
    let m = mount(3);
    m.file(ROOT, b"kept", &pattern(3000, 7));
    m.vfs.sync_namespace().expect("sync");
    // What a flush that died before its root write leaves behind.
    let orphan =
        m.rt.block_on(m.ns.put(&pattern(5000, 8)[..], |_| {}))
            .expect("put");
    let held = |file: &str| (1..=3).map(|id| m.mem.segments_of(id, file)).sum::<usize>();
    assert!(held(&orphan.place.file_id) > 0);
    let root =
        m.rt.block_on(read_latest(&m.ns, &m.owner))
            .expect("read")
            .root
            .expect("root");
    assert_eq!(
        m.rt.block_on(super::tidy::tidy(&m.ns, &root)),
        0,
        "too young to go"
    );
    m.mem
        .advance(super::tidy::TIDY_AGE.as_millis() as u64 + 1000);
    assert!(m.rt.block_on(super::tidy::tidy(&m.ns, &root)) > 0);
    assert_eq!(held(&orphan.place.file_id), 0, "the unnamed blob went");
    let (back, _dir) = m.recovered();
    back.lookup(ROOT, b"kept").expect("every named blob stayed");
    m.journal.close();
}

/// Waits (at most 20 s) until `j` has no snapshot under way or asked for.
fn snapshot_settles(j: &Journal) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while j.snapshot_pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot did not finish: {}",
            j.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn same_records(a: &Vfs, b: &Vfs) {
    let mut ours = a.meta_store().dump().expect("dump");
    let mut theirs = b.meta_store().dump().expect("dump");
    ours.counters.retain(|(k, _)| k != "next_ino");
    theirs.counters.retain(|(k, _)| k != "next_ino");
    assert_eq!(ours, theirs);
}

#[test]
fn a_snapshot_stored_in_parts_while_files_change_rebuilds_the_same_namespace() {
    let m = mount(3);
    let mut inos = Vec::new();
    for i in 0..60u32 {
        let name = format!("f{i}");
        inos.push(m.file(ROOT, name.as_bytes(), &pattern(100, i as u8)));
    }
    m.vfs.sync_namespace().expect("sync");
    // The next mount snapshots about 20 KB of records in 800-byte parts at 8 KB/s:
    // a couple of seconds, during which the namespace keeps changing.
    let j = m.next_journal(SnapshotPace {
        part_bytes: 800,
        rate: 8000,
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(j.snapshot_pending(), "the snapshot is still under way");
    for i in 0..20u32 {
        let name = format!("new{i}");
        m.file(ROOT, name.as_bytes(), &pattern(3000, 100 + i as u8));
        let old = format!("f{i}");
        m.vfs.unlink(ROOT, old.as_bytes()).expect("unlink");
        m.vfs.forget(inos[i as usize], 1);
        let (from, to) = (format!("f{}", 30 + i), format!("moved{i}"));
        m.vfs
            .rename(ROOT, from.as_bytes(), ROOT, to.as_bytes(), 0)
            .expect("rename");
        j.sync().expect("sync while the snapshot is under way");
    }
    snapshot_settles(&j);
    m.file(ROOT, b"after", &pattern(200, 7));
    j.sync().expect("sync");
    let found =
        m.rt.block_on(read_latest(&m.ns, &m.owner))
            .expect("root read")
            .root
            .expect("root");
    assert!(
        found.snapshot_bytes > 800 * 4,
        "the snapshot went in several parts ({} B)",
        found.snapshot_bytes
    );

    let (back, _dir) = m.recovered();
    same_records(&m.vfs, &back);
    for i in 0..20u32 {
        let f = back
            .lookup(ROOT, format!("new{i}").as_bytes())
            .expect("new file");
        assert_eq!(contents(&back, f.ino), pattern(3000, 100 + i as u8));
        assert!(back.lookup(ROOT, format!("f{i}").as_bytes()).is_err());
        let moved = back
            .lookup(ROOT, format!("moved{i}").as_bytes())
            .expect("moved");
        assert_eq!(contents(&back, moved.ino), pattern(100, 30 + i as u8));
    }
    j.close();
}

#[test]
fn an_unmount_during_a_snapshot_leaves_a_chain_that_rebuilds_everything() {
    let m = mount(3);
    for i in 0..40u32 {
        m.file(ROOT, format!("f{i}").as_bytes(), &pattern(100, i as u8));
    }
    m.vfs.sync_namespace().expect("sync");
    // So slow that the unmount comes long before the snapshot's end.
    let j = m.next_journal(SnapshotPace {
        part_bytes: 500,
        rate: 500,
    });
    m.file(ROOT, b"during", &pattern(2000, 9));
    j.sync().expect("sync");
    assert!(j.snapshot_pending(), "the snapshot is still under way");
    j.close();
    let (back, _dir) = m.recovered();
    same_records(&m.vfs, &back);
    let f = back
        .lookup(ROOT, b"during")
        .expect("the file made during the snapshot");
    assert_eq!(contents(&back, f.ino), pattern(2000, 9));
}

#[test]
fn a_mount_after_a_crash_waits_in_sync_for_the_snapshot_that_catches_the_pool_up() {
    let m = mount(3);
    m.vfs.sync_namespace().expect("sync");
    // Changes the pool's copy never saw (as after a crash before their flush, or a
    // mount that kept no copy in the pool).
    m.journal.close();
    m.vfs.meta_store().set_synced_seq(None).expect("forget");
    for i in 0..10u32 {
        m.file(
            ROOT,
            format!("unseen{i}").as_bytes(),
            &pattern(500, i as u8),
        );
    }
    // What a crash loses with the process: the keys noted for the next flush.
    let _ = m.vfs.meta_store().take_delta().expect("drain");
    let j = m.next_journal(SnapshotPace {
        part_bytes: 500,
        rate: 200,
    });
    // Paced at 200 B/s the snapshot would take a minute; a sync hurries it.
    let started = std::time::Instant::now();
    j.sync().expect("sync");
    assert!(started.elapsed() < Duration::from_secs(15));
    let (back, _dir) = m.recovered();
    same_records(&m.vfs, &back);
    j.close();
}

#[test]
fn a_long_log_is_folded_without_a_new_snapshot_and_rebuilds_the_same_namespace() {
    let m = mount(3);
    for i in 0..40u32 {
        m.file(ROOT, format!("base{i}").as_bytes(), &pattern(200, i as u8));
    }
    m.vfs.sync_namespace().expect("sync");
    snapshot_settles(&m.journal);
    let first =
        m.rt.block_on(read_latest(&m.ns, &m.owner))
            .expect("read")
            .root;
    let snapshot = first.expect("root").snapshot;
    // Three times `MAX_LOG` flushes, each a small change: the log is folded as it
    // reaches `MAX_LOG`, and no snapshot of the whole namespace is taken again.
    let rounds = 3 * super::MAX_LOG as u32;
    let mut inos = std::collections::HashMap::new();
    for i in 0..rounds {
        let name = format!("n{}", i % 50);
        if let Some(old) = inos.remove(&name) {
            m.vfs.unlink(ROOT, name.as_bytes()).expect("unlink");
            m.vfs.forget(old, 1);
        }
        let ino = m.file(ROOT, name.as_bytes(), &pattern(100, i as u8));
        inos.insert(name, ino);
        m.vfs
            .setxattr(ROOT, b"user.round", i.to_string().as_bytes(), 0)
            .expect("setxattr");
        m.journal.sync().expect("sync");
    }
    let root =
        m.rt.block_on(read_latest(&m.ns, &m.owner))
            .expect("read")
            .root
            .expect("root");
    assert_eq!(
        root.snapshot, snapshot,
        "the snapshot stayed: the log was folded"
    );
    assert!(
        root.log.len() <= super::MAX_LOG,
        "the root names {} blobs",
        root.log.len()
    );
    // The log's bytes are its deltas' (the snapshot's parts that lead it are not).
    let parts = super::lock(&m.journal.state).snapshot_parts;
    let weighed: u64 = root.log[parts..].iter().map(|b| b.size).sum();
    assert_eq!(root.log_bytes, weighed, "the log's bytes are counted right");
    let (back, _dir) = m.recovered();
    same_records(&m.vfs, &back);
    for i in 0..50u32 {
        let f = back.lookup(ROOT, format!("n{i}").as_bytes()).expect("file");
        let last = (0..rounds).filter(|r| r % 50 == i).max().expect("round");
        assert_eq!(contents(&back, f.ino), pattern(100, last as u8));
    }
    m.journal.close();
}
