//! Finding nodes on the LAN: ARP sweep, probe of the node port, ASSIGN to each node found.
//!
//! The pure part (what to sweep and which addresses: `plan`; ARP frames in and out:
//! `arp`) is separate from the part that touches the network (`arp::arp_sweep`, and
//! here `probe` and `Discovery::sweep`), so it can be tested without privileges.

mod arp;
mod plan;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::StreamExt;
use pnet::ipnetwork::Ipv4Network;

use super::Registry;
use crate::net::{Connection, NetError};
use crate::proto::{
    Assign, FoundNode, NodeId, NodeRequest, NodeStat, NodeState, Response, ScanReport,
};
use crate::trust::{identity_of, Credentials};
pub use arp::{arp_request, arp_sweep, check_plan, parse_arp_reply, ARP_FRAME_LEN};
pub use plan::{
    host_addresses, host_count, local_interfaces, plan, Interface, ScanTarget, SweepPlan,
};

/// Default port a sweep probes for nodes (the node's default listen port).
pub const DEFAULT_NODE_PORT: u16 = 2001;
/// Largest number of addresses one target may cover: a /20.
pub const MAX_SWEEP_HOSTS: usize = 4096;
/// How long the sweep listens for late ARP replies after its last request.
pub const DEFAULT_ARP_WAIT: Duration = Duration::from_millis(1000);
/// How long a responder gets to accept, shake hands and answer STAT.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Responders probed at the same time.
const PROBE_CONCURRENCY: usize = 256;

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--scan` names an interface this machine lacks.
    #[error("no network interface named {name:?} (interfaces here: {available})")]
    NoInterface {
        /// The name given.
        name: String,
        /// The interfaces of this machine, for the message.
        available: String,
    },
    /// The named interface is the loopback one.
    #[error("interface {0} is the loopback interface: there is no LAN to sweep on it")]
    Loopback(String),
    /// The named interface is down.
    #[error("interface {0} is down")]
    Down(String),
    /// The named interface has no Ethernet address.
    #[error("interface {0} has no Ethernet address, so it cannot send ARP requests")]
    NoMac(String),
    /// The named interface has no IPv4 address.
    #[error("interface {0} has no IPv4 subnet to sweep")]
    NoIpv4(String),
    /// No interface's subnet overlaps the CIDR given.
    #[error("no interface is on a subnet that overlaps {cidr} (subnets here: {available})")]
    NoRoute {
        /// The CIDR given.
        cidr: Ipv4Network,
        /// The subnets of this machine, for the message.
        available: String,
    },
    /// The range holds more than `MAX_SWEEP_HOSTS` addresses.
    #[error(
        "{range} has {hosts} addresses; a sweep covers at most {MAX_SWEEP_HOSTS} \
         (pass --scan with a smaller CIDR)"
    )]
    TooLarge {
        /// The range to sweep.
        range: Ipv4Network,
        /// Addresses in it.
        hosts: usize,
    },
    /// The raw socket was refused for lack of `CAP_NET_RAW`.
    #[error(
        "cannot open a raw socket on {iface}: {source} (an ARP sweep needs root or \
         CAP_NET_RAW; run the controller as root or `setcap cap_net_raw+ep` its binary)"
    )]
    NotPermitted {
        /// The interface.
        iface: String,
        /// The refusal.
        source: std::io::Error,
    },
    /// The raw socket could not be opened for another reason.
    #[error("cannot open a raw socket on {iface}: {source}")]
    Channel {
        /// The interface.
        iface: String,
        /// The failure.
        source: std::io::Error,
    },
    /// pnet offered a channel that is not Ethernet.
    #[error("interface {0} does not offer an Ethernet channel")]
    NotEthernet(String),
    /// Sending an ARP request failed.
    #[error("sending ARP requests on {iface} failed: {source}")]
    Send {
        /// The interface.
        iface: String,
        /// The failure.
        source: std::io::Error,
    },
    /// Reading ARP replies failed.
    #[error("reading ARP replies on {iface} failed: {source}")]
    Receive {
        /// The interface.
        iface: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// Asks `addr` for its STAT over the real protocol; only a poolfs node answers.
/// A node must hold the pool key, and the identity it reports must be the one its
/// static key owns.
pub async fn probe(
    addr: SocketAddr,
    creds: &Credentials,
    timeout: Duration,
) -> Result<NodeStat, NetError> {
    let attempt = async {
        let mut conn = Connection::connect(addr, creds, timeout).await?;
        match conn.call(&NodeRequest::Stat, None).await? {
            (Response::Stat(stat), _) if stat.identity != identity_of(conn.remote_key()) => {
                Err(NetError::Unexpected {
                    addr,
                    what: format!(
                        "identity {:?} that its key does not own in STAT",
                        stat.identity
                    ),
                })
            }
            (Response::Stat(stat), _) => Ok(stat),
            (other, _) => Err(NetError::Unexpected {
                addr,
                what: format!("{other:?} to STAT"),
            }),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| NetError::Timeout {
            addr,
            secs: timeout.as_secs_f64(),
        })?
}

/// Probes every responder concurrently; returns the nodes among them with their STAT.
async fn probe_all(
    responders: Vec<(Ipv4Addr, Ipv4Addr)>,
    port: u16,
    timeout: Duration,
    creds: &Credentials,
) -> Vec<(SocketAddr, Ipv4Addr, NodeStat)> {
    let results: Vec<Option<(SocketAddr, Ipv4Addr, NodeStat)>> = futures::stream::iter(responders)
        .map(move |(ip, our)| async move {
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            match probe(addr, creds, timeout).await {
                Ok(stat) => Some((addr, our, stat)),
                Err(e) => {
                    log::debug!("{ip} is not a node: {e}");
                    None
                }
            }
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// How the controller sweeps.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// What to sweep: interfaces and CIDRs (`--scan`); empty sweeps nothing.
    pub targets: Vec<ScanTarget>,
    /// Port probed on every responder.
    pub node_port: u16,
    /// Time between sweeps; None sweeps only at start and on request.
    pub rescan_interval: Option<Duration>,
    /// How long to listen for ARP replies after the last request is sent
    /// (`DEFAULT_ARP_WAIT`, 1 s).
    pub arp_wait: Duration,
    /// How long a responder has to answer the node port's STAT
    /// (`DEFAULT_PROBE_TIMEOUT`, 1 s).
    pub probe_timeout: Duration,
}

impl DiscoveryConfig {
    /// Defaults for sweeping `targets`.
    pub fn new(targets: Vec<ScanTarget>) -> Self {
        DiscoveryConfig {
            targets,
            node_port: DEFAULT_NODE_PORT,
            rescan_interval: None,
            arp_wait: DEFAULT_ARP_WAIT,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
        }
    }
}

/// The controller's sweeper: one sweep at a time, on a timer or on request.
pub struct Discovery {
    cfg: DiscoveryConfig,
    /// Where the controller listens; an unspecified address is replaced by our address
    /// on the swept subnet in ASSIGN.
    listen: SocketAddr,
    /// What the controller proves to the nodes it probes and signals.
    creds: Arc<Credentials>,
    running: tokio::sync::Mutex<()>,
}

/// A responder keyed by its address, with our address on its subnet.
pub type Responders = BTreeMap<Ipv4Addr, Ipv4Addr>;

impl Discovery {
    /// A sweeper for a controller listening on `listen`.
    pub fn new(cfg: DiscoveryConfig, listen: SocketAddr, creds: Arc<Credentials>) -> Self {
        Discovery {
            cfg,
            listen,
            creds,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DiscoveryConfig {
        &self.cfg
    }

    /// Checks that every target can be swept, without sending anything.
    pub fn check(&self) -> Result<(), DiscoveryError> {
        let ifaces = local_interfaces();
        for target in &self.cfg.targets {
            check_plan(&plan(target, &ifaces)?)?;
        }
        Ok(())
    }

    /// The controller address a node on the subnet where we are `our_ip` should use.
    fn controller_for(&self, our_ip: Ipv4Addr) -> SocketAddr {
        if self.listen.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(our_ip), self.listen.port())
        } else {
            self.listen
        }
    }

    /// Sweeps every target, then probes the responders and signals the nodes found.
    pub async fn sweep(&self, registry: &Mutex<Registry>) -> ScanReport {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let mut report = ScanReport::default();
        let mut responders = Responders::new();
        for target in &self.cfg.targets {
            let plan = match plan(target, &local_interfaces()) {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("cannot sweep {target}: {e}");
                    report.errors.push(format!("{target}: {e}"));
                    continue;
                }
            };
            let t0 = Instant::now();
            let wait = self.cfg.arp_wait;
            let swept = tokio::task::spawn_blocking(move || {
                let found = arp_sweep(&plan, wait);
                (plan, found)
            })
            .await;
            match swept {
                Ok((plan, Ok(found))) => {
                    log::info!(
                        "ARP sweep of {} on {} (--scan {}): {} of {} addresses answered in {:.2}s",
                        plan.range,
                        plan.iface,
                        target,
                        found.len(),
                        plan.targets().len(),
                        t0.elapsed().as_secs_f64()
                    );
                    report.swept += plan.targets().len() as u64;
                    for ip in found {
                        responders.entry(ip).or_insert(plan.our_ip);
                    }
                }
                Ok((_, Err(e))) => {
                    log::warn!("sweep of {target} failed: {e}");
                    report.errors.push(format!("{target}: {e}"));
                }
                Err(e) => report
                    .errors
                    .push(format!("{target}: sweep task failed: {e}")),
            }
        }
        report.arp_ms = started.elapsed().as_millis() as u64;
        report.responders = responders.keys().map(|ip| IpAddr::V4(*ip)).collect();
        let t1 = Instant::now();
        let adopted = self.adopt(&responders, registry).await;
        report.probe_ms = t1.elapsed().as_millis() as u64;
        report.nodes = adopted.nodes;
        report.elsewhere = adopted.elsewhere;
        report.epoch = adopted.epoch;
        log::info!(
            "sweep done in {:.2}s: {} hosts answered, {} nodes ({} new), epoch {}",
            started.elapsed().as_secs_f64(),
            report.responders.len(),
            report.nodes.len(),
            report.nodes.iter().filter(|n| n.new).count(),
            report.epoch
        );
        report
    }

    /// Probes the responders on the node port, gives every node found its id (the one it
    /// had, or the next one, in address order) and sends ASSIGN to those that need it.
    /// A node we do not know that reports to another controller is left alone. Returns
    /// a report with `nodes`, `elsewhere` and `epoch` filled in.
    pub async fn adopt(&self, responders: &Responders, registry: &Mutex<Registry>) -> ScanReport {
        let port = self.cfg.node_port;
        let timeout = self.cfg.probe_timeout;
        let list: Vec<(Ipv4Addr, Ipv4Addr)> =
            responders.iter().map(|(ip, our)| (*ip, *our)).collect();
        let mut probed = probe_all(list, port, timeout, &self.creds).await;
        probed.sort_by_key(|(addr, _, _)| *addr);

        let mut found = Vec::new();
        let mut elsewhere = Vec::new();
        let mut to_assign: Vec<(NodeId, SocketAddr, Ipv4Addr)> = Vec::new();
        let (pool_size, epoch) = {
            let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for (addr, our, stat) in &probed {
                let known = reg.member(stat.identity);
                match stat.controller {
                    Some(theirs) if known.is_none() && theirs != self.controller_for(*our) => {
                        log::info!(
                            "{addr} is a node of the pool of the controller at {theirs}; \
                             leaving it alone"
                        );
                        elsewhere.push(*addr);
                        continue;
                    }
                    _ => {}
                }
                if let Some((id, NodeState::Up)) = known {
                    if stat.node_id == Some(id) {
                        // A member in good standing: nothing to tell it.
                        found.push(FoundNode {
                            id,
                            addr: *addr,
                            new: false,
                            assigned: false,
                        });
                        continue;
                    }
                }
                // STAT does not name the machine: the node's own JOIN or heartbeat will.
                // It names the id the node had, which a registry rebuilt from nothing
                // gives back (manifests name holders by id).
                let id = reg.join(
                    stat.identity,
                    *addr,
                    (stat.capacity, stat.used),
                    "",
                    stat.node_id,
                    now,
                );
                if known.is_none() {
                    log::info!("sweep found a new node at {addr}: id {id}");
                } else {
                    log::info!("sweep found node {id} at {addr}");
                }
                found.push(FoundNode {
                    id,
                    addr: *addr,
                    new: known.is_none(),
                    assigned: true,
                });
                to_assign.push((id, *addr, *our));
            }
            (reg.live_count() as u32, reg.view(now).epoch)
        };

        let signals = to_assign.iter().map(|(node_id, addr, our)| {
            let assign = Assign {
                controller: self.controller_for(*our),
                node_id: *node_id,
                pool_size,
                epoch,
            };
            async move {
                let sent = async {
                    let mut conn = Connection::connect(*addr, &self.creds, timeout).await?;
                    conn.call(&NodeRequest::Assign(assign.clone()), None).await
                };
                match sent.await {
                    Ok(_) => log::info!(
                        "sent ASSIGN to node {node_id} at {addr}: {},{},{}",
                        assign.controller,
                        node_id,
                        pool_size
                    ),
                    Err(e) => log::warn!("could not send ASSIGN to node {node_id} at {addr}: {e}"),
                }
            }
        });
        futures::future::join_all(signals).await;
        ScanReport {
            epoch,
            nodes: found,
            elsewhere,
            ..ScanReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node of the pool `key` on a free loopback port, storing in `storage`, with no
    /// controller yet.
    async fn loopback_node(
        storage: &std::path::Path,
        key: &crate::trust::PoolKey,
    ) -> crate::node::Node {
        crate::node::Node::start(crate::node::NodeConfig {
            storage: storage.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            controller: None,
            capacity: Some(1 << 20),
            quota: None,
            key: key.clone(),
            machine: "test".into(),
        })
        .await
        .unwrap()
    }

    /// A node on loopback, a foreign listener, a closed port and another pool's node, all
    /// on one port number: only the first node is counted, gets id 1 and ASSIGN, and a
    /// second adoption leaves it be.
    #[tokio::test]
    async fn probe_counts_only_real_nodes_and_assigns_them() {
        use crate::node::{Node, NodeConfig};
        use tokio::io::AsyncWriteExt;

        let dir = tempfile::tempdir().unwrap();
        let key = crate::trust::PoolKey::generate();
        let node = loopback_node(dir.path(), &key).await;
        let port = node.addr().port();
        // A node of another pool, on the same port of another address.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Node::start(NodeConfig {
            storage: other_dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 4], port)),
            controller: Some("127.0.0.1:7".parse().unwrap()),
            capacity: Some(1 << 20),
            quota: None,
            key: key.clone(),
            machine: "test".into(),
        })
        .await
        .unwrap();
        // Something else listening on the node port of another address.
        let foreign = tokio::net::TcpListener::bind(("127.0.0.2", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = foreign.accept().await {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
            }
        });

        let mut cfg = DiscoveryConfig::new(Vec::new());
        cfg.node_port = port;
        cfg.probe_timeout = Duration::from_millis(500);
        let controller: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let creds = Arc::new(crate::trust::Credentials::ephemeral(&key).unwrap());
        let d = Discovery::new(cfg, controller, creds);
        let registry = Mutex::new(Registry::in_memory());
        let lo = Ipv4Addr::LOCALHOST;
        let responders: Responders = [
            (lo, lo),
            (Ipv4Addr::new(127, 0, 0, 2), lo),
            (Ipv4Addr::new(127, 0, 0, 3), lo),
            (Ipv4Addr::new(127, 0, 0, 4), lo),
        ]
        .into_iter()
        .collect();

        let report = d.adopt(&responders, &registry).await;
        assert_eq!(
            report.nodes,
            vec![FoundNode {
                id: 1,
                addr: node.addr(),
                new: true,
                assigned: true
            }]
        );
        assert!(report.epoch > 0);
        assert_eq!(
            report.elsewhere,
            vec![other.addr()],
            "another pool's node is left alone"
        );
        assert_eq!(node.node_id(), Some(1), "the node took the ASSIGN");
        assert_eq!(node.controller(), Some(controller));
        assert_eq!(other.node_id(), None);

        let again = d.adopt(&responders, &registry).await.nodes;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, 1);
        assert!(!again[0].new && !again[0].assigned, "{again:?}");
    }

    /// A node that remembers id 7 (a registry rebuilt from nothing) is found by a sweep
    /// and gets id 7 back, and ASSIGN tells it so.
    #[tokio::test]
    async fn a_sweep_gives_a_found_node_the_id_it_remembers() {
        use crate::node::save_node_id;

        let dir = tempfile::tempdir().unwrap();
        save_node_id(dir.path(), 7).unwrap();
        let key = crate::trust::PoolKey::generate();
        let node = loopback_node(dir.path(), &key).await;
        let mut cfg = DiscoveryConfig::new(Vec::new());
        cfg.node_port = node.addr().port();
        cfg.probe_timeout = Duration::from_millis(500);
        let creds = Arc::new(crate::trust::Credentials::ephemeral(&key).unwrap());
        let d = Discovery::new(cfg, "127.0.0.1:9".parse().unwrap(), creds);
        let registry = Mutex::new(Registry::in_memory());
        let lo = Ipv4Addr::LOCALHOST;
        let report = d.adopt(&[(lo, lo)].into_iter().collect(), &registry).await;
        assert_eq!(report.nodes.len(), 1, "{report:?}");
        assert_eq!(report.nodes[0].id, 7, "{report:?}");
        assert_eq!(node.node_id(), Some(7), "the node took the ASSIGN");
        assert_eq!(crate::node::load_node_id(dir.path()), Some(7));
    }
}
