//! A node's membership: join when a controller is known, heartbeat every second,
//! rejoin when the controller forgets us, keep the last pool view while it is away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Shared, HEARTBEAT_INTERVAL};
use crate::net::{ConnPool, NetError};
use crate::proto::{ControllerRequest, ErrorKind, Response};

/// Joins when a controller is known, then heartbeats; rejoins when the controller
/// forgets us; keeps the last view while the controller is unreachable.
pub(super) async fn membership_loop(
    shared: Arc<Shared>,
    mut controller: watch::Receiver<Option<SocketAddr>>,
) {
    let pool = ConnPool::new(
        shared.creds.clone(),
        Duration::from_millis(800),
        Duration::from_secs(2),
    );
    let mut joined_with: Option<SocketAddr> = None;
    let mut warned = false;
    loop {
        let Some(ctrl) = *controller.borrow_and_update() else {
            if controller.changed().await.is_err() {
                return;
            }
            continue;
        };
        let (capacity, used) = {
            let stat = shared.stat();
            (stat.capacity, stat.used)
        };
        let node_id = shared.membership().node_id;
        let result = match (node_id, joined_with == Some(ctrl)) {
            (Some(node_id), true) => {
                let req = ControllerRequest::Heartbeat {
                    node_id,
                    identity: shared.identity,
                    capacity,
                    used,
                    machine: shared.machine.clone(),
                };
                pool.call(ctrl, &req, None).await.map(|(resp, _)| resp)
            }
            _ => {
                let req = ControllerRequest::Join {
                    identity: shared.identity,
                    listen: shared.listen,
                    capacity,
                    used,
                    machine: shared.machine.clone(),
                };
                pool.call(ctrl, &req, None).await.map(|(resp, _)| resp)
            }
        };
        match result {
            Ok(Response::Assigned(assign)) => {
                joined_with = Some(ctrl);
                warned = false;
                shared.accept_assign(assign);
                continue; // fetch the view at once with a heartbeat
            }
            Ok(Response::Pool(view)) => {
                warned = false;
                shared.membership().view = view;
            }
            Ok(other) => log::warn!("controller {ctrl} answered {other:?} to a heartbeat"),
            Err(e @ NetError::Remote { .. })
                if matches!(
                    e.remote_kind(),
                    Some(ErrorKind::NotFound | ErrorKind::Unauthorized)
                ) =>
            {
                log::warn!("controller {ctrl} does not know us ({e}); joining again");
                joined_with = None;
            }
            Err(e) => {
                if !warned {
                    log::warn!(
                        "controller {ctrl} unreachable ({e}); serving with the last pool view"
                    );
                    warned = true;
                }
                // A restarted controller must see a fresh join to learn our address.
                joined_with = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            _ = controller.changed() => {}
        }
    }
}
