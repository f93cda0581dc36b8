//! The pool view as a client sees it: fetched from its source (the controller, or an
//! in-memory pool), cached for `VIEW_TTL`, and what it says of holders (where they are
//! now, which are not up).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ClientError, Holder, PoolClient};
use crate::proto::{NodeState, PoolView};

/// How long a fetched pool view is reused before asking its source again.
pub const VIEW_TTL: Duration = Duration::from_millis(500);

impl PoolClient {
    pub(super) fn cached_view(&self) -> Option<(PoolView, Instant)> {
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
    pub(super) async fn addr_of(&self, holder: &Holder) -> SocketAddr {
        match self.view().await {
            Ok(view) => view.node(holder.node_id).map_or(holder.addr, |n| n.addr),
            Err(_) => holder.addr,
        }
    }

    /// `holder` as reachable now: at the address the pool view gives it (a node that
    /// restarted on another port), else the one recorded at placement.
    pub(super) async fn reach(&self, holder: &Holder) -> Holder {
        Holder {
            node_id: holder.node_id,
            addr: self.addr_of(holder).await,
        }
    }

    /// Which of `holders` the current view says are not up: not worth waiting on.
    pub(super) async fn unhealthy<'a>(
        &self,
        holders: impl IntoIterator<Item = &'a Holder>,
    ) -> Vec<bool> {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::pool;
    use crate::proto::NodeState;

    #[tokio::test]
    async fn the_view_is_cached_until_refreshed() {
        let (mem, client) = pool(3, false);
        assert_eq!(client.view().await.expect("view").live().len(), 3);
        mem.kill(3);
        // Within VIEW_TTL the cached view stands; a refresh sees the change at once.
        assert_eq!(client.view().await.expect("view").live().len(), 3);
        let fresh = client.refresh_view().await.expect("view");
        assert_eq!(fresh.node(3).map(|n| n.state), Some(NodeState::Down));
        assert_eq!(client.view().await.expect("view").live().len(), 2);
    }
}
