//! Segment I/O and the pool view over the network: requests on pooled Noise
//! connections (`ConnPool`) to the holders and to the controller.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{IoFuture, SegmentError, SegmentIo, SegmentRead, ViewSource};
use crate::client::{ClientError, Holder};
use crate::net::{ConnPool, NetError};
use crate::proto::{
    ControllerRequest, NodeId, NodeRequest, PoolView, Reclaim, Response, SegmentPage, SegmentRef,
};

/// Every holder, reached over the network.
pub struct NetSegments {
    conns: Arc<ConnPool>,
}

impl NetSegments {
    /// Segment calls on the connections of `conns`.
    pub fn new(conns: Arc<ConnPool>) -> Self {
        NetSegments { conns }
    }

    async fn call(&self, addr: SocketAddr, req: NodeRequest, body: Option<&[u8]>) -> CallResult {
        self.conns.call(addr, &req, body).await
    }

    /// Sends `req` (with `body`) to `holder` for a verb whose only answer is `Ok`.
    fn acked<'a>(
        &'a self,
        holder: &'a Holder,
        req: NodeRequest,
        body: Option<Arc<Vec<u8>>>,
    ) -> IoFuture<'a, ()> {
        async move {
            self.call(holder.addr, req, body.as_deref().map(Vec::as_slice))
                .await?;
            Ok(())
        }
        .boxed()
    }
}

type CallResult = Result<(Response, Option<Vec<u8>>), NetError>;

/// A holder answered with a response that is not the verb's.
fn unexpected(holder: &Holder, answer: Response) -> SegmentError {
    SegmentError::Net(NetError::Unexpected {
        addr: holder.addr,
        what: format!("{answer:?}"),
    })
}

impl SegmentIo for NetSegments {
    fn serves(&self, _node: NodeId) -> bool {
        true
    }

    fn store<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        data: Arc<Vec<u8>>,
    ) -> IoFuture<'a, ()> {
        let req = NodeRequest::Store {
            segment,
            offset,
            len: data.len() as u32,
        };
        self.acked(holder, req, Some(data))
    }

    fn read<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        what: SegmentRead,
    ) -> IoFuture<'a, Vec<u8>> {
        async move {
            let (_, body) = self
                .call(holder.addr, NodeRequest::Fwd { segment, what }, None)
                .await?;
            body.ok_or(SegmentError::NoData { addr: holder.addr })
        }
        .boxed()
    }

    fn reserve<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        let req = NodeRequest::Reserve {
            segment,
            offset,
            len,
        };
        self.acked(holder, req, None)
    }

    fn punch<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        let req = NodeRequest::Punch {
            segment,
            offset,
            len,
        };
        self.acked(holder, req, None)
    }

    fn delete<'a>(&'a self, holder: &'a Holder, file: &'a str) -> IoFuture<'a, ()> {
        self.acked(holder, NodeRequest::Delete { file: file.into() }, None)
    }

    fn list<'a>(
        &'a self,
        holder: &'a Holder,
        after: Option<SegmentRef>,
        limit: u32,
    ) -> IoFuture<'a, SegmentPage> {
        async move {
            match self
                .call(holder.addr, NodeRequest::List { after, limit }, None)
                .await?
            {
                (Response::Segments(page), _) => Ok(page),
                (other, _) => Err(unexpected(holder, other)),
            }
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
            let req = NodeRequest::DeleteSegment {
                segment,
                keep,
                older_than_ms,
            };
            match self.call(holder.addr, req, None).await? {
                (Response::Reclaimed(outcome), _) => Ok(outcome),
                (other, _) => Err(unexpected(holder, other)),
            }
        }
        .boxed()
    }

    fn abandon(&self, holder: &Holder) {
        self.conns.drop_peer(holder.addr);
    }
}

/// The pool view as the controller at `addr` answers a POOL request.
pub struct ControllerView {
    conns: Arc<ConnPool>,
    addr: SocketAddr,
}

impl ControllerView {
    /// Asks the controller at `addr` over the connections of `conns`.
    pub fn new(conns: Arc<ConnPool>, addr: SocketAddr) -> Self {
        ControllerView { conns, addr }
    }
}

impl ViewSource for ControllerView {
    fn fetch(&self) -> BoxFuture<'_, Result<PoolView, ClientError>> {
        async move {
            match self
                .conns
                .call(self.addr, &ControllerRequest::Pool, None)
                .await
            {
                Ok((Response::Pool(view), _)) => Ok(view),
                Ok((other, _)) => Err(ClientError::Controller(NetError::Unexpected {
                    addr: self.addr,
                    what: format!("{other:?}"),
                })),
                Err(e) => Err(ClientError::Controller(e)),
            }
        }
        .boxed()
    }
}
