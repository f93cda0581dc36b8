//! `MemSegments`: an in-memory pool of N nodes for tests, with its own pool view and
//! fault injection (a node down, refusing, full, corrupting what it sends, slow, or
//! silent), and a clock of its own that tests move (`advance`) to age segments for the
//! sweep. No sockets, no controller, no disk: a `PoolClient` over it runs in process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{IoFuture, SegmentError, SegmentIo, SegmentRead, ViewSource};
use crate::client::{ClientError, Holder};
use crate::net::NetError;
use crate::proto::{
    ErrorKind, NodeId, NodeInfo, NodeState, PoolView, Reclaim, SegmentInfo, SegmentPage, SegmentRef,
};

/// Bytes each in-memory node may hold unless told otherwise (`set_capacity`).
pub const MEM_CAPACITY: u64 = 1 << 30;

/// How an in-memory node misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Unreachable: every call fails as a refused connection would.
    Down,
    /// Answers every call with an `Internal` error.
    Refuse,
    /// Refuses every STORE and RESERVE with `NoSpace` (a full disk).
    Full,
    /// Flips the first byte of everything it sends back.
    Corrupt,
    /// Answers correctly, after this long (tokio time: a paused clock skips it).
    Slow(Duration),
    /// Never answers (a pulled cable: no reset, no reply).
    Silent,
}

#[derive(Default)]
struct MemNode {
    state: Option<NodeState>,
    capacity: u64,
    fault: Option<Fault>,
    /// Segment bytes per (file id, segment index).
    segments: BTreeMap<(String, u32), Vec<u8>>,
    /// Bytes reserved per segment, beyond what is stored: counted, not tracked by
    /// range (a PUNCH gives back up to its length), which is all the space checks need.
    reserved: BTreeMap<(String, u32), u64>,
    /// When each segment was last written (STORE, RESERVE, PUNCH), in ms of the pool's
    /// clock.
    written: BTreeMap<(String, u32), u64>,
}

impl MemNode {
    fn used(&self) -> u64 {
        let stored: u64 = self.segments.values().map(|s| s.len() as u64).sum();
        stored + self.reserved.values().sum::<u64>()
    }

    /// Bytes segment `k` takes: its stored length and its reservation.
    fn allocated(&self, k: &(String, u32)) -> u64 {
        self.segments.get(k).map_or(0, |s| s.len() as u64)
            + self.reserved.get(k).copied().unwrap_or(0)
    }

    fn forget(&mut self, k: &(String, u32)) {
        self.segments.remove(k);
        self.reserved.remove(k);
        self.written.remove(k);
    }
}

/// An in-memory pool: nodes `1..=n`, their segments, and the view of them.
pub struct MemSegments {
    nodes: Mutex<BTreeMap<NodeId, MemNode>>,
    epoch: Mutex<u64>,
    /// The pool's clock in ms: segment ages are measured on it.
    clock: AtomicU64,
    /// Segment bytes stored and read so far: what the network would carry.
    wire: AtomicU64,
}

impl MemSegments {
    /// A pool of `n` live nodes with ids `1..=n`, each holding up to `MEM_CAPACITY`.
    pub fn new(n: usize) -> Arc<Self> {
        let nodes = (1..=n as NodeId)
            .map(|id| {
                let node = MemNode {
                    state: Some(NodeState::Up),
                    capacity: MEM_CAPACITY,
                    ..Default::default()
                };
                (id, node)
            })
            .collect();
        Arc::new(MemSegments {
            nodes: Mutex::new(nodes),
            epoch: Mutex::new(1),
            clock: AtomicU64::new(0),
            wire: AtomicU64::new(0),
        })
    }

    /// Segment bytes stored and read since the pool was made (what STORE and FWD
    /// would carry over the network).
    pub fn wire_bytes(&self) -> u64 {
        self.wire.load(Ordering::SeqCst)
    }

    /// Moves the pool's clock on by `ms`: every segment is that much older.
    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// The segments node `id` holds (stored or reserved), as (file id, index).
    pub fn segment_refs(&self, id: NodeId) -> Vec<(String, u32)> {
        self.lock().get(&id).map_or(Vec::new(), |n| {
            let mut keys: Vec<_> = n
                .segments
                .keys()
                .chain(n.reserved.keys())
                .cloned()
                .collect();
            keys.sort();
            keys.dedup();
            keys
        })
    }

    /// The made-up address of node `id`: in TEST-NET-1 (RFC 5737), never contacted.
    pub fn addr_of(id: NodeId) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, (id % 250) as u8 + 1], 2001))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, MemNode>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    /// Makes node `id` misbehave as `fault` says (`None`: behave).
    pub fn set_fault(&self, id: NodeId, fault: Option<Fault>) {
        if let Some(node) = self.lock().get_mut(&id) {
            node.fault = fault;
        }
    }

    /// Sets what the view says of node `id` (`None`: not a member any more).
    pub fn set_state(&self, id: NodeId, state: Option<NodeState>) {
        if let Some(node) = self.lock().get_mut(&id) {
            node.state = state;
        }
        self.changed();
    }

    /// Node `id` dies: unreachable, and the view says it is down.
    pub fn kill(&self, id: NodeId) {
        self.set_fault(id, Some(Fault::Down));
        self.set_state(id, Some(NodeState::Down));
    }

    /// Sets how many bytes node `id` may hold.
    pub fn set_capacity(&self, id: NodeId, bytes: u64) {
        if let Some(node) = self.lock().get_mut(&id) {
            node.capacity = bytes;
        }
        self.changed();
    }

    /// A new live node joins; returns its id.
    pub fn add_node(&self) -> NodeId {
        let mut nodes = self.lock();
        let id = nodes.keys().next_back().copied().unwrap_or(0) + 1;
        nodes.insert(
            id,
            MemNode {
                state: Some(NodeState::Up),
                capacity: MEM_CAPACITY,
                ..Default::default()
            },
        );
        drop(nodes);
        self.changed();
        id
    }

    /// The bytes node `id` holds of segment `index` of `file`, if any.
    pub fn segment(&self, id: NodeId, file: &str, index: u32) -> Option<Vec<u8>> {
        self.lock()
            .get(&id)?
            .segments
            .get(&(file.to_string(), index))
            .cloned()
    }

    /// Overwrites byte `at` of a stored segment with its complement (bit rot on disk);
    /// false if there is no such byte.
    pub fn rot(&self, id: NodeId, file: &str, index: u32, at: usize) -> bool {
        let mut nodes = self.lock();
        let byte = nodes
            .get_mut(&id)
            .and_then(|n| n.segments.get_mut(&(file.to_string(), index)))
            .and_then(|s| s.get_mut(at));
        match byte {
            Some(b) => {
                *b = !*b;
                true
            }
            None => false,
        }
    }

    /// Bytes node `id` holds or has reserved, over all files.
    pub fn used(&self, id: NodeId) -> u64 {
        self.lock().get(&id).map_or(0, MemNode::used)
    }

    /// How many segments node `id` holds of `file`.
    pub fn segments_of(&self, id: NodeId, file: &str) -> usize {
        self.lock()
            .get(&id)
            .map_or(0, |n| n.segments.keys().filter(|(f, _)| f == file).count())
    }

    /// The pool view now: every member in id order.
    pub fn view(&self) -> PoolView {
        let epoch = *self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let nodes = self
            .lock()
            .iter()
            .filter_map(|(&id, n)| {
                Some(NodeInfo {
                    id,
                    addr: Self::addr_of(id),
                    state: n.state?,
                    capacity: n.capacity,
                    used: n.used(),
                    last_seen_ms: 0,
                    // Every in-memory node on a machine of its own.
                    machine: format!("mem-{id}"),
                    disk: crate::proto::Disk::default(),
                })
            })
            .collect();
        PoolView { epoch, nodes }
    }

    /// Waits out node `holder`'s fault, if it has one that acts before the call:
    /// `Err` for a node that does not answer usefully.
    async fn arrive(&self, holder: &Holder) -> Result<(), SegmentError> {
        let fault = match self.lock().get(&holder.node_id) {
            None => return Err(refused_connection(holder)),
            Some(node) => node.fault,
        };
        match fault {
            Some(Fault::Down) => Err(refused_connection(holder)),
            Some(Fault::Refuse) => Err(refusal(holder, ErrorKind::Internal, "refuses (test)")),
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Fault::Silent) => futures::future::pending().await,
            Some(Fault::Full) | Some(Fault::Corrupt) | None => Ok(()),
        }
    }

    /// Runs `f` on node `holder`'s state.
    fn with_node<T>(
        &self,
        holder: &Holder,
        f: impl FnOnce(&mut MemNode) -> Result<T, SegmentError>,
    ) -> Result<T, SegmentError> {
        let mut nodes = self.lock();
        let node = nodes
            .get_mut(&holder.node_id)
            .ok_or_else(|| refused_connection(holder))?;
        f(node)
    }
}

fn refused_connection(holder: &Holder) -> SegmentError {
    SegmentError::Net(NetError::Connect {
        addr: holder.addr,
        source: std::io::ErrorKind::ConnectionRefused.into(),
    })
}

fn refusal(holder: &Holder, kind: ErrorKind, message: &str) -> SegmentError {
    SegmentError::Refused {
        addr: holder.addr,
        kind,
        message: message.to_string(),
    }
}

/// Checks that `node` may grow by `more` bytes.
fn room(holder: &Holder, node: &MemNode, more: u64) -> Result<(), SegmentError> {
    if node.fault == Some(Fault::Full) || node.used().saturating_add(more) > node.capacity {
        return Err(refusal(holder, ErrorKind::NoSpace, "no space left (test)"));
    }
    Ok(())
}

fn key(segment: &SegmentRef) -> (String, u32) {
    (segment.file.clone(), segment.index)
}

/// Bytes `offset..offset+len` of `seg`, or `NotFound` past its end.
fn range(holder: &Holder, seg: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, SegmentError> {
    let end = offset.saturating_add(len as u64);
    if end > seg.len() as u64 {
        return Err(refusal(
            holder,
            ErrorKind::NotFound,
            "range past the segment's end",
        ));
    }
    Ok(seg[offset as usize..end as usize].to_vec())
}

impl SegmentIo for MemSegments {
    fn serves(&self, node: NodeId) -> bool {
        self.lock().contains_key(&node)
    }

    fn store<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        data: Arc<Vec<u8>>,
    ) -> IoFuture<'a, ()> {
        async move {
            self.arrive(holder).await?;
            self.wire.fetch_add(data.len() as u64, Ordering::SeqCst);
            self.with_node(holder, |node| {
                let k = key(&segment);
                let end = offset as usize + data.len();
                let have = node.segments.get(&k).map_or(0, Vec::len);
                room(holder, node, end.saturating_sub(have) as u64)?;
                node.written.insert(k.clone(), self.now());
                let seg = node.segments.entry(k).or_default();
                if seg.len() < end {
                    seg.resize(end, 0);
                }
                seg[offset as usize..end].copy_from_slice(&data);
                Ok(())
            })
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        what: SegmentRead,
    ) -> IoFuture<'a, Vec<u8>> {
        async move {
            self.arrive(holder).await?;
            self.with_node(holder, |node| {
                let seg = node
                    .segments
                    .get(&key(&segment))
                    .ok_or_else(|| refusal(holder, ErrorKind::NotFound, "no such segment"))?;
                let mut out = match &what {
                    SegmentRead::Range { offset, len, .. } => range(holder, seg, *offset, *len)?,
                    SegmentRead::Parts(parts) => {
                        let mut out = Vec::new();
                        for &(offset, len) in parts {
                            out.extend(range(holder, seg, offset, len)?);
                        }
                        out
                    }
                };
                self.wire.fetch_add(out.len() as u64, Ordering::SeqCst);
                if node.fault == Some(Fault::Corrupt) {
                    if let Some(b) = out.first_mut() {
                        *b = !*b;
                    }
                }
                Ok(out)
            })
        }
        .boxed()
    }

    fn reserve<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        _offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        async move {
            self.arrive(holder).await?;
            self.with_node(holder, |node| {
                room(holder, node, len)?;
                node.written.insert(key(&segment), self.now());
                *node.reserved.entry(key(&segment)).or_default() += len;
                Ok(())
            })
        }
        .boxed()
    }

    fn punch<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        async move {
            self.arrive(holder).await?;
            self.with_node(holder, |node| {
                let k = key(&segment);
                if node.segments.contains_key(&k) || node.reserved.contains_key(&k) {
                    node.written.insert(k.clone(), self.now());
                }
                if let Some(r) = node.reserved.get_mut(&k) {
                    *r = r.saturating_sub(len);
                }
                if let Some(seg) = node.segments.get_mut(&k) {
                    let from = (offset as usize).min(seg.len());
                    let to = (offset.saturating_add(len) as usize).min(seg.len());
                    seg[from..to].fill(0);
                }
                Ok(())
            })
        }
        .boxed()
    }

    fn delete<'a>(&'a self, holder: &'a Holder, file: &'a str) -> IoFuture<'a, ()> {
        async move {
            self.arrive(holder).await?;
            self.with_node(holder, |node| {
                node.segments.retain(|(f, _), _| f != file);
                node.reserved.retain(|(f, _), _| f != file);
                node.written.retain(|(f, _), _| f != file);
                Ok(())
            })
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        holder: &'a Holder,
        after: Option<SegmentRef>,
        limit: u32,
    ) -> IoFuture<'a, SegmentPage> {
        async move {
            self.arrive(holder).await?;
            if limit == 0 || limit > crate::proto::MAX_LIST_PAGE {
                return Err(refusal(holder, ErrorKind::BadRequest, "LIST limit (test)"));
            }
            let refs = self.segment_refs(holder.node_id);
            let now = self.now();
            self.with_node(holder, |node| {
                let mut page = SegmentPage::default();
                let after = after.map(|a| key(&a));
                for k in refs
                    .into_iter()
                    .filter(|k| after.as_ref().is_none_or(|a| k > a))
                {
                    if page.segments.len() == limit as usize {
                        page.more = true;
                        break;
                    }
                    let written = node.written.get(&k).copied().unwrap_or(0);
                    page.segments.push(SegmentInfo {
                        allocated: node.allocated(&k),
                        age_ms: now.saturating_sub(written),
                        segment: SegmentRef {
                            file: k.0,
                            index: k.1,
                        },
                    });
                }
                Ok(page)
            })
        }
        .boxed()
    }

    fn delete_segment<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        keep: Vec<(u64, u64)>,
        older_than_ms: u64,
    ) -> IoFuture<'a, Reclaim> {
        async move {
            self.arrive(holder).await?;
            let now = self.now();
            self.with_node(holder, |node| {
                let k = key(&segment);
                if !node.segments.contains_key(&k) && !node.reserved.contains_key(&k) {
                    return Ok(Reclaim::Missing);
                }
                let age_ms = now.saturating_sub(node.written.get(&k).copied().unwrap_or(0));
                if age_ms < older_than_ms {
                    return Ok(Reclaim::Young { age_ms });
                }
                if !keep.is_empty() {
                    // In memory a punched range reads as zeros: what a reader of a dead
                    // slot would get from a node; the bytes kept must stay exact.
                    let Some(bytes) = node.segments.get_mut(&k) else {
                        return Ok(Reclaim::Missing);
                    };
                    let mut kept = vec![false; bytes.len()];
                    for &(offset, len) in &keep {
                        let start = (offset as usize).min(bytes.len());
                        let end = (offset.saturating_add(len) as usize).min(bytes.len());
                        kept[start..end].iter_mut().for_each(|b| *b = true);
                    }
                    let mut freed = 0;
                    for (byte, keep) in bytes.iter_mut().zip(kept) {
                        if !keep && *byte != 0 {
                            *byte = 0;
                            freed += 1;
                        }
                    }
                    return Ok(Reclaim::Trimmed { freed });
                }
                let freed = node.allocated(&k);
                node.forget(&k);
                Ok(Reclaim::Deleted { freed })
            })
        }
        .boxed()
    }
}

impl ViewSource for MemSegments {
    fn fetch(&self) -> BoxFuture<'_, Result<PoolView, ClientError>> {
        futures::future::ready(Ok(self.view())).boxed()
    }
}
