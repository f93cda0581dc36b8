//! Unit tests of `Vfs` in process: a metadata store in a temp dir and a `PoolClient`
//! over an in-memory pool (`MemSegments`), without a kernel mount or sockets.

use std::sync::Arc;

use super::meta::{MetaStore, ROOT};
use super::vfs::Vfs;
use crate::client::{DataConfig, MemSegments, PoolClient};

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
    cfg.shard_size = 4000;
    let client = Arc::new(PoolClient::in_memory(mem.clone(), cfg));
    let vfs = Vfs::new(meta, client, rt.handle().clone()).expect("vfs");
    Fixture {
        mem,
        vfs,
        _rt: rt,
        _dir: dir,
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
