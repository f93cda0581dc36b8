//! Unit tests of `Vfs` in process: a metadata store in a temp dir and a `PoolClient`
//! over an in-memory pool (`MemSegments`), without a kernel mount or sockets. Each
//! part proves one group of capabilities; this file holds the fixture they share.

use std::sync::Arc;

use super::meta::{MetaStore, ROOT};
use super::vfs::Vfs;
use super::FsError;
use crate::client::{DataConfig, Manifest, MemSegments, PoolClient};
use crate::proto::NodeId;

mod data;
mod failures;
mod lifetimes;
mod namespace;
mod patches;
mod repair;
mod repair_incremental;
mod xattrs;

/// Shard size of the fixture's files: with 3 nodes (k = 2, m = 1) a stripe holds
/// `STRIPE` bytes, so a few KiB span several stripes.
const SHARD: usize = 4000;
/// Data bytes of one stripe with 3 nodes.
const STRIPE: u64 = 2 * SHARD as u64;

/// A filesystem over a fresh in-memory pool of `nodes` nodes: the pool (to inspect or
/// break), the `Vfs`, and what must outlive it (the runtime and the metadata's dir).
struct Fixture {
    mem: Arc<MemSegments>,
    vfs: Vfs,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture(nodes: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = MetaStore::open(&dir.path().join("meta.redb"), 1000, 1000).expect("meta store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mem = MemSegments::new(nodes);
    let mut cfg = DataConfig::new(None);
    cfg.shard_size = SHARD as u32;
    let client = Arc::new(PoolClient::in_memory(mem.clone(), cfg));
    let vfs = Vfs::new(meta, client, rt.handle().clone()).expect("vfs");
    Fixture {
        mem,
        vfs,
        _rt: rt,
        _dir: dir,
    }
}

/// `n` bytes that differ from stripe to stripe and from `seed` to `seed`, so a stripe
/// read from the wrong place or an old version shows.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(i as u32 / 997) as u8 ^ seed)
        .collect()
}

/// The errno a user would see for `e`.
fn errno(e: &FsError) -> i32 {
    // The FUSE adapter's one table: what a program would see.
    crate::fs::fuse::errno::code(e)
}

impl Fixture {
    /// Creates `name` in `parent` holding `data`, closed; returns its inode number.
    fn file(&self, parent: u64, name: &[u8], data: &[u8]) -> u64 {
        let (inode, fh) = self
            .vfs
            .create(parent, name, 0o644, 1000, 1000)
            .expect("create");
        if !data.is_empty() {
            assert_eq!(
                self.vfs.write(fh, 0, data).expect("write"),
                data.len() as u32
            );
        }
        self.vfs.release(fh).expect("close");
        inode.ino
    }

    /// Every byte of open handle `fh`, read in pieces as the kernel would.
    fn read_fh(&self, fh: u64) -> Vec<u8> {
        let mut back = Vec::new();
        loop {
            let piece = self.vfs.read(fh, back.len() as u64, 5000).expect("read");
            if piece.is_empty() {
                return back;
            }
            back.extend_from_slice(&piece);
        }
    }

    /// Every byte of file `ino`, through an open of its own.
    fn contents(&self, ino: u64) -> Vec<u8> {
        let fh = self.vfs.open(ino, libc::O_RDONLY).expect("open");
        let back = self.read_fh(fh);
        self.vfs.release(fh).expect("close");
        back
    }

    /// The committed manifest of file `ino`.
    fn manifest(&self, ino: u64) -> Manifest {
        self.vfs
            .getattr(ino)
            .expect("getattr")
            .manifest
            .expect("a file stored on the pool has a manifest")
    }

    /// The nodes holding the segments of file `ino`, in segment order.
    fn holders(&self, ino: u64) -> Vec<crate::proto::NodeId> {
        self.manifest(ino)
            .place
            .holders
            .iter()
            .map(|h| h.node_id)
            .collect()
    }

    /// Segments of `file` held over all nodes.
    fn segments(&self, file: &str) -> usize {
        (1..=3 as NodeId)
            .map(|id| self.mem.segments_of(id, file))
            .sum()
    }
}

#[test]
fn a_created_file_reads_back_what_was_written_after_its_close() {
    let f = fixture(3);
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
    let (inode, fh) = f
        .vfs
        .create(ROOT, b"notes", 0o644, 1000, 1000)
        .expect("create");
    assert_eq!(f.vfs.write(fh, 0, &data).expect("write"), data.len() as u32);
    f.vfs.flush(fh).expect("flush");
    f.vfs.release(fh).expect("release");
    let found = f.vfs.lookup(ROOT, b"notes").expect("lookup");
    assert_eq!(
        (found.ino, f.vfs.getattr(found.ino).expect("getattr").size),
        (inode.ino, 50_000)
    );
    let fh = f.vfs.open(inode.ino, libc::O_RDONLY).expect("open");
    let mut back = Vec::new();
    while back.len() < data.len() {
        let piece = f.vfs.read(fh, back.len() as u64, 8192).expect("read");
        assert!(!piece.is_empty(), "short read at {}", back.len());
        back.extend_from_slice(&piece);
    }
    f.vfs.release(fh).expect("release");
    assert_eq!(back, data);
    let manifest = f
        .vfs
        .getattr(inode.ino)
        .expect("getattr")
        .manifest
        .expect("a manifest");
    for id in 1..=3 {
        assert!(
            f.mem.segments_of(id, &manifest.place.file_id) > 0,
            "node {id} holds a segment"
        );
    }
}
