//! Extended attributes: set, get, list and remove, the create/replace flags, the
//! `trusted.*` names shown to privileged callers only, and the per-inode limit.

use super::{errno, fixture};
use crate::fs::meta::{ROOT, XATTRS_MAX};
use crate::fs::vfs::xattr_flags;
use crate::fs::FsError;

#[test]
fn extended_attributes_are_kept_listed_and_removed() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", b"data");
    f.vfs.setxattr(ino, b"user.a", b"1", 0).expect("set user.a");
    f.vfs
        .setxattr(ino, b"trusted.t", b"secret", 0)
        .expect("set trusted.t");
    assert_eq!(f.vfs.getxattr(ino, b"user.a").expect("get"), b"1");
    assert_eq!(
        f.vfs.listxattr(ino, true).expect("list"),
        b"trusted.t\0user.a\0"
    );
    assert_eq!(
        f.vfs.listxattr(ino, false).expect("list"),
        b"user.a\0",
        "trusted.* only for a privileged caller"
    );
    f.vfs.setxattr(ino, b"user.a", b"2", 0).expect("overwrite");
    assert_eq!(f.vfs.getxattr(ino, b"user.a").expect("get"), b"2");
    f.vfs.removexattr(ino, b"user.a").expect("remove");
    assert!(matches!(
        f.vfs.getxattr(ino, b"user.a"),
        Err(FsError::NoData)
    ));
    assert!(matches!(
        f.vfs.removexattr(ino, b"user.a"),
        Err(FsError::NoData)
    ));
    assert_eq!(f.contents(ino), b"data", "the file's bytes are untouched");
}

#[test]
fn xattr_create_and_replace_flags_are_honoured() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", b"");
    assert!(matches!(
        f.vfs.setxattr(ino, b"user.a", b"1", xattr_flags::REPLACE),
        Err(FsError::NoData)
    ));
    f.vfs
        .setxattr(ino, b"user.a", b"1", xattr_flags::CREATE)
        .expect("create");
    assert!(matches!(
        f.vfs.setxattr(ino, b"user.a", b"2", xattr_flags::CREATE),
        Err(FsError::Exists)
    ));
    f.vfs
        .setxattr(ino, b"user.a", b"3", xattr_flags::REPLACE)
        .expect("replace");
    assert_eq!(f.vfs.getxattr(ino, b"user.a").expect("get"), b"3");
}

#[test]
fn xattrs_past_the_per_inode_limit_are_enospc() {
    let f = fixture(3);
    let ino = f.file(ROOT, b"f", b"");
    let value = vec![7u8; 60_000];
    let mut stored = 0;
    let mut refused = None;
    for i in 0..(XATTRS_MAX / value.len() + 2) {
        let name = format!("user.big{i}");
        match f.vfs.setxattr(ino, name.as_bytes(), &value, 0) {
            Ok(()) => stored += name.len() + value.len(),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the limit refuses one");
    assert_eq!(errno(&e), libc::ENOSPC);
    assert!(stored <= XATTRS_MAX);
    // Replacing a value with a smaller one still fits.
    f.vfs
        .setxattr(ino, b"user.big0", b"small", 0)
        .expect("smaller value");
}
