//! Inode lifetimes: an unlinked file lives while it is open or the kernel holds a
//! reference to it (FUSE's lookup count), and its segments are freed when the last
//! reference goes.

use super::{fixture, pattern, STRIPE};
use crate::fs::meta::ROOT;
use crate::fs::FsError;

#[test]
fn an_unlinked_open_file_stays_readable_until_its_release_then_its_segments_go() {
    let f = fixture(3);
    let data = pattern(3 * STRIPE as usize, 1);
    let ino = f.file(ROOT, b"f", &data);
    let file = f.manifest(ino).place.file_id;
    let fh = f.vfs.open(ino, libc::O_RDONLY).expect("open");
    f.vfs.forget(ino, 1); // the kernel's reference from the create
    f.vfs.unlink(ROOT, b"f").expect("unlink");
    assert!(matches!(f.vfs.lookup(ROOT, b"f"), Err(FsError::NotFound)));
    assert_eq!(
        f.read_fh(fh),
        data,
        "still readable through the open handle"
    );
    assert!(f.segments(&file) > 0, "its segments stay while it is open");
    f.vfs.release(fh).expect("close");
    assert_eq!(f.segments(&file), 0, "the last release frees its segments");
    assert!(matches!(f.vfs.getattr(ino), Err(FsError::Stale)));
}

#[test]
fn an_unlinked_file_no_handle_holds_goes_with_its_unlink_and_stats_until_forgotten() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(2 * STRIPE as usize, 2));
    let file = f.manifest(ino).place.file_id;
    // References: the create's, and a lookup's.
    assert_eq!(f.vfs.lookup(ROOT, b"f").expect("lookup").ino, ino);
    f.vfs.unlink(ROOT, b"f").expect("unlink");
    let meta = f.vfs.meta_store();
    assert!(
        matches!(meta.get(ino), Err(FsError::NotFound)),
        "the record went in the unlink's transaction"
    );
    assert!(
        meta.orphans().expect("orphans").is_empty(),
        "no orphan left"
    );
    assert_eq!(f.segments(&file), 0, "its segments are freed");
    // The kernel still refers to it (an O_PATH descriptor's fstat): no links.
    let attr = f.vfs.getattr(ino).expect("the kernel still refers to it");
    assert_eq!((attr.nlink, attr.size), (0, 2 * STRIPE));
    f.vfs.forget(ino, 1);
    assert!(f.vfs.getattr(ino).is_ok(), "one reference left");
    f.vfs.forget(ino, 1);
    assert!(matches!(f.vfs.getattr(ino), Err(FsError::Stale)));
}

#[test]
fn the_forget_of_a_file_removed_with_its_unlink_commits_nothing() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(4096, 5));
    f.vfs.unlink(ROOT, b"f").expect("unlink");
    let meta = f.vfs.meta_store();
    meta.persist().expect("persist");
    f.vfs.forget(ino, 1);
    assert!(!meta.unsynced(), "FORGET made a commit");
}

#[test]
fn an_open_of_a_file_removed_with_its_last_name_is_stale() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(4096, 6));
    f.vfs.unlink(ROOT, b"f").expect("unlink");
    // Only a reopen of an O_PATH descriptor through /proc could still send it.
    assert!(matches!(
        f.vfs.open(ino, libc::O_RDONLY),
        Err(FsError::Stale)
    ));
    f.vfs.forget(ino, 1);
}

#[test]
fn an_unlinked_small_file_still_open_keeps_its_bytes_until_closed() {
    let f = fixture(3);
    let data = pattern(4096, 7); // kept in its record, not on the pool
    let ino = f.file(ROOT, b"f", &data);
    let fh = f.vfs.open(ino, libc::O_RDWR).expect("open");
    f.vfs.unlink(ROOT, b"f").expect("unlink");
    let meta = f.vfs.meta_store();
    assert_eq!(
        meta.get(ino).expect("kept while open").nlink,
        0,
        "an orphan"
    );
    assert_eq!(f.read_fh(fh), data, "still readable through the handle");
    f.vfs.write(fh, 4096, b"more").expect("write to it");
    f.vfs.flush(fh).expect("its close still stores");
    f.vfs.release(fh).expect("release");
    assert!(meta.get(ino).is_ok(), "the kernel's reference keeps it");
    f.vfs.forget(ino, 1);
    assert!(matches!(meta.get(ino), Err(FsError::NotFound)));
    assert!(meta.orphans().expect("orphans").is_empty());
}

#[test]
fn an_unlink_racing_a_first_open_never_leaves_an_open_file_without_its_record() {
    let f = fixture(3);
    let data = pattern(3000, 8);
    for round in 0..100 {
        let name = format!("f{round}");
        let ino = f.file(ROOT, name.as_bytes(), &data);
        let (opened, unlinked) = std::thread::scope(|s| {
            let open = s.spawn(|| f.vfs.open(ino, libc::O_RDONLY));
            let unlink = s.spawn(|| f.vfs.unlink(ROOT, name.as_bytes()));
            (
                open.join().expect("open thread"),
                unlink.join().expect("unlink thread"),
            )
        });
        unlinked.expect("unlink");
        match opened {
            Ok(fh) => {
                assert_eq!(f.read_fh(fh), data, "round {round}");
                f.vfs.release(fh).expect("release");
            }
            Err(e) => assert!(matches!(e, FsError::Stale), "round {round}: {e}"),
        }
        f.vfs.forget(ino, 1);
        assert!(matches!(
            f.vfs.meta_store().get(ino),
            Err(FsError::NotFound)
        ));
    }
    assert!(f.vfs.meta_store().orphans().expect("orphans").is_empty());
}

#[test]
fn a_file_with_a_second_name_survives_the_unlink_of_the_first() {
    let f = fixture(3);
    let data = pattern(STRIPE as usize + 9, 3);
    let ino = f.file(ROOT, b"a", &data);
    f.vfs.link(ino, ROOT, b"b").expect("link");
    f.vfs.unlink(ROOT, b"a").expect("unlink");
    f.vfs.forget(ino, 2);
    assert_eq!(f.vfs.lookup(ROOT, b"b").expect("lookup").ino, ino);
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_removed_directory_lives_until_forgotten() {
    let f = fixture(3);
    let dir = f.vfs.mkdir(ROOT, b"d", 0o755, 1000, 1000).expect("mkdir");
    f.vfs.rmdir(ROOT, b"d").expect("rmdir");
    assert!(
        f.vfs.getattr(dir.ino).is_ok(),
        "the kernel still refers to it"
    );
    f.vfs.forget(dir.ino, 1);
    assert!(matches!(f.vfs.getattr(dir.ino), Err(FsError::Stale)));
}

#[test]
fn an_unlinked_file_nothing_refers_to_is_removed_at_once() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", &pattern(2 * STRIPE as usize, 4));
    let file = f.manifest(ino).place.file_id;
    f.vfs.forget(ino, 1); // the kernel lets go of the create's reference
    assert!(f.segments(&file) > 0, "a name keeps it");
    f.vfs.unlink(ROOT, b"f").expect("unlink");
    assert!(matches!(f.vfs.getattr(ino), Err(FsError::Stale)));
    assert_eq!(f.segments(&file), 0, "its segments are freed");
}

#[test]
fn the_preferred_io_size_is_large_while_written_and_small_for_readers() {
    use crate::fs::vfs::{READ_IO_SIZE, WRITE_IO_SIZE};
    let f = fixture(3);
    let size = |ino: u64| f.vfs.io_size(&f.vfs.getattr(ino).expect("getattr"));
    // cp's fstat right after its open(O_CREAT): empty, being written.
    let (inode, fh) = f.vfs.create(ROOT, b"f", 0o644, 1000, 1000).expect("create");
    assert_eq!(f.vfs.io_size(&inode), WRITE_IO_SIZE, "a new file");
    f.vfs
        .write(fh, 0, &pattern(STRIPE as usize, 1))
        .expect("write");
    assert_eq!(
        size(inode.ino),
        WRITE_IO_SIZE,
        "open for writing, with data"
    );
    f.vfs.release(fh).expect("close");
    assert_eq!(size(inode.ino), READ_IO_SIZE, "data and no writer");
    let reader = f.vfs.open(inode.ino, libc::O_RDONLY).expect("open");
    assert_eq!(size(inode.ino), READ_IO_SIZE, "a reader is no writer");
    let writer = f.vfs.open(inode.ino, libc::O_WRONLY).expect("open");
    assert_eq!(size(inode.ino), WRITE_IO_SIZE, "an appender or rewriter");
    f.vfs.release(writer).expect("close");
    assert_eq!(size(inode.ino), READ_IO_SIZE, "its writer closed");
    // cp onto an existing file: open(O_TRUNC), then fstat.
    let cp = f
        .vfs
        .open(inode.ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open");
    f.vfs.release(reader).expect("close");
    assert_eq!(size(inode.ino), WRITE_IO_SIZE, "emptied for a rewrite");
    f.vfs.release(cp).expect("close");
    assert_eq!(size(inode.ino), WRITE_IO_SIZE, "an empty file");
}
