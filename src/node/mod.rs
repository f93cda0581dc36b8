//! The storage node: `Node` starts one (storage lock, identity, segment store, listener)
//! and leaves; `service` answers STORE / FWD / RESERVE / PUNCH / DELETE / STAT / ASSIGN
//! from the segment store (`store`), `membership` joins and heartbeats, `pin` decides whom
//! it takes ASSIGN from, `remembered` keeps the id it was given on its disk, and
//! `handoff` waits for owners to move segments before a leave.

mod handles;
pub mod handoff;
mod machine;
mod membership;
mod pin;
mod remembered;
mod segfile;
mod service;
mod space;

pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::net::{self, ConnPool, NetError, ServerLimits};
use crate::proto::{
    Assign, ControllerRequest, Disk, ErrorKind, Identity, NodeId, NodeStat, PoolView, Reclaim,
    Response, SegmentPage, SegmentRef,
};
use crate::trust::{Credentials, KeyError, PoolKey};
pub use machine::default_machine_name;
use membership::membership_loop;
use pin::ControllerPin;
pub use remembered::{load_node_id, save_node_id, NODE_ID_FILE};
use service::store_error;
pub use service::NodeService;
pub use store::{SegmentStore, StoreError, MAX_SEGMENT_END};

/// How often a node tells the controller it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's storage directory: segments, its static key (`node.key`), the
    /// pinned controller key and the id it was last given (`node.id`).
    pub storage: PathBuf,
    /// Where the node listens for requests.
    pub listen: SocketAddr,
    /// Join this controller at once; without it the node waits for the controller's signal.
    pub controller: Option<SocketAddr>,
    /// Bytes the node offers (allocated on its disk); defaults to the free space of the
    /// storage filesystem.
    pub capacity: Option<u64>,
    /// Bytes one owner (one member's static key) may hold here, allocated; `None`: up to
    /// the capacity.
    pub quota: Option<u64>,
    /// The pool key every connection proves.
    pub key: PoolKey,
    /// The machine this node runs on, sent in JOIN and HEARTBEAT so that placement puts
    /// no two shards of a stripe on one machine (`--machine`; by default
    /// `default_machine_name`).
    pub machine: String,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The storage directory could not be made or read.
    #[error("storage {path}: {source}")]
    Storage {
        /// The path involved.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The segment store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node port could not be bound.
    #[error("cannot listen on {addr}: {source}{}", in_use_hint(source))]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The pool key or the node's static key could not be loaded.
    #[error("node key: {0}")]
    Key(#[from] KeyError),
    /// A `POOLFS_*` limit variable (`LIMIT_VARS`) holds a value that cannot be used.
    #[error("server limits: {0}")]
    Limits(String),
}

/// What to do when the node's port is taken: mostly another node of this machine holds
/// it (a mount's node and a `poolfs node` both default to port 2001).
fn in_use_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process (a node of this machine?) listens there: give this one \
             another port with --listen ADDR:PORT (listen=ADDR:PORT for mount -t poolfs)"
        }
        _ => "",
    }
}

#[derive(Default)]
struct Membership {
    /// The id the controller gave this node in this run.
    node_id: Option<NodeId>,
    /// The id it asks for in JOIN: the last one it was given, in this run or before
    /// (`STORAGE/node.id`).
    remembered: Option<NodeId>,
    view: PoolView,
    assign: Option<Assign>,
}

struct Shared {
    /// The storage directory, where `node.id` is kept; `None` keeps the id in memory
    /// only (a handler run without storage, for fuzzing).
    storage: Option<PathBuf>,
    store: SegmentStore,
    identity: Identity,
    /// Whom ASSIGN is taken from (see `ControllerPin`).
    pin: ControllerPin,
    creds: Arc<Credentials>,
    listen: SocketAddr,
    /// The machine this node runs on (`NodeConfig::machine`).
    machine: String,
    membership: Mutex<Membership>,
    controller: watch::Sender<Option<SocketAddr>>,
}

impl Shared {
    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stat(&self) -> NodeStat {
        let (used, segments) = self.store.usage();
        let m = self.membership();
        NodeStat {
            // Before a controller answers, the id remembered from before: a sweep by a
            // controller that lost its registry gives it back.
            node_id: m.node_id.or(m.remembered),
            identity: self.identity,
            controller: *self.controller.borrow(),
            capacity: self.store.capacity(),
            used,
            segments,
        }
    }

    /// The filesystem of the storage directory, for the controller (`NodeInfo::disk`);
    /// not known (all zero) without storage or when statvfs fails.
    fn disk(&self) -> Disk {
        let Some(storage) = &self.storage else {
            return Disk::default();
        };
        Disk::of(storage).unwrap_or_else(|e| {
            log::debug!("cannot statvfs {}: {e}", storage.display());
            Disk::default()
        })
    }

    fn accept_assign(&self, assign: Assign) {
        log::info!(
            "controller says: {},{},{} (controller, node id, pool size)",
            assign.controller,
            assign.node_id,
            assign.pool_size
        );
        let new_id = {
            let mut m = self.membership();
            m.node_id = Some(assign.node_id);
            m.assign = Some(assign.clone());
            let new_id = m.remembered != Some(assign.node_id);
            m.remembered = Some(assign.node_id);
            new_id
        };
        // Only a change is written (one small synced file): a controller that forgets
        // this node gets this id asked for in the next JOIN.
        if let (true, Some(storage)) = (new_id, &self.storage) {
            if let Err(e) = save_node_id(storage, assign.node_id) {
                log::error!(
                    "cannot remember node id {} in {}: {e}; a controller that loses its \
                     registry may give this node another id",
                    assign.node_id,
                    storage.join(NODE_ID_FILE).display()
                );
            }
        }
        self.controller.send_replace(Some(assign.controller));
    }
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// The controller accepted this node's DRAIN: a second hand-off (a mount's, after
    /// its own files') does not announce it again.
    drained: AtomicBool,
    /// Nothing listened at the controller's address when this node tried to say it
    /// leaves: it has stopped, and the LEAVE is not tried (nor logged) again.
    controller_gone: AtomicBool,
    // Held for the node's lifetime: the lock that keeps a second process off this storage.
    _lock: std::fs::File,
}

impl Node {
    /// Opens the store, binds the port, and starts serving and (if a controller is
    /// known) joining. Must be called inside a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&cfg.storage).map_err(|source| NodeError::Storage {
            path: cfg.storage.clone(),
            source,
        })?;
        let storage_err = |source| NodeError::Storage {
            path: cfg.storage.clone(),
            source,
        };
        // A second node on the same storage would join with the same identity and take
        // over the running node's place in the pool: refuse it before it says anything.
        let lock = crate::util::lock_dir(&cfg.storage).map_err(storage_err)?;
        // The node's identity is its static Noise key: only its holder can claim it.
        let creds = Arc::new(Credentials::persistent(&cfg.key, &cfg.storage)?);
        let identity = creds.identity();
        let capacity = match cfg.capacity {
            Some(c) => {
                // Allowed (the disk may grow, or be shared on purpose), but say so: the
                // pool will plan on room this disk does not have.
                if let Ok(free) = crate::util::available_space(&cfg.storage) {
                    if c > free {
                        log::warn!(
                            "--capacity {} is more than the {} free on the disk of {}: the \
                             pool may place more here than fits, and stores past the free \
                             space will fail with ENOSPC",
                            crate::util::human_size(c),
                            crate::util::human_size(free),
                            cfg.storage.display()
                        );
                    }
                }
                c
            }
            None => crate::util::available_space(&cfg.storage).map_err(storage_err)?,
        };
        let store = SegmentStore::open(&cfg.storage, capacity, cfg.quota)?;
        let limits = ServerLimits::from_env().map_err(NodeError::Limits)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| NodeError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let (controller, controller_rx) = watch::channel(cfg.controller);
        let pin = ControllerPin::load(&cfg.storage, cfg.controller).map_err(storage_err)?;
        let membership = Membership {
            remembered: load_node_id(&cfg.storage),
            ..Membership::default()
        };
        let shared = Arc::new(Shared {
            storage: Some(cfg.storage.clone()),
            store,
            identity,
            pin,
            creds: creds.clone(),
            listen: addr,
            machine: cfg.machine.clone(),
            membership: Mutex::new(membership),
            controller,
        });
        if cfg.controller.is_none() {
            log::info!("node listening on {addr}; awaiting the controller's signal...");
        } else {
            log::info!("node listening on {addr}");
        }
        let server = tokio::spawn(net::serve(
            listener,
            Arc::new(NodeService(shared.clone())),
            limits,
            creds,
        ));
        let membership = tokio::spawn(membership_loop(shared.clone(), controller_rx));
        Ok(Node {
            shared,
            addr,
            tasks: vec![server, membership],
            drained: AtomicBool::new(false),
            controller_gone: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// The address the node serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id the controller gave this node, once it has one.
    pub fn node_id(&self) -> Option<NodeId> {
        self.shared.membership().node_id
    }

    /// This node's segment store as seen by a client in this same process that proves
    /// this node's own static key (a mount and its node): the segments such a client
    /// would reach over the network, without the network.
    pub fn own_segments(&self) -> OwnSegments {
        OwnSegments(self.shared.clone())
    }

    /// The last pool view this node received.
    pub fn view(&self) -> PoolView {
        self.shared.membership().view.clone()
    }

    /// The credentials this node proves (pool key and its persistent static key).
    pub fn credentials(&self) -> Arc<Credentials> {
        self.shared.creds.clone()
    }

    /// The controller this node reports to, if known.
    pub fn controller(&self) -> Option<SocketAddr> {
        *self.shared.controller.borrow()
    }

    /// Capacity and usage of this node's store.
    pub fn stat(&self) -> NodeStat {
        self.shared.stat()
    }

    /// Waits until the controller has admitted this node.
    pub async fn wait_joined(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(id) = self.node_id() {
                return Some(id);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells the controller this node is about to leave (DRAIN), so owners move its
    /// segments elsewhere while it still serves them. False if there is no controller
    /// to tell: then there is no hand-off to wait for.
    pub async fn announce_leaving(&self) -> bool {
        if self.drained.load(Ordering::Relaxed) {
            return true;
        }
        let Some(node_id) = self.node_id() else {
            return false;
        };
        if self.controller_gone.load(Ordering::Relaxed) {
            return false;
        }
        let req = ControllerRequest::Drain {
            node_id,
            identity: self.shared.identity,
        };
        match self.tell_controller(&req).await {
            Some(Ok(())) => {
                log::info!("node {node_id} is leaving: waiting for its segments to move");
                self.drained.store(true, Ordering::Relaxed);
                true
            }
            Some(Err(e)) => {
                self.untold(
                    &format!("no hand-off: cannot tell the controller that node {node_id} leaves"),
                    &e,
                );
                false
            }
            None => false,
        }
    }

    /// Logs why the controller was not told of this node's leaving (`what`, then `e`):
    /// at INFO when nothing listens at its address (it has stopped: `poolfs down` stops
    /// a pool's controller before its nodes, which then have no one to tell and nothing
    /// to hand off; it is not tried again), at WARN for any other failure.
    fn untold(&self, what: &str, e: &NetError) {
        match e {
            NetError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                self.controller_gone.store(true, Ordering::Relaxed);
                log::info!("{what}: {e} (the controller has stopped)")
            }
            _ => log::warn!("{what}: {e}"),
        }
    }

    /// Sends one membership request of this node's own (DRAIN, LEAVE) to its
    /// controller on a short-lived connection; `None` without a controller.
    async fn tell_controller(&self, req: &ControllerRequest) -> Option<Result<(), NetError>> {
        let addr = self.controller()?;
        let pool = ConnPool::new(
            self.shared.creds.clone(),
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        Some(pool.call(addr, req, None).await.map(|_| ()))
    }

    /// Bytes this node holds for owners other than itself.
    pub fn foreign_bytes(&self) -> u64 {
        let (used, _) = self.shared.store.usage();
        used.saturating_sub(self.shared.store.owner_usage(&self.shared.identity))
    }

    /// Bytes this node holds for its own key (a mount's own files).
    pub fn own_bytes(&self) -> u64 {
        self.shared.store.owner_usage(&self.shared.identity)
    }

    /// The hand-off before a leave: announces it and keeps serving until the other
    /// members have moved their segments away (or nothing moves for a while). A mount
    /// moves its own files' segments itself before calling this.
    pub async fn hand_off(&self) {
        if self.foreign_bytes() == 0 || !self.announce_leaving().await {
            return;
        }
        let mut watch = handoff::Handoff::new(self.foreign_bytes(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match watch.observe(self.foreign_bytes(), Instant::now()) {
                handoff::HandoffStep::Wait => continue,
                handoff::HandoffStep::Done => {
                    log::info!(
                        "hand-off complete: the segments this node held for other owners \
                         have moved off it"
                    );
                    return;
                }
                handoff::HandoffStep::GiveUp(left) => {
                    log::warn!(
                        "leaving with {left} bytes held for other owners still here: nothing \
                         moved for a while (no spare node, or their owners are away). Their \
                         files that have parity on other nodes stay readable; those without \
                         cannot be read until this node returns"
                    );
                    return;
                }
            }
        }
    }

    /// Tells the controller this node leaves, then stops serving.
    pub async fn leave(self) {
        for t in &self.tasks {
            t.abort();
        }
        let Some(node_id) = self.node_id() else {
            return;
        };
        if self.controller_gone.load(Ordering::Relaxed) {
            return;
        }
        let req = ControllerRequest::Leave {
            node_id,
            identity: self.shared.identity,
        };
        match self.tell_controller(&req).await {
            Some(Ok(())) => log::info!("node {node_id} left the pool"),
            Some(Err(e)) => self.untold(
                &format!("could not tell the controller that node {node_id} leaves"),
                &e,
            ),
            None => {}
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why this node refused a call on its own segments: the kind and message a remote
/// caller would get in its `Response::Error` for the same request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// How a client should take it (`NoSpace` is ENOSPC, `Quota` EDQUOT, ...).
    pub kind: ErrorKind,
    /// The store's own description, naming the segment and the cause.
    pub message: String,
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match store_error(e) {
            Response::Error { kind, message } => Refusal { kind, message },
            other => Refusal {
                kind: ErrorKind::Internal,
                message: format!("{other:?}"),
            },
        }
    }
}

/// See `Node::own_segments`. Every call is blocking disk work (callers run it on the
/// blocking pool) and fails with the `Refusal` a remote caller would get.
#[derive(Clone)]
pub struct OwnSegments(Arc<Shared>);

impl std::fmt::Debug for OwnSegments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnSegments(node {:?})", self.node_id())
    }
}

impl OwnSegments {
    /// The id the controller gave this node, once it has one.
    pub fn node_id(&self) -> Option<NodeId> {
        self.0.membership().node_id
    }

    fn owner(&self) -> Identity {
        self.0.creds.identity()
    }

    /// As a STORE from this node's own key: durable when it returns.
    pub fn store(&self, seg: &SegmentRef, offset: u64, data: &[u8]) -> Result<(), Refusal> {
        Ok(self.0.store.store(&self.owner(), seg, offset, data)?)
    }

    /// As a RESERVE from this node's own key: bytes `offset..offset+len` of `seg` are
    /// allocated when it returns `Ok`, and nothing is when it is refused.
    pub fn reserve(&self, seg: &SegmentRef, offset: u64, len: u64) -> Result<(), Refusal> {
        Ok(self.0.store.reserve(&self.owner(), seg, offset, len)?)
    }

    /// As a PUNCH from this node's own key: bytes `offset..offset+len` of `seg` are freed
    /// (a segment that does not exist is fine).
    pub fn punch(&self, seg: &SegmentRef, offset: u64, len: u64) -> Result<(), Refusal> {
        self.0.store.punch(&self.owner(), seg, offset, len)?;
        Ok(())
    }

    /// As a FWD (one range of `len` bytes from `offset`, read ahead) from this node's
    /// own key.
    pub fn fwd(&self, seg: &SegmentRef, offset: u64, len: u32) -> Result<Vec<u8>, Refusal> {
        Ok(self.0.store.fwd(&self.owner(), seg, offset, len)?)
    }

    /// As a FWD-PARTS (a few small `(offset, len)` ranges, no readahead) from this
    /// node's own key: their bytes one after the other.
    pub fn fwd_parts(&self, seg: &SegmentRef, parts: &[(u64, u32)]) -> Result<Vec<u8>, Refusal> {
        Ok(self.0.store.fwd_parts(&self.owner(), seg, parts)?)
    }

    /// As a DELETE from this node's own key: every segment of `file` is removed
    /// (an unknown file is fine).
    pub fn delete(&self, file: &str) -> Result<(), Refusal> {
        self.0.store.delete(&self.owner(), file)?;
        Ok(())
    }

    /// As a LIST from this node's own key: up to `limit` (1 to `MAX_LIST_PAGE`, else
    /// `BadRequest`) of its segments after `after`.
    pub fn list(&self, after: Option<&SegmentRef>, limit: u32) -> Result<SegmentPage, Refusal> {
        if limit == 0 || limit > crate::proto::MAX_LIST_PAGE {
            return Err(Refusal {
                kind: ErrorKind::BadRequest,
                message: format!("LIST of {limit} segments"),
            });
        }
        Ok(self.0.store.list(&self.owner(), after, limit as usize)?)
    }

    /// As a DELETE-SEGMENT from this node's own key: `seg` goes (or, with `keep`, all
    /// of it but those `(offset, len)` ranges) unless written in the last
    /// `older_than_ms` milliseconds.
    pub fn delete_segment(
        &self,
        seg: &SegmentRef,
        keep: &[(u64, u64)],
        older_than_ms: u64,
    ) -> Result<Reclaim, Refusal> {
        Ok(self
            .0
            .store
            .delete_segment(&self.owner(), seg, keep, older_than_ms)?)
    }
}
