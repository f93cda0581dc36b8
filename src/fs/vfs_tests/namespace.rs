//! The namespace: renames (over an existing file, across directories, of a directory,
//! with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`), directories, and the group a setgid
//! directory passes on.

use super::{fixture, pattern, STRIPE};
use crate::fs::caller::Caller;
use crate::fs::meta::{Kind, ROOT};
use crate::fs::FsError;

#[test]
fn a_rename_over_an_existing_file_replaces_it_and_frees_its_segments() {
    let f = fixture(3);
    let new = pattern(2 * STRIPE as usize, 1);
    let old = pattern(3 * STRIPE as usize, 2);
    let a = f.file(ROOT, b"a.tmp", &new);
    let b = f.file(ROOT, b"a", &old);
    let replaced = f.manifest(b).place.file_id;
    f.vfs.rename(ROOT, b"a.tmp", ROOT, b"a", 0).expect("rename");
    assert_eq!(f.vfs.lookup(ROOT, b"a").expect("lookup").ino, a);
    assert!(matches!(
        f.vfs.lookup(ROOT, b"a.tmp"),
        Err(FsError::NotFound)
    ));
    assert_eq!(f.contents(a), new);
    // The kernel looked the old file up before the rename: it still resolves.
    assert_eq!(
        f.contents(b),
        old,
        "the replaced inode lives on for the kernel"
    );
    f.vfs.forget(b, 1);
    assert_eq!(f.segments(&replaced), 0, "then its segments go");
}

#[test]
fn a_rename_across_directories_moves_the_file() {
    let f = fixture(3);
    let d1 = f.vfs.mkdir(ROOT, b"d1", 0o755, 1000, 1000).expect("mkdir");
    let d2 = f.vfs.mkdir(ROOT, b"d2", 0o755, 1000, 1000).expect("mkdir");
    let data = pattern(STRIPE as usize + 3, 3);
    let ino = f.file(d1.ino, b"x", &data);
    f.vfs.rename(d1.ino, b"x", d2.ino, b"y", 0).expect("rename");
    assert!(matches!(f.vfs.lookup(d1.ino, b"x"), Err(FsError::NotFound)));
    assert_eq!(f.vfs.lookup(d2.ino, b"y").expect("lookup").ino, ino);
    assert_eq!(f.contents(ino), data);
    let names = |d: u64| -> Vec<Vec<u8>> {
        let entries = f.vfs.readdir(d).expect("readdir");
        entries.into_iter().skip(2).map(|(_, _, n)| n).collect()
    };
    assert_eq!(names(d1.ino), Vec::<Vec<u8>>::new());
    assert_eq!(names(d2.ino), vec![b"y".to_vec()]);
}

#[test]
fn a_renamed_directory_keeps_its_contents_and_gets_its_new_parent() {
    let f = fixture(3);
    let d1 = f.vfs.mkdir(ROOT, b"d1", 0o755, 1000, 1000).expect("mkdir");
    let d2 = f.vfs.mkdir(ROOT, b"d2", 0o755, 1000, 1000).expect("mkdir");
    let sub = f
        .vfs
        .mkdir(d1.ino, b"sub", 0o755, 1000, 1000)
        .expect("mkdir");
    let data = pattern(500, 4);
    let ino = f.file(sub.ino, b"inner", &data);
    f.vfs
        .rename(d1.ino, b"sub", d2.ino, b"moved", 0)
        .expect("rename");
    let moved = f.vfs.lookup(d2.ino, b"moved").expect("lookup");
    assert_eq!(moved.ino, sub.ino);
    assert_eq!(moved.kind, Kind::Dir);
    let entries = f.vfs.readdir(sub.ino).expect("readdir");
    assert_eq!(
        entries[1],
        (d2.ino, Kind::Dir, b"..".to_vec()),
        "`..` is the new parent"
    );
    assert_eq!(f.vfs.lookup(sub.ino, b"inner").expect("lookup").ino, ino);
    assert_eq!(f.contents(ino), data);
    // A directory cannot move into itself, nor replace a non-empty one.
    assert!(f.vfs.rename(d2.ino, b"moved", sub.ino, b"loop", 0).is_err());
    f.vfs
        .mkdir(ROOT, b"full", 0o755, 1000, 1000)
        .expect("mkdir");
    f.file(ROOT, b"plain", b"x");
    assert!(matches!(
        f.vfs.rename(ROOT, b"d2", ROOT, b"plain", 0),
        Err(FsError::NotDir)
    ));
    assert!(matches!(
        f.vfs.rename(ROOT, b"d1", ROOT, b"d2", 0),
        Err(FsError::NotEmpty)
    ));
}

#[test]
fn rename_noreplace_refuses_an_existing_target_and_exchange_swaps_two_names() {
    let f = fixture(3);
    let a = f.file(ROOT, b"a", b"first");
    let b = f.file(ROOT, b"b", b"second");
    assert!(matches!(
        f.vfs.rename(ROOT, b"a", ROOT, b"b", libc::RENAME_NOREPLACE),
        Err(FsError::Exists)
    ));
    assert_eq!(
        f.contents(f.vfs.lookup(ROOT, b"b").expect("b").ino),
        b"second"
    );
    f.vfs
        .rename(ROOT, b"a", ROOT, b"b", libc::RENAME_EXCHANGE)
        .expect("exchange");
    assert_eq!(f.vfs.lookup(ROOT, b"a").expect("a").ino, b);
    assert_eq!(f.vfs.lookup(ROOT, b"b").expect("b").ino, a);
    assert!(matches!(
        f.vfs.rename(ROOT, b"a", ROOT, b"c", libc::RENAME_WHITEOUT),
        Err(FsError::Invalid)
    ));
}

#[test]
fn a_setgid_directory_passes_its_group_to_files_and_its_bit_to_subdirectories() {
    let f = fixture(3);
    let shared = f
        .vfs
        .mkdir(ROOT, b"shared", 0o2775, 1000, 500)
        .expect("mkdir");
    let (file, fh) = f
        .vfs
        .create(shared.ino, b"f", 0o644, 1001, 1001)
        .expect("create");
    f.vfs.release(fh).expect("close");
    assert_eq!(file.gid, 500, "the directory's group");
    assert_eq!(
        file.perm & libc::S_ISGID as u16,
        0,
        "no setgid bit on a file"
    );
    let sub = f
        .vfs
        .mkdir(shared.ino, b"sub", 0o755, 1001, 1001)
        .expect("mkdir");
    assert_eq!(sub.gid, 500);
    assert_ne!(
        sub.perm & libc::S_ISGID as u16,
        0,
        "the bit passes to subdirectories"
    );
    let plain = f
        .vfs
        .mkdir(ROOT, b"plain", 0o755, 1001, 1001)
        .expect("mkdir");
    let (other, fh) = f
        .vfs
        .create(plain.ino, b"f", 0o644, 1001, 1001)
        .expect("create");
    f.vfs.release(fh).expect("close");
    assert_eq!(other.gid, 1001, "elsewhere, the creator's group");
}

#[test]
fn a_write_by_a_caller_outside_the_group_clears_setgid_without_group_execute() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", b"x");
    let set = crate::fs::vfs::SetAttr {
        mode: Some(0o2644),
        ..Default::default()
    };
    f.vfs.setattr(ino, set).expect("chmod");
    let member = || Caller {
        uid: 1002,
        gid: 1000,
        groups: vec![],
        fsetid: false,
    };
    f.vfs.drop_setgid_for(ino, member).expect("member");
    let perm = f.vfs.getattr(ino).expect("getattr").perm;
    assert_eq!(perm, 0o2644, "a member of the group keeps the bit");
    let outsider = || Caller {
        uid: 1002,
        gid: 1002,
        groups: vec![7],
        fsetid: false,
    };
    f.vfs.drop_setgid_for(ino, outsider).expect("outsider");
    let perm = f.vfs.getattr(ino).expect("getattr").perm;
    assert_eq!(perm, 0o644, "an outsider's write clears it");
}
