//! The client engine: places files on the pool's nodes, streams stripes out to all
//! segment holders in parallel, and reads byte ranges back, verified and reassembled.

pub mod catalog;
pub mod layout;
pub mod manifest;
pub mod seal;
pub mod segments;
pub mod stripe;
mod suspects;

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::net::{ConnPool, NetError};
use crate::node::OwnSegments;
use crate::proto::{ErrorKind, NodeId, NodeState, PoolView, SegmentRef};
use crate::trust::{Credentials, OwnerKey};
pub use layout::Layout;
use layout::{SEAL_CHUNK, TAG_LEN};
pub use manifest::{Holder, Manifest, Moved, Placement, Sealing, StripeRecord};
use seal::FileCipher;
pub use segments::{MemSegments, SegmentError, SegmentIo, SegmentRead, ViewSource};
pub use stripe::StripeData;

/// Default shard size: large enough for streaming, small enough to keep memory bounded.
pub const DEFAULT_SHARD_SIZE: u32 = 1 << 20;

/// How the client places and moves files.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub controller: SocketAddr,
    /// Parity shards per stripe; `None` chooses: 1 on pools of 3 or more nodes, else 0.
    pub parity: Option<u32>,
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
    /// Parity shards per stripe; `None` chooses: 1 on pools of 3 or more nodes, else 0.
    pub parity: Option<u32>,
    /// Bytes per shard of a full stripe.
    pub shard_size: u32,
    /// Stripes stored or fetched concurrently by one stream.
    pub stripes_in_flight: usize,
    /// The owner secret that shard keys derive from; `None` stores shards in clear.
    pub owner: Option<Arc<OwnerKey>>,
}

impl DataConfig {
    /// The defaults (parity by pool size, `DEFAULT_SHARD_SIZE`, 4 stripes in flight),
    /// sealing with keys from `owner`.
    pub fn new(owner: Option<Arc<OwnerKey>>) -> Self {
        DataConfig {
            parity: None,
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
            parity: None,
            shard_size: DEFAULT_SHARD_SIZE,
            stripes_in_flight: 4,
            own: None,
        }
    }

    /// The layout and sealing part of this configuration.
    pub fn data(&self) -> DataConfig {
        DataConfig {
            parity: self.parity,
            shard_size: self.shard_size,
            stripes_in_flight: self.stripes_in_flight,
            owner: self.owner.clone(),
        }
    }
}

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the pool has no live nodes")]
    NoNodes,
    #[error("cannot reach the controller: {0}")]
    Controller(NetError),
    #[error("node {node} has no space for segment {segment} of file {file}: {message}")]
    NoSpace {
        node: NodeId,
        file: String,
        segment: u32,
        message: String,
    },
    #[error("node {node} refuses segment {segment} of file {file}: {message}")]
    Quota {
        node: NodeId,
        file: String,
        segment: u32,
        message: String,
    },
    #[error("storing segment {segment} of file {file} on node {node} failed: {source}")]
    Store {
        node: NodeId,
        file: String,
        segment: u32,
        source: SegmentError,
    },
    #[error(
        "shard {segment} of stripe {stripe} of file {file} from node {node} fails its checksum"
    )]
    Corrupt {
        node: NodeId,
        file: String,
        stripe: u64,
        segment: u32,
    },
    #[error(
        "stripe {stripe} of file {file} needs {need} shards, only {have} could be read: {missing}"
    )]
    Unavailable {
        file: String,
        stripe: u64,
        need: usize,
        have: usize,
        missing: String,
    },
    #[error("stripe {stripe} of file {file}: {message}")]
    Codec {
        file: String,
        stripe: u64,
        message: String,
    },
    #[error("file {file} is encrypted and this client has no owner key to read it")]
    NoOwnerKey { file: String },
    #[error("file {file} has no checksums for stripe {stripe}: the manifest is incomplete")]
    Incomplete { file: String, stripe: u64 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The errno a filesystem should report for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::NoSpace { .. } => libc::ENOSPC,
            ClientError::Quota { .. } => libc::EDQUOT,
            _ => libc::EIO,
        }
    }
}

/// What a space request does to a range of a segment (see `PoolClient::reserve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpaceOp {
    Reserve,
    Punch,
}

/// A shard fetch slower than this is routed around (another holder is asked).
pub const READ_DEADLINE: Duration = Duration::from_millis(1000);
/// A stripe read still short of k shards after this long asks one more holder (hedging),
/// and again after each further such wait: a holder that went silent (a pulled cable
/// drops packets without a reset) costs a reader this, not `READ_DEADLINE`.
const HEDGE_AFTER: Duration = Duration::from_millis(250);
/// Once a stripe has enough stored shards, how long the slower holders may still take.
const STRAGGLER_GRACE: Duration = Duration::from_millis(500);

/// How long a fetched pool view is reused before asking the controller again.
const VIEW_TTL: Duration = Duration::from_millis(500);

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

    fn cached_view(&self) -> Option<(PoolView, Instant)> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pool view, fresh from its source when it answers, else the last one; a view
    /// younger than `VIEW_TTL` is reused without asking.
    pub async fn view(&self) -> Result<PoolView, ClientError> {
        if let Some((view, at)) = self.cached_view() {
            if at.elapsed() < VIEW_TTL {
                return Ok(view);
            }
        }
        self.refresh_view().await
    }

    /// The pool view fresh from its source (the controller), whatever the cache holds;
    /// the last one when the source does not answer (the controller being down must not
    /// stop reads and writes). Errors: `Controller` when there is no view at all.
    pub async fn refresh_view(&self) -> Result<PoolView, ClientError> {
        match self.views.fetch().await {
            Ok(view) => {
                *self.view.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((view.clone(), Instant::now()));
                Ok(view)
            }
            Err(e) => match self.cached_view() {
                Some((view, _)) => {
                    log::debug!("controller unreachable ({e}); using the last pool view");
                    Ok(view)
                }
                None => Err(e),
            },
        }
    }

    /// Where a holder is now: a node that restarted on another port is found through
    /// the pool view; without one, the address recorded at placement.
    async fn addr_of(&self, holder: &Holder) -> SocketAddr {
        match self.view().await {
            Ok(view) => view.node(holder.node_id).map_or(holder.addr, |n| n.addr),
            Err(_) => holder.addr,
        }
    }

    /// An empty manifest for a new file, placed on every live node (one segment each).
    pub async fn new_file(&self) -> Result<Manifest, ClientError> {
        let view = self.view().await?;
        let live = view.live();
        if live.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let n = live.len() as u32;
        let m = self
            .cfg
            .parity
            .unwrap_or(if n >= 3 { 1 } else { 0 })
            .min(n - 1);
        let id: [u8; 16] = rand::random();
        Ok(Manifest::new(Placement {
            file_id: crate::util::encode_hex(&id),
            layout: Layout {
                k: n - m,
                m,
                shard_size: self.cfg.shard_size,
            },
            holders: live
                .iter()
                .map(|node| Holder {
                    node_id: node.id,
                    addr: node.addr,
                })
                .collect(),
        }))
    }

    /// Which of `holders` the current view says are not up: not worth waiting on.
    async fn unhealthy<'a>(&self, holders: impl IntoIterator<Item = &'a Holder>) -> Vec<bool> {
        let view = self.view().await.ok();
        holders
            .into_iter()
            .map(|h| {
                view.as_ref()
                    .and_then(|v| v.node(h.node_id))
                    .is_some_and(|n| n.state != NodeState::Up)
            })
            .collect()
    }

    /// Stores shard `i` of stripe `j` in slot `slot` on `holder` (its segment's
    /// holder, or another node standing in for it).
    async fn store_shard(
        &self,
        place: &Placement,
        holder: &Holder,
        (j, slot): (u64, u8),
        i: usize,
        shard: &Arc<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let segment = SegmentRef {
            file: place.file_id.clone(),
            index: layout::segment_index(i, slot),
        };
        let offset = place.layout.segment_offset(j);
        let to = self.reach(holder).await;
        self.io
            .store(&to, segment, offset, Arc::clone(shard))
            .await
            .map_err(|source| refused(holder, &place.file_id, i as u32, source))
    }

    /// Stores stripe `j` (its data bytes) in slot `slot` on all holders in parallel
    /// and returns its record for the manifest. With parity, k + 1 stored shards are
    /// enough (holders known to be down are skipped, stragglers get a short grace);
    /// without, every shard must be stored. Shards whose holder is down or fails go to
    /// other live nodes instead (recorded as moved), so a write survives a node dying
    /// under it. The caller picks a slot the file's committed manifest does not use for
    /// this stripe (copy-on-write: see `layout::SHADOW_SEGMENT`).
    pub async fn write_stripe(
        &self,
        place: &Placement,
        (j, slot): (u64, u8),
        data: &[u8],
    ) -> Result<StripeRecord, ClientError> {
        let layout = &place.layout;
        let mut shards = stripe::encode(layout, data).map_err(|e| ClientError::Codec {
            file: place.file_id.clone(),
            stripe: j,
            message: e.to_string(),
        })?;
        // A fresh salt per write: nonces never repeat for different bytes.
        let seal = self.cfg.owner.as_ref().map(|owner| {
            let salt = rand::random();
            FileCipher::new(owner, &place.file_id).seal_all(&salt, j, &mut shards);
            Sealing { salt }
        });
        // Shared, so a store on this process's own node takes them without a copy.
        let shards: Vec<Arc<Vec<u8>>> = shards.into_iter().map(Arc::new).collect();
        let n = shards.len();
        let needed = if layout.m == 0 {
            n
        } else {
            layout.k as usize + 1
        };
        let skip = self.unhealthy(&place.holders).await;
        let mut pending: FuturesUnordered<_> = (0..n)
            .filter(|i| !skip[*i])
            .map(|i| {
                let shard = &shards[i];
                async move {
                    let r = self
                        .store_shard(place, &place.holders[i], (j, slot), i, shard)
                        .await;
                    (i, r)
                }
            })
            .collect();
        let mut stored = vec![false; n];
        let mut failures = Vec::new();
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace {
                Some(deadline) => match tokio::time::timeout_at(deadline, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break, // quorum reached; do not wait on a slow holder
                },
                None => pending.next().await,
            };
            match next {
                None => break,
                Some((i, Ok(()))) => stored[i] = true,
                Some((_, Err(e))) => failures.push(e),
            }
            let count = stored.iter().filter(|s| **s).count();
            if count >= needed && grace.is_none() {
                grace = Some(tokio::time::Instant::now() + STRAGGLER_GRACE);
            }
        }
        drop(pending);
        // Sealed shards are authenticated by their tags: a checksum would be a second
        // pass over every byte for nothing.
        let sums = match &seal {
            Some(_) => Vec::new(),
            None => shards.iter().map(|s| stripe::checksum(s)).collect(),
        };
        let mut record = StripeRecord {
            sums,
            moved: Vec::new(),
            seal,
            slot,
        };
        let mut count = stored.iter().filter(|s| **s).count();
        if count < needed {
            let unplaced: Vec<usize> = (0..n).filter(|&i| !stored[i]).collect();
            for i in unplaced {
                if count >= needed {
                    break;
                }
                match self.store_elsewhere(place, j, i, &shards[i], &record).await {
                    Ok(to) => {
                        record.moved.push(Moved {
                            shard: i as u32,
                            to,
                        });
                        count += 1;
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        if count < needed {
            // A full node or a spent quota is the most useful thing to report; any
            // failure otherwise.
            let pos = failures
                .iter()
                .position(|e| matches!(e, ClientError::NoSpace { .. } | ClientError::Quota { .. }))
                .unwrap_or(0);
            return Err(if failures.is_empty() {
                ClientError::Unavailable {
                    file: place.file_id.clone(),
                    stripe: j,
                    need: needed,
                    have: count,
                    missing: "holders are down".into(),
                }
            } else {
                failures.swap_remove(pos)
            });
        }
        if count < n || !record.moved.is_empty() {
            log::warn!(
                "stripe {j} of file {} stored {count} of {n} shards ({} away from their \
                 holders); it needs repair",
                place.file_id,
                record.moved.len()
            );
        }
        Ok(record)
    }

    /// Stores shard `i` of stripe `j` on a live node other than its holder, preferring
    /// nodes that hold no other shard of the stripe. Returns where it went.
    async fn store_elsewhere(
        &self,
        place: &Placement,
        j: u64,
        i: usize,
        shard: &Arc<Vec<u8>>,
        record: &StripeRecord,
    ) -> Result<Holder, ClientError> {
        let view = self.view().await?;
        let n = place.layout.segments() as usize;
        let shards_on = |id: NodeId| {
            (0..n)
                .filter(|&s| s != i && record.holder(place, s).node_id == id)
                .count()
        };
        let mut candidates: Vec<_> = view
            .live()
            .into_iter()
            .filter(|node| node.id != place.holders[i].node_id)
            .collect();
        candidates.sort_by_key(|node| {
            (
                shards_on(node.id),
                std::cmp::Reverse(node.capacity.saturating_sub(node.used)),
            )
        });
        let mut last = None;
        for node in candidates {
            let to = Holder {
                node_id: node.id,
                addr: node.addr,
            };
            match self
                .store_shard(place, &to, (j, record.slot), i, shard)
                .await
            {
                Ok(()) => return Ok(to),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::NoNodes))
    }

    /// Asks the node holding shard `i` of a stripe for bytes of that shard's segment:
    /// the bytes, or why not, naming the node.
    async fn ask_holder(
        &self,
        place: &Placement,
        record: &StripeRecord,
        i: usize,
        what: SegmentRead,
    ) -> Result<Vec<u8>, ShardFailure> {
        let holder = record.holder(place, i);
        let segment = SegmentRef {
            file: place.file_id.clone(),
            index: record.segment_index(i),
        };
        // Readers consulted the view just before (or, for one shard alone, chose not
        // to wait for it): its address as last seen, with no round trip of its own.
        let addr = match self.cached_view() {
            Some((view, _)) => view.node(holder.node_id).map_or(holder.addr, |n| n.addr),
            None => self.addr_of(holder).await,
        };
        let to = Holder {
            node_id: holder.node_id,
            addr,
        };
        let who = format!("node {} ({addr})", holder.node_id);
        tokio::time::timeout(READ_DEADLINE, self.io.read(&to, segment, what))
            .await
            .map_err(|_| {
                // What it keeps for that holder is likely as dead: start afresh.
                self.io.abandon(&to);
                ShardFailure::Unreachable(format!("{who} did not answer within {READ_DEADLINE:?}"))
            })?
            .map_err(|e| ShardFailure::Unreachable(format!("{who}: {e}")))
    }

    /// Shard `i` of stripe `j` from wherever the record says it is, verified against
    /// its checksum or, for an encrypted file, opened: plaintext or why not.
    async fn fetch_shard(
        &self,
        place: &Placement,
        record: &StripeRecord,
        j: u64,
        i: usize,
        shard_len: u32,
    ) -> Result<Vec<u8>, ShardFailure> {
        let offset = place.layout.segment_offset(j);
        let len = record.stored_len(shard_len as usize) as u32;
        let what = SegmentRead::Range {
            offset,
            len,
            sealed: record.seal.is_some(),
        };
        let mut shard = self.ask_holder(place, record, i, what).await?;
        let who = || format!("node {}", record.holder(place, i).node_id);
        match &record.seal {
            Some(seal) => self
                .cipher(place)?
                .open_shard(&seal.salt, j, i, shard_len as usize, &mut shard)
                .map_err(|e| ShardFailure::Corrupt(format!("{}: {e}", who())))?,
            None => {
                let intact = shard.len() == shard_len as usize
                    && record.sums.get(i) == Some(&stripe::checksum(&shard));
                if !intact {
                    return Err(ShardFailure::Corrupt(format!(
                        "{}: shard {i} fails its checksum",
                        who()
                    )));
                }
            }
        }
        Ok(shard)
    }

    /// `holder` as reachable now: at the address the pool view gives it (a node that
    /// restarted on another port), else the one recorded at placement.
    async fn reach(&self, holder: &Holder) -> Holder {
        Holder {
            node_id: holder.node_id,
            addr: self.addr_of(holder).await,
        }
    }

    /// The cipher of a file, if this client holds an owner key.
    fn cipher(&self, place: &Placement) -> Result<FileCipher, ShardFailure> {
        let owner = self.cfg.owner.as_ref().ok_or_else(|| {
            ShardFailure::Unreachable(format!(
                "file {} is encrypted and this client has no owner key",
                place.file_id
            ))
        })?;
        Ok(FileCipher::new(owner, &place.file_id))
    }

    /// Stripe `j`'s shards as its record says they were stored: erasure coded from
    /// `data` and, if the stripe was encrypted, sealed again under the same nonces
    /// (the same bytes, so the same ciphertext).
    fn shards_as_recorded(
        &self,
        place: &Placement,
        record: &StripeRecord,
        j: u64,
        data: &[u8],
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut shards = stripe::encode(&place.layout, data).map_err(|e| ClientError::Codec {
            file: place.file_id.clone(),
            stripe: j,
            message: e.to_string(),
        })?;
        if let Some(seal) = &record.seal {
            let cipher = self.cipher(place).map_err(|_| ClientError::NoOwnerKey {
                file: place.file_id.clone(),
            })?;
            cipher.seal_all(&seal.salt, j, &mut shards);
        }
        Ok(shards)
    }

    /// Bytes `want` of data shard `i` of stripe `j` (shard offsets; the stripe's bytes
    /// from `i × shard_len`) from the shard's holder alone, authenticated: for a read
    /// that needs nothing else of the stripe, so it waits for one node and, for a sealed
    /// stripe, only the chunks that cover `want` (a clear shard's checksum covers the
    /// whole shard, so it comes whole). Returns where the bytes start in the shard and
    /// the bytes, which cover `want`. It does not fail over: on any failure (or after
    /// `HEDGE_AFTER`, a suspect or down holder at once) the caller reads the whole
    /// stripe, which does, and heals.
    pub async fn read_data_range(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
        i: usize,
        want: Range<usize>,
    ) -> Result<(usize, Vec<u8>), ClientError> {
        let layout = &place.layout;
        let shard_len = layout.shard_len(stripe_len);
        if record.is_hole() {
            return Ok((0, vec![0; shard_len as usize]));
        }
        let n = layout.segments() as usize;
        if i >= layout.k as usize || !record.verifies(n) || place.holders.len() < n {
            return Err(ClientError::Incomplete {
                file: place.file_id.clone(),
                stripe: j,
            });
        }
        let holder = record.holder(place, i);
        let unavailable = |missing: String| ClientError::Unavailable {
            file: place.file_id.clone(),
            stripe: j,
            need: 1,
            have: 0,
            missing,
        };
        // The last view as it is, without asking the controller: one round trip less
        // before the first byte. A holder that died or moved since is refused or late,
        // and the caller falls back to the stripe read, which consults a fresh view.
        let down = self.cached_view().is_some_and(|(view, _)| {
            view.node(holder.node_id)
                .is_some_and(|n| n.state != NodeState::Up)
        });
        if down || self.suspects.is_suspect(holder.node_id) {
            return Err(unavailable(format!(
                "node {} is down or late",
                holder.node_id
            )));
        }
        let fetch = async {
            match &record.seal {
                Some(seal) => {
                    let chunks = seal_chunks_covering(&want, shard_len as usize);
                    self.fetch_chunks(place, record, &seal.salt, j, i, shard_len as usize, chunks)
                        .await
                }
                None => self
                    .fetch_shard(place, record, j, i, shard_len)
                    .await
                    .map(|shard| (0, shard)),
            }
        };
        match tokio::time::timeout(HEDGE_AFTER, fetch).await {
            Ok(Ok(piece)) => Ok(piece),
            Ok(Err(why)) => Err(unavailable(why.to_string())),
            Err(_) => {
                self.suspects.mark(holder.node_id);
                Err(unavailable(format!(
                    "node {} did not answer within {HEDGE_AFTER:?}",
                    holder.node_id
                )))
            }
        }
    }

    /// Chunks `chunks` of sealed shard `i` of stripe `j` (`shard_len` plaintext bytes),
    /// fetched with their tags in one round trip and opened: where they start in the
    /// shard, and their plaintext.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_chunks(
        &self,
        place: &Placement,
        record: &StripeRecord,
        salt: &seal::Salt,
        j: u64,
        i: usize,
        shard_len: usize,
        chunks: Range<usize>,
    ) -> Result<(usize, Vec<u8>), ShardFailure> {
        let start = chunks.start * SEAL_CHUNK;
        let len = (chunks.end * SEAL_CHUNK).min(shard_len) - start;
        let tags_len = TAG_LEN * chunks.len();
        let slot = place.layout.segment_offset(j);
        let parts = vec![
            (slot + start as u64, len as u32),
            (
                slot + (shard_len + TAG_LEN * chunks.start) as u64,
                tags_len as u32,
            ),
        ];
        let mut bytes = self
            .ask_holder(place, record, i, SegmentRead::Parts(parts))
            .await?;
        let corrupt = |why: String| {
            let node = record.holder(place, i).node_id;
            ShardFailure::Corrupt(format!("node {node}: {why}"))
        };
        if bytes.len() != len + tags_len {
            return Err(corrupt(format!(
                "sent {} bytes of shard {i} where {} were asked",
                bytes.len(),
                len + tags_len
            )));
        }
        let (ciphertext, tags) = bytes.split_at_mut(len);
        self.cipher(place)?
            .open_chunks(salt, j, i, chunks.start, ciphertext, tags)
            .map_err(|e| corrupt(e.to_string()))?;
        bytes.truncate(len);
        Ok((start, bytes))
    }

    /// Fetches stripe `j` (carrying `stripe_len` data bytes) from any k of its holders,
    /// healthy data holders first, moving on from a holder that fails, is corrupt or
    /// takes longer than a second, and asking one more holder each time the stripe is
    /// `HEDGE_AFTER` late. Holders that were late or failed are asked last for a while.
    /// A stripe neither sealed nor checksummed is a hole: zeros.
    pub async fn read_stripe(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
    ) -> Result<Vec<u8>, ClientError> {
        self.read_stripe_data(place, j, stripe_len, record)
            .await
            .map(|data| data.to_vec())
    }

    /// `read_stripe`, leaving the data as its k shards (no copy into one buffer).
    pub async fn read_stripe_data(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
    ) -> Result<StripeData, ClientError> {
        let layout = &place.layout;
        if record.is_hole() {
            return Ok(StripeData::hole(stripe_len as usize));
        }
        let n = layout.segments() as usize;
        let k = layout.k as usize;
        if !record.verifies(n) || place.holders.len() < n {
            return Err(ClientError::Incomplete {
                file: place.file_id.clone(),
                stripe: j,
            });
        }
        let shard_len = layout.shard_len(stripe_len);
        let skip = self
            .unhealthy((0..n).map(|i| record.holder(place, i)))
            .await;
        let node = |i: usize| record.holder(place, i).node_id;
        // Healthy holders first, then suspect ones, then those the view calls down; data
        // shards before parity (no decode).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (skip[i], self.suspects.is_suspect(node(i)), i >= k, i));
        let mut order = order.into_iter();
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut failures = Vec::new();
        let mut corrupt = Vec::new();
        let fetch =
            |i: usize| async move { (i, self.fetch_shard(place, record, j, i, shard_len).await) };
        // Holders asked that have not answered yet.
        let mut outstanding: Vec<usize> = order.by_ref().take(k).collect();
        let mut pending: FuturesUnordered<_> = outstanding.iter().map(|&i| fetch(i)).collect();
        let mut hedge_at = tokio::time::Instant::now() + HEDGE_AFTER;
        let mut have = 0;
        while have < k {
            let (i, result) = match tokio::time::timeout_at(hedge_at, pending.next()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => break,
                Err(_) => {
                    // Late: whoever has not answered yet is suspect; ask one more holder.
                    for h in &outstanding {
                        self.suspects.mark(node(*h));
                    }
                    if let Some(next) = order.next() {
                        outstanding.push(next);
                        pending.push(fetch(next));
                    }
                    hedge_at += HEDGE_AFTER;
                    continue;
                }
            };
            outstanding.retain(|&h| h != i);
            match result {
                Ok(shard) => {
                    self.suspects.clear(node(i));
                    shards[i] = Some(shard);
                    have += 1;
                }
                Err(why) => {
                    if matches!(why, ShardFailure::Corrupt(_)) {
                        corrupt.push(i);
                    } else {
                        self.suspects.mark(node(i));
                    }
                    failures.push(why.to_string());
                    if let Some(next) = order.next() {
                        outstanding.push(next);
                        pending.push(fetch(next));
                    }
                }
            }
        }
        drop(pending);
        if have < k {
            let missing = failures.join("; ");
            log::error!(
                "stripe {j} of file {} is unreadable: {missing}",
                place.file_id
            );
            return Err(ClientError::Unavailable {
                file: place.file_id.clone(),
                stripe: j,
                need: k,
                have,
                missing,
            });
        }
        let codec_err = |e: stripe::CodecError| ClientError::Codec {
            file: place.file_id.clone(),
            stripe: j,
            message: e.to_string(),
        };
        let data = stripe::decode_shards(layout, stripe_len as usize, shards).map_err(codec_err)?;
        if !corrupt.is_empty() {
            self.heal(place, record, j, &data.to_vec(), &corrupt).await;
        }
        Ok(data)
    }

    /// Rebuilds segment `i` of a file on `to` (a node that is not yet a holder), stripe
    /// by stripe from the other segments, pausing `pause` between stripes so repair
    /// does not crowd out users. Returns the manifest with the new holder; shards of
    /// segment i that had been moved elsewhere come home to it too.
    pub async fn rebuild_segment(
        &self,
        m: &Manifest,
        i: usize,
        to: Holder,
        pause: Duration,
    ) -> Result<Manifest, ClientError> {
        let mut moved = m.clone();
        moved.place.holders[i] = to.clone();
        // Holes have no shards anywhere: only stored stripes are rebuilt.
        for (j, _) in m.records() {
            let shard = Arc::new(self.rebuilt_shard(m, j, i).await?);
            let slot = m.stripe(j).slot;
            self.store_shard(&moved.place, &to, (j, slot), i, &shard)
                .await?;
            if let Some(rec) = moved.stripes.get_mut(&j) {
                rec.moved.retain(|mv| mv.shard as usize != i);
            }
            tokio::time::sleep(pause).await;
        }
        Ok(moved)
    }

    /// Moves shards that were stored away from their holders back home, where the
    /// holder is up again. Returns the manifest with the moves it made undone.
    pub async fn bring_home(&self, m: &Manifest, pause: Duration) -> Result<Manifest, ClientError> {
        let mut out = m.clone();
        let down = self.unhealthy(&m.place.holders).await;
        for (j, rec) in m.records() {
            for mv in &rec.moved {
                let i = mv.shard as usize;
                if down.get(i).copied().unwrap_or(true) {
                    continue;
                }
                let shard = Arc::new(self.rebuilt_shard(m, j, i).await?);
                self.store_shard(&m.place, &m.place.holders[i], (j, rec.slot), i, &shard)
                    .await?;
                if let Some(r) = out.stripes.get_mut(&j) {
                    r.moved.retain(|x| x.shard != mv.shard);
                }
                tokio::time::sleep(pause).await;
            }
        }
        Ok(out)
    }

    /// Shard `i` of stripe `j`, rebuilt from whichever k shards can be read.
    async fn rebuilt_shard(&self, m: &Manifest, j: u64, i: usize) -> Result<Vec<u8>, ClientError> {
        let data = self.fetch_stripe(m, j).await?;
        let mut shards = self.shards_as_recorded(&m.place, m.stripe(j), j, &data)?;
        Ok(shards.swap_remove(i))
    }

    /// Verifies every shard of stripe `j`, data and parity, and rewrites those that are
    /// missing or corrupt on holders that are up. Returns (shards verified, shards healed).
    pub async fn scrub_stripe(
        &self,
        place: &Placement,
        j: u64,
        stripe_len: u64,
        record: &StripeRecord,
    ) -> Result<(usize, usize), ClientError> {
        let n = place.layout.segments() as usize;
        if record.is_hole() {
            return Ok((0, 0));
        }
        if !record.verifies(n) {
            return Err(ClientError::Incomplete {
                file: place.file_id.clone(),
                stripe: j,
            });
        }
        let shard_len = place.layout.shard_len(stripe_len);
        // First, so the fetches below go to the holders' current addresses.
        let skip = self
            .unhealthy((0..n).map(|i| record.holder(place, i)))
            .await;
        let fetched = futures::future::join_all(
            (0..n).map(|i| self.fetch_shard(place, record, j, i, shard_len)),
        )
        .await;
        let bad: Vec<usize> = (0..n)
            .filter(|&i| fetched[i].is_err() && !skip[i])
            .collect();
        let verified = fetched.iter().filter(|r| r.is_ok()).count();
        if bad.is_empty() {
            return Ok((verified, 0));
        }
        for i in &bad {
            if let Err(why) = &fetched[*i] {
                log::warn!("scrub: stripe {j} of file {}: {why}", place.file_id);
            }
        }
        let shards: Vec<Option<Vec<u8>>> = fetched.into_iter().map(Result::ok).collect();
        let data = stripe::decode(&place.layout, stripe_len as usize, shards).map_err(|e| {
            ClientError::Codec {
                file: place.file_id.clone(),
                stripe: j,
                message: e.to_string(),
            }
        })?;
        self.heal(place, record, j, &data, &bad).await;
        Ok((verified, bad.len()))
    }

    /// Rewrites shards that failed their checksum with the bytes rebuilt from the others.
    async fn heal(
        &self,
        place: &Placement,
        record: &StripeRecord,
        j: u64,
        data: &[u8],
        bad: &[usize],
    ) {
        let shards = match self.shards_as_recorded(place, record, j, data) {
            Ok(shards) => shards.into_iter().map(Arc::new).collect::<Vec<_>>(),
            Err(e) => {
                log::warn!("cannot heal stripe {j} of file {}: {e}", place.file_id);
                return;
            }
        };
        for &i in bad {
            let holder = record.holder(place, i);
            match self
                .store_shard(place, holder, (j, record.slot), i, &shards[i])
                .await
            {
                Ok(()) => log::warn!("healed shard {i} of stripe {j} of file {}", place.file_id),
                Err(e) => log::warn!(
                    "cannot heal shard {i} of stripe {j} of file {}: {e}",
                    place.file_id
                ),
            }
        }
    }

    /// Stripe `j` of a file described by its manifest.
    pub async fn fetch_stripe(&self, m: &Manifest, j: u64) -> Result<Vec<u8>, ClientError> {
        self.read_stripe(&m.place, j, m.stripe_len(j), m.stripe(j))
            .await
    }

    /// Bytes `offset..offset+len` of a file (shorter at the end of the file), fetching
    /// only the stripes the range touches.
    pub async fn read_range(
        &self,
        m: &Manifest,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let end = offset.saturating_add(len).min(m.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut stripes =
            futures::stream::iter(m.place.layout.stripes_touching(offset, len, m.size))
                .map(|j| async move { self.fetch_stripe(m, j).await.map(|data| (j, data)) })
                .buffered(self.cfg.stripes_in_flight);
        while let Some(next) = stripes.next().await {
            let (j, data) = next?;
            let range = m.place.layout.stripe_range(m.size, j);
            let from = offset.max(range.start) - range.start;
            let to = end.min(range.end) - range.start;
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Removes this client's segments of `file` from one node.
    pub async fn delete_on(&self, holder: &Holder, file: &str) -> Result<(), ClientError> {
        let to = self.reach(holder).await;
        self.io
            .delete(&to, file)
            .await
            .map_err(|source| ClientError::Store {
                node: holder.node_id,
                file: file.into(),
                segment: 0,
                source,
            })
    }

    /// RESERVEs or PUNCHes bytes `offset..offset+len` of segment `index` of a file on
    /// `holder`, with a call when it is this process's own node.
    async fn space_on(
        &self,
        place: &Placement,
        holder: &Holder,
        index: u32,
        (offset, len): (u64, u64),
        op: SpaceOp,
    ) -> Result<(), ClientError> {
        let segment = SegmentRef {
            file: place.file_id.clone(),
            index,
        };
        let to = self.reach(holder).await;
        let done = match op {
            SpaceOp::Reserve => self.io.reserve(&to, segment, offset, len).await,
            SpaceOp::Punch => self.io.punch(&to, segment, offset, len).await,
        };
        done.map_err(|source| refused(holder, &place.file_id, index, source))
    }

    /// Reserves room for stripes `stripes` of a file on its nodes, so that writing them
    /// later cannot fail for lack of space (what `fallocate(2)` promises): on every
    /// holder the view says is up, in parallel, RESERVE of those stripes' slots in its
    /// segment (with a call on this process's own node). Holders that are down or do not
    /// answer are skipped, as writes route around them. All or nothing: if a holder
    /// refuses for space or quota (`NoSpace`, `Quota`: ENOSPC, EDQUOT), or fewer holders
    /// than a write's quorum (k + 1 with parity, else all) reserved, the ranges that were
    /// reserved are punched back and the refusal (else the first failure, else
    /// `Unavailable`) is returned.
    ///
    /// The caller passes only runs of stripes that are holes in `m` (nothing stored in
    /// those slots): that is what makes punching a refused reservation back safe.
    pub async fn reserve(&self, m: &Manifest, stripes: Range<u64>) -> Result<(), ClientError> {
        if stripes.is_empty() {
            return Ok(());
        }
        let place = &m.place;
        let layout = &place.layout;
        let offset = layout.segment_offset(stripes.start);
        let range = (offset, layout.segment_offset(stripes.end) - offset);
        let n = place.holders.len();
        let needed = if layout.m == 0 {
            n
        } else {
            layout.k as usize + 1
        };
        let skip = self.unhealthy(&place.holders).await;
        let asks = (0..n).filter(|&i| !skip[i]).map(|i| async move {
            let r = self
                .space_on(place, &place.holders[i], i as u32, range, SpaceOp::Reserve)
                .await;
            (i, r)
        });
        let mut reserved = Vec::new();
        let mut failures = Vec::new();
        for (i, r) in futures::future::join_all(asks).await {
            match r {
                Ok(()) => reserved.push(i),
                Err(e) => failures.push(e),
            }
        }
        let refusal = failures
            .iter()
            .position(|e| matches!(e, ClientError::NoSpace { .. } | ClientError::Quota { .. }));
        if refusal.is_none() && reserved.len() >= needed {
            for e in &failures {
                log::warn!("reserve of stripes {stripes:?} skipped a holder: {e}");
            }
            return Ok(());
        }
        let undo = reserved
            .iter()
            .map(|&i| self.space_on(place, &place.holders[i], i as u32, range, SpaceOp::Punch));
        for e in futures::future::join_all(undo)
            .await
            .into_iter()
            .filter_map(Result::err)
        {
            log::warn!("cannot give back a reservation of stripes {stripes:?}: {e}");
        }
        Err(match refusal {
            Some(pos) => failures.swap_remove(pos),
            None if !failures.is_empty() => failures.swap_remove(0),
            None => ClientError::Unavailable {
                file: place.file_id.clone(),
                stripe: stripes.start,
                need: needed,
                have: reserved.len(),
                missing: "holders are down".into(),
            },
        })
    }

    /// Frees the slots of stripes `stripes` of a file on the nodes (PUNCH): the slot
    /// each stripe's record names (slot 0 for a hole or a reservation) on every holder
    /// of every segment, and on each node a shard of one of those stripes was moved to,
    /// in parallel (with a call on this process's own node). Best effort: nodes the
    /// view says are down or gone are not asked (they would only make the caller
    /// wait), and the first failure is returned for logging. A slot left allocated
    /// costs space, never bytes: the manifest no longer points at it.
    pub async fn punch(&self, m: &Manifest, stripes: Range<u64>) -> Result<(), ClientError> {
        if stripes.is_empty() {
            return Ok(());
        }
        let place = &m.place;
        let layout = &place.layout;
        // Per (node, segment): the holder, and the runs of stripes to punch there.
        type Runs = (Holder, Vec<Range<u64>>);
        let mut targets: std::collections::BTreeMap<(NodeId, u32), Runs> = Default::default();
        let mut add = |holder: &Holder, index: u32, run: Range<u64>| {
            let (_, runs) = targets
                .entry((holder.node_id, index))
                .or_insert_with(|| (holder.clone(), Vec::new()));
            match runs.last_mut() {
                Some(last) if last.end >= run.start => last.end = last.end.max(run.end),
                _ => runs.push(run),
            }
        };
        // Holes and reservations between the records: slot 0 of every segment.
        let mut gaps = Vec::new();
        let mut from = stripes.start;
        for (j, rec) in m.records_in(stripes.clone()) {
            if from < j {
                gaps.push(from..j);
            }
            for (i, h) in place.holders.iter().enumerate() {
                add(h, rec.segment_index(i), j..j + 1);
            }
            for mv in &rec.moved {
                add(&mv.to, rec.segment_index(mv.shard as usize), j..j + 1);
            }
            from = j + 1;
        }
        if from < stripes.end {
            gaps.push(from..stripes.end);
        }
        for run in gaps {
            for (i, h) in place.holders.iter().enumerate() {
                add(h, layout::segment_index(i, 0), run.clone());
            }
        }
        let view = self.view().await.ok();
        let away = |id: NodeId| {
            view.as_ref()
                .and_then(|v| v.node(id))
                .is_some_and(|n| matches!(n.state, NodeState::Down | NodeState::Gone))
        };
        let punches = targets
            .iter()
            .filter(|((node, _), _)| !away(*node))
            .flat_map(|((_, index), (holder, runs))| {
                runs.iter().map(move |run| {
                    let offset = layout.segment_offset(run.start);
                    let range = (offset, layout.segment_offset(run.end) - offset);
                    self.space_on(place, holder, *index, range, SpaceOp::Punch)
                })
            });
        futures::future::join_all(punches)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Removes a file's segments from every node that holds any; nodes that cannot be
    /// reached are reported, the others are cleaned.
    pub async fn delete(&self, m: &Manifest) -> Result<(), ClientError> {
        let place = &m.place;
        let holders = m.all_holders();
        let deletes = holders.iter().enumerate().map(|(i, holder)| async move {
            let to = self.reach(holder).await;
            self.io
                .delete(&to, &place.file_id)
                .await
                .map_err(|source| ClientError::Store {
                    node: holder.node_id,
                    file: place.file_id.clone(),
                    segment: i as u32,
                    source,
                })
        });
        let results = futures::future::join_all(deletes).await;
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Streams `src` into the pool as a new file, with at most `stripes_in_flight`
    /// stripes buffered; `progress` gets the bytes stored so far. A failed put removes
    /// what it had stored (as far as the holders can be reached).
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        src: R,
        progress: impl Fn(u64),
    ) -> Result<Manifest, ClientError> {
        let m = self.new_file().await?;
        let mut stored = m.clone();
        match self.put_stripes(src, &mut stored, progress).await {
            Ok(()) => Ok(stored),
            Err(e) => {
                // Nothing of a file that is not in the catalog may stay on the nodes
                // (it would count against this member's quota for ever).
                if let Err(clean) = self.delete(&m).await {
                    log::warn!("could not remove the segments of a failed put: {clean}");
                }
                Err(e)
            }
        }
    }

    async fn put_stripes<R: AsyncRead + Unpin>(
        &self,
        mut src: R,
        m: &mut Manifest,
        progress: impl Fn(u64),
    ) -> Result<(), ClientError> {
        let stripe_size = m.place.layout.stripe_size() as usize;
        let mut in_flight = FuturesOrdered::new();
        let mut j = 0u64;
        let mut eof = false;
        let mut stored = 0u64;
        let mut failed = None;
        while !eof || !in_flight.is_empty() {
            if !eof && in_flight.len() < self.cfg.stripes_in_flight {
                let mut buf = vec![0u8; stripe_size];
                let n = match read_full(&mut src, &mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        failed = Some(e.into());
                        eof = true;
                        continue;
                    }
                };
                eof = n < stripe_size;
                if n > 0 {
                    buf.truncate(n);
                    m.size += n as u64;
                    let place = m.place.clone();
                    in_flight.push_back(async move {
                        let record = self.write_stripe(&place, (j, 0), &buf).await?;
                        Ok::<_, ClientError>((j, buf.len() as u64, record))
                    });
                    j += 1;
                }
                continue;
            }
            match in_flight.next().await {
                Some(Ok((j, n, record))) => {
                    m.set_stripe(j, record);
                    stored += n;
                    progress(stored);
                }
                Some(Err(e)) => {
                    // Read no further, but let the stores in flight finish: a cleanup
                    // must not race a store that is still on its way.
                    eof = true;
                    failed.get_or_insert(e);
                }
                None => {}
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Streams a whole file out of the pool into `dst`, prefetching stripes ahead.
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        m: &Manifest,
        mut dst: W,
        progress: impl Fn(u64),
    ) -> Result<(), ClientError> {
        let mut done = 0u64;
        let mut stripes = futures::stream::iter(0..m.place.layout.stripe_count(m.size))
            .map(|j| self.fetch_stripe(m, j))
            .buffered(self.cfg.stripes_in_flight);
        while let Some(data) = stripes.next().await {
            let data = data?;
            dst.write_all(&data).await?;
            done += data.len() as u64;
            progress(done);
        }
        dst.flush().await?;
        Ok(())
    }
}

/// Why one shard could not be used for a read.
#[derive(Debug)]
enum ShardFailure {
    /// Its holder failed, was late or is unknown: the shard may be fine.
    Unreachable(String),
    /// Its bytes are wrong (checksum or authentication): it must be rewritten.
    Corrupt(String),
}

impl std::fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardFailure::Unreachable(why) | ShardFailure::Corrupt(why) => f.write_str(why),
        }
    }
}

/// The error of a segment request (STORE, RESERVE, PUNCH) to `holder` that failed:
/// a node without space or an owner over its quota are refusals the filesystem reports
/// as ENOSPC and EDQUOT, anything else a failed store.
fn refused(holder: &Holder, file: &str, segment: u32, source: SegmentError) -> ClientError {
    match source.kind() {
        Some(ErrorKind::NoSpace) => ClientError::NoSpace {
            node: holder.node_id,
            file: file.into(),
            segment,
            message: source.to_string(),
        },
        Some(ErrorKind::Quota) => ClientError::Quota {
            node: holder.node_id,
            file: file.into(),
            segment,
            message: source.to_string(),
        },
        _ => ClientError::Store {
            node: holder.node_id,
            file: file.into(),
            segment,
            source,
        },
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(src: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = src.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// The sealed chunks of a shard of `shard_len` bytes that hold bytes `want` of it.
fn seal_chunks_covering(want: &Range<usize>, shard_len: usize) -> Range<usize> {
    let last = shard_len.div_ceil(SEAL_CHUNK);
    (want.start / SEAL_CHUNK).min(last)..want.end.div_ceil(SEAL_CHUNK).min(last)
}
