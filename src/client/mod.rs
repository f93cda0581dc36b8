//! The client engine: `PoolClient`, its configuration and errors. What it does lives in
//! one module per concern: `placement` (where segments go: pure), `fanout` (quorum,
//! grace, hedging), `write`, `read`, `heal`, `space` (reserve, punch, delete), `stream`
//! (put, get), `view` (the pool view), over `segments` (the segment I/O trait). The
//! stages and records they share: `layout` (stripe arithmetic), `stripe` (erasure
//! coding), `seal` (encryption), `manifest`, `suspects` (late holders), and `catalog`
//! (the manifests of `put` files).

pub mod catalog;
mod error;
pub mod fanout;
mod heal;
pub mod layout;
pub mod manifest;
pub mod placement;
mod read;
mod record;
pub mod seal;
pub mod segments;
mod space;
mod stream;
pub mod stripe;
mod suspects;
mod view;
mod write;

#[cfg(test)]
mod testkit;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::ConnPool;
use crate::node::OwnSegments;
use crate::proto::PoolView;
use crate::trust::{Credentials, OwnerKey};
use error::refused;
pub use error::ClientError;
pub use fanout::READ_DEADLINE;
pub use heal::{adopt_holder, Pace};
pub use layout::Layout;
pub use manifest::{Extent, Holder, Log, Manifest, Moved, Placement, Sealing, Slice, StripeRecord};
pub use placement::Redundancy;
use seal::FileCipher;
pub use segments::{Fault, MemSegments, SegmentError, SegmentIo, SegmentRead, ViewSource};
pub use stripe::StripeData;

/// Default shard size, 1 MiB: large enough for streaming, small enough to keep memory
/// bounded.
pub const DEFAULT_SHARD_SIZE: u32 = 1 << 20;

/// How the client places and moves files.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The controller asked for the pool view (and so for where to place files).
    pub controller: SocketAddr,
    /// The shape of new files (`placement::shape` turns it into k + m by pool size).
    pub redundancy: Redundancy,
    /// Largest shard in bytes (`DEFAULT_SHARD_SIZE` by default); fixed per file when
    /// it is placed.
    pub shard_size: u32,
    /// Stripes stored or fetched concurrently by one stream.
    pub stripes_in_flight: usize,
    /// What every connection proves: the pool key and this client's static key.
    pub creds: Arc<Credentials>,
    /// The owner secret that shard keys derive from; `None` stores shards in clear
    /// (benchmarks of the cost of encryption only).
    pub owner: Option<Arc<OwnerKey>>,
    /// A node in this same process that owns `creds` (a mount's own node): its shards
    /// are stored and read with a call instead of a round trip through loopback.
    pub own: Option<OwnSegments>,
}

/// How a client lays out and seals files, whatever carries its segments.
#[derive(Clone, Debug)]
pub struct DataConfig {
    /// The shape of new files (`placement::shape` turns it into k + m by pool size).
    pub redundancy: Redundancy,
    /// Bytes per shard of a full stripe.
    pub shard_size: u32,
    /// Stripes stored or fetched concurrently by one stream.
    pub stripes_in_flight: usize,
    /// The owner secret that shard keys derive from; `None` stores shards in clear.
    pub owner: Option<Arc<OwnerKey>>,
}

impl DataConfig {
    /// The defaults (shape by pool size, `DEFAULT_SHARD_SIZE`, 4 stripes in flight),
    /// sealing with keys from `owner`.
    pub fn new(owner: Option<Arc<OwnerKey>>) -> Self {
        DataConfig {
            redundancy: Redundancy::Auto,
            shard_size: DEFAULT_SHARD_SIZE,
            stripes_in_flight: 4,
            owner,
        }
    }
}

impl ClientConfig {
    /// Defaults for a pool whose controller is at `controller`, joined with `creds`,
    /// encrypting shards with keys derived from `owner`.
    pub fn new(
        controller: SocketAddr,
        creds: Arc<Credentials>,
        owner: Option<Arc<OwnerKey>>,
    ) -> Self {
        ClientConfig {
            controller,
            creds,
            owner,
            redundancy: Redundancy::Auto,
            shard_size: DEFAULT_SHARD_SIZE,
            stripes_in_flight: 4,
            own: None,
        }
    }

    /// The layout and sealing part of this configuration.
    pub fn data(&self) -> DataConfig {
        DataConfig {
            redundancy: self.redundancy,
            shard_size: self.shard_size,
            stripes_in_flight: self.stripes_in_flight,
            owner: self.owner.clone(),
        }
    }
}

/// A handle on the pool for storing and fetching files.
pub struct PoolClient {
    cfg: DataConfig,
    /// The segment verbs on any holder (network, own node, or in memory).
    io: Arc<dyn SegmentIo>,
    /// Where the pool view comes from (the controller, or an in-memory pool).
    views: Arc<dyn ViewSource>,
    view: Mutex<Option<(PoolView, Instant)>>,
    /// Holders recently late or failing: asked last until they answer or expire.
    suspects: suspects::Suspects,
}

impl PoolClient {
    /// A client of the pool run by the controller in `cfg`, over the network (and by
    /// call on `cfg.own`, the node in this process, if any).
    pub fn new(cfg: ClientConfig) -> Self {
        let conns = Arc::new(ConnPool::new(
            cfg.creds.clone(),
            Duration::from_secs(2),
            Duration::from_secs(30),
        ));
        let net = Arc::new(segments::NetSegments::new(conns.clone()));
        let own = cfg.own.clone().map(|o| Arc::new(o) as Arc<dyn SegmentIo>);
        let io = Arc::new(segments::Router::new(own, net));
        let views = Arc::new(segments::ControllerView::new(conns, cfg.controller));
        PoolClient::over(cfg.data(), io, views)
    }

    /// A client that lays out files as `cfg` says, moves segments with `io` and learns
    /// the pool from `views`.
    pub fn over(cfg: DataConfig, io: Arc<dyn SegmentIo>, views: Arc<dyn ViewSource>) -> Self {
        PoolClient {
            cfg,
            io,
            views,
            view: Mutex::new(None),
            suspects: Default::default(),
        }
    }

    /// A client of the in-memory pool `mem` (tests: no sockets, no controller).
    pub fn in_memory(mem: Arc<MemSegments>, cfg: DataConfig) -> Self {
        PoolClient::over(cfg, mem.clone(), mem)
    }

    /// How this client lays out and seals files.
    pub fn config(&self) -> &DataConfig {
        &self.cfg
    }
}
