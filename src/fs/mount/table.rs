//! The kernel's mount table (/proc/self/mountinfo): whether a path is a mount point,
//! and which poolfs mounts there are, by their source (the controller's address).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Is `path` a mount point (listed in /proc/self/mountinfo)?
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts that look like poolfs's: a FUSE mount (`fuse`, as root mounts it, or
/// `fuse.poolfs`) whose source is a socket address, which a poolfs mount's is (its
/// controller, see `fsname`). Returns (mount point, controller), in table order.
pub fn poolfs_mounts() -> Vec<(PathBuf, SocketAddr)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let mountpoint = head.split(' ').nth(4)?;
            let mut tail = tail.split(' ');
            let (fstype, source) = (tail.next()?, tail.next()?);
            if fstype != "fuse" && fstype != "fuse.poolfs" {
                return None;
            }
            let controller = unescape_mountinfo(source).parse().ok()?;
            Some((PathBuf::from(unescape_mountinfo(mountpoint)), controller))
        })
        .collect()
}
