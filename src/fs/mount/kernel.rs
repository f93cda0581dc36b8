//! The kernel mount as root: mount(2) of /dev/fuse with type `fuse.poolfs`, as libfuse
//! and fusermount3 do it. fuser's own mount(2) passes type `fuse` and drops the
//! subtype, so `mount`, `findmnt -t fuse.poolfs` and `umount -t` would not tell a
//! pool mounted by root from any other FUSE filesystem.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// The filesystem type of a poolfs mount (`fuse.` and the subtype).
pub const FSTYPE: &str = "fuse.poolfs";

/// Mounts a new /dev/fuse connection at `mountpoint`, with `source` as the mount's
/// source (the pool's controller address), `default_permissions`, `noatime`, `nodev`
/// and `nosuid`, and `allow_other` when asked. Returns the connection's device for
/// `fuser::Session::from_fd`, or `None` when this process may not call mount(2) (not
/// root: then fusermount3 mounts, through fuser).
///
/// Errors: opening /dev/fuse, reading the mount point, or mount(2) refusing for a
/// reason other than permission.
pub fn mount(mountpoint: &Path, source: &str, allow_other: bool) -> io::Result<Option<OwnedFd>> {
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let device: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    // The options fuse(4) reads: which connection serves the mount, the root's file
    // type, and who mounted it (with default_permissions the kernel checks access by
    // mode bits; allow_other lets users other than the mounter in).
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        device.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let data = CString::new(data).map_err(io::Error::other)?;
    let flags = MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOATIME;
    match rustix::mount::mount(source, mountpoint, FSTYPE, flags, data.as_c_str()) {
        Ok(()) => Ok(Some(device)),
        Err(rustix::io::Errno::PERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Ends a mount from within its process (on a signal, and after the session ends).
pub enum Unmounter {
    /// Mounted by `mount` above: umount(2) of this mount point.
    Kernel(PathBuf),
    /// Mounted by fuser (through fusermount3).
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    /// Unmounts: the kernel then ends the session. `Ok` also when it is not mounted
    /// any more (a user's `umount` came first: EINVAL). fuser's own unmount when its
    /// session drops cannot tell that case from a live mount: it would try again and
    /// warn "Failed to umount filesystem: Invalid argument" after every umount, so
    /// this is called once the session ends, which leaves fuser nothing to do.
    ///
    /// Errors: umount(2)'s, EBUSY when a process holds the mount.
    pub fn unmount(&mut self) -> io::Result<()> {
        let done = match self {
            Unmounter::Kernel(mountpoint) => {
                rustix::mount::unmount(mountpoint.as_path(), UnmountFlags::empty())
                    .map_err(io::Error::from)
            }
            Unmounter::Fuser(unmounter) => unmounter.unmount(),
        };
        match done {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }
}
