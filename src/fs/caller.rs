//! Who is behind a request, beyond the uid and gid FUSE passes: the supplementary groups
//! and whether the process may keep set-group-ID bits (`CAP_FSETID`), read from
//! `/proc/PID/status`. Needed for the one permission rule the kernel leaves to a FUSE
//! filesystem: a write or truncate by a process outside a file's group clears the file's
//! set-group-ID bit even without group-execute (Linux 6.x `setattr_should_drop_sgid`).

use std::path::Path;

/// `CAP_FSETID`'s bit in the capability sets (linux/capability.h).
const CAP_FSETID: u32 = 4;

/// The process that sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Holds `CAP_FSETID` (root normally does).
    pub fsetid: bool,
}

impl Caller {
    /// The caller `pid` with filesystem ids `uid:gid`, its groups and capabilities read
    /// from `/proc` (a process gone by then counts as in no other group and without
    /// the capability: the safe side, which clears the bit).
    pub fn of(pid: u32, uid: u32, gid: u32) -> Caller {
        let status =
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
                .unwrap_or_default();
        let (groups, fsetid) = parse_status(&status);
        Caller {
            uid,
            gid,
            groups,
            fsetid,
        }
    }

    /// Does the caller belong to group `gid` or may it act as if (`CAP_FSETID`)?
    pub fn in_group_or_capable(&self, gid: u32) -> bool {
        self.fsetid || self.gid == gid || self.groups.contains(&gid)
    }
}

/// The supplementary groups (`Groups:`) and whether `CapEff:` holds `CAP_FSETID`, from
/// the text of `/proc/PID/status`.
fn parse_status(status: &str) -> (Vec<u32>, bool) {
    let mut groups = Vec::new();
    let mut fsetid = false;
    for line in status.lines() {
        if let Some(list) = line.strip_prefix("Groups:") {
            groups = list
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        } else if let Some(caps) = line.strip_prefix("CapEff:") {
            fsetid = u64::from_str_radix(caps.trim(), 16).is_ok_and(|c| c & (1 << CAP_FSETID) != 0);
        }
    }
    (groups, fsetid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_the_fsetid_capability_are_read_from_status() {
        let status = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 1000 \n\
                      CapInh:\t0000000000000000\nCapEff:\t0000000000000010\n";
        assert_eq!(parse_status(status), (vec![4, 24, 1000], true));
        let plain = "Groups:\t\nCapEff:\t0000000000000000\n";
        assert_eq!(parse_status(plain), (vec![], false));
        let c = Caller {
            uid: 1000,
            gid: 1000,
            groups: vec![4, 24],
            fsetid: false,
        };
        assert!(c.in_group_or_capable(24) && c.in_group_or_capable(1000));
        assert!(!c.in_group_or_capable(4242));
    }

    #[test]
    fn this_process_is_read_from_proc() {
        // SAFETY: these calls cannot fail.
        let (pid, uid, gid) = unsafe { (libc::getpid(), libc::getuid(), libc::getgid()) };
        let me = Caller::of(pid as u32, uid, gid);
        assert_eq!((me.uid, me.gid), (uid, gid));
        assert!(me.in_group_or_capable(gid));
    }
}
