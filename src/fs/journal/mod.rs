//! The namespace kept in the pool, so a mount's files outlive its disk: every change
//! of the metadata store is copied into the pool, sealed with the owner's keys and
//! erasure-coded like file data, as a log of deltas over a snapshot; a small sealed
//! root on every node names them and carries the writer's lease (`root`). A recovery
//! code (the owner secret) and the pool key rebuild the store on any machine
//! (`restore`).
//!
//! Blobs and roots are stored by a client of their own, the namespace identity: a
//! static key derived from the owner secret, so a recovering mount that knows only the
//! secret proves the identity that stored them (a node serves a sender only its own
//! segments). Nodes see sizes and that identity's segments, nothing more.
//!
//! One thread (`Journal::start`) takes what changed every `BATCH` at the latest
//! (`MetaStore::take_delta`, one consistent cut), stores it as one blob, then writes the
//! root naming it: so after a close the change is in the pool within about a second,
//! and `sync` (fsync) waits for a flush that begins after it is called. Between
//! flushes the same thread folds the log's newest deltas into one blob (`fold`) and
//! stores snapshots, part by part and paced (`snapshot`). The segments
//! of a deleted file (or of a file's placement replaced by a truncation to zero) are
//! deleted only after the flush that records it: until then the copy in the pool may
//! still name them.

mod flush;
mod fold;
pub mod restore;
pub mod root;
mod snapshot;
mod tidy;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::client::{ClientConfig, Manifest, PoolClient, Redundancy};
use crate::fs::meta::{Delta, MetaStore};
use crate::fs::FsError;
use crate::proto::NodeId;
use crate::trust::{Credentials, OwnerKey, PoolKey};
use root::{Lease, Root};
pub use snapshot::SnapshotPace;

/// Longest a change waits before it is copied into the pool: the issue asks for one
/// second after a close, and a flush takes a few milliseconds on a LAN. Not shorter:
/// at 250 ms the flushes (a blob on k + m nodes, a root on every node, each synced)
/// cost a quarter of the small-file create rate on 2 cores (bench/RESULTS.md).
pub const BATCH: Duration = Duration::from_millis(600);
/// Default lease: how long a mount that crashed keeps another mount of its owner out.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Log deltas after which the newest are folded into one blob (`fold`), or, when they
/// are too heavy to fold, a snapshot is taken (and the log starts again): keeps the
/// root small and a recovery's reading short.
pub const MAX_LOG: usize = 64;
/// Log bytes that always allow a snapshot, however small the snapshot.
const MIN_LOG_BYTES: u64 = 4 << 20;
/// Bytes of changes a failed flush keeps for the next one; past this (the pool has
/// been unreachable long) they are dropped and a snapshot carries them instead, so
/// memory stays bounded however long the pool is away.
const PENDING_MAX: usize = 16 << 20;
/// Longest `sync` waits for its flush before it reports failure.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the lease holder removes blobs no root names (`tidy`).
const TIDY_EVERY: Duration = Duration::from_secs(600);
/// BLAKE3 key-derivation context of the namespace identity's static key.
const IDENTITY_CONTEXT: &str = "poolfs 2026-11 namespace identity static key, v1";

/// Why the namespace cannot be mounted as asked.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another mount holds the lease.
    #[error(
        "this owner's namespace is mounted on machine {machine} (its lease runs {secs} s \
         more); unmount it there first, or, if that mount crashed, wait for the lease to \
         run out and try again"
    )]
    Leased {
        /// The holder's machine.
        machine: String,
        /// Seconds until the lease runs out.
        secs: u64,
    },
    /// The pool holds this owner's namespace as another copy of the store wrote it.
    #[error(
        "the pool holds a newer copy of this owner's namespace (written from machine \
         {machine}), not the one in {storage}: this storage is an old copy. To mount the \
         pool's copy, use `poolfs mount --recover` with an empty --storage directory"
    )]
    OtherCopy {
        /// The machine that wrote the pool's copy.
        machine: String,
        /// This storage directory.
        storage: String,
    },
    /// `--recover` found no namespace of this owner in the pool.
    #[error(
        "no namespace of this owner in the pool ({asked} nodes asked, {unreachable} \
         unreachable): check the recovery code, the pool key and that the pool's nodes \
         are up"
    )]
    NotFound {
        /// Up nodes asked.
        asked: usize,
        /// Nodes that did not answer.
        unreachable: usize,
    },
    /// The pool could not be read or written.
    #[error("namespace in the pool: {0}")]
    Pool(String),
    /// The local store could not be read or written.
    #[error("namespace in the pool: {0}")]
    Meta(#[from] FsError),
}

/// The client that stores and reads a namespace's blobs and roots: the namespace
/// identity (derived from `owner`) with `pool_key`, sealing with `owner`'s keys.
///
/// Errors: `KeyError::Crypto` when snow offers no Curve25519.
pub fn namespace_client(
    controller: std::net::SocketAddr,
    pool_key: &PoolKey,
    owner: &Arc<OwnerKey>,
    redundancy: Redundancy,
) -> Result<PoolClient, crate::trust::KeyError> {
    let private = blake3::derive_key(IDENTITY_CONTEXT, owner.bytes());
    let creds = Arc::new(Credentials::from_private(pool_key, private)?);
    let mut cfg = ClientConfig::new(controller, creds, Some(owner.clone()));
    cfg.redundancy = redundancy;
    Ok(PoolClient::new(cfg))
}

/// Refuses a mount while another instance holds an unexpired lease in `root`.
///
/// Errors: `JournalError::Leased`.
pub fn check_lease(root: Option<&Root>, now_ms: u64) -> Result<(), JournalError> {
    match root.and_then(|r| r.lease.as_ref()) {
        Some(l) if l.until_ms > now_ms => Err(JournalError::Leased {
            machine: l.machine.clone(),
            secs: (l.until_ms - now_ms).div_ceil(1000),
        }),
        _ => Ok(()),
    }
}

/// Refuses to mount a local store that is not the copy the pool's root was written
/// from (an old disk back after a recovery): its writes would undo the newer copy's.
///
/// Errors: `JournalError::OtherCopy`.
pub fn check_copy(
    root: Option<&Root>,
    store_id: u64,
    storage: &std::path::Path,
) -> Result<(), JournalError> {
    match root {
        Some(r) if r.store_id != store_id => Err(JournalError::OtherCopy {
            machine: r
                .lease
                .as_ref()
                .map_or_else(|| "(unknown)".into(), |l| l.machine.clone()),
            storage: storage.display().to_string(),
        }),
        _ => Ok(()),
    }
}

/// How a journal starts.
pub struct JournalConfig {
    /// The namespace's client (`namespace_client`).
    pub ns: Arc<PoolClient>,
    /// The mount's data client (frees segments after flushes).
    pub data: Arc<PoolClient>,
    /// The owner secret.
    pub owner: Arc<OwnerKey>,
    /// The runtime the clients run on.
    pub rt: Handle,
    /// How long the lease lasts without renewal (`--lease`).
    pub lease: Duration,
    /// This machine's name (the lease's holder).
    pub machine: String,
    /// The mount's node key (private half) and id, kept in the root.
    pub node_key: [u8; 32],
    /// The mount's node id.
    pub node_id: Option<NodeId>,
    /// The root found in the pool at mount time, if any.
    pub found: Option<Root>,
    /// How snapshots are cut and paced (`SnapshotPace::default()` but in tests).
    pub pace: SnapshotPace,
}

#[derive(Default)]
struct State {
    /// The root last written (or found at start).
    root: Root,
    /// A delta taken but not stored (its flush failed): merged into the next.
    pending: Option<Delta>,
    /// Files whose segments are deleted after the next flush (a file id is never used
    /// again, so a late delete can only remove what nothing names).
    deferred: Vec<Manifest>,
    /// Flushes begun, the last one that succeeded, the last one that failed.
    started: u64,
    last_ok: u64,
    last_failed: u64,
    last_error: Option<String>,
    /// A sync is waiting: flush now.
    urgent: bool,
    /// Stop after a last flush.
    stop: bool,
    /// Another mount took the namespace: this one writes nothing more.
    fenced: bool,
    /// A snapshot is to be taken (at mount, for a leaving node, after a failure).
    need_snapshot: bool,
    /// A snapshot under way began before changes that were dropped (`PENDING_MAX`):
    /// begin it again.
    restart_snapshot: bool,
    /// Leading entries of the root's log that are parts of its snapshot, not deltas.
    snapshot_parts: usize,
    /// No snapshot before this (after a failure).
    snapshot_retry_at: Option<Instant>,
    /// Keys stored and keys at the cut of the snapshot under way, for `status`.
    snapshot_progress: Option<(u64, u64)>,
    /// The chain in the pool holds every change of the store: it was current when
    /// the store was last unmounted cleanly, or a snapshot has been put in place
    /// since this mount began. Until then `sync` waits for that snapshot too.
    caught_up: bool,
    /// A `sync` waits for the snapshot that catches the chain up: store it unpaced.
    hurry: bool,
    /// When the root was last written successfully; when the lease then ends.
    last_root: Option<Instant>,
    lease_until_ms: u64,
    /// No flush before this (after a failure), unless urgent.
    retry_at: Option<Instant>,
    /// Leaving nodes whose root copies go once the next snapshot is stored (a node's
    /// hand-off waits for every other identity's segments to leave it), and those
    /// already cleared.
    leaving: Vec<crate::client::Holder>,
    cleared: std::collections::HashSet<NodeId>,
}

/// The namespace's copy in the pool, kept up to date by a thread (see the module doc).
pub struct Journal {
    meta: Arc<MetaStore>,
    cfg: JournalConfig,
    store_id: u64,
    instance: u64,
    state: Mutex<State>,
    /// The snapshot under way, if any (`snapshot`).
    job: Mutex<Option<snapshot::SnapshotJob>>,
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal(instance {:x})", self.instance)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Journal {
    /// Starts copying `meta`'s changes into the pool: first a root that takes the
    /// lease (before this returns, so a second mount started after it is refused; it
    /// names the chain found in the pool), then the thread, which begins with a
    /// snapshot of the whole store in the background (it catches up a store changed
    /// while the pool was away or by a mount that kept no copy).
    ///
    /// Errors: the store's id cannot be had. A pool that cannot take the first root
    /// is not an error: the thread retries, and `status` says so.
    pub fn start(meta: Arc<MetaStore>, cfg: JournalConfig) -> Result<Arc<Journal>, FsError> {
        meta.track_changes();
        let store_id = meta.store_id()?;
        // A chain this store's last clean unmount left current needs no catching up;
        // any other (a crash, a mount that kept no copy) waits for the first snapshot.
        // Forgotten from now until this mount unmounts cleanly.
        let synced = meta.synced_seq()?;
        let caught_up = cfg
            .found
            .as_ref()
            .is_some_and(|r| r.store_id == store_id && Some(r.seq) == synced);
        meta.set_synced_seq(None)?;
        let mut root = cfg.found.clone().unwrap_or_default();
        root.node_key = cfg.node_key;
        root.node_id = cfg.node_id.or(root.node_id);
        root.store_id = store_id;
        let journal = Arc::new(Journal {
            meta,
            store_id,
            instance: rand::random(),
            state: Mutex::new(State {
                root,
                need_snapshot: true,
                caught_up,
                ..State::default()
            }),
            job: Mutex::new(None),
            changed: Condvar::new(),
            thread: Mutex::new(None),
            cfg,
        });
        journal.flush_once();
        let worker = journal.clone();
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || worker.run())
            .map_err(|e| FsError::Task(format!("cannot start the journal thread: {e}")))?;
        *lock(&journal.thread) = Some(handle);
        Ok(journal)
    }

    /// Waits until every change committed before the call is in the pool (right after
    /// a mount that found the pool's copy behind the store, that includes the first
    /// snapshot, stored unpaced then).
    ///
    /// Errors: `MetaIo` when the flush failed or did not end within `SYNC_TIMEOUT`,
    /// or the namespace was taken by another mount.
    pub fn sync(&self) -> Result<(), FsError> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut st = lock(&self.state);
        let target = st.started + 1;
        st.urgent = true;
        st.hurry |= !st.caught_up;
        self.changed.notify_all();
        loop {
            if st.fenced {
                return Err(FsError::MetaIo(
                    "another mount took this namespace; this one can no longer store it".into(),
                ));
            }
            if st.last_ok >= target && st.caught_up {
                return Ok(());
            }
            if st.last_failed >= target {
                let why = st.last_error.clone().unwrap_or_default();
                return Err(FsError::MetaIo(format!(
                    "namespace not stored in the pool: {why}"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FsError::MetaIo(
                    "namespace not stored in the pool in time".into(),
                ));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Deletes the segments of `file` once the next flush has recorded its removal
    /// (its caller committed that change already); with the namespace taken by another
    /// mount, nothing is deleted (the sweep of the mount that holds it decides).
    pub fn defer_delete(&self, file: Manifest) {
        let mut st = lock(&self.state);
        if !st.fenced {
            st.deferred.push(file);
        }
    }

    /// Is a snapshot under way or asked for?
    #[cfg(test)]
    fn snapshot_pending(&self) -> bool {
        lock(&self.job).is_some() || lock(&self.state).need_snapshot
    }

    /// Has another mount taken this namespace (this one must write nothing more)?
    pub fn fenced(&self) -> bool {
        lock(&self.state).fenced
    }

    /// What `status` shows: how old the copy in the pool is, and the last failure.
    pub fn describe(&self) -> String {
        let st = lock(&self.state);
        let age = st.last_root.map_or("never stored".into(), |t| {
            format!("stored {} ms ago", t.elapsed().as_millis())
        });
        let mut out = format!(
            "namespace in the pool: {age} (root {}, snapshot {} B, {} log blobs)",
            st.root.seq,
            st.root.snapshot_bytes,
            st.root.log.len()
        );
        if let Some((done, of)) = st.snapshot_progress {
            out.push_str(&format!("; new snapshot: {done} of {of} records stored"));
        }
        if st.fenced {
            out.push_str("; TAKEN by another mount, no longer stored");
        } else if let (true, Some(e)) = (st.last_failed > st.last_ok, &st.last_error) {
            out.push_str(&format!("; last flush failed: {e}"));
        }
        out
    }

    /// Stores the last changes, releases the lease and stops the thread (at unmount).
    pub fn close(&self) {
        lock(&self.state).stop = true;
        self.changed.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    fn lease(&self) -> Lease {
        Lease {
            machine: self.cfg.machine.clone(),
            instance: self.instance,
            until_ms: root::now_ms() + self.cfg.lease.as_millis() as u64,
        }
    }

    fn run(&self) {
        let tick = Duration::from_millis(50);
        // The first pass soon after the mount: a crash before it may have left some.
        let mut next_tidy = Instant::now() + tidy::TIDY_AGE.min(TIDY_EVERY);
        let mut next_view = Instant::now();
        loop {
            let (stop, urgent) = {
                let st = lock(&self.state);
                let st = match st.urgent || st.stop {
                    true => st,
                    false => {
                        self.changed
                            .wait_timeout(st, tick)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
                (st.stop, st.urgent)
            };
            if stop {
                self.abandon_snapshot();
                self.flush_once();
                self.release();
                return;
            }
            if Instant::now() >= next_view {
                next_view = Instant::now() + Duration::from_millis(500);
                self.watch_leaving();
            }
            // A fold goes first, even before a sync's flush: it costs the weight of
            // the newest deltas (small), and a steady stream of syncs must not let the
            // root grow past `MAX_LOG` blobs.
            if self.fold_due() {
                self.fold_log();
            } else if self.due(urgent) {
                self.flush_once();
            } else if self.fenced() {
                self.abandon_snapshot();
            } else if self.snapshot_due() {
                self.snapshot_step();
            }
            if Instant::now() >= next_tidy {
                next_tidy = Instant::now() + TIDY_EVERY;
                let root = {
                    let st = lock(&self.state);
                    (!st.fenced && st.last_ok > 0).then(|| st.root.clone())
                };
                if let Some(root) = root {
                    self.cfg.rt.block_on(tidy::tidy(&self.cfg.ns, &root));
                }
            }
        }
    }

    /// Is a flush due: a sync waits, a change has waited `BATCH`, a failed flush may
    /// be retried, or the lease needs renewing (every third of it)?
    fn due(&self, urgent: bool) -> bool {
        let st = lock(&self.state);
        if st.fenced {
            return false;
        }
        if urgent {
            return true;
        }
        if st.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let waited = self
            .meta
            .pending_since()
            .is_some_and(|t| t.elapsed() >= BATCH);
        let renew = st
            .last_root
            .is_none_or(|t| t.elapsed() >= self.cfg.lease / 3);
        waited || renew || st.pending.is_some()
    }

    /// A node that leaves the pool (a member's hand-off, this mount's own unmount)
    /// waits until no other identity's segments are left on it: the namespace's blobs
    /// move off it with a snapshot stored elsewhere (the old blobs are then deleted,
    /// there too), and its root copies are deleted after that.
    fn watch_leaving(&self) {
        let Ok(view) = self.cfg.rt.block_on(self.cfg.ns.view()) else {
            return;
        };
        let mut st = lock(&self.state);
        for n in &view.nodes {
            if n.state == crate::proto::NodeState::Leaving
                && !st.cleared.contains(&n.id)
                && !st.leaving.iter().any(|h| h.node_id == n.id)
            {
                st.leaving.push(crate::client::Holder {
                    node_id: n.id,
                    addr: n.addr,
                });
                st.need_snapshot = true;
            }
        }
    }

    /// Writes a last root without a lease, so another mount need not wait it out.
    fn release(&self) {
        let mut st = lock(&self.state);
        if st.fenced || st.last_failed > st.last_ok {
            return;
        }
        let mut next = st.root.clone();
        next.seq += 1;
        next.lease = None;
        next.written_ms = root::now_ms();
        drop(st);
        let seq = next.seq;
        match self.write_root(&next) {
            Ok(()) => {
                lock(&self.state).root = next;
                // The next mount of this store need not catch the chain up.
                let current = lock(&self.state).caught_up && self.meta.pending_since().is_none();
                if let Err(e) = current
                    .then(|| self.meta.set_synced_seq(Some(seq)))
                    .transpose()
                {
                    log::warn!("cannot note that the namespace in the pool is current: {e}");
                }
            }
            Err(e) => log::warn!("cannot release the namespace's lease: {e}"),
        }
        st = lock(&self.state);
        st.root.lease = None;
    }
}
