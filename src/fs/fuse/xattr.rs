//! The extended attributes the pool answers itself (health, scrub, repair), which
//! names are whose, and the size-or-bytes answer of every xattr request.

use fuser::ReplyXattr;

use super::errno::errno;
use crate::fs::FsError;

/// Extended attribute that tells a file's health (`getfattr -n user.poolfs.health`).
pub const HEALTH_XATTR: &str = "user.poolfs.health";
/// Extended attribute of the mount's root: setting it runs a scrub pass now, reading it
/// tells the outcome of the last one (`poolfs scrub MOUNTPOINT` does both).
pub const SCRUB_XATTR: &str = "user.poolfs.scrub";
/// Extended attribute of the mount's root telling repair progress: segments rebuilt so
/// far, pending, and the last pass (`poolfs status` shows it).
pub const REPAIR_XATTR: &str = "user.poolfs.repair";
/// Extended attribute of the mount's root telling the pool's risk for this mount's
/// files as JSON (`fs::status::PoolRisk`): machines that may be off, degraded files and
/// why, bytes held and live per node (`poolfs status` shows it).
pub const RISK_XATTR: &str = "user.poolfs.risk";
/// Extended attribute of the mount's root telling how current the namespace's copy in
/// the pool is (`fs::journal::Journal::describe`; `poolfs status` shows it).
pub const NAMESPACE_XATTR: &str = "user.poolfs.namespace";
/// The names the pool answers itself (the five above). They are read by name only:
/// never listed, so programs that copy attributes (`cp -a`, `rsync -X`) neither copy
/// them out nor try to remove them, and users cannot set or remove them (EPERM).
/// Every other name, `user.poolfs.*` included, is the user's.
const POOL_XATTRS: [&str; 5] = [
    HEALTH_XATTR,
    SCRUB_XATTR,
    REPAIR_XATTR,
    RISK_XATTR,
    NAMESPACE_XATTR,
];

/// Answers an xattr request: the size when asked for it, else the bytes if they fit.
pub(super) fn answer(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if bytes.len() > size as usize {
        reply.error(errno(&FsError::BufferTooSmall));
    } else {
        reply.data(bytes);
    }
}

/// True for the names of the attributes the pool answers itself.
pub(super) fn is_pool_xattr(name: &[u8]) -> bool {
    POOL_XATTRS.iter().any(|n| n.as_bytes() == name)
}

/// True for `system.*` attributes (POSIX ACLs): they have a meaning (an ACL changes
/// the mode bits) that storing the bytes would not honour, so they are refused
/// (EOPNOTSUPP), and `cp -a` and friends fall back to chmod, as on a filesystem
/// without ACLs.
pub(super) fn is_system_xattr(name: &[u8]) -> bool {
    name.starts_with(b"system.")
}
