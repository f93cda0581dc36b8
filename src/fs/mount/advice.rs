//! What to tell the user of a mount that cannot start: a dead FUSE mount left by a
//! killed mount process, and a /dev/fuse this user cannot open.

use std::path::Path;

/// Is `path` a FUSE mount whose process is gone? The kernel keeps such a mount until it
/// is unmounted, and answers every access to it with ENOTCONN ("Transport endpoint is
/// not connected"), or ECONNABORTED just after the process died; everything else then
/// fails in confusing ways (it is "not a directory", mkdir says "File exists").
pub fn is_dead_mount(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)))
}

/// What to say of a dead mount at `path` (see `is_dead_mount`): what it is and the two
/// ways to clear it.
pub fn dead_mount_advice(path: &Path) -> String {
    format!(
        "a FUSE mount whose process was killed or crashed is still there (it answers \
         \"Transport endpoint is not connected\"); clear it with `fusermount3 -u {p}`, or \
         with `poolfs down {p}` for a pool started with `poolfs up` (which stops the rest \
         of that pool too), then mount again",
        p = path.display()
    )
}

/// Why `/dev/fuse` cannot be opened for reading and writing, and what to do, if it
/// cannot (`None` if it can). Asked after a failed mount, where the bare errno
/// ("Permission denied") would leave the user guessing which file is meant.
pub fn fuse_device_problem() -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const DEV: &str = "/dev/fuse";
    let err = match std::fs::OpenOptions::new().read(true).write(true).open(DEV) {
        Ok(_) => return None,
        Err(e) => e,
    };
    if err.kind() == std::io::ErrorKind::NotFound {
        return Some(format!(
            "{DEV} does not exist: load the fuse kernel module (`modprobe fuse`, as root), \
             or in a container pass the device in (e.g. `--device /dev/fuse`)"
        ));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let how = match std::fs::metadata(DEV) {
        Ok(m) => format!(
            "it is mode {:o}, owner uid {}, group {}",
            m.permissions().mode() & 0o7777,
            m.uid(),
            group_name(m.gid())
        ),
        Err(_) => "its mode cannot be read".to_string(),
    };
    Some(format!(
        "this user (uid {uid}) cannot open {DEV} ({err}; {how}); run poolfs as root \
         (e.g. with sudo), or give this user access to {DEV}: add it to the group that \
         owns {DEV} and make it readable and writable for that group, or make it 0666 as \
         most distributions do (a udev rule such as KERNEL==\"fuse\", MODE=\"0666\"); \
         if the fuse module is not loaded, load it (`modprobe fuse`)"
    ))
}

/// The name of group `gid` from the system's group database, else the number.
fn group_name(gid: u32) -> String {
    // SAFETY: libc::group is plain data (integers and pointers); all zeros is a valid
    // value, which getgrgid_r overwrites.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of group's
    // fields below, and found is either null or &mut group.
    let rc = unsafe { libc::getgrgid_r(gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || group.gr_name.is_null() {
        return gid.to_string();
    }
    // SAFETY: getgrgid_r filled gr_name with a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(group.gr_name) };
    format!("{} ({gid})", name.to_string_lossy())
}
