//! Failures of the pool under a file: a store the nodes refuse or cannot take is
//! reported by the write or the flush, the file's committed bytes stay as they were,
//! and what the failed attempt stored is given back.

use super::{errno, fixture, pattern, Fixture, STRIPE};
use crate::client::Fault;
use crate::fs::meta::ROOT;
use crate::fs::vfs::SetAttr;
use crate::proto::NodeState;

/// Breaks every node of the fixture's pool as `fault` says.
fn break_all(f: &Fixture, fault: Option<Fault>) {
    for id in 1..=3 {
        f.mem.set_fault(id, fault);
    }
}

#[test]
fn a_store_the_nodes_refuse_is_reported_and_the_committed_bytes_stay() {
    let f = fixture(3);
    let old = pattern(3 * STRIPE as usize, 1);
    let ino = f.file(ROOT, b"f", &old);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    break_all(&f, Some(Fault::Refuse));
    let new = pattern(5 * STRIPE as usize, 2);
    // Full stripes start uploading at once: the write or, at the latest, the flush
    // reports the failure.
    let written = f.vfs.write(fh, 0, &new);
    let flushed = f.vfs.flush(fh);
    assert!(
        written.is_err() || flushed.is_err(),
        "a refused store is reported"
    );
    let again = f
        .vfs
        .flush(fh)
        .expect_err("every later flush reports it too");
    assert_eq!(errno(&again), libc::EIO);
    assert_eq!(
        f.vfs.getattr(ino).expect("getattr").size,
        old.len() as u64,
        "the size does not show bytes never stored"
    );
    assert!(f.vfs.release(fh).is_err(), "the close reports it");
    break_all(&f, None);
    assert_eq!(f.contents(ino), old, "the committed bytes read back");
}

#[test]
fn a_store_to_unreachable_nodes_fails_the_flush_and_the_file_stays_as_it_was() {
    let f = fixture(3);
    let old = pattern(STRIPE as usize + 300, 3);
    let ino = f.file(ROOT, b"f", &old);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    // Below a stripe: the write is only buffered, the flush is what stores it.
    f.vfs
        .write(fh, 10, &pattern(2000, 4))
        .expect("buffered write");
    break_all(&f, Some(Fault::Down));
    let e = f.vfs.flush(fh).expect_err("the flush cannot store");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert!(f.vfs.release(fh).is_err());
    break_all(&f, None);
    assert_eq!(f.contents(ino), old);
}

#[test]
fn a_close_that_finds_the_nodes_full_reports_enospc_and_rolls_back() {
    let f = fixture(3);
    let old = pattern(2 * STRIPE as usize + 5, 5);
    let ino = f.file(ROOT, b"f", &old);
    let committed = f.manifest(ino);
    let used: Vec<u64> = (1..=3).map(|id| f.mem.used(id)).collect();
    let fh = f.vfs.open(ino, libc::O_WRONLY).expect("open");
    f.vfs
        .write(fh, 0, &pattern(1000, 6))
        .expect("buffered write");
    f.vfs
        .write(fh, old.len() as u64, &pattern(3000, 7))
        .expect("buffered append");
    break_all(&f, Some(Fault::Full));
    let e = f.vfs.flush(fh).expect_err("the flush of the close fails");
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    // Rolled back at once: the open file is its committed self again.
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, old.len() as u64);
    assert_eq!(f.read_fh(fh), old, "read through the handle that failed");
    let e = f
        .vfs
        .release(fh)
        .expect_err("the failure is reported again");
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    break_all(&f, None);
    assert_eq!(f.contents(ino), old, "the old contents read back");
    assert_eq!(
        f.manifest(ino),
        committed,
        "the committed manifest is unchanged"
    );
    let after: Vec<u64> = (1..=3).map(|id| f.mem.used(id)).collect();
    assert_eq!(
        after, used,
        "nothing of the failed attempt stays on the nodes"
    );
}

#[test]
fn a_file_whose_close_failed_can_be_written_again_once_the_pool_has_room() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(STRIPE as usize * 2, 8));
    let fh = f.vfs.open(ino, libc::O_WRONLY).expect("open");
    f.vfs
        .write(fh, 0, &pattern(STRIPE as usize / 2, 9))
        .expect("write");
    break_all(&f, Some(Fault::Full));
    assert!(f.vfs.release(fh).is_err());
    break_all(&f, None);
    let fh = f
        .vfs
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open");
    let new = pattern(3 * STRIPE as usize, 10);
    f.vfs.write(fh, 0, &new).expect("write");
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(ino), new);
}

#[test]
fn a_fallocate_the_nodes_cannot_hold_is_enospc_and_reserves_nothing() {
    let f = fixture(3);
    let data = pattern(STRIPE as usize + 1, 11);
    let ino = f.file(ROOT, b"f", &data);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    f.mem.set_fault(2, Some(Fault::Full));
    let used: Vec<u64> = (1..=3).map(|id| f.mem.used(id)).collect();
    let e = f
        .vfs
        .fallocate(fh, 0, 10 * STRIPE, 0)
        .expect_err("one holder is full");
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    let after: Vec<u64> = (1..=3).map(|id| f.mem.used(id)).collect();
    assert_eq!(after, used, "all or nothing: nothing stays reserved");
    f.mem.set_fault(2, None);
    f.vfs.release(fh).expect("close");
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, data.len() as u64);
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_truncation_to_zero_with_no_live_node_to_place_on_fails_and_changes_nothing() {
    let f = fixture(3);
    let old = pattern(2 * STRIPE as usize, 12);
    let ino = f.file(ROOT, b"f", &old);
    for id in 1..=3 {
        f.mem.kill(id);
    }
    f.vfs
        .run(f.vfs.client().refresh_view())
        .expect("the pool view");
    let set = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    let e = f
        .vfs
        .setattr(ino, set)
        .expect_err("nowhere to place the file");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = f
        .vfs
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect_err("nowhere to place the file");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    for id in 1..=3 {
        f.mem.set_fault(id, None);
        f.mem.set_state(id, Some(NodeState::Up));
    }
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, old.len() as u64);
    assert_eq!(f.contents(ino), old);
}
