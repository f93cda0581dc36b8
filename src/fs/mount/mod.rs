//! `poolfs mount`: run a node inside the mounting process, mount the filesystem, serve
//! it with repair, sweep and scrub passes in the background until unmounted, then hand off the
//! node's segments and leave the pool.

mod advice;
mod kernel;
mod leave;
mod table;
pub use advice::{dead_mount_advice, fuse_device_problem, is_dead_mount};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
pub use table::{is_mountpoint, poolfs_mounts};

use super::fuse::PoolFs;
use super::journal::{self, root, Journal, JournalConfig, JournalError};
use super::meta::MetaStore;
use super::repair::{self, RepairReport};
use super::sweep;
use super::vfs::Vfs;
use super::FsError;
use crate::client::{ClientConfig, PoolClient, Redundancy};
use crate::node::{Node, NodeConfig, NodeError};
use crate::trust::{OwnerKey, PoolKey, OWNER_KEY_FILE};

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Where the filesystem appears.
    pub mountpoint: PathBuf,
    /// The mount's storage directory: its node's segments and keys, and the metadata
    /// store (`meta.redb`).
    pub storage: PathBuf,
    /// The controller to join.
    pub controller: SocketAddr,
    /// Where the mount's own node listens for other members.
    pub listen: SocketAddr,
    /// Bytes the mount's node offers; `None`: the free space of the storage filesystem.
    pub capacity: Option<u64>,
    /// Bytes one member may hold on this machine's node; `None`: up to the capacity.
    pub quota: Option<u64>,
    /// The shape of new files (`--redundancy`, `--tolerate`).
    pub redundancy: Redundancy,
    /// The machine this mount's node runs on (`--machine`).
    pub machine: String,
    /// Admit every user, not only the mounter (fuser's session ACL, `--allow-other`).
    pub allow_other: bool,
    /// How long a node may stay down before its segments are rebuilt elsewhere.
    pub repair_grace: Duration,
    /// How long a segment of this mount that no live file names stays on its node
    /// before the sweep removes it (`--reclaim-after`; see `sweep`).
    pub reclaim_after: Duration,
    /// Bytes of the metadata store's page cache (`--meta-cache`; see
    /// `MetaStore::open_with_cache`).
    pub meta_cache: u64,
    /// The pool key.
    pub key: PoolKey,
    /// The file the pool key was read from, named when the controller refuses it.
    pub key_file: PathBuf,
    /// Encrypt shards (the default; off only to measure what encryption costs).
    pub encrypt: bool,
    /// Keep the namespace in the pool too (the default; off only to measure what it
    /// costs): see `journal`.
    pub pool_namespace: bool,
    /// How long this mount's lease on its namespace lasts unrenewed (`--lease`): how
    /// long a crash of it keeps another mount of its owner out.
    pub lease: Duration,
    /// Rebuild the storage directory from the namespace in the pool first (`--recover`):
    /// it must hold the owner key and no namespace.
    pub recover: bool,
    /// At unmount, move what this mount's node holds to other nodes before it leaves
    /// (off with `--no-hand-off`: for a pool whose nodes all stop together, as the
    /// pools of `poolfs up` do, where there is nowhere to move it).
    pub hand_off: bool,
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point cannot be used: missing, not a directory, mounted already or not
    /// empty.
    #[error("mount point {path}: {why}")]
    Mountpoint {
        /// The mount point.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The mount point holds files: a mount would hide them.
    #[error("mount point {}: not empty, it holds {holds} (mount over an empty directory)", .path.display())]
    NotEmpty {
        /// The mount point.
        path: PathBuf,
        /// The first names found there, for the message ("'a', 'b' and more").
        holds: String,
    },
    /// The mount's own node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// No controller answered at this address.
    #[error("no reachable controller at {0} (is `poolfs controller` running there?)")]
    NoController(SocketAddr),
    /// The controller answered, but refused the handshake: we hold another pool key.
    #[error(
        "the controller at {0} refused our pool key: the key file this mount used ({key}) \
         is not the pool's; copy the pool's key from a member and give it with --key FILE \
         (key=FILE for mount -t poolfs)",
        key = .1.display()
    )]
    KeyRefused(SocketAddr, PathBuf),
    /// The mount point is a FUSE mount whose process is gone (stat says ENOTCONN).
    #[error("mount point {}: {}", .0.display(), dead_mount_advice(.0))]
    DeadMount(PathBuf),
    /// `/dev/fuse` cannot be opened: the kernel mount cannot even start.
    #[error("cannot mount {path}: {why}")]
    FuseDevice {
        /// The mount point.
        path: PathBuf,
        /// What is wrong with `/dev/fuse` and what to do.
        why: String,
    },
    /// The metadata store could not be opened.
    #[error("metadata: {0}")]
    Meta(#[from] FsError),
    /// The owner secret (`owner.key`) could not be loaded or made.
    #[error("owner key: {0}")]
    Owner(String),
    /// The kernel mount failed.
    #[error("cannot mount {path}: {source}")]
    Fuse {
        /// The mount point.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The namespace in the pool refuses this mount (leased, another copy, not found).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The tokio runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The source a mount shows in the mount table (`/proc/mounts`, df, mount): the
/// controller's address, which is the source of a poolfs fstab line.
fn fsname(controller: SocketAddr) -> String {
    controller.to_string()
}

/// Checks that `path` can be mounted on (an empty directory, not mounted, not a dead
/// mount) before anything is started or written for the mount; returns it canonical.
///
/// Errors: `DeadMount`, `NotEmpty`, and `Mountpoint` for anything else.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let bad = |why: String| MountError::Mountpoint {
        path: path.to_path_buf(),
        why,
    };
    if is_dead_mount(path) {
        return Err(MountError::DeadMount(path.to_path_buf()));
    }
    let canon = path.canonicalize().map_err(|e| bad(e.to_string()))?;
    if !canon.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if is_mountpoint(&canon) {
        return Err(bad("already mounted (unmount it first)".into()));
    }
    let entries = std::fs::read_dir(&canon).map_err(|e| bad(e.to_string()))?;
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| format!("'{}'", e.file_name().to_string_lossy()))
        .take(3)
        .collect();
    let holds = match names.as_slice() {
        [] => return Ok(canon),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, ..] => format!("{a}, {b} and more"),
    };
    Err(MountError::NotEmpty { path: canon, holds })
}

/// Why the controller at `addr` gave no pool view: a refused handshake means we hold
/// another pool key (the controller listens, so "no reachable controller" would send
/// the user looking in the wrong place); anything else, that it is not reachable.
fn controller_error(
    addr: SocketAddr,
    key_file: &Path,
    e: &crate::client::ClientError,
) -> MountError {
    use crate::client::ClientError;
    use crate::net::NetError;
    match e {
        ClientError::Controller(NetError::Handshake { .. }) => {
            MountError::KeyRefused(addr, key_file.to_path_buf())
        }
        _ => MountError::NoController(addr),
    }
}

/// How often the mount verifies every shard of its files (the slow periodic scrub).
const SCRUB_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// How often the mount looks for segments to rebuild.
const REPAIR_INTERVAL: Duration = Duration::from_secs(2);

/// Runs repair passes, a sweep every `sweep::interval_for(reclaim_after)` and a trim
/// of the heap every `heap::TRIM_EVERY`, in the background until the mount stops
/// (`Vfs::stop_background`). One thread for both: a sweep never runs while a repair is
/// writing segments it has not recorded yet. `scrub_now` scrubs first (after
/// a recovery: the mount's own node lost every segment it held). A mount whose
/// namespace another mount took (`Journal::fenced`) repairs and sweeps nothing: those
/// segments are the other mount's to manage now.
fn spawn_repair(
    vfs: Arc<Vfs>,
    grace: Duration,
    reclaim_after: Duration,
    scrub_now: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = RepairReport::default();
        let mut repairer = repair::Repairer::new(&vfs);
        let mut next_scrub = match scrub_now {
            true => std::time::Instant::now(),
            false => std::time::Instant::now() + SCRUB_INTERVAL,
        };
        let sweep_every = sweep::interval_for(reclaim_after);
        let mut next_sweep = std::time::Instant::now() + sweep_every;
        let mut next_trim = std::time::Instant::now() + crate::heap::TRIM_EVERY;
        while !vfs.stopping() {
            if std::time::Instant::now() >= next_trim {
                // Memory freed since (a snapshot's part, a burst of requests) goes back.
                crate::heap::trim();
                next_trim = std::time::Instant::now() + crate::heap::TRIM_EVERY;
            }
            if vfs.journal().is_some_and(|j| j.fenced()) {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if std::time::Instant::now() >= next_scrub {
                if let Err(e) = repair::scrub_and_record(&vfs) {
                    log::warn!("scrub pass failed: {e}");
                }
                next_scrub = std::time::Instant::now() + SCRUB_INTERVAL;
            }
            match repairer.pass(&vfs, grace) {
                Ok(report) if report != last => {
                    log::info!(
                        "repair: {} segments rebuilt, {} pending, {} waiting",
                        report.rebuilt,
                        report.pending,
                        report.waiting
                    );
                    last = report;
                }
                Ok(_) => {}
                Err(e) => log::debug!("repair pass skipped: {e}"),
            }
            if std::time::Instant::now() >= next_sweep {
                match sweep::sweep_pass(&vfs, reclaim_after) {
                    Ok(r) if r.reclaimed > 0 => log::info!(
                        "sweep: {} segments reclaimed ({} bytes), {} waiting out the grace",
                        r.reclaimed,
                        r.freed,
                        r.waiting
                    ),
                    Ok(r) => log::debug!("sweep: {r:?}"),
                    Err(e) => log::warn!("sweep pass skipped: {e}"),
                }
                next_sweep = std::time::Instant::now() + sweep_every;
            }
            vfs.rest(REPAIR_INTERVAL);
        }
    })
}

/// Mounts and serves until the filesystem is unmounted (or SIGTERM/SIGINT unmounts
/// it). `ready` is called once: with `Ok` when the mount is live, or with the error.
pub fn run(cfg: MountConfig, ready: impl FnOnce(Result<(), String>)) -> Result<(), MountError> {
    let mut ready = Some(ready);
    let mut report = |r: Result<(), String>| {
        if let Some(f) = ready.take() {
            f(r)
        }
    };
    let result = serve(cfg, &mut report);
    if let Err(e) = &result {
        report(Err(e.to_string()));
    }
    result
}

fn serve(cfg: MountConfig, report: &mut dyn FnMut(Result<(), String>)) -> Result<(), MountError> {
    let mountpoint = check_mountpoint(&cfg.mountpoint)?;
    // The namespace database stays locked while a mount has it open. Take it before the
    // node starts: a second mount of the same storage must be refused before its node
    // joins with this storage's identity and takes the running mount's place in the pool.
    std::fs::create_dir_all(&cfg.storage).map_err(|source| NodeError::Storage {
        path: cfg.storage.clone(),
        source,
    })?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(MountError::Runtime)?;
    // The owner secret: shard keys and the namespace's identity derive from it. A
    // recovery brings its own (`key import`, or main's --code-file): never a new one.
    if cfg.recover && !cfg.storage.join(OWNER_KEY_FILE).exists() {
        return Err(MountError::Owner(format!(
            "--recover needs the owner key in {}: give --code-file FILE with the recovery \
             code, or run `poolfs key import --storage {}` first",
            cfg.storage.display(),
            cfg.storage.display()
        )));
    }
    let owner = Arc::new(
        OwnerKey::load_or_create(&cfg.storage).map_err(|e| MountError::Owner(e.to_string()))?,
    );
    // The namespace in the pool is looked at before this mount's node joins: a mount
    // refused for the lease (a recovery while the first mount lives, with the same node
    // identity) must not take that mount's place in the pool first.
    let ns = match cfg.pool_namespace {
        true => Some(Arc::new(
            journal::namespace_client(cfg.controller, &cfg.key, &owner, cfg.redundancy)
                .map_err(|e| MountError::Owner(e.to_string()))?,
        )),
        false => None,
    };
    let found = match &ns {
        Some(ns) => {
            let found = rt
                .block_on(root::read_latest(ns, &owner))
                .map_err(|e| controller_error(cfg.controller, &cfg.key_file, &e))?;
            Some(found)
        }
        None => None,
    };
    if cfg.recover {
        let (Some(ns), Some(found)) = (&ns, &found) else {
            return Err(MountError::Owner(
                "--recover needs the namespace in the pool (not --no-pool-namespace)".into(),
            ));
        };
        let Some(root) = &found.root else {
            return Err(JournalError::NotFound {
                asked: found.asked,
                unreachable: found.unreachable,
            }
            .into());
        };
        journal::check_lease(Some(root), root::now_ms())?;
        journal::restore::rebuild(rt.handle(), ns, root, &cfg.storage, uid, gid)?;
    }
    // Opening the store locks it: no other process mounts this storage meanwhile.
    let meta = MetaStore::open_with_cache(
        &cfg.storage.join(journal::restore::META_FILE),
        uid,
        gid,
        cfg.meta_cache,
    )?;
    if !cfg.pool_namespace {
        // This mount's changes reach no copy in the pool: a later mount that keeps one
        // must catch it up with a snapshot before its first fsync returns.
        meta.set_synced_seq(None)?;
    }
    if let (Some(found), false) = (&found, cfg.recover) {
        let ours = meta.store_id()?;
        // A lease written from this very store was this storage's last mount (only one
        // process can hold the store): it crashed, and its lease is ours to take over.
        // A lease from another store is another mount's, alive until it runs out.
        if found.root.as_ref().is_some_and(|r| r.store_id != ours) {
            journal::check_lease(found.root.as_ref(), root::now_ms())?;
        }
        journal::check_copy(found.root.as_ref(), ours, &cfg.storage)?;
    }
    let node = rt.block_on(Node::start(NodeConfig {
        storage: cfg.storage.clone(),
        listen: cfg.listen,
        controller: Some(cfg.controller),
        capacity: cfg.capacity,
        quota: cfg.quota,
        key: cfg.key.clone(),
        machine: cfg.machine.clone(),
    }))?;
    if rt
        .block_on(node.wait_joined(Duration::from_secs(5)))
        .is_none()
    {
        return Err(MountError::NoController(cfg.controller));
    }
    // The mount's client proves the same static key as its node.
    // Shards are sealed with keys from the owner secret kept beside the metadata.
    let sealing = cfg.encrypt.then(|| owner.clone());
    let mut client_cfg = ClientConfig::new(cfg.controller, node.credentials(), sealing);
    client_cfg.redundancy = cfg.redundancy;
    client_cfg.own = Some(node.own_segments());
    let client = Arc::new(PoolClient::new(client_cfg));
    let vfs = Arc::new(Vfs::new(meta, client.clone(), rt.handle().clone())?);
    vfs.set_own_node(node.own_segments());
    if let (Some(ns), Some(found)) = (ns, found) {
        let node_key = crate::trust::read_key_bytes(&cfg.storage.join(crate::trust::NODE_KEY_FILE))
            .map_err(|e| MountError::Owner(e.to_string()))?;
        let journal = Journal::start(
            vfs.meta_store(),
            JournalConfig {
                ns,
                data: client,
                owner,
                rt: rt.handle().clone(),
                lease: cfg.lease,
                machine: cfg.machine.clone(),
                node_key,
                node_id: node.node_id(),
                found: found.root,
                pace: journal::SnapshotPace::default(),
            },
        )?;
        vfs.set_journal(journal);
    }

    // The mount's source is the controller's address, as an fstab line or
    // `mount -t poolfs` names it: mount(8) then sees the line's pool as mounted already
    // (`mount -a` compares source and mount point), and df and mount show the pool's
    // controller. Its type is fuse.poolfs: root mounts it itself (`kernel::mount`),
    // fusermount3 (for a user) adds the subtype below.
    let options = vec![
        fuser::MountOption::FSName(fsname(cfg.controller)),
        fuser::MountOption::Subtype("poolfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    let mut config = fuser::Config::default();
    config.mount_options = options;
    // Who the session admits: with allow_other every user, whose access the kernel
    // then checks against mode bits, owners and groups (default_permissions). A
    // custom "allow_other" option alone reaches the kernel but not fuser's own check,
    // which would still turn away everyone but the mounter.
    if cfg.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(4);
    let fuse_err = |source| MountError::Fuse {
        path: mountpoint.clone(),
        source,
    };
    let fs = PoolFs::new(vfs.clone());
    let started = match kernel::mount(&mountpoint, &fsname(cfg.controller), cfg.allow_other) {
        Ok(Some(device)) => fuser::Session::from_fd(fs, device, config.acl, config.clone())
            .map(|s| (s, kernel::Unmounter::Kernel(mountpoint.clone())))
            .inspect_err(|_| {
                // The kernel mount is there, its session is not: take it away again.
                let _ = kernel::Unmounter::Kernel(mountpoint.clone()).unmount();
            }),
        Ok(None) => fuser::Session::new(fs, &mountpoint, &config).map(|mut s| {
            let unmounter = s.unmount_callable();
            (s, kernel::Unmounter::Fuser(unmounter))
        }),
        Err(e) => Err(e),
    };
    let (mut session, mut last_unmount) =
        started.map_err(|source| match fuse_device_problem() {
            Some(why) => MountError::FuseDevice {
                path: mountpoint.clone(),
                why,
            },
            None => fuse_err(source),
        })?;
    let notifier = session.notifier();
    vfs.set_invalidator(Arc::new(move |ino| {
        notifier.inval_inode(fuser::INodeNo(ino), 0, 0)
    }));
    // A signal unmounts, which ends the session like `umount` does. The handlers are in
    // place before the mount says it is ready: a stop right after the start (systemd's)
    // unmounts and leaves too, rather than killing the process.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    let mut unmounter = match &last_unmount {
        kernel::Unmounter::Kernel(mp) => kernel::Unmounter::Kernel(mp.clone()),
        kernel::Unmounter::Fuser(_) => kernel::Unmounter::Fuser(session.unmount_callable()),
    };
    rt.spawn(async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        crate::daemon::stopping();
        log::info!("signal received: unmounting");
        if let Err(e) = unmounter.unmount() {
            log::error!("cannot unmount: {e}");
        }
    });
    log::info!(
        "mounted {} (node {} at {}, controller {})",
        mountpoint.display(),
        node.node_id().unwrap_or(0),
        node.addr(),
        cfg.controller
    );
    if let Some(why) = no_parity(&rt, &vfs) {
        crate::daemon::notice(&why);
    }
    report(Ok(()));
    let repairer = spawn_repair(
        vfs.clone(),
        cfg.repair_grace,
        cfg.reclaim_after,
        cfg.recover,
    );
    let served = session.run();
    // Mostly the kernel has unmounted already (`umount`, a signal); after a failure of
    // the session the mount may still be there.
    if let Err(e) = last_unmount.unmount() {
        log::warn!(
            "cannot unmount {}: {e}; `fusermount3 -u {}` clears it",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    vfs.stop_background();
    let _ = repairer.join();
    served.map_err(fuse_err)?;
    // The kernel holds no inode any more: those removed while in use go now.
    if let Err(e) = vfs.purge_orphans() {
        log::warn!("cannot remove files deleted while in use: {e}");
    }
    // The last group commit's changes: on disk before the hand-off, which may be long.
    if let Err(e) = vfs.meta_store().persist() {
        log::warn!("cannot make the last namespace changes durable: {e}");
    }
    log::info!("unmounted {}; leaving the pool", mountpoint.display());
    if cfg.hand_off {
        leave::hand_off(&rt, &node, &vfs, &cfg);
    }
    if let Some(journal) = vfs.journal() {
        // The hand-offs' changes go too; then the lease is released.
        journal.close();
    }
    if let Err(e) = vfs.meta_store().persist() {
        log::warn!("cannot make the last namespace changes durable: {e}");
    }
    rt.block_on(node.leave());
    Ok(())
}

/// Says so when new files would get no parity on the pool as it is now (a pool of one
/// or two members under the automatic shape, or `--redundancy K+0`): any node holding
/// a file then makes it unreadable while it is off. `None` otherwise, or without a view.
fn no_parity(rt: &tokio::runtime::Runtime, vfs: &Vfs) -> Option<String> {
    let view = rt.block_on(vfs.client().view()).ok()?;
    let members = crate::client::placement::pool_size(&view);
    let policy = vfs.client().config().redundancy;
    let (k, m) = crate::client::placement::shape(policy, members);
    let later = match policy {
        Redundancy::Auto => {
            "Files get parity once the pool has 3 members (they are re-encoded then)"
        }
        _ => "The shape asked for (--redundancy or --tolerate) gives none",
    };
    (m == 0).then(|| {
        format!(
            "note: the pool has {members} member{} (this mount's node included), so new \
             files are stored as {k}+0, with no parity: a file cannot be read while a node \
             holding it is off. {later}; `poolfs status` shows what may be off",
            if members == 1 { "" } else { "s" }
        )
    })
}

/// Asks the mount at `mountpoint` to scrub now (through its root's scrub attribute) and
/// returns its report.
pub fn scrub(mountpoint: &Path) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let name = std::ffi::CString::new(super::fuse::SCRUB_XATTR).map_err(std::io::Error::other)?;
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    if unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"now".as_ptr().cast(), 3, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    super::status::get_xattr(mountpoint, super::fuse::SCRUB_XATTR)
}
