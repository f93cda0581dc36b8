//! A directory tree as a user sees it, to compare one mount with another: every
//! entry's kind, mode, owner, size, link count, mtime to the nanosecond, symlink target
//! and user xattrs (`snapshot`), and the system calls to set what `chmod`, `chown`,
//! `touch -d` and `setfattr` set.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry of a tree, as `lstat`, `readlink` and `getfattr` show it (the inode
/// number apart: `Tree::ino` keeps it, to check hard links share one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' directory, 'l' symlink, '?' anything else.
    pub kind: char,
    /// The permission bits with setuid, setgid and sticky (`st_mode & 07777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes, for files and symlinks (a directory's size is the filesystem's own).
    pub size: Option<u64>,
    /// Links, for files (a directory's count is the filesystem's own).
    pub nlink: Option<u64>,
    /// (seconds, nanoseconds) since the epoch.
    pub mtime: (i64, i64),
    pub target: Option<PathBuf>,
    /// `user.*` attributes but the pool's own (`user.poolfs.*`, computed by the mount).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry under a root, by path relative to it (the root itself left out).
#[derive(Debug, Default)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Inode numbers, by relative path.
    pub ino: BTreeMap<PathBuf, u64>,
}

/// Walks `root` (not following symlinks) and records every entry below it.
pub fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::default();
    walk(root, root, &mut tree);
    tree
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for e in entries {
        let path = e
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .path();
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            'l'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else {
            '?'
        };
        let entry = Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: (kind != 'd').then_some(meta.len()),
            nlink: (kind == 'f').then_some(meta.nlink()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            target: (kind == 'l').then(|| {
                std::fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
            }),
            xattrs: user_xattrs(&path),
        };
        let rel = path
            .strip_prefix(root)
            .expect("below the root")
            .to_path_buf();
        tree.ino.insert(rel.clone(), meta.ino());
        tree.entries.insert(rel, entry);
        if kind == 'd' {
            walk(root, &path, tree);
        }
    }
}

/// The `user.*` attributes of `path` (not following a symlink), the pool's own left out.
pub fn user_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let names = xattr::list(path).unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    names
        .filter_map(|n| n.to_str().map(str::to_string))
        .filter(|n| n.starts_with("user.") && !n.starts_with("user.poolfs."))
        .map(|n| {
            let v = xattr::get(path, &n)
                .unwrap_or_else(|e| panic!("getxattr {} {n}: {e}", path.display()))
                .unwrap_or_default();
            (n, v)
        })
        .collect()
}

/// Sets a user attribute (`setfattr -n NAME -v VALUE`).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {} {name}: {e}", path.display()));
}

/// Sets a file's access and modification times to the nanosecond (`touch -d`, which
/// calls utimensat(2)), not following a final symlink.
pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: a NUL-terminated path and an array of two timespecs, as utimensat wants.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// `chmod MODE PATH` (the setgid and sticky bits included).
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// `chown UID:GID PATH`.
pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", path.display()));
}

/// Panics naming every difference between two trees (entries missing, extra, or
/// differing in any field), if there is one.
pub fn assert_same_tree(want: &Tree, got: &Tree, what: &str) {
    let mut diffs = Vec::new();
    for (path, w) in &want.entries {
        match got.entries.get(path) {
            None => diffs.push(format!("{}: missing", path.display())),
            Some(g) if g != w => diffs.push(format!(
                "{}:\n    want {w:?}\n    got  {g:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for path in got
        .entries
        .keys()
        .filter(|p| !want.entries.contains_key(*p))
    {
        diffs.push(format!("{}: not in the original", path.display()));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} entries differ:\n{}",
        diffs.len(),
        want.entries.len(),
        diffs.join("\n")
    );
}
