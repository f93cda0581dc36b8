//! Segment I/O on the mount's own node, by call: a third of every stripe (on a 3-node
//! pool) then skips loopback TCP and two cipher passes each way.

use std::sync::Arc;

use futures::FutureExt;

use super::{IoFuture, SegmentError, SegmentIo, SegmentRead};
use crate::client::Holder;
use crate::node::{OwnSegments, Refusal};
use crate::proto::{ErrorKind, NodeId, Reclaim, SegmentPage, SegmentRef};

/// Runs `call` on the blocking pool, as the node's own handler does (pwrite, fdatasync
/// and fallocate may wait on the disk), and reports a refusal as a remote node would.
async fn blocking<T: Send + 'static>(
    holder: &Holder,
    call: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, SegmentError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|e| {
            Err(Refusal {
                kind: ErrorKind::Internal,
                message: format!("task failed: {e}"),
            })
        })
        .map_err(|r| SegmentError::Refused {
            addr: holder.addr,
            kind: r.kind,
            message: r.message,
        })
}

impl SegmentIo for OwnSegments {
    fn serves(&self, node: NodeId) -> bool {
        self.node_id() == Some(node)
    }

    fn by_call(&self, node: NodeId) -> bool {
        self.serves(node)
    }

    fn store<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        data: Arc<Vec<u8>>,
    ) -> IoFuture<'a, ()> {
        let own = self.clone();
        blocking(holder, move || own.store(&segment, offset, &data)).boxed()
    }

    fn read<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        what: SegmentRead,
    ) -> IoFuture<'a, Vec<u8>> {
        let own = self.clone();
        blocking(holder, move || match what {
            SegmentRead::Range { offset, len, .. } => own.fwd(&segment, offset, len),
            SegmentRead::Parts(parts) => own.fwd_parts(&segment, &parts),
        })
        .boxed()
    }

    fn reserve<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        let own = self.clone();
        blocking(holder, move || own.reserve(&segment, offset, len)).boxed()
    }

    fn punch<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        offset: u64,
        len: u64,
    ) -> IoFuture<'a, ()> {
        let own = self.clone();
        blocking(holder, move || own.punch(&segment, offset, len)).boxed()
    }

    fn delete<'a>(&'a self, holder: &'a Holder, file: &'a str) -> IoFuture<'a, ()> {
        let (own, file) = (self.clone(), file.to_string());
        blocking(holder, move || own.delete(&file)).boxed()
    }

    fn list<'a>(
        &'a self,
        holder: &'a Holder,
        after: Option<SegmentRef>,
        limit: u32,
    ) -> IoFuture<'a, SegmentPage> {
        let own = self.clone();
        blocking(holder, move || own.list(after.as_ref(), limit)).boxed()
    }

    fn delete_segment<'a>(
        &'a self,
        holder: &'a Holder,
        segment: SegmentRef,
        keep: Vec<(u64, u64)>,
        older_than_ms: u64,
    ) -> IoFuture<'a, Reclaim> {
        let own = self.clone();
        blocking(holder, move || {
            own.delete_segment(&segment, &keep, older_than_ms)
        })
        .boxed()
    }
}
