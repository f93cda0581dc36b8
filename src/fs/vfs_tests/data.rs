//! A file's bytes: what was written reads back exactly (across stripes, overwritten in
//! the middle), truncation (shrink, grow with zeros, to zero), holes with
//! `SEEK_DATA`/`SEEK_HOLE`, and fallocate's modes.

use super::{fixture, pattern, STRIPE};
use crate::fs::meta::ROOT;
use crate::fs::vfs::{falloc, SetAttr};
use crate::fs::FsError;

#[test]
fn an_overwrite_in_the_middle_changes_only_the_bytes_it_covers() {
    let f = fixture(3);
    let mut want = pattern(5 * STRIPE as usize + 123, 1);
    let ino = f.file(ROOT, b"f", &want);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    // Across a stripe boundary: both stripes are read, patched and rewritten.
    let at = 2 * STRIPE as usize - 700;
    let patch = pattern(1500, 9);
    f.vfs.write(fh, at as u64, &patch).expect("write");
    want[at..at + patch.len()].copy_from_slice(&patch);
    assert_eq!(f.read_fh(fh), want, "read through the open handle");
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(ino), want, "read after the close");
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, want.len() as u64);
}

#[test]
fn a_small_file_reads_back_from_its_record() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"small", b"hello, pool");
    assert_eq!(f.contents(ino), b"hello, pool");
    let m = f.manifest(ino);
    assert_eq!(
        f.segments(&m.place.file_id),
        0,
        "nothing stored on the nodes"
    );
}

fn truncate(f: &super::Fixture, ino: u64, size: u64) {
    let set = SetAttr {
        size: Some(size),
        ..Default::default()
    };
    f.vfs.setattr(ino, set).expect("truncate");
}

#[test]
fn a_shrink_keeps_the_bytes_before_the_new_end() {
    let f = fixture(3);
    let data = pattern(4 * STRIPE as usize, 2);
    let ino = f.file(ROOT, b"f", &data);
    let end = STRIPE as usize + 1234;
    truncate(&f, ino, end as u64);
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, end as u64);
    assert_eq!(f.contents(ino), &data[..end]);
}

#[test]
fn a_grow_reads_as_zeros_past_the_old_end() {
    let f = fixture(3);
    let data = pattern(STRIPE as usize + 500, 3);
    let ino = f.file(ROOT, b"f", &data);
    let size = 3 * STRIPE + 10;
    truncate(&f, ino, size);
    let back = f.contents(ino);
    assert_eq!(back.len() as u64, size);
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(
        back[data.len()..].iter().all(|&b| b == 0),
        "zeros past the old end"
    );
}

#[test]
fn a_shrink_then_grow_does_not_bring_back_the_cut_bytes() {
    let f = fixture(3);
    let data = pattern(4 * STRIPE as usize, 4);
    let ino = f.file(ROOT, b"f", &data);
    truncate(&f, ino, 100 + STRIPE);
    // Whole stripes were cut off too: they must not come back as they were.
    truncate(&f, ino, 4 * STRIPE);
    let back = f.contents(ino);
    assert_eq!(
        &back[..100 + STRIPE as usize],
        &data[..100 + STRIPE as usize]
    );
    assert!(back[100 + STRIPE as usize..].iter().all(|&b| b == 0));
}

#[test]
fn an_open_with_o_trunc_empties_the_file_and_frees_the_old_segments_at_close() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(3 * STRIPE as usize, 5));
    let old = f.manifest(ino).place.file_id;
    assert!(f.segments(&old) > 0);
    let fh = f
        .vfs
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open O_TRUNC");
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, 0);
    // Until the rewrite is committed, a crash must find the old version whole.
    assert!(
        f.segments(&old) > 0,
        "the old segments stay until the close"
    );
    let data = pattern(STRIPE as usize + 77, 6);
    f.vfs.write(fh, 0, &data).expect("write");
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(ino), data);
    assert_eq!(
        f.segments(&old),
        0,
        "the old segments are deleted at the close"
    );
}

#[test]
fn a_truncate_to_zero_of_an_open_file_starts_afresh() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(2 * STRIPE as usize, 7));
    let old = f.manifest(ino).place.file_id;
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    truncate(&f, ino, 0);
    assert_eq!(f.read_fh(fh), b"");
    let data = pattern(STRIPE as usize * 2 + 1, 8);
    f.vfs.write(fh, 0, &data).expect("write");
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(ino), data);
    assert_ne!(f.manifest(ino).place.file_id, old, "a new placement");
    assert_eq!(f.segments(&old), 0, "the old segments are deleted");
}

#[test]
fn holes_read_as_zeros_and_seek_data_and_seek_hole_find_them() {
    let f = fixture(3);
    let (inode, fh) = f
        .vfs
        .create(ROOT, b"sparse", 0o644, 1000, 1000)
        .expect("create");
    let head = pattern(STRIPE as usize, 1);
    let tail = pattern(STRIPE as usize / 2, 2);
    f.vfs.write(fh, 0, &head).expect("write");
    f.vfs.write(fh, 4 * STRIPE, &tail).expect("write");
    f.vfs.flush(fh).expect("flush");
    let size = 4 * STRIPE + tail.len() as u64;
    assert_eq!(f.vfs.seek(fh, 0, libc::SEEK_DATA).expect("data"), 0);
    assert_eq!(
        f.vfs.seek(fh, 0, libc::SEEK_HOLE).expect("hole"),
        STRIPE as i64
    );
    assert_eq!(
        f.vfs
            .seek(fh, STRIPE as i64, libc::SEEK_DATA)
            .expect("data"),
        4 * STRIPE as i64
    );
    assert_eq!(
        f.vfs
            .seek(fh, 4 * STRIPE as i64, libc::SEEK_HOLE)
            .expect("hole"),
        size as i64,
        "the end counts as a hole"
    );
    assert!(matches!(
        f.vfs.seek(fh, size as i64, libc::SEEK_DATA),
        Err(FsError::NoSuchOffset)
    ));
    f.vfs.release(fh).expect("close");
    let back = f.contents(inode.ino);
    assert_eq!(back.len() as u64, size);
    assert_eq!(&back[..head.len()], &head[..]);
    assert!(back[head.len()..4 * STRIPE as usize]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(&back[4 * STRIPE as usize..], &tail[..]);
    let attr = f.vfs.getattr(inode.ino).expect("getattr");
    assert_eq!(
        f.vfs.allocated(&attr),
        (head.len() + tail.len()) as u64,
        "the holes take no space"
    );
}

#[test]
fn fallocate_reserves_room_and_grows_the_file_unless_told_to_keep_its_size() {
    let f = fixture(3);
    let (inode, fh) = f.vfs.create(ROOT, b"f", 0o644, 1000, 1000).expect("create");
    let before: u64 = (1..=3).map(|id| f.mem.used(id)).sum();
    f.vfs.fallocate(fh, 0, 2 * STRIPE, 0).expect("fallocate");
    let after: u64 = (1..=3).map(|id| f.mem.used(id)).sum();
    assert!(
        after > before,
        "the nodes reserved room ({before} -> {after})"
    );
    let attr = f.vfs.getattr(inode.ino).expect("getattr");
    assert_eq!(attr.size, 2 * STRIPE, "mode 0 grows the file");
    assert_eq!(f.vfs.allocated(&attr), 2 * STRIPE);
    f.vfs
        .fallocate(fh, 2 * STRIPE, STRIPE, falloc::KEEP_SIZE)
        .expect("fallocate KEEP_SIZE");
    let attr = f.vfs.getattr(inode.ino).expect("getattr");
    assert_eq!(attr.size, 2 * STRIPE, "KEEP_SIZE keeps the size");
    assert_eq!(f.vfs.allocated(&attr), 3 * STRIPE, "past the end, reserved");
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(inode.ino), vec![0; 2 * STRIPE as usize]);
}

#[test]
fn fallocate_punch_hole_and_zero_range_make_a_range_read_as_zeros() {
    let f = fixture(3);
    let mut want = pattern(4 * STRIPE as usize, 3);
    let ino = f.file(ROOT, b"f", &want);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    // A whole stripe and part of the next: the first becomes a hole, the part zeros.
    let (at, len) = (STRIPE, STRIPE + 100);
    f.vfs
        .fallocate(fh, at, len, falloc::PUNCH_HOLE | falloc::KEEP_SIZE)
        .expect("punch");
    want[at as usize..(at + len) as usize].fill(0);
    assert_eq!(
        f.vfs.seek(fh, 0, libc::SEEK_HOLE).expect("hole"),
        STRIPE as i64,
        "the punched stripe is a hole"
    );
    let (at, len) = (3 * STRIPE + 10, 50);
    f.vfs
        .fallocate(fh, at, len, falloc::ZERO_RANGE)
        .expect("zero range");
    want[at as usize..(at + len) as usize].fill(0);
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(ino), want);
    assert_eq!(f.vfs.getattr(ino).expect("getattr").size, want.len() as u64);
}

#[test]
fn fallocate_refuses_other_modes_and_changes_nothing() {
    let f = fixture(3);
    let data = pattern(STRIPE as usize + 10, 4);
    let ino = f.file(ROOT, b"f", &data);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    let collapse = 0x08; // FALLOC_FL_COLLAPSE_RANGE
    assert!(matches!(
        f.vfs.fallocate(fh, 0, STRIPE, collapse),
        Err(FsError::NotSupported)
    ));
    assert!(
        matches!(
            f.vfs.fallocate(fh, 0, STRIPE, falloc::PUNCH_HOLE),
            Err(FsError::NotSupported)
        ),
        "PUNCH_HOLE needs KEEP_SIZE"
    );
    assert!(matches!(
        f.vfs.fallocate(fh, 0, 0, 0),
        Err(FsError::Invalid)
    ));
    f.vfs.release(fh).expect("close");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_rewrite_through_o_trunc_leaves_the_old_version_committed_until_its_close() {
    let f = fixture(3);
    let old = pattern(2 * STRIPE as usize, 9);
    let ino = f.file(ROOT, b"f", &old);
    let fh = f
        .vfs
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open O_TRUNC");
    f.vfs.write(fh, 0, b"new").expect("write");
    // What a crash now would find: the store's record, not the open file.
    let stored = f.vfs.meta_store().get(ino).expect("record");
    assert_eq!(
        stored.size,
        old.len() as u64,
        "the committed file is still the old one"
    );
    f.vfs.release(fh).expect("close");
    assert_eq!(f.vfs.meta_store().get(ino).expect("record").size, 3);
    assert_eq!(f.contents(ino), b"new");
}

#[test]
fn an_ftruncate_that_shrinks_is_committed_with_its_handles_close_not_before() {
    let f = fixture(3);
    let old = pattern(2 * STRIPE as usize, 10);
    let ino = f.file(ROOT, b"f", &old);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    // Two shrinks: neither is committed before the close (a growth would be).
    for (size, wrote) in [(STRIPE + 100, b"cut" as &[u8]), (STRIPE + 7, b"again")] {
        let set = SetAttr {
            size: Some(size),
            through_handle: true,
            ..Default::default()
        };
        f.vfs.setattr(ino, set).expect("ftruncate");
        f.vfs.write(fh, 0, wrote).expect("write");
        assert_eq!(f.vfs.getattr(ino).expect("getattr").size, size);
        // What a crash now would find: the store's record, not the open file.
        let stored = f.vfs.meta_store().get(ino).expect("record");
        assert_eq!(stored.size, old.len() as u64, "committed before the close");
    }
    f.vfs.release(fh).expect("close");
    assert_eq!(
        f.vfs.meta_store().get(ino).expect("record").size,
        STRIPE + 7
    );
    let mut want = old[..(STRIPE + 7) as usize].to_vec();
    want[..5].copy_from_slice(b"again");
    assert_eq!(f.contents(ino), want);
}

#[test]
fn a_lone_first_read_fetches_one_piece_not_the_stripes_after_it() {
    let f = fixture(3);
    let want = pattern(6 * STRIPE as usize, 4);
    let ino = f.file(ROOT, b"f", &want);
    let before = f.mem.wire_bytes();
    let fh = f.vfs.open(ino, libc::O_RDONLY).expect("open");
    let first = f.vfs.read(fh, 0, 100).expect("read");
    assert_eq!(&first[..], &want[..100]);
    // Time for any fetch the read began to run before the close.
    std::thread::sleep(std::time::Duration::from_millis(100));
    f.vfs.release(fh).expect("close");
    let moved = f.mem.wire_bytes() - before;
    assert!(
        moved < STRIPE,
        "a first read of 100 bytes moved {moved} bytes (a stripe is {STRIPE})"
    );
    // A reader that goes on is sequential from its second read: every byte comes back.
    assert_eq!(f.contents(ino), want);
}
