//! Segment I/O and the pool view over the network: requests on pooled Noise
//! connections (`ConnPool`) to the holders and to the controller.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{IoFuture, SegmentError, SegmentIo, SegmentRead, ViewSource};
use crate::client::{ClientError, Holder};
use crate::net::{ConnPool, NetError};
use crate::proto::{ControllerRequest, NodeId, NodeRequest, PoolView, Response, SegmentRef};

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
}

type CallResult = Result<(Response, Option<Vec<u8>>), NetError>;

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
        async move {
            let req = NodeRequest::Store {
                segment,
                offset,
                len: data.len() as u32,
            };
            self.call(holder.addr, req, Some(&data)).await?;
            Ok(())
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
        async move {
            let req = NodeRequest::Reserve {
                segment,
                offset,
                len,
            };
            self.call(holder.addr, req, None).await?;
            Ok(())
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
            let req = NodeRequest::Punch {
                segment,
                offset,
                len,
            };
            self.call(holder.addr, req, None).await?;
            Ok(())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, holder: &'a Holder, file: &'a str) -> IoFuture<'a, ()> {
        async move {
            let req = NodeRequest::Delete { file: file.into() };
            self.call(holder.addr, req, None).await?;
            Ok(())
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
