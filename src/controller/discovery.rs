//! Finding nodes on the LAN: ARP sweep, probe of the node port, ASSIGN to each node found.
//!
//! The pure part (what to sweep, which addresses, ARP frames in and out) is separate
//! from the part that touches the network (`arp_sweep`, `probe`, `Discovery::sweep`), so
//! it can be tested without privileges.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::StreamExt;
use ipnetwork::Ipv4Network;
use pnet::datalink::{self, Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use pnet::packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket};
use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
use pnet::packet::Packet;

use super::Registry;
use crate::net::{Connection, NetError};
use crate::proto::{
    Assign, FoundNode, NodeId, NodeRequest, NodeStat, NodeState, Response, ScanReport,
};
use crate::trust::{identity_of, Credentials};

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
/// Requests sent between two reads of the replies, so the socket never overflows.
const SEND_BATCH: usize = 16;
/// Poll granularity of the raw socket while collecting replies.
const READ_TICK: Duration = Duration::from_millis(5);
/// Longest time spent emptying the socket between two batches of requests.
const DRAIN_LIMIT: Duration = Duration::from_millis(50);
/// Listening time between the first pass and the second (for hosts that were slow or a
/// frame that was lost, the second pass asks the silent addresses again).
const BETWEEN_PASSES: Duration = Duration::from_millis(200);
/// Length of an ARP request in an Ethernet frame (without padding).
pub const ARP_FRAME_LEN: usize = 42;

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no network interface named {name:?} (interfaces here: {available})")]
    NoInterface { name: String, available: String },
    #[error("interface {0} is the loopback interface: there is no LAN to sweep on it")]
    Loopback(String),
    #[error("interface {0} is down")]
    Down(String),
    #[error("interface {0} has no Ethernet address, so it cannot send ARP requests")]
    NoMac(String),
    #[error("interface {0} has no IPv4 subnet to sweep")]
    NoIpv4(String),
    #[error("no interface is on a subnet that overlaps {cidr} (subnets here: {available})")]
    NoRoute {
        cidr: Ipv4Network,
        available: String,
    },
    #[error(
        "{range} has {hosts} addresses; a sweep covers at most {MAX_SWEEP_HOSTS} \
         (pass --scan with a smaller CIDR)"
    )]
    TooLarge { range: Ipv4Network, hosts: usize },
    #[error(
        "cannot open a raw socket on {iface}: {source} (an ARP sweep needs root or \
         CAP_NET_RAW; run the controller as root or `setcap cap_net_raw+ep` its binary)"
    )]
    NotPermitted {
        iface: String,
        source: std::io::Error,
    },
    #[error("cannot open a raw socket on {iface}: {source}")]
    Channel {
        iface: String,
        source: std::io::Error,
    },
    #[error("interface {0} does not offer an Ethernet channel")]
    NotEthernet(String),
    #[error("sending ARP requests on {iface} failed: {source}")]
    Send {
        iface: String,
        source: std::io::Error,
    },
    #[error("reading ARP replies on {iface} failed: {source}")]
    Receive {
        iface: String,
        source: std::io::Error,
    },
}

/// What `--scan` names: an interface (sweep its subnet) or a CIDR (sweep it through the
/// interface whose subnet overlaps it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanTarget {
    Interface(String),
    Cidr(Ipv4Network),
}

impl FromStr for ScanTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains('/') {
            let net =
                Ipv4Network::from_str(s).map_err(|e| format!("invalid IPv4 CIDR {s:?}: {e}"))?;
            return Ok(ScanTarget::Cidr(normalize(net)));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{s} is an address, not a subnet: give a CIDR such as {s}/24 or an interface name"
            ));
        }
        let valid = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !valid {
            return Err(format!(
                "{s:?} is neither an interface name nor an IPv4 CIDR (such as 192.168.1.0/24)"
            ));
        }
        Ok(ScanTarget::Interface(s.to_string()))
    }
}

impl fmt::Display for ScanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanTarget::Interface(name) => f.write_str(name),
            ScanTarget::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// `net` with its host bits cleared (10.0.0.7/24 becomes 10.0.0.0/24).
fn normalize(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// Number of host addresses of `net` (without network and broadcast addresses, except
/// for /31 and /32 which have none).
pub fn host_count(net: Ipv4Network) -> usize {
    let size = 1usize << (32 - u32::from(net.prefix()));
    if net.prefix() >= 31 {
        size
    } else {
        size - 2
    }
}

/// The host addresses of `net`, in order.
pub fn host_addresses(net: Ipv4Network) -> Vec<Ipv4Addr> {
    let net = normalize(net);
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    let (first, last) = if net.prefix() >= 31 {
        (first, last)
    } else {
        (first + 1, last - 1)
    };
    (first..=last).map(Ipv4Addr::from).collect()
}

/// A network interface as discovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    /// Its IPv4 addresses with their prefixes (10.0.0.7/24).
    pub ipv4: Vec<Ipv4Network>,
    pub up: bool,
    pub loopback: bool,
}

impl Interface {
    fn from_pnet(i: &NetworkInterface) -> Self {
        Interface {
            name: i.name.clone(),
            index: i.index,
            mac: i.mac.map(|m| m.octets()).filter(|m| *m != [0; 6]),
            ipv4: i
                .ips
                .iter()
                .filter_map(|ip| match ip {
                    pnet::ipnetwork::IpNetwork::V4(v4) => {
                        Ipv4Network::new(v4.ip(), v4.prefix()).ok()
                    }
                    pnet::ipnetwork::IpNetwork::V6(_) => None,
                })
                .collect(),
            up: i.is_up(),
            loopback: i.is_loopback(),
        }
    }
}

/// The interfaces of this machine (of the network namespace the process runs in).
pub fn local_interfaces() -> Vec<Interface> {
    datalink::interfaces()
        .iter()
        .map(Interface::from_pnet)
        .collect()
}

/// One sweep to run: where to send from and which addresses to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepPlan {
    pub iface: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// Our address on the swept subnet (the ARP sender address, never swept).
    pub our_ip: Ipv4Addr,
    /// The addresses swept: the interface's subnet, or the part of the CIDR on it.
    pub range: Ipv4Network,
}

impl SweepPlan {
    /// Every address to ask, without our own.
    pub fn targets(&self) -> Vec<Ipv4Addr> {
        host_addresses(self.range)
            .into_iter()
            .filter(|ip| *ip != self.our_ip)
            .collect()
    }
}

fn list_names(ifaces: &[Interface]) -> String {
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn list_subnets(ifaces: &[Interface]) -> String {
    let nets: Vec<String> = ifaces
        .iter()
        .filter(|i| !i.loopback)
        .flat_map(|i| i.ipv4.iter().map(move |n| format!("{} on {}", n, i.name)))
        .collect();
    if nets.is_empty() {
        "none".into()
    } else {
        nets.join(", ")
    }
}

/// Decides how to sweep `target` given this machine's interfaces.
pub fn plan(target: &ScanTarget, ifaces: &[Interface]) -> Result<SweepPlan, DiscoveryError> {
    let (iface, our, range) = match target {
        ScanTarget::Interface(name) => {
            let iface = ifaces.iter().find(|i| &i.name == name).ok_or_else(|| {
                DiscoveryError::NoInterface {
                    name: name.clone(),
                    available: list_names(ifaces),
                }
            })?;
            if iface.loopback {
                return Err(DiscoveryError::Loopback(name.clone()));
            }
            let our = iface
                .ipv4
                .iter()
                .find(|n| n.prefix() < 32)
                .ok_or_else(|| DiscoveryError::NoIpv4(name.clone()))?;
            (iface, *our, normalize(*our))
        }
        ScanTarget::Cidr(cidr) => {
            let found = ifaces
                .iter()
                .filter(|i| !i.loopback)
                .flat_map(|i| i.ipv4.iter().map(move |n| (i, *n)))
                .find_map(|(i, n)| {
                    let subnet = normalize(n);
                    if subnet.contains(cidr.network()) {
                        Some((i, n, *cidr))
                    } else if cidr.contains(subnet.network()) {
                        Some((i, n, subnet))
                    } else {
                        None
                    }
                });
            found.ok_or_else(|| DiscoveryError::NoRoute {
                cidr: *cidr,
                available: list_subnets(ifaces),
            })?
        }
    };
    if !iface.up {
        return Err(DiscoveryError::Down(iface.name.clone()));
    }
    let mac = iface
        .mac
        .ok_or_else(|| DiscoveryError::NoMac(iface.name.clone()))?;
    let hosts = host_count(range);
    if hosts > MAX_SWEEP_HOSTS {
        return Err(DiscoveryError::TooLarge { range, hosts });
    }
    Ok(SweepPlan {
        iface: iface.name.clone(),
        index: iface.index,
        mac,
        our_ip: our.ip(),
        range,
    })
}

/// A broadcast Ethernet frame asking "who has `target`? tell `our_ip`".
pub fn arp_request(mac: [u8; 6], our_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac); // source
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // EtherType ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // operation: request
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[28..32].copy_from_slice(&our_ip.octets()); // sender protocol address
    f[32..38].fill(0); // target hardware address: unknown, that is the question
    f[38..42].copy_from_slice(&target.octets()); // target protocol address
    f
}

/// The sender of `frame` if it is an ARP reply to us from an address of the plan's range.
pub fn parse_arp_reply(frame: &[u8], plan: &SweepPlan) -> Option<Ipv4Addr> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    let ok = arp.get_operation() == ArpOperations::Reply
        && arp.get_hardware_type() == ArpHardwareTypes::Ethernet
        && arp.get_protocol_type() == EtherTypes::Ipv4
        && arp.get_target_proto_addr() == plan.our_ip;
    let sender = arp.get_sender_proto_addr();
    (ok && sender != plan.our_ip && plan.range.contains(sender)).then_some(sender)
}

/// Both ends of a raw Ethernet channel.
type RawChannel = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

fn open_channel(plan: &SweepPlan) -> Result<RawChannel, DiscoveryError> {
    let iface = datalink::interfaces()
        .into_iter()
        .find(|i| i.index == plan.index && i.name == plan.iface)
        .ok_or_else(|| DiscoveryError::NoInterface {
            name: plan.iface.clone(),
            available: list_names(&local_interfaces()),
        })?;
    let config = datalink::Config {
        read_timeout: Some(READ_TICK),
        write_timeout: Some(Duration::from_secs(1)),
        promiscuous: false,
        ..Default::default()
    };
    match datalink::channel(&iface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok((tx, rx)),
        Ok(_) => Err(DiscoveryError::NotEthernet(plan.iface.clone())),
        Err(source) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(DiscoveryError::NotPermitted {
                iface: plan.iface.clone(),
                source,
            })
        }
        Err(source) => Err(DiscoveryError::Channel {
            iface: plan.iface.clone(),
            source,
        }),
    }
}

/// Checks that the plan's interface can be swept (it exists and raw sockets are
/// allowed) without sending anything.
pub fn check_plan(plan: &SweepPlan) -> Result<(), DiscoveryError> {
    open_channel(plan).map(drop)
}

fn send_frame(
    tx: &mut dyn DataLinkSender,
    frame: &[u8],
    iface: &str,
) -> Result<(), DiscoveryError> {
    let mut tries = 0;
    loop {
        match tx.send_to(frame, None) {
            Some(Ok(())) | None => return Ok(()),
            // A full transmit queue: give it a moment.
            Some(Err(e))
                if tries < 100
                    && (e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(Err(source)) => {
                return Err(DiscoveryError::Send {
                    iface: iface.to_string(),
                    source,
                })
            }
        }
    }
}

/// Reads replies: at least until `quiet_after` (then up to the first idle read tick),
/// and never past `deadline`, however busy the network.
fn collect_replies(
    rx: &mut dyn DataLinkReceiver,
    plan: &SweepPlan,
    found: &mut BTreeSet<Ipv4Addr>,
    quiet_after: Instant,
    deadline: Instant,
) -> Result<(), DiscoveryError> {
    loop {
        match rx.next() {
            Ok(frame) => {
                if let Some(ip) = parse_arp_reply(frame, plan) {
                    found.insert(ip);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= quiet_after {
                    return Ok(());
                }
            }
            Err(source) => {
                return Err(DiscoveryError::Receive {
                    iface: plan.iface.clone(),
                    source,
                })
            }
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// Sweeps the plan's range with ARP requests (two passes: everyone, then the silent
/// ones) and returns the addresses that answered, collecting replies until `wait` after
/// the last request. Blocking; needs root or CAP_NET_RAW.
pub fn arp_sweep(plan: &SweepPlan, wait: Duration) -> Result<BTreeSet<Ipv4Addr>, DiscoveryError> {
    let (mut tx, mut rx) = open_channel(plan)?;
    let targets = plan.targets();
    let mut found = BTreeSet::new();
    for pass in 0..2 {
        let ask: Vec<Ipv4Addr> = targets
            .iter()
            .copied()
            .filter(|ip| !found.contains(ip))
            .collect();
        if ask.is_empty() {
            break;
        }
        for batch in ask.chunks(SEND_BATCH) {
            for ip in batch {
                send_frame(
                    &mut *tx,
                    &arp_request(plan.mac, plan.our_ip, *ip),
                    &plan.iface,
                )?;
            }
            // Empty the socket between batches so it never overflows and drops replies.
            let now = Instant::now();
            collect_replies(&mut *rx, plan, &mut found, now, now + DRAIN_LIMIT)?;
        }
        let listen = if pass == 0 { BETWEEN_PASSES } else { wait };
        let until = Instant::now() + listen;
        collect_replies(&mut *rx, plan, &mut found, until, until)?;
    }
    Ok(found)
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
    pub targets: Vec<ScanTarget>,
    /// Port probed on every responder.
    pub node_port: u16,
    /// Time between sweeps; None sweeps only at start and on request.
    pub rescan_interval: Option<Duration>,
    pub arp_wait: Duration,
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
                let id = reg.join(stat.identity, *addr, stat.capacity, stat.used, now);
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

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn iface(name: &str, index: u32, nets: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            index,
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            ipv4: nets.iter().map(|n| net(n)).collect(),
            up: true,
            loopback: false,
        }
    }

    fn machine() -> Vec<Interface> {
        let mut lo = iface("lo", 1, &["127.0.0.1/8"]);
        lo.loopback = true;
        lo.mac = None;
        vec![
            lo,
            iface("eth0", 2, &["192.168.1.17/24"]),
            iface("wlan0", 3, &["10.20.0.5/16"]),
        ]
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "eth0".parse::<ScanTarget>().unwrap(),
            ScanTarget::Interface("eth0".into())
        );
        assert_eq!(
            "192.168.1.77/24".parse::<ScanTarget>().unwrap(),
            ScanTarget::Cidr(net("192.168.1.0/24"))
        );
        assert!("192.168.1.0/33".parse::<ScanTarget>().is_err());
        let e = "192.168.1.7".parse::<ScanTarget>().unwrap_err();
        assert!(e.contains("192.168.1.7/24"), "{e}");
        assert!("".parse::<ScanTarget>().is_err());
        assert!("a very long interface name".parse::<ScanTarget>().is_err());
    }

    #[test]
    fn host_addresses_skip_network_and_broadcast() {
        let hosts = host_addresses(net("10.1.2.0/24"));
        assert_eq!(hosts.len(), 254);
        assert_eq!(host_count(net("10.1.2.0/24")), 254);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(hosts[253], Ipv4Addr::new(10, 1, 2, 254));
        assert_eq!(host_addresses(net("10.1.2.4/30")).len(), 2);
        assert_eq!(host_addresses(net("10.1.2.4/31")).len(), 2);
        assert_eq!(
            host_addresses(net("10.1.2.9/32")),
            vec![Ipv4Addr::new(10, 1, 2, 9)]
        );
    }

    #[test]
    fn plan_by_interface() {
        let p = plan(&ScanTarget::Interface("eth0".into()), &machine()).unwrap();
        assert_eq!(p.iface, "eth0");
        assert_eq!(p.our_ip, Ipv4Addr::new(192, 168, 1, 17));
        assert_eq!(p.range, net("192.168.1.0/24"));
        let targets = p.targets();
        assert_eq!(targets.len(), 253, "our own address is not swept");
        assert!(!targets.contains(&p.our_ip));
    }

    #[test]
    fn plan_by_cidr_picks_the_interface_on_that_subnet() {
        // Inside the interface's subnet: sweep just the CIDR.
        let p = plan(&ScanTarget::Cidr(net("10.20.3.0/24")), &machine()).unwrap();
        assert_eq!(p.iface, "wlan0");
        assert_eq!(p.range, net("10.20.3.0/24"));
        assert_eq!(p.our_ip, Ipv4Addr::new(10, 20, 0, 5));
        // Wider than the interface's subnet: sweep only the subnet.
        let p = plan(&ScanTarget::Cidr(net("192.168.0.0/16")), &machine()).unwrap();
        assert_eq!(p.iface, "eth0");
        assert_eq!(p.range, net("192.168.1.0/24"));
    }

    #[test]
    fn plan_errors_name_the_cause() {
        let m = machine();
        let e = plan(&ScanTarget::Interface("eth9".into()), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoInterface { .. }) && e.to_string().contains("eth0"),
            "{e}"
        );
        let e = plan(&ScanTarget::Interface("lo".into()), &m).unwrap_err();
        assert!(matches!(e, DiscoveryError::Loopback(_)), "{e}");
        let e = plan(&ScanTarget::Cidr(net("172.16.0.0/24")), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoRoute { .. })
                && e.to_string().contains("192.168.1.17/24 on eth0"),
            "{e}"
        );
        let e = plan(&ScanTarget::Cidr(net("127.0.0.0/24")), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::NoRoute { .. }),
            "loopback is never swept: {e}"
        );
        let e = plan(&ScanTarget::Interface("wlan0".into()), &m).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::TooLarge { hosts: 65534, .. }),
            "{e}"
        );
        let mut down = machine();
        down[1].up = false;
        let e = plan(&ScanTarget::Interface("eth0".into()), &down).unwrap_err();
        assert!(matches!(e, DiscoveryError::Down(_)), "{e}");
        let mut bare = machine();
        bare[1].ipv4.clear();
        let e = plan(&ScanTarget::Interface("eth0".into()), &bare).unwrap_err();
        assert!(matches!(e, DiscoveryError::NoIpv4(_)), "{e}");
    }

    /// An ARP reply from `sender` (with MAC `smac`) to `target`.
    fn reply(sender: Ipv4Addr, smac: [u8; 6], target: Ipv4Addr, tmac: [u8; 6]) -> Vec<u8> {
        let mut f = arp_request(smac, sender, target).to_vec();
        f[0..6].copy_from_slice(&tmac);
        f[20..22].copy_from_slice(&2u16.to_be_bytes());
        f[32..38].copy_from_slice(&tmac);
        f.resize(60, 0); // padded to the Ethernet minimum, as on the wire
        f
    }

    #[test]
    fn arp_frames_round_trip() {
        let p = plan(&ScanTarget::Interface("eth0".into()), &machine()).unwrap();
        let target = Ipv4Addr::new(192, 168, 1, 40);
        let req = arp_request(p.mac, p.our_ip, target);
        let eth = EthernetPacket::new(&req).unwrap();
        assert_eq!(eth.get_ethertype(), EtherTypes::Arp);
        assert_eq!(eth.get_destination().octets(), [0xff; 6]);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Request);
        assert_eq!(arp.get_sender_proto_addr(), p.our_ip);
        assert_eq!(arp.get_target_proto_addr(), target);
        // Our own request, seen on the socket, is not an answer.
        assert_eq!(parse_arp_reply(&req, &p), None);

        let theirs = [2, 9, 9, 9, 9, 9];
        assert_eq!(
            parse_arp_reply(&reply(target, theirs, p.our_ip, p.mac), &p),
            Some(target)
        );
        // A reply to someone else, or from outside the range, is ignored.
        let other = Ipv4Addr::new(192, 168, 1, 99);
        assert_eq!(
            parse_arp_reply(&reply(target, theirs, other, p.mac), &p),
            None
        );
        let outside = Ipv4Addr::new(192, 168, 2, 1);
        assert_eq!(
            parse_arp_reply(&reply(outside, theirs, p.our_ip, p.mac), &p),
            None
        );
        assert_eq!(parse_arp_reply(&[1, 2, 3], &p), None);
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
        let node = Node::start(NodeConfig {
            storage: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            controller: None,
            capacity: Some(1 << 20),
            quota: None,
            key: key.clone(),
        })
        .await
        .unwrap();
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
}
