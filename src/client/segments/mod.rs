//! Segment I/O: the verbs a client sends to one holder of a file's segments (STORE,
//! FWD a byte range, RESERVE, PUNCH, DELETE, and the sweep's LIST and DELETE-SEGMENT), as one trait with three implementations:
//! the network (`NetSegments`), the mount's own node by call (`OwnSegments`), and an
//! in-memory pool for tests (`MemSegments`). `Router` sends each call to the right one.
//!
//! The trait is object safe (`PoolClient` holds an `Arc<dyn SegmentIo>`, so `Vfs` and
//! `FileData` need no type parameter): its methods return boxed futures, which is what
//! the `async-trait` crate would generate; see ARCHITECTURE.md, "Segment I/O".

mod mem;
mod net;
mod own;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use mem::{Fault, MemSegments};
pub use net::{ControllerView, NetSegments};

use super::{ClientError, Holder};
use crate::net::NetError;
use crate::proto::{ErrorKind, NodeId, PoolView, Reclaim, SegmentPage, SegmentRef};

/// The future a `SegmentIo` call returns.
pub type IoFuture<'a, T> = BoxFuture<'a, Result<T, SegmentError>>;

/// Why one call on a holder's segments failed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The holder answered with a refusal or failure (`NoSpace`, `Quota`, `NotFound`,
    /// `Internal`, ...): it is up, the request failed.
    #[error("{addr} answered {kind:?}: {message}")]
    Refused {
        /// Where the holder was asked (for the mount's own node: its listen address).
        addr: SocketAddr,
        /// The kind the holder reported.
        kind: ErrorKind,
        /// The holder's description.
        message: String,
    },
    /// A read was answered without the bytes it asked for.
    #[error("{addr} sent no data")]
    NoData {
        /// Where the holder was asked.
        addr: SocketAddr,
    },
    /// The holder could not be reached, or answered out of protocol.
    #[error(transparent)]
    Net(NetError),
}

impl SegmentError {
    /// The kind the holder reported, if it answered with a refusal.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            SegmentError::Refused { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl From<NetError> for SegmentError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Remote {
                addr,
                kind,
                message,
            } => SegmentError::Refused {
                addr,
                kind,
                message,
            },
            other => SegmentError::Net(other),
        }
    }
}

pub use crate::proto::SegmentRead;

/// The segment verbs on one holder. `holder.addr` is where to reach it now (the caller
/// resolves it through the pool view). Every call acts in the caller's own namespace on
/// that node (segments belong to the key that stored them).
pub trait SegmentIo: Send + Sync {
    /// Can this implementation reach `node`? (The router asks its own-node part.)
    fn serves(&self, node: NodeId) -> bool;
    /// Is `node` reached by a call in this process (the mount's own node)? Such a read
    /// is not given up after `READ_DEADLINE`: there is no other path to wait on.
    fn by_call(&self, _node: NodeId) -> bool {
        false
    }
    /// STORE `data` at byte `offset` of `segment`: durable on the holder when `Ok`.
    fn store<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        data: Arc<Vec<u8>>,
    ) -> IoFuture<'a, ()>;
    /// FWD: the bytes `what` names of `segment`. Errors: `NoData` for an answer
    /// without bytes, `Refused` (`NotFound`) for a segment or range the holder lacks.
    fn read<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        what: SegmentRead,
    ) -> IoFuture<'a, Vec<u8>>;
    /// RESERVE bytes `offset..offset+len` of `segment`: allocated when `Ok` (the
    /// segment's length stays), nothing allocated when refused.
    fn reserve<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()>;
    /// PUNCH bytes `offset..offset+len` of `segment`: freed, reading back as zeros.
    fn punch<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()>;
    /// DELETE every segment of `file` on the holder.
    fn delete<'a>(&'a self, holder: &'a Holder, file: &'a str) -> IoFuture<'a, ()>;
    /// LIST: up to `limit` (1 to `MAX_LIST_PAGE`) of the caller's segments on the
    /// holder after `after` (from the first if `None`), in (file id, index) order, with
    /// their allocated bytes and ages.
    fn list<'a>(
        &'a self,
        holder: &'a Holder,
        after: Option<SegmentRef>,
        limit: u32,
    ) -> IoFuture<'a, SegmentPage>;
    /// DELETE-SEGMENT: removes `segment` (with `keep`: all of it but those `(offset,
    /// len)` ranges) unless it was written in the last `older_than_ms` milliseconds;
    /// says which happened.
    fn delete_segment<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        keep: Vec<(u64, u64)>,
        older_than_ms: u64,
    ) -> IoFuture<'a, Reclaim>;
    /// The caller gave up waiting on `holder` (a read past its deadline): whatever the
    /// implementation keeps for it (idle connections) is likely as dead; forget it.
    fn abandon(&self, _holder: &Holder) {}
}

/// Where a client gets the pool view from: the controller (`ControllerView`), or an
/// in-memory pool (`MemSegments`).
pub trait ViewSource: Send + Sync {
    /// The current view. Errors: `ClientError::Controller` when it cannot be had.
    fn fetch(&self) -> BoxFuture<'_, Result<PoolView, ClientError>>;
}

/// Sends each call to the mount's own node by call when it holds the segment, to the
/// network otherwise: the one place that routing lives.
pub struct Router {
    own: Option<Arc<dyn SegmentIo>>,
    net: Arc<dyn SegmentIo>,
}

impl Router {
    /// A router over `net`, with `own` (the node in this process, if any) taking the
    /// calls for the nodes it `serves`.
    pub fn new(own: Option<Arc<dyn SegmentIo>>, net: Arc<dyn SegmentIo>) -> Self {
        Router { own, net }
    }

    fn to(&self, node: NodeId) -> &dyn SegmentIo {
        match &self.own {
            Some(own) if own.serves(node) => own.as_ref(),
            _ => self.net.as_ref(),
        }
    }
}

impl SegmentIo for Router {
    fn serves(&self, node: NodeId) -> bool {
        self.to(node).serves(node)
    }

    fn by_call(&self, node: NodeId) -> bool {
        self.to(node).by_call(node)
    }

    fn store<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        data: Arc<Vec<u8>>,
    ) -> IoFuture<'a, ()> {
        self.to(holder.node_id).store(holder, segment, offset, data)
    }

    fn read<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        what: SegmentRead,
    ) -> IoFuture<'a, Vec<u8>> {
        self.to(holder.node_id).read(holder, segment, what)
    }

    fn reserve<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        self.to(holder.node_id)
            .reserve(holder, segment, offset, len)
    }

    fn punch<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        self.to(holder.node_id).punch(holder, segment, offset, len)
    }

    fn delete<'a>(&'a self, holder: &'a Holder, file: &'a str) -> IoFuture<'a, ()> {
        self.to(holder.node_id).delete(holder, file)
    }

    fn list<'a>(
        &'a self,
        holder: &'a Holder,
        after: Option<SegmentRef>,
        limit: u32,
    ) -> IoFuture<'a, SegmentPage> {
        self.to(holder.node_id).list(holder, after, limit)
    }

    fn delete_segment<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        keep: Vec<(u64, u64)>,
        older_than_ms: u64,
    ) -> IoFuture<'a, Reclaim> {
        self.to(holder.node_id)
            .delete_segment(holder, segment, keep, older_than_ms)
    }

    fn abandon(&self, holder: &Holder) {
        self.to(holder.node_id).abandon(holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NodeState;

    fn holder(node_id: NodeId) -> Holder {
        Holder {
            node_id,
            addr: MemSegments::addr_of(node_id),
        }
    }

    fn seg(index: u32) -> SegmentRef {
        SegmentRef {
            file: "00ff".into(),
            index,
        }
    }

    fn range(offset: u64, len: u32) -> SegmentRead {
        SegmentRead::Range {
            offset,
            len,
            sealed: false,
        }
    }

    #[tokio::test]
    async fn stored_bytes_read_back_whole_or_in_parts() {
        let mem = MemSegments::new(3);
        let h = holder(2);
        let data = Arc::new(b"hello segment".to_vec());
        mem.store(&h, seg(0), 100, data).await.expect("store");
        let back = mem.read(&h, seg(0), range(100, 13)).await.expect("read");
        assert_eq!(back, b"hello segment");
        let parts = SegmentRead::Parts(vec![(100, 5), (106, 7)]);
        let back = mem.read(&h, seg(0), parts).await.expect("read parts");
        assert_eq!(back, b"hellosegment");
        // Another node holds nothing of it.
        let err = mem.read(&holder(1), seg(0), range(100, 13)).await;
        assert_eq!(
            err.expect_err("not there").kind(),
            Some(ErrorKind::NotFound)
        );
    }

    #[tokio::test]
    async fn faults_fail_calls_as_the_network_would() {
        let mem = MemSegments::new(3);
        let data = Arc::new(vec![7u8; 64]);
        mem.set_fault(1, Some(Fault::Down));
        let down = mem.store(&holder(1), seg(0), 0, data.clone()).await;
        assert!(matches!(down, Err(SegmentError::Net(_))), "{down:?}");
        mem.set_fault(2, Some(Fault::Full));
        let full = mem.store(&holder(2), seg(0), 0, data.clone()).await;
        assert_eq!(full.expect_err("full").kind(), Some(ErrorKind::NoSpace));
        let full = mem.reserve(&holder(2), seg(0), 0, 64).await;
        assert_eq!(full.expect_err("full").kind(), Some(ErrorKind::NoSpace));
        mem.store(&holder(3), seg(0), 0, data.clone())
            .await
            .expect("store");
        mem.set_fault(3, Some(Fault::Corrupt));
        let rotten = mem
            .read(&holder(3), seg(0), range(0, 64))
            .await
            .expect("read");
        assert_ne!(rotten, *data, "a corrupting node sends wrong bytes");
        mem.set_fault(3, Some(Fault::Refuse));
        let refused = mem.delete(&holder(3), "00ff").await;
        assert_eq!(
            refused.expect_err("refuses").kind(),
            Some(ErrorKind::Internal)
        );
    }

    #[tokio::test]
    async fn capacity_bounds_stores_and_reservations_and_delete_frees_it() {
        let mem = MemSegments::new(1);
        let h = holder(1);
        mem.set_capacity(1, 100);
        mem.reserve(&h, seg(0), 0, 60).await.expect("reserve");
        let over = mem.store(&h, seg(1), 0, Arc::new(vec![1; 50])).await;
        assert_eq!(over.expect_err("over").kind(), Some(ErrorKind::NoSpace));
        mem.punch(&h, seg(0), 0, 60).await.expect("punch");
        mem.store(&h, seg(1), 0, Arc::new(vec![1; 50]))
            .await
            .expect("room again");
        assert_eq!(mem.used(1), 50);
        mem.delete(&h, "00ff").await.expect("delete");
        assert_eq!(mem.used(1), 0);
        assert_eq!(mem.segments_of(1, "00ff"), 0);
    }

    #[tokio::test]
    async fn the_view_shows_nodes_that_die_join_and_fill() {
        let mem = MemSegments::new(2);
        mem.kill(2);
        let id = mem.add_node();
        mem.store(&holder(1), seg(0), 0, Arc::new(vec![1; 10]))
            .await
            .expect("store");
        let view = mem.fetch().await.expect("view");
        let live: Vec<_> = view.live().iter().map(|n| n.id).collect();
        assert_eq!(live, vec![1, id]);
        assert_eq!(view.node(2).map(|n| n.state), Some(NodeState::Down));
        assert_eq!(view.node(1).map(|n| n.used), Some(10));
    }

    #[tokio::test]
    async fn the_router_sends_the_own_node_s_segments_to_it_and_the_rest_to_the_network() {
        // The "own node" is node 1 of a pool of its own; the "network" reaches 1..=3.
        let own = MemSegments::new(1);
        let net = MemSegments::new(3);
        let router = Router::new(Some(own.clone() as Arc<dyn SegmentIo>), net.clone());
        for id in 1..=3 {
            let data = Arc::new(vec![id as u8; 8]);
            router
                .store(&holder(id), seg(0), 0, data)
                .await
                .expect("store");
        }
        assert_eq!(own.segment(1, "00ff", 0), Some(vec![1; 8]));
        assert_eq!(
            net.segment(1, "00ff", 0),
            None,
            "node 1's shard took the call"
        );
        assert_eq!(net.segment(2, "00ff", 0), Some(vec![2; 8]));
        assert_eq!(net.segment(3, "00ff", 0), Some(vec![3; 8]));
        let back = router.read(&holder(1), seg(0), range(0, 8)).await;
        assert_eq!(back.expect("read"), vec![1; 8]);
        router.delete(&holder(1), "00ff").await.expect("delete");
        assert_eq!(own.segment(1, "00ff", 0), None);
    }
}
