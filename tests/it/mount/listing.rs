//! Directory listings and the kernel's caches of names (issue 16: READDIRPLUS, long
//! TTLs, negative entries): every name listed once with its own attributes, a name
//! removed or renamed during a listing never found afterwards, a name looked up while
//! missing found once it is made.

use super::*;
use std::collections::BTreeMap;

/// 700 files (more than one piece of a listing with attributes) are each listed once,
/// with their own sizes, from a mount whose kernel knows none of them yet; names
/// removed or renamed halfway through a listing are gone for stat, the new name found.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_big_directory_lists_every_name_once_with_its_own_attributes() {
    if !can_mount() {
        return;
    }
    let mut pool = Pool::up("listing", 2);
    const N: usize = 700;
    fs::create_dir(pool.mnt.join("big")).unwrap();
    for i in 0..N {
        fs::write(pool.mnt.join(format!("big/f{i:04}")), vec![b'x'; i]).unwrap();
    }
    // A fresh kernel: every name and attribute comes from the listing or a lookup.
    pool.unmount();
    pool.remount();
    let d = pool.mnt.join("big");
    let mut seen = BTreeMap::new();
    for e in fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let len = e.metadata().unwrap().len();
        assert!(
            seen.insert(name.clone(), len).is_none(),
            "{name} listed twice"
        );
    }
    assert_eq!(seen.len(), N, "every file listed");
    for (i, (name, len)) in seen.iter().enumerate() {
        assert_eq!(name, &format!("f{i:04}"));
        assert_eq!(*len, i as u64, "{name}'s own size");
    }

    pool.unmount();
    pool.remount();
    let d = pool.mnt.join("big");
    let mut listing = fs::read_dir(&d).unwrap();
    let first = listing.next().expect("an entry").unwrap().file_name();
    // The rest of the directory has not been read yet: change it under the listing.
    for i in 600..N {
        fs::remove_file(d.join(format!("f{i:04}"))).unwrap();
    }
    fs::rename(d.join("f0500"), d.join("g0500")).unwrap();
    let rest: Vec<_> = listing.map(|e| e.unwrap().file_name()).collect();
    assert!(!rest.contains(&first), "{first:?} listed twice");
    for i in (600..N).chain([500]) {
        let name = format!("f{i:04}");
        assert_errno(
            fs::metadata(d.join(&name)),
            libc::ENOENT,
            &format!("stat of {name}, gone during a listing"),
        );
    }
    assert_eq!(fs::metadata(d.join("g0500")).unwrap().len(), 500);
    assert_eq!(names(&d).len(), 600, "a new listing: 600 names");
}

/// A name looked up while missing (the kernel may keep that answer) is found as soon as
/// this mount makes it: by create, mkdir, rename, link or symlink.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn a_name_looked_up_while_missing_is_found_once_made() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("negative", 2);
    let m = pool.mnt.clone();
    let missing = |name: &str| {
        for _ in 0..2 {
            assert_errno(fs::metadata(m.join(name)), libc::ENOENT, name);
        }
    };
    missing("file");
    fs::write(m.join("file"), b"made").unwrap();
    assert_eq!(fs::read(m.join("file")).unwrap(), b"made");
    missing("dir");
    fs::create_dir(m.join("dir")).unwrap();
    assert!(fs::metadata(m.join("dir")).unwrap().is_dir());
    missing("dir/moved");
    fs::rename(m.join("file"), m.join("dir/moved")).unwrap();
    assert_eq!(fs::read(m.join("dir/moved")).unwrap(), b"made");
    missing("file");
    missing("hard");
    fs::hard_link(m.join("dir/moved"), m.join("hard")).unwrap();
    assert_eq!(fs::metadata(m.join("hard")).unwrap().nlink(), 2);
    missing("sym");
    std::os::unix::fs::symlink("dir/moved", m.join("sym")).unwrap();
    assert_eq!(fs::read(m.join("sym")).unwrap(), b"made");
    fs::remove_file(m.join("hard")).unwrap();
    missing("hard");
    assert_eq!(fs::metadata(m.join("dir/moved")).unwrap().nlink(), 1);
}
