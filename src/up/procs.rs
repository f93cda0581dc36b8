//! The processes of a pool `up` started: whether a pid is still one of them, stopping
//! them, unmounting its mount and naming what holds a busy one.

use std::path::Path;
use std::time::{Duration, Instant};

/// Is `pid` still a process of the pool kept in `dir`? Every process `up` starts is
/// given a path under `dir` (its storage or state), whatever the binary is called,
/// so a recycled pid is never mistaken for one of ours.
pub(super) fn is_ours(pid: u32, dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir.as_os_str().as_bytes();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|arg| arg.starts_with(dir)))
        .unwrap_or(false)
}

/// Sends SIGTERM to those of `pids` that are still ours, waits up to `STOP_WAIT` for
/// them to exit, then kills the ones that ignored it. Returns the pids killed.
pub(super) fn stop(pids: &[u32], dir: &Path) -> Vec<u32> {
    let is_ours = |pid| is_ours(pid, dir);
    for &pid in pids {
        if is_ours(pid) {
            // SAFETY: sending a signal to a process we started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    wait_exit(pids, dir, STOP_WAIT);
    let stuck: Vec<u32> = pids.iter().copied().filter(|&p| is_ours(p)).collect();
    for &pid in &stuck {
        // SAFETY: as above; it ignored SIGTERM for STOP_WAIT.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    wait_exit(&stuck, dir, STOP_WAIT);
    stuck
}

/// How long a controller or node has to exit after SIGTERM before it is killed.
pub(super) const STOP_WAIT: Duration = Duration::from_secs(5);

/// Those of `pids` still ours (see `is_ours`), as text for a message.
pub(super) fn still_running(pids: &[u32], dir: &Path) -> Vec<String> {
    pids.iter()
        .filter(|&&p| is_ours(p, dir))
        .map(u32::to_string)
        .collect()
}

/// Waits until none of `pids` is ours any more, or `limit` has passed; true if none is.
pub(super) fn wait_exit(pids: &[u32], dir: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !pids.iter().any(|&p| is_ours(p, dir)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts a dead FUSE mount (see `is_dead_mount`) lazily: `fusermount3 -u -z`, or
/// `umount -l` where fusermount3 is missing.
pub(super) fn unmount_dead(mountpoint: &Path) -> Result<(), String> {
    for (tool, arg) in [
        ("fusermount3", "-uz"),
        ("fusermount", "-uz"),
        ("umount", "-l"),
    ] {
        match std::process::Command::new(tool)
            .arg(arg)
            .arg(mountpoint)
            .status()
        {
            Ok(s) if s.success() => return Ok(()),
            Ok(_) => {
                return Err(format!(
                    "{tool} {arg} could not unmount the dead mount at {}",
                    mountpoint.display()
                ))
            }
            Err(_) => continue, // tool not installed: try the next
        }
    }
    Err("no unmount tool found (install fuse3)".into())
}

/// Unmounts a FUSE mount the way a user would (`fusermount3 -u`, else `fusermount -u`,
/// else `umount`).
///
/// Errors: the tool's own message, and when the mount is busy, which processes hold
/// it (`holders`) and that the pool still runs, so the user knows what to close and
/// that running `down` again is safe.
pub(super) fn unmount(mountpoint: &Path) -> Result<(), String> {
    for tool in ["fusermount3", "fusermount", "umount"] {
        let arg: &[&str] = if tool == "umount" { &[] } else { &["-u"] };
        let out = match std::process::Command::new(tool)
            .args(arg)
            .arg(mountpoint)
            .output()
        {
            Ok(out) => out,
            Err(_) => continue, // tool not installed: try the next
        };
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let m = mountpoint.display();
        if !said.contains("busy") {
            return Err(format!("{tool} could not unmount {m}: {said}"));
        }
        let held = holders(mountpoint);
        let who = if held.is_empty() {
            "a process has a file open there or its working directory inside \
             (`fuser -vm DIR` or `lsof DIR` names it)"
                .to_string()
        } else {
            let named: Vec<String> = held
                .iter()
                .map(|(pid, name)| format!("{name} (pid {pid})"))
                .collect();
            format!("in use by {}", named.join(", "))
        };
        return Err(format!(
            "{m} is busy, {who}: nothing was stopped and the pool still runs; close \
             those files or leave the directory, then run this again"
        ));
    }
    Err("no unmount tool found (install fuse3)".into())
}

/// The processes (pid, command name) with a file open under `mountpoint`, their
/// working or root directory there, or a mapping of a file there: what makes an
/// unmount fail with EBUSY. Read from /proc; processes this user may not inspect are
/// left out.
pub fn holders(mountpoint: &Path) -> Vec<(u32, String)> {
    let inside = |p: &Path| p.starts_with(mountpoint);
    let me = std::process::id();
    let mut found: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .filter(|(pid, _)| *pid != me)
        .filter(|(_, proc_dir)| {
            let links = ["cwd", "root"]
                .iter()
                .filter_map(|l| std::fs::read_link(proc_dir.join(l)).ok());
            let fds = std::fs::read_dir(proc_dir.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok());
            let maps = std::fs::read_to_string(proc_dir.join("maps")).unwrap_or_default();
            links.chain(fds).any(|p| inside(&p))
                || maps
                    .lines()
                    .filter_map(|l| l.find('/').map(|i| Path::new(&l[i..])))
                    .any(inside)
        })
        .map(|(pid, proc_dir)| {
            let name = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
            (pid, name.trim().to_string())
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn stop_kills_a_process_that_ignores_sigterm_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        // A process of "the pool" (an argument under its dir) that ignores SIGTERM.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ok; while :; do sleep 1; done"])
            .arg(dir.join("stubborn"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ok = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ok)
            .unwrap();
        let pid = child.id();
        assert!(is_ours(pid, &dir));
        assert_eq!(stop(&[pid], &dir), vec![pid], "the stubborn pid is named");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn holders_names_a_process_whose_working_directory_is_inside() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let pid = child.id();
        let found = holders(&dir);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            found.contains(&(pid, "sleep".to_string())),
            "{found:?} should name sleep (pid {pid})"
        );
        assert!(holders(&dir.join("elsewhere")).is_empty());
    }
}
