//! `poolfs up` / `poolfs down`: a whole pool on this machine (a controller, storage
//! nodes and the mount, all on loopback) started and stopped with one command.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Redundancy;
use crate::daemon::spawn_ready;
use crate::fs::mount::{dead_mount_advice, is_dead_mount, is_mountpoint};

mod procs;
pub use procs::holders;
use procs::{still_running, stop, unmount, unmount_dead, wait_exit, STOP_WAIT};

/// The version of `up.json` this poolfs writes (see `crate::versioned`; files from
/// before the tag read as 1).
const UP_STATE_VERSION: u32 = 1;

/// What `up` started, kept so `down` can stop exactly those processes.
#[derive(Serialize, Deserialize, Debug)]
pub struct UpState {
    /// The mount's mount point.
    pub mountpoint: PathBuf,
    /// The controller's address.
    pub controller: SocketAddr,
    /// The mount process first, then the controller, then the storage nodes.
    pub pids: Vec<u32>,
    /// The pool key every process proves (absent in states saved by older versions).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// The file in a pool's state directory that names its mount point; unlike `up.json`
/// it stays after `down`, with the pool's files.
const MOUNTPOINT_FILE: &str = "mountpoint";

/// The mount points of the pools `up` started under `data` that are down now (stopped
/// by `down`, their files kept), sorted.
pub fn list_down(data: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut found: Vec<PathBuf> = std::fs::read_dir(data.join("up"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.path().join("up.json").exists())
        .filter_map(|e| std::fs::read(e.path().join(MOUNTPOINT_FILE)).ok())
        .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
        .collect();
    found.sort();
    found
}

/// Every pool `up` started under `data` that is still recorded, by mount point.
pub fn list(data: &Path) -> Vec<UpState> {
    let mut found: Vec<UpState> = std::fs::read_dir(data.join("up"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_state(&e.path().join("up.json")).ok().flatten())
        .collect();
    found.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    found
}

/// Reads an `up.json`; a missing one is reported as `None` (no pool started there).
///
/// Errors: a file that cannot be read, is not a state, or is of a version newer than
/// `UP_STATE_VERSION`, with the file named.
fn read_state(file: &Path) -> Result<Option<UpState>, String> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    crate::versioned::decode(&bytes, UP_STATE_VERSION, file)
        .map(|(_, state)| Some(state))
        .map_err(|e| e.to_string())
}

/// Writes `state` to `file` atomically, tagged with `UP_STATE_VERSION`.
fn write_state(file: &Path, state: &UpState) -> Result<(), String> {
    let json =
        crate::versioned::encode(state, UP_STATE_VERSION, file).map_err(|e| e.to_string())?;
    crate::util::write_atomic(file, &json)
        .map_err(|e| format!("cannot save {}: {e}", file.display()))
}

/// Where `up` keeps the state of the pool mounted at `mountpoint`.
pub fn state_dir(data: &Path, mountpoint: &Path) -> PathBuf {
    let key: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    data.join("up").join(key.trim_start_matches('_'))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// How long `down` lets the mount finish after the unmount: it stores the namespace's
/// last changes in the pool (the nodes still run meanwhile) and closes its database.
/// Killing it sooner would leave that database to be checked whole at the next mount.
const MOUNT_EXIT_WAIT: Duration = Duration::from_secs(300);

/// What `up` starts and how.
#[derive(Debug, Clone, Copy)]
pub struct UpOptions<'a> {
    /// Members of the pool, the mount included.
    pub nodes: u32,
    /// The shape of new files, passed to the mount (`--redundancy`, `--tolerate`).
    pub redundancy: Redundancy,
    /// Most bytes one member may store on each node.
    pub quota: Option<u64>,
    /// Seconds a node may stay down before the mount rebuilds its segments.
    pub repair_grace: Option<u64>,
    /// Seconds a segment no live file names stays before the mount's sweep removes it.
    pub reclaim_after: Option<u64>,
    /// The pool key file; `None`: a key of the pool's own in its state directory.
    pub key: Option<&'a Path>,
    /// Encrypt shards (off only to measure the cost).
    pub encrypt: bool,
    /// Keep the mount's namespace in the pool too (off only to measure the cost).
    pub pool_namespace: bool,
    /// Let other users use the mount (access then follows mode bits and owners).
    pub allow_other: bool,
    /// The user (uid, gid) the pool is for when `up` runs on their behalf as root
    /// (through sudo): the mount's root directory becomes theirs, if root owns it.
    pub owner: Option<(u32, u32)>,
}

/// The user who ran this process through sudo (`SUDO_UID`, `SUDO_GID`), when it runs
/// as root: the person the pool is for.
pub fn sudo_invoker() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |var| std::env::var(var).ok()?.parse::<u32>().ok();
    let (uid, gid) = (id("SUDO_UID")?, id("SUDO_GID")?);
    (uid != 0).then_some((uid, gid))
}

/// Starts a controller, `nodes - 1` storage nodes and a mount (itself a node) on
/// loopback, state under `data`, all proving the pool key at `key` (by default a key of
/// the pool's own in its state directory; either is created if missing), each node
/// holding at most `quota` bytes per member if given; `redundancy`, `repair_grace` and
/// `encrypt` go to the mount. Returns what was started.
pub fn up(data: &Path, mountpoint: &Path, opts: UpOptions<'_>) -> Result<UpState, String> {
    let UpOptions {
        nodes,
        redundancy,
        quota,
        repair_grace,
        reclaim_after,
        key,
        encrypt,
        pool_namespace,
        allow_other,
        owner,
    } = opts;
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if is_dead_mount(mountpoint) {
        return Err(format!(
            "{}: {}",
            mountpoint.display(),
            dead_mount_advice(mountpoint)
        ));
    }
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| format!("cannot create {}: {e}", mountpoint.display()))?;
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let dir = state_dir(data, &mountpoint);
    let state_file = dir.join("up.json");
    if let Some(old) = read_state(&state_file).ok().flatten() {
        let m = mountpoint.display();
        if is_mountpoint(&mountpoint) {
            return Err(format!(
                "a pool is already up at {m} (`poolfs down {m}` stops it)"
            ));
        }
        // Unmounted with a plain `umount` (or its mount stopped): the controller and
        // nodes still run on this pool's storage, which a second set cannot share.
        let running = still_running(&old.pids, &dir);
        if !running.is_empty() {
            return Err(format!(
                "the pool `poolfs up` started at {m} still runs without its mount (pids \
                 {}: it was unmounted with `umount`, or its mount stopped); run `poolfs \
                 down {m}` to stop it, then `poolfs up {m}` to start and mount it again",
                running.join(", ")
            ));
        }
    }
    // Before anything is started or written: a refused mount point leaves nothing.
    crate::fs::mount::check_mountpoint(&mountpoint).map_err(|e| match e {
        crate::fs::mount::MountError::NotEmpty { .. } if dir.exists() => format!(
            "{e}. Files copied there while this pool was down are on this machine's disk, \
             not in the pool: move them away, run `poolfs up {m}` again, then copy them in",
            m = mountpoint.display()
        ),
        e => e.to_string(),
    })?;
    // The local pool has a key of its own, kept with its state and given to every process.
    let key = key.map_or_else(|| dir.join("pool.key"), Path::to_path_buf);
    crate::trust::PoolKey::load_or_create(&key).map_err(|e| e.to_string())?;
    // Recorded for `status`, which may run from another directory.
    let key = key.canonicalize().unwrap_or(key);
    let controller = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let quota_args = quota.map_or_else(Vec::new, |q| args(&[&"--quota", &q.to_string()]));
    // The mount makes the pool's owner key the first time: the user hears of it once.
    let owner_key = crate::trust::OwnerKeyWatch::before(&dir.join("mount"));
    let mut pids = Vec::new();
    let started = (|| {
        let ctrl = controller.to_string();
        pids.push(spawn_ready(
            &args(&[
                &"controller",
                &"--listen",
                &ctrl,
                &"--state",
                &dir.join("controller"),
                &"--key",
                &key,
            ]),
            &dir.join("controller.log"),
            Duration::from_secs(10),
        )?);
        // What every member, storage node or mount, is started with.
        let member = |mut a: Vec<OsString>, storage: &Path| {
            a.extend(args(&[
                &"--storage",
                &storage,
                &"--listen",
                &"127.0.0.1:0",
                &"--controller",
                &ctrl,
                &"--key",
                &key,
            ]));
            a.extend(quota_args.iter().cloned());
            a
        };
        for i in 1..nodes {
            pids.push(spawn_ready(
                &member(args(&[&"node"]), &dir.join(format!("node-{i}"))),
                &dir.join(format!("node-{i}.log")),
                Duration::from_secs(10),
            )?);
        }
        let mut mount = member(args(&[&"mount", &mountpoint]), &dir.join("mount"));
        match redundancy {
            Redundancy::Auto => {}
            Redundancy::Tolerate(f) => mount.extend(args(&[&"--tolerate", &f.to_string()])),
            Redundancy::Exact { .. } => {
                mount.extend(args(&[&"--redundancy", &redundancy.to_string()]))
            }
        }
        if !encrypt {
            mount.extend(args(&[&"--no-encryption"]));
        }
        if !pool_namespace {
            mount.extend(args(&[&"--no-pool-namespace"]));
        }
        if let Some(secs) = repair_grace {
            mount.extend(args(&[&"--repair-grace", &secs.to_string()]));
        }
        if let Some(secs) = reclaim_after {
            mount.extend(args(&[&"--reclaim-after", &secs.to_string()]));
        }
        if allow_other {
            mount.extend(args(&[&"--allow-other"]));
        }
        // `down` stops every node of this pool with the mount: a hand-off would wait
        // for moves to nodes that are about to stop too.
        mount.extend(args(&[&"--no-hand-off"]));
        let pid = spawn_ready(&mount, &dir.join("mount.log"), Duration::from_secs(30))?;
        pids.insert(0, pid);
        if let Some((uid, gid)) = owner {
            give_root_to(&mountpoint, uid, gid)?;
        }
        Ok::<(), String>(())
    })();
    if owner_key.made_new() {
        eprintln!("{}", crate::trust::new_owner_key_notice(&dir.join("mount")));
    }
    if let Err(e) = started {
        pids.reverse();
        stop(&pids, &dir);
        return Err(e);
    }
    // Kept after `down` (up.json is not), so that a pool that is down can be named.
    let _ = std::fs::write(
        dir.join(MOUNTPOINT_FILE),
        mountpoint.as_os_str().as_encoded_bytes(),
    );
    let state = UpState {
        mountpoint,
        controller,
        pids,
        key: Some(key),
    };
    write_state(&state_file, &state)?;
    Ok(state)
}

/// Makes the root directory of a fresh pool mounted at `mountpoint` owned by
/// `uid:gid` (a pool that someone already uses keeps its owner).
fn give_root_to(mountpoint: &Path, uid: u32, gid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(mountpoint)
        .map_err(|e| format!("cannot stat {}: {e}", mountpoint.display()))?;
    if meta.uid() != 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(mountpoint, Some(uid), Some(gid))
        .map_err(|e| format!("cannot give {} to uid {uid}: {e}", mountpoint.display()))
}

/// `path` made absolute and free of symlinks, as `up` records mount points; a dead
/// mount (see `is_dead_mount`) cannot be resolved itself, so its parent is, and its
/// name is kept.
fn canonical_mountpoint(path: &Path) -> Result<PathBuf, String> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            let name = path
                .file_name()
                .ok_or_else(|| format!("{}: {e}", path.display()))?;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            parent
                .canonicalize()
                .map(|p| p.join(name))
                .map_err(|e| format!("{}: {e}", parent.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist, so no pool is mounted there (`poolfs status` shows the \
             pool that is up)",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The data directories of the pools `up` started for `mountpoint` (canonical) whose
/// processes still run, found from those processes themselves.
///
/// Why this way: `up` starts every process of a pool with a path in the pool's state
/// directory, `DATA/up/KEY/...` (`--storage DATA/up/KEY/mount` for the mount,
/// `--storage DATA/up/KEY/node-N` for a node, `--state DATA/up/KEY/controller` for the
/// controller), where KEY is made from the mount point (`state_dir`). So any one of
/// them that still runs names DATA, and the state there (`up.json`) says whether it is
/// the pool mounted at `mountpoint`. That works when the mount process is gone too
/// (killed, leaving a dead mount), which the mount table alone cannot do: it records
/// neither a pid nor a path of ours.
fn running_data_dirs(mountpoint: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let Some(key) = state_dir(Path::new(""), mountpoint)
        .file_name()
        .map(PathBuf::from)
    else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            // A relative --data-dir gives relative paths, from the process's directory.
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            Some((cmdline, cwd))
        })
        .flat_map(|(cmdline, cwd)| {
            cmdline
                .split(|b| *b == 0)
                .map(|arg| cwd.join(std::ffi::OsStr::from_bytes(arg)))
                .collect::<Vec<_>>()
        })
        .filter_map(|arg| {
            // ARG = DATA/up/KEY/<member>: its grandparent is DATA/up.
            let dir = arg.parent()?;
            let up = dir.parent()?;
            (dir.file_name() == Some(key.as_os_str()) && up.file_name()? == "up")
                .then(|| up.parent().map(Path::to_path_buf))
                .flatten()
        })
        .filter(|data| {
            read_state(&state_dir(data, mountpoint).join("up.json"))
                .ok()
                .flatten()
                .is_some_and(|s| s.mountpoint == mountpoint)
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The pool `up` started at `mountpoint`: its state directory and state. Looked for in
/// `data` (the default data directory when `None`), then, if not there, through the
/// pool's running processes (`running_data_dirs`), so that `down X` and `status --mount
/// X` need not be told the `--data-dir` that `up` was given.
///
/// Errors: no such pool anywhere (the message says where it looked), an unreadable
/// state, or several data directories with a pool at that mount point.
pub fn find(data: Option<&Path>, mountpoint: &Path) -> Result<(PathBuf, UpState), String> {
    let mountpoint = canonical_mountpoint(mountpoint)?;
    let first = data.map_or_else(crate::util::default_data_dir, Path::to_path_buf);
    let dir = state_dir(&first, &mountpoint);
    if let Some(state) = read_state(&dir.join("up.json"))? {
        return Ok((dir, state));
    }
    match running_data_dirs(&mountpoint).as_slice() {
        [one] => {
            let dir = state_dir(one, &mountpoint);
            match read_state(&dir.join("up.json"))? {
                Some(state) => Ok((dir, state)),
                None => Err(format!(
                    "the state of the pool in {} is gone",
                    dir.display()
                )),
            }
        }
        [] if dir.is_dir() => Err(format!(
            "the pool of {m} is not up: it was stopped, and its files are kept in {}; \
             `poolfs up {m}` starts it again",
            dir.display(),
            m = mountpoint.display(),
        )),
        [] => Err(format!(
            "no pool was started with `poolfs up` at {} (none recorded in {}, and no \
             process of one runs; if `up` was given --data-dir D, give it here too)",
            mountpoint.display(),
            first.display()
        )),
        many => Err(format!(
            "pools in several data directories are recorded at {}: {}; say which with \
             --data-dir",
            mountpoint.display(),
            many.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Unmounts the pool started by `up` at `mountpoint` and stops its processes; `data`
/// is the data directory `up` was given (`None`: the default one, else the one the
/// pool's running processes name, see `find`). A dead mount (its process killed) is
/// unmounted lazily, and the rest of the pool stopped as usual. Returns whether it was
/// mounted (a pool unmounted with a plain `umount` is only stopped).
///
/// Errors: no such pool (see `find`); a busy mount (nothing is stopped then, and the
/// message names the processes that hold it); a process that would not stop.
pub fn down(data: Option<&Path>, mountpoint: &Path) -> Result<bool, String> {
    let (dir, state) = find(data, mountpoint)?;
    let mountpoint = state.mountpoint.clone();
    let state_file = dir.join("up.json");
    let mounted = is_mountpoint(&mountpoint) || is_dead_mount(&mountpoint);
    if is_dead_mount(&mountpoint) {
        // Nothing to flush: its process is gone. A lazy unmount cannot be refused.
        unmount_dead(&mountpoint)?;
    } else if mounted {
        unmount(&mountpoint)?;
    }
    // The mount process exits by itself once unmounted; the controller and the nodes
    // stop after it, since it stores its last changes on them. The controller goes
    // before the nodes, which then leave without waiting for a hand-off.
    let (mount, rest) = state.pids.split_first().unwrap_or((&0, &[]));
    let mut notes = Vec::new();
    if !wait_exit(&[*mount], &dir, Duration::from_secs(3)) {
        eprintln!(
            "waiting for the mount (pid {mount}) to store its last changes in the pool \
             (its log: {})",
            dir.join("mount.log").display()
        );
        if !wait_exit(&[*mount], &dir, MOUNT_EXIT_WAIT) {
            notes.push(format!(
                "the mount (pid {mount}) had not exited {} s after the unmount: stopped it",
                MOUNT_EXIT_WAIT.as_secs()
            ));
        }
    }
    let mut killed = stop(&[*mount], &dir);
    for group in [&rest[..rest.len().min(1)], rest.get(1..).unwrap_or(&[])] {
        killed.extend(stop(group, &dir));
    }
    notes.extend(killed.iter().map(|p| {
        format!(
            "pid {p} ignored SIGTERM for {} s: killed it",
            STOP_WAIT.as_secs()
        )
    }));
    let still = still_running(&state.pids, &dir);
    if !still.is_empty() {
        return Err(format!(
            "{}; pids {} of the pool still run (see the logs in {})",
            notes.join("; "),
            still.join(", "),
            dir.display()
        ));
    }
    for note in notes {
        eprintln!("{note}");
    }
    std::fs::remove_file(&state_file)
        .map_err(|e| format!("cannot remove {}: {e}", state_file.display()))?;
    Ok(mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `up.json` in the place `up` keeps it for `mountpoint` under `data`.
    fn state_file(data: &Path, mountpoint: &str) -> PathBuf {
        let dir = state_dir(data, Path::new(mountpoint));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("up.json")
    }

    #[test]
    fn an_up_state_saved_before_versions_is_still_listed() {
        let data = tempfile::tempdir().unwrap();
        // up.json as poolfs wrote it before the version tag (and before the key).
        let old = r#"{"mountpoint": "/mnt/pool", "controller": "127.0.0.1:7000",
            "pids": [11, 12, 13]}"#;
        std::fs::write(state_file(data.path(), "/mnt/pool"), old).unwrap();
        let found = list(data.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].mountpoint, Path::new("/mnt/pool"));
        assert_eq!(found[0].pids, [11, 12, 13]);
        assert_eq!(found[0].key, None);
    }

    #[test]
    fn a_saved_up_state_carries_its_version_and_reads_back() {
        let data = tempfile::tempdir().unwrap();
        let file = state_file(data.path(), "/mnt/pool");
        let state = UpState {
            mountpoint: "/mnt/pool".into(),
            controller: "127.0.0.1:7000".parse().unwrap(),
            pids: vec![1, 2],
            key: Some("/k/pool.key".into()),
        };
        write_state(&file, &state).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(json["version"], UP_STATE_VERSION);
        let back = read_state(&file).unwrap().expect("the state was written");
        assert_eq!(back.controller, state.controller);
        assert_eq!(back.pids, state.pids);
        assert_eq!(back.key, state.key);
    }

    #[test]
    fn an_up_state_of_a_newer_version_is_refused_and_kept() {
        let data = tempfile::tempdir().unwrap();
        let file = state_file(data.path(), "/mnt/pool");
        let newer = format!(r#"{{"version": {}, "pools": []}}"#, UP_STATE_VERSION + 1);
        std::fs::write(&file, &newer).unwrap();
        let err = read_state(&file).expect_err("a newer state must be refused");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("version {}", UP_STATE_VERSION + 1)),
            "{err}"
        );
        assert!(list(data.path()).is_empty());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), newer);
    }
}
