//! The controller, the pool's membership service: it answers JOIN / HEARTBEAT / DRAIN /
//! LEAVE / GET / POOL / SCAN from its registry (`registry`), marks a node silent for
//! `DOWN_AFTER` down, and sweeps the LAN for nodes (`discovery`). No file bytes ever
//! pass through it.

pub mod discovery;
pub mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::net::{self, Handler, Peer, Reply, ServerLimits};
use crate::proto::{Assign, ControllerRequest, ErrorKind, Identity, Response};
use crate::trust::{Credentials, KeyError, PoolKey};
pub use discovery::{Discovery, DiscoveryConfig, DiscoveryError, ScanTarget};
pub use registry::{Registry, RegistryError};

/// A node silent for this long is marked down: three missed heartbeats
/// (`node::HEARTBEAT_INTERVAL`).
pub const DOWN_AFTER: Duration = Duration::from_millis(3000);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The state directory (`registry.json`) could not be made, read or written.
    #[error("state directory {path}: {source}")]
    State {
        /// The path involved.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The controller port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The `--scan` targets cannot be swept (checked before the controller starts).
    #[error("cannot sweep the LAN: {0}")]
    Discovery(DiscoveryError),
    /// The pool key or the controller's static key could not be loaded.
    #[error("controller key: {0}")]
    Key(#[from] KeyError),
    /// A `POOLFS_*` limit variable (`LIMIT_VARS`) holds a value that cannot be used.
    #[error("server limits: {0}")]
    Limits(String),
}

struct Shared {
    registry: Mutex<Registry>,
    discovery: Option<Arc<Discovery>>,
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running controller.
pub struct Controller {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Loads the registry from `state`, binds `listen` and serves members holding `key`.
    pub async fn start(
        listen: SocketAddr,
        state: PathBuf,
        key: &PoolKey,
    ) -> Result<Controller, ControllerError> {
        Self::start_with(listen, state, key, None).await
    }

    /// Like `start`, and with `discovery` also sweeps the LAN for nodes: at once, then
    /// every `rescan_interval` and on `Scan` requests. Fails at once if a target cannot
    /// be swept (unknown interface, no permission for raw sockets, ...).
    pub async fn start_with(
        listen: SocketAddr,
        state: PathBuf,
        key: &PoolKey,
        discovery: Option<DiscoveryConfig>,
    ) -> Result<Controller, ControllerError> {
        let state_err = |source| ControllerError::State {
            path: state.clone(),
            source,
        };
        std::fs::create_dir_all(&state).map_err(state_err)?;
        let registry = Registry::load(&state).map_err(state_err)?;
        let creds = Arc::new(Credentials::persistent(key, &state)?);
        let limits = ServerLimits::from_env().map_err(ControllerError::Limits)?;
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| ControllerError::Listen {
                    addr: listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Listen {
                addr: listen,
                source,
            })?;
        let discovery = match discovery {
            Some(cfg) => {
                let d = Discovery::new(cfg, addr, creds.clone());
                d.check().map_err(ControllerError::Discovery)?;
                Some(Arc::new(d))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            registry: Mutex::new(registry),
            discovery,
        });
        log::info!(
            "controller listening on {addr}, state in {}",
            state.display()
        );
        let server = tokio::spawn(net::serve(
            listener,
            Arc::new(ControllerService(shared.clone())),
            limits,
            creds,
        ));
        let mut tasks = vec![server];
        if let Some(d) = shared.discovery.clone() {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    d.sweep(&shared.registry).await;
                    match d.config().rescan_interval {
                        Some(every) => tokio::time::sleep(every).await,
                        None => return,
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                shared.registry().sweep(Instant::now(), DOWN_AFTER);
            }
        }));
        Ok(Controller { addr, tasks })
    }

    /// The address the controller serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The controller's request handler (what `Controller::start` serves).
pub struct ControllerService(Arc<Shared>);

impl ControllerService {
    /// The handler on the registry kept in `state`, without a listener, sweeps or
    /// liveness ticks: requests can be driven straight into it (fuzzing, tests).
    pub fn standalone(state: &std::path::Path) -> std::io::Result<ControllerService> {
        let registry = Registry::load(state)?;
        Ok(ControllerService(Arc::new(Shared {
            registry: Mutex::new(registry),
            discovery: None,
        })))
    }

    /// A sweep on request; an error only when nothing at all could be swept.
    async fn scan(&self) -> Response {
        let Some(d) = &self.0.discovery else {
            return Response::error(
                ErrorKind::BadRequest,
                "this controller was started without --scan: it has no LAN to sweep",
            );
        };
        let report = d.sweep(&self.0.registry).await;
        if report.swept == 0 && !report.errors.is_empty() {
            return Response::error(ErrorKind::Internal, report.errors.join("; "));
        }
        Response::Scanned(report)
    }
}

fn registry_error(e: RegistryError) -> Response {
    let kind = match e {
        RegistryError::Unknown(_) => ErrorKind::NotFound,
        RegistryError::Impostor(_) => ErrorKind::Unauthorized,
    };
    Response::error(kind, e.to_string())
}

/// The answer to a peer that claims an identity its static key does not own.
fn impostor(peer: &Peer, identity: Identity) -> Response {
    log::warn!(
        "{} claimed identity {identity:?}, which belongs to another key",
        peer.addr
    );
    Response::error(
        ErrorKind::Unauthorized,
        format!("identity {identity:?} does not belong to the key this connection proved"),
    )
}

impl Handler for ControllerService {
    type Request = ControllerRequest;

    async fn handle(&self, req: ControllerRequest, _body: Option<Vec<u8>>, peer: Peer) -> Reply {
        match req {
            // A sweep takes seconds: it runs without the registry locked.
            ControllerRequest::Scan => self.scan().await.into(),
            req => self.membership(req, &peer).into(),
        }
    }
}

impl ControllerService {
    /// The answer to a membership request, from the registry.
    fn membership(&self, req: ControllerRequest, peer: &Peer) -> Response {
        let now = Instant::now();
        let mut reg = self.0.registry();
        match req {
            ControllerRequest::Join {
                identity,
                listen,
                capacity,
                used,
                machine,
                disk,
                id,
            } => 'join: {
                // An id is bound to the static key its node proved in the handshake.
                if !peer.owns(identity) {
                    break 'join impostor(peer, identity);
                }
                // A node bound to 0.0.0.0 is reached at the address it connected from.
                let addr = if listen.ip().is_unspecified() {
                    SocketAddr::new(peer.addr.ip(), listen.port())
                } else {
                    listen
                };
                let node_id = reg.join(identity, addr, (capacity, used), &machine, id, now);
                reg.set_disk(node_id, disk);
                log::info!("node {node_id} joined from {addr}");
                Response::Assigned(Assign {
                    controller: peer.local,
                    node_id,
                    pool_size: reg.live_count() as u32,
                    epoch: reg.view(now).epoch,
                })
            }
            ControllerRequest::Heartbeat { identity, .. } if !peer.owns(identity) => {
                impostor(peer, identity)
            }
            ControllerRequest::Heartbeat {
                node_id,
                identity,
                capacity,
                used,
                machine,
                disk,
            } => match reg.heartbeat(node_id, identity, (capacity, used), &machine, now) {
                Ok(()) => {
                    reg.set_disk(node_id, disk);
                    Response::Pool(reg.view(now))
                }
                Err(e) => registry_error(e),
            },
            ControllerRequest::Leave { identity, .. } if !peer.owns(identity) => {
                impostor(peer, identity)
            }
            ControllerRequest::Leave { node_id, identity } => match reg.leave(node_id, identity) {
                Ok(()) => Response::Ok,
                Err(e) => registry_error(e),
            },
            ControllerRequest::Drain { identity, .. } if !peer.owns(identity) => {
                impostor(peer, identity)
            }
            ControllerRequest::Drain { node_id, identity } => match reg.drain(node_id, identity) {
                Ok(()) => Response::Ok,
                Err(e) => registry_error(e),
            },
            ControllerRequest::Get { node_id } => match reg.view(now).node(node_id) {
                Some(info) => Response::Node(info.clone()),
                None => registry_error(RegistryError::Unknown(node_id)),
            },
            ControllerRequest::Pool => Response::Pool(reg.view(now)),
            // `handle` answers SCAN itself, with a sweep.
            ControllerRequest::Scan => Response::error(
                ErrorKind::Internal,
                "SCAN is answered by a sweep, not from the registry",
            ),
        }
    }
}
