//! Every request and response of the pool, one enum each, with the types they carry.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Short sequential id the controller gives a node (1, 2, 3, ... as in the report).
pub type NodeId = u32;

/// A node's persistent identity, kept in its storage directory; the controller binds
/// the sequential id to it so a restarted node gets its old id back.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(pub [u8; 16]);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Liveness of a member as the controller sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeats arrive.
    Up,
    /// No heartbeat for a few seconds.
    Down,
    /// Announced it is leaving (DRAIN): still serves reads, gets no new placements,
    /// and waits while owners move its segments to other nodes.
    Leaving,
    /// Left the pool with LEAVE.
    Gone,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Leaving => "leaving",
            NodeState::Gone => "gone",
        })
    }
}

/// One member of the pool.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub state: NodeState,
    pub capacity: u64,
    pub used: u64,
    /// Milliseconds since the controller last heard from the node.
    pub last_seen_ms: u64,
}

/// The whole membership; `epoch` grows on every change.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolView {
    pub epoch: u64,
    pub nodes: Vec<NodeInfo>,
}

impl PoolView {
    /// Members that answer heartbeats, in id order.
    pub fn live(&self) -> Vec<&NodeInfo> {
        let mut live: Vec<&NodeInfo> = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .collect();
        live.sort_by_key(|n| n.id);
        live
    }

    /// The member with this id, whatever its state.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// The controller's signal to a node: "controller address, your id, pool size".
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    pub controller: SocketAddr,
    pub node_id: NodeId,
    pub pool_size: u32,
    pub epoch: u64,
}

/// One segment of one file on one node: segment `index` holds shard `index` of every stripe.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentRef {
    /// File id; validated by the node before it touches the disk.
    pub file: String,
    pub index: u32,
}

/// What a node reports about itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeStat {
    pub node_id: Option<NodeId>,
    /// The node's persistent identity, so a sweep can bind it to its id before ASSIGN.
    pub identity: Identity,
    /// The controller the node reports to, if it has one.
    pub controller: Option<SocketAddr>,
    pub capacity: u64,
    pub used: u64,
    pub segments: u64,
}

/// A node a sweep found on the LAN.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FoundNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// The id was handed out by this sweep (the node was not a member before).
    pub new: bool,
    /// The node was sent ASSIGN (it was new, down, or unaware of its id).
    pub assigned: bool,
}

/// What one sweep of the LAN found: ARP responders, and the nodes among them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// Epoch of the pool view after the sweep.
    pub epoch: u64,
    /// Addresses swept, summed over every target.
    pub swept: u64,
    /// Hosts that answered the ARP requests, in address order.
    pub responders: Vec<IpAddr>,
    /// Nodes found on the node port, in address order.
    pub nodes: Vec<FoundNode>,
    /// Nodes that answered but report to another controller: left alone.
    pub elsewhere: Vec<SocketAddr>,
    /// Time spent on the ARP sweep (all targets).
    pub arp_ms: u64,
    /// Time spent probing the responders and sending ASSIGN.
    pub probe_ms: u64,
    /// Targets that could not be swept, each with its cause.
    pub errors: Vec<String>,
}

/// Every request, to the controller or to a node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Node to controller: admit me (or give me back my id); answered with `Assigned`.
    Join {
        identity: Identity,
        listen: SocketAddr,
        capacity: u64,
        used: u64,
    },
    /// Node to controller, every second: still alive; answered with `Pool`.
    Heartbeat {
        node_id: NodeId,
        identity: Identity,
        capacity: u64,
        used: u64,
    },
    /// Node to controller: I am leaving the pool now; answered with `Ok`.
    Leave { node_id: NodeId, identity: Identity },
    /// Node to controller: I am about to leave; mark me leaving so owners move my
    /// segments elsewhere first (the hand-off); answered with `Ok`.
    Drain { node_id: NodeId, identity: Identity },
    /// Anyone to controller: address of node `node_id`; answered with `Node`.
    Get { node_id: NodeId },
    /// Anyone to controller: the whole membership view; answered with `Pool`.
    Pool,
    /// Controller to node: the controller's signal; answered with `Ok`.
    Assign(Assign),
    /// Client to node: write `len` bytes at `offset` of one of the sender's own segments
    /// (owned by its static key); the bytes follow the header as a raw body; answered
    /// with `Ok` once they are durable.
    Store {
        segment: SegmentRef,
        offset: u64,
        len: u32,
    },
    /// Client to node: read `len` bytes at `offset` of one of the sender's own segments;
    /// answered with `Data`.
    Fwd {
        segment: SegmentRef,
        offset: u64,
        len: u32,
    },
    /// Client to node: drop every segment the sender holds of a file; answered with `Ok`.
    Delete { file: String },
    /// Anyone to node: capacity and usage; answered with `Stat`.
    Stat,
    /// Anyone to controller: sweep the LAN for nodes now; answered with `Scanned`.
    Scan,
    /// Client to node: read a few `(offset, len)` ranges (at most `MAX_PARTS`) of one of
    /// the sender's own segments in one round trip, such as a chunk of a sealed shard
    /// and its tag; answered with `Data`, the ranges' bytes in order.
    FwdParts {
        segment: SegmentRef,
        parts: Vec<(u64, u32)>,
    },
    /// Client to node: like `Fwd`, for bytes the client sealed itself (a shard with its
    /// chunk tags, which the reader authenticates); answered with `SealedData`, whose
    /// body follows outside the channel's encryption: it is ciphertext already, so
    /// neither end spends a cipher pass on it.
    FwdSealed {
        segment: SegmentRef,
        offset: u64,
        len: u32,
    },
    /// Client to node: allocate bytes `offset..offset+len` of one of the sender's own
    /// segments (created if missing) without changing its length, so that STOREs there
    /// later need no room; answered with `Ok`, or `NoSpace`/`Quota` with nothing allocated.
    Reserve {
        segment: SegmentRef,
        offset: u64,
        len: u64,
    },
    /// Client to node: free bytes `offset..offset+len` of one of the sender's own segments
    /// (they read back as zeros, the length stays; a missing segment frees nothing);
    /// answered with `Ok`.
    Punch {
        segment: SegmentRef,
        offset: u64,
        len: u64,
    },
}

/// Kinds of failure a peer reports, so callers can map them to errno and messages.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store is full (`--capacity`), or the disk under it is.
    NoSpace,
    /// The sender holds its whole quota on this node (`--quota`).
    Quota,
    /// No such segment, byte range or node.
    NotFound,
    /// The request is not acceptable (bad id, wrong recipient, ...).
    BadRequest,
    /// The sender is not who it claims to be.
    Unauthorized,
    /// The server failed on its side (disk error, ...).
    Internal,
}

/// Every response.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Done.
    Ok,
    /// Answer to `Join`: the controller's signal.
    Assigned(Assign),
    /// Answer to `Pool` and `Heartbeat`.
    Pool(PoolView),
    /// Answer to `Get`.
    Node(NodeInfo),
    /// Answer to `Fwd` and `FwdParts`: `len` raw bytes follow.
    Data { len: u32 },
    /// Answer to `FwdSealed`: `len` bytes follow outside the channel's encryption.
    SealedData { len: u32 },
    /// Answer to `Stat`.
    Stat(NodeStat),
    /// Answer to `Scan`: what the sweep found.
    Scanned(ScanReport),
    /// The request failed.
    Error { kind: ErrorKind, message: String },
}

impl Response {
    /// Shorthand for an error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}
