//! The requests of the pool, one enum per service (the controller's membership verbs, a
//! node's segment verbs), as garage has one typed RPC enum per endpoint; and the service
//! tag that travels before each request so a server refuses another service's verbs.

use std::fmt::Debug;
use std::net::SocketAddr;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{Assign, Disk, Identity, NodeId, SegmentRef};

/// Which service a request is for. It is encoded before the request (see
/// `proto::encode_request`), so a node sent a controller verb, or the reverse, refuses it
/// by its tag instead of misreading it as one of its own verbs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The controller: membership (JOIN, HEARTBEAT, LEAVE, DRAIN, GET, POOL, SCAN).
    Controller,
    /// A storage node: segment bytes and space (STORE, FWD, RESERVE, PUNCH, DELETE,
    /// LIST, DELETE-SEGMENT, STAT) and the controller's signal (ASSIGN).
    Node,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Controller => "controller",
            Service::Node => "node",
        })
    }
}

/// A request of one service: what the client side sends and the server side decodes.
pub trait ServiceRequest: Serialize + DeserializeOwned + Debug + Send + 'static {
    /// The service that answers this request type.
    const SERVICE: Service;
    /// The verb, as the report names it (JOIN, STORE, FWD, ...), for messages.
    fn verb(&self) -> &'static str;
    /// Bytes of raw body that follow this request's header (STORE's `len`), if any.
    fn body_len(&self) -> Option<u32> {
        None
    }
}

/// Every request the controller answers. No file bytes ever pass through it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ControllerRequest {
    /// Node to controller: admit me (or give me back my id); answered with `Assigned`.
    Join {
        /// The node's identity (from its static key); must be the connection's.
        identity: Identity,
        /// Where the node listens.
        listen: SocketAddr,
        /// Bytes the node offers.
        capacity: u64,
        /// Bytes its segments have allocated.
        used: u64,
        /// The machine the node runs on (see `NodeInfo::machine`).
        machine: String,
        /// The filesystem its storage is on (see `NodeInfo::disk`).
        disk: Disk,
        /// The id the node had (given earlier, remembered in `STORAGE/node.id`), for a
        /// controller that does not know it (a fresh registry) to give it back; `None`
        /// for a node never given one. A known identity keeps its recorded id.
        id: Option<NodeId>,
    },
    /// Node to controller, every second: still alive; answered with `Pool`.
    Heartbeat {
        /// The id the controller gave the node.
        node_id: NodeId,
        /// The node's identity; must be the connection's and own `node_id`.
        identity: Identity,
        /// Bytes the node offers.
        capacity: u64,
        /// Bytes its segments have allocated.
        used: u64,
        /// The machine the node runs on (see `NodeInfo::machine`).
        machine: String,
        /// The filesystem its storage is on (see `NodeInfo::disk`).
        disk: Disk,
    },
    /// Node to controller: I am leaving the pool now; answered with `Ok`.
    Leave {
        /// The leaving node's id.
        node_id: NodeId,
        /// Its identity; must be the connection's and own `node_id`.
        identity: Identity,
    },
    /// Node to controller: I am about to leave; mark me leaving so owners move my
    /// segments elsewhere first (the hand-off); answered with `Ok`.
    Drain {
        /// The draining node's id.
        node_id: NodeId,
        /// Its identity; must be the connection's and own `node_id`.
        identity: Identity,
    },
    /// Anyone to controller: address of node `node_id`; answered with `Node`.
    Get {
        /// The node asked about.
        node_id: NodeId,
    },
    /// Anyone to controller: the whole membership view; answered with `Pool`.
    Pool,
    /// Anyone to controller: sweep the LAN for nodes now; answered with `Scanned`.
    Scan,
}

impl ServiceRequest for ControllerRequest {
    const SERVICE: Service = Service::Controller;

    fn verb(&self) -> &'static str {
        match self {
            ControllerRequest::Join { .. } => "JOIN",
            ControllerRequest::Heartbeat { .. } => "HEARTBEAT",
            ControllerRequest::Leave { .. } => "LEAVE",
            ControllerRequest::Drain { .. } => "DRAIN",
            ControllerRequest::Get { .. } => "GET",
            ControllerRequest::Pool => "POOL",
            ControllerRequest::Scan => "SCAN",
        }
    }
}

/// Which bytes of a segment a FWD asks its holder for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SegmentRead {
    /// One range of `len` bytes at `offset` (at most `MAX_BODY`), such as a whole shard;
    /// the node reads ahead. With `sealed`, the bytes are ones the reader sealed itself
    /// (a shard with its chunk tags, which the reader authenticates): they travel back
    /// outside the channel's encryption (`SealedData`), since they are ciphertext
    /// already, so neither end spends a cipher pass on them.
    Range {
        /// First byte, in bytes from the segment's start.
        offset: u64,
        /// Bytes to read.
        len: u32,
        /// The bytes are a sealed shard: send them outside the channel's encryption.
        sealed: bool,
    },
    /// A few small `(offset, len)` ranges (at most `MAX_PARTS`, `MAX_BODY` bytes in all)
    /// in one round trip, such as a chunk of a sealed shard and its tag: their bytes one
    /// after the other, with no readahead.
    Parts(Vec<(u64, u32)>),
}

/// Every request a storage node answers. Segment verbs work inside the namespace of the
/// static key the connection proved: a sender reaches only the segments it stored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum NodeRequest {
    /// Controller to node: the controller's signal; answered with `Ok`.
    Assign(Assign),
    /// Client to node: write `len` bytes at `offset` of one of the sender's own segments;
    /// the bytes follow the header as a raw body; answered with `Ok` once they are
    /// durable.
    Store {
        /// Which segment of the sender's.
        segment: SegmentRef,
        /// Byte offset in the segment.
        offset: u64,
        /// Bytes in the raw body that follows (at most `MAX_BODY`).
        len: u32,
    },
    /// Client to node: read a byte range of one of the sender's own segments, `what`
    /// says which; answered with `Data` (or `SealedData` for a sealed range), the bytes
    /// in order.
    Fwd {
        /// Which segment of the sender's.
        segment: SegmentRef,
        /// Which bytes of it.
        what: SegmentRead,
    },
    /// Client to node: drop every segment the sender holds of a file; answered with `Ok`.
    Delete {
        /// The file id whose segments go.
        file: String,
    },
    /// Anyone to node: capacity and usage; answered with `Stat`.
    Stat,
    /// Client to node: allocate bytes `offset..offset+len` of one of the sender's own
    /// segments (created if missing) without changing its length, so that STOREs there
    /// later need no room; answered with `Ok`, or `NoSpace`/`Quota` with nothing allocated.
    Reserve {
        /// Which segment of the sender's.
        segment: SegmentRef,
        /// First byte to allocate.
        offset: u64,
        /// Bytes to allocate.
        len: u64,
    },
    /// Client to node: free bytes `offset..offset+len` of one of the sender's own segments
    /// (they read back as zeros, the length stays; a missing segment frees nothing);
    /// answered with `Ok`.
    Punch {
        /// Which segment of the sender's.
        segment: SegmentRef,
        /// First byte to free.
        offset: u64,
        /// Bytes to free.
        len: u64,
    },
    /// Client to node: one page of the sender's own segments after `after` (from the
    /// first if `None`), each with its allocated bytes and age; answered with
    /// `Segments`. `limit` is 1 to `MAX_LIST_PAGE`, else `BadRequest`.
    List {
        /// The last segment of the previous page.
        after: Option<SegmentRef>,
        /// Most segments to answer with.
        limit: u32,
    },
    /// Client to node: remove one of the sender's segments, or with `keep` every byte of
    /// it outside those ranges (punched: the dead slots of a segment that still holds
    /// live shards), only if it was not written (STORE, RESERVE, PUNCH) in the last
    /// `older_than_ms`, checked under the store's lock so a shard stored after the
    /// sender listed it stays; answered with `Reclaimed`. More than `MAX_KEEP_RANGES`
    /// ranges, or a range past `MAX_SEGMENT_END`, is `BadRequest`.
    DeleteSegment {
        /// Which segment of the sender's.
        segment: SegmentRef,
        /// Byte ranges `(offset, len)` to keep; empty: the whole segment goes.
        keep: Vec<(u64, u64)>,
        /// Minimum age, in milliseconds since its last write, for it to go.
        older_than_ms: u64,
    },
}

impl ServiceRequest for NodeRequest {
    const SERVICE: Service = Service::Node;

    fn verb(&self) -> &'static str {
        match self {
            NodeRequest::Assign(_) => "ASSIGN",
            NodeRequest::Store { .. } => "STORE",
            NodeRequest::Fwd { .. } => "FWD",
            NodeRequest::Delete { .. } => "DELETE",
            NodeRequest::Stat => "STAT",
            NodeRequest::Reserve { .. } => "RESERVE",
            NodeRequest::Punch { .. } => "PUNCH",
            NodeRequest::List { .. } => "LIST",
            NodeRequest::DeleteSegment { .. } => "DELETE-SEGMENT",
        }
    }

    fn body_len(&self) -> Option<u32> {
        match self {
            NodeRequest::Store { len, .. } => Some(*len),
            _ => None,
        }
    }
}
