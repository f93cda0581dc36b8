//! Running poolfs processes in the background: a parent starts a detached copy of this
//! binary and waits until it says it is ready (or why it failed). The same points tell
//! systemd, where a `Type=notify` unit started us (dist/systemd/): READY=1 once serving,
//! a longer start timeout during a long step, STOPPING=1 on a stop signal.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOTIFY_ENV: &str = "POOLFS_NOTIFY_READY";

/// How a line of `progress` starts on the pipe to the parent.
const PROGRESS: &str = "WAIT ";

/// How a line of `notice` starts on the pipe to the parent.
const NOTICE: &str = "NOTE ";

/// How long the parent waits for the next line after the child said it is busy with a
/// long step (`progress`): a namespace database checked after a crash takes minutes
/// for millions of files, and giving up then would only start the check over.
pub const LONG_STEP: Duration = Duration::from_secs(600);

/// Starts `poolfs ARGS` detached (own session, output appended to `log`) and waits up
/// to `timeout` for it to report readiness, or up to `LONG_STEP` after each line of
/// `progress`, which it prints on stderr. Returns its pid.
pub fn spawn_ready(args: &[OsString], log: &Path, timeout: Duration) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the poolfs binary: {e}"))?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(NOTIFY_ENV, "1")
        // The child is not the unit's main process: only its parent talks to systemd.
        .env_remove(SYSTEMD_SOCKET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal so
    // the caller's shell or test harness does not wait on it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start poolfs: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no pipe to the child")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let last = !line.starts_with(PROGRESS) && !line.starts_with(NOTICE);
            if tx.send(line).is_err() || last {
                break;
            }
        }
    });
    let mut wait = timeout;
    let line = loop {
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if let Some(msg) = line.strip_prefix(PROGRESS) {
                    eprintln!("{msg}");
                    wait = LONG_STEP;
                } else if let Some(msg) = line.strip_prefix(NOTICE) {
                    eprintln!("{msg}");
                } else {
                    break line;
                }
            }
            Err(_) => break String::new(),
        }
    };
    if line.trim_end() == "READY" {
        return Ok(pid);
    }
    let why = match line.strip_prefix("ERROR ") {
        Some(msg) => msg.trim_end().to_string(),
        None => {
            // Silent or too slow: make sure it does not linger half-started.
            // SAFETY: pid is our own child's.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            format!("poolfs did not become ready; see {}", log.display())
        }
    };
    let _ = child.wait();
    Err(why)
}

/// In a process started by `spawn_ready`, before it is ready: tells the parent (which
/// prints `msg` to the user) that a long step is under way, so that it waits up to
/// `LONG_STEP` more rather than giving up. Elsewhere, or once ready, it does nothing:
/// the caller logs the step itself.
pub fn progress(msg: &str) {
    // Under systemd: the unit's start timeout runs again from now, for as long as the
    // parent above would wait.
    let extend = u32::try_from(LONG_STEP.as_micros()).unwrap_or(u32::MAX);
    tell_systemd(&[
        sd_notify::NotifyState::ExtendTimeoutUsec(extend),
        sd_notify::NotifyState::Status(msg),
    ]);
    if std::env::var_os(NOTIFY_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{PROGRESS}{}", msg.replace('\n', " "));
    let _ = out.flush();
}

/// Something the user should know about a start that succeeds (a pool without
/// parity): logged at WARN, and in a process started by `spawn_ready`, before it is
/// ready, also printed by the parent, which has the terminal.
pub fn notice(msg: &str) {
    log::warn!("{msg}");
    if std::env::var_os(NOTIFY_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{NOTICE}{}", msg.replace('\n', " "));
    let _ = out.flush();
}

/// In a process started by `spawn_ready`: tells the parent the outcome and stops
/// writing to the pipe. Elsewhere it does nothing.
pub fn notify(result: Result<(), String>) {
    match &result {
        Ok(()) => tell_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]),
        Err(e) => tell_systemd(&[sd_notify::NotifyState::Status(e)]),
    }
    if std::env::var_os(NOTIFY_ENV).is_none() {
        return;
    }
    std::env::remove_var(NOTIFY_ENV);
    let mut out = std::io::stdout();
    let _ = match &result {
        Ok(()) => writeln!(out, "READY"),
        Err(e) => writeln!(out, "ERROR {}", e.replace('\n', " ")),
    };
    let _ = out.flush();
    // Point stdout at /dev/null so the parent's pipe reaches end of file.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid for the duration of the call.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// The variable systemd sets for a `Type=notify` service: the socket to notify.
const SYSTEMD_SOCKET: &str = "NOTIFY_SOCKET";

/// Called on the signal that stops a process: tells systemd, where a unit started it,
/// that it is stopping (leaving the pool takes a while: a hand-off, a LEAVE).
pub fn stopping() {
    tell_systemd(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("leaving the pool"),
    ]);
}

/// Sends `state` to systemd when it started this process (`$NOTIFY_SOCKET`); elsewhere
/// it does nothing. A failure is logged: the service manager decides what follows.
fn tell_systemd(state: &[sd_notify::NotifyState]) {
    if std::env::var_os(SYSTEMD_SOCKET).is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("cannot notify systemd ({state:?}): {e}");
    }
}
