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
    // Whether this process ever had a pool view: only then is there a last one to
    // serve with while the controller is away.
    let mut had_view = false;
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
        // Read every time: its free bytes change with everything on that disk.
        let disk = shared.disk();
        let (node_id, remembered) = {
            let m = shared.membership();
            (m.node_id, m.remembered)
        };
        let result = match (node_id, joined_with == Some(ctrl)) {
            (Some(node_id), true) => {
                let req = ControllerRequest::Heartbeat {
                    node_id,
                    identity: shared.identity,
                    capacity,
                    used,
                    machine: shared.machine.clone(),
                    disk,
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
                    disk,
                    // A controller that lost its registry gives the old id back.
                    id: remembered,
                };
                pool.call(ctrl, &req, None).await.map(|(resp, _)| resp)
            }
        };
        match result {
            Ok(Response::Assigned(assign)) => {
                joined_with = Some(ctrl);
                had_view = true;
                warned = false;
                shared.accept_assign(assign);
                continue; // fetch the view at once with a heartbeat
            }
            Ok(Response::Pool(view)) => {
                warned = false;
                had_view = true;
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
                    log::warn!("{}", unreachable_note(ctrl, &e, had_view));
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

/// What a node says when its controller gives no answer: a refused handshake is a
/// pool key that is not the pool's (the controller is there); otherwise the node
/// serves with the last pool view if it ever had one, and else is no member yet.
fn unreachable_note(ctrl: SocketAddr, e: &NetError, had_view: bool) -> String {
    match (e, had_view) {
        (NetError::Handshake { .. }, _) => format!(
            "the controller at {ctrl} refused our pool key ({e}): this node's key file \
             (--key, POOLFS_KEY or DATA_DIR/pool.key) is not the pool's; copy the pool's key \
             from a member and give it with --key FILE (trying again every second)"
        ),
        (_, true) => {
            format!("controller {ctrl} unreachable ({e}); serving with the last pool view")
        }
        (_, false) => format!(
            "controller {ctrl} unreachable ({e}); not a member of the pool yet: is `poolfs \
             controller` running there? (trying again every second)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::controller::ControllerService;
    use crate::net::{Handler, Peer, Reply, ServerLimits};
    use crate::node::{load_node_id, Node, NodeConfig};
    use crate::proto::{NodeState, PoolView};
    use crate::trust::{Credentials, PoolKey};

    /// A controller whose registry can be thrown away while its address stays.
    struct Forgetful(Mutex<Arc<ControllerService>>);

    impl Handler for Forgetful {
        type Request = ControllerRequest;

        async fn handle(&self, req: ControllerRequest, body: Option<Vec<u8>>, peer: Peer) -> Reply {
            let service = self.0.lock().unwrap().clone();
            service.handle(req, body, peer).await
        }
    }

    async fn pool_view(addr: SocketAddr, creds: Arc<Credentials>) -> PoolView {
        let pool = ConnPool::new(creds, Duration::from_secs(1), Duration::from_secs(2));
        match pool.call(addr, &ControllerRequest::Pool, None).await {
            Ok((Response::Pool(view), _)) => view,
            other => panic!("POOL answered {other:?}"),
        }
    }

    /// The controller forgets the node (its registry is replaced by an empty one): the
    /// node's next heartbeat is refused as unknown, and it joins again under the id it
    /// had, not the first id of the fresh registry.
    #[tokio::test]
    async fn a_forgotten_node_joins_again_with_its_old_id() {
        let key = PoolKey::generate();
        let creds = Arc::new(Credentials::ephemeral(&key).unwrap());
        let (old_state, fresh_state, storage) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        // The old registry had handed out ids 1 to 4 already: this node gets 5.
        std::fs::write(
            old_state.path().join("registry.json"),
            r#"{"version": 1, "next_id": 5, "epoch": 3, "members": []}"#,
        )
        .unwrap();
        let old = ControllerService::standalone(old_state.path()).unwrap();
        let controller = Arc::new(Forgetful(Mutex::new(Arc::new(old))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:47110")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(crate::net::serve(
            listener,
            controller.clone(),
            ServerLimits::default(),
            creds.clone(),
        ));
        let node = Node::start(NodeConfig {
            storage: storage.path().to_path_buf(),
            listen: "127.0.0.1:47111".parse().unwrap(),
            controller: Some(addr),
            capacity: Some(1 << 20),
            quota: None,
            key,
            machine: "test".into(),
        })
        .await
        .unwrap();
        assert_eq!(node.wait_joined(Duration::from_secs(5)).await, Some(5));
        assert_eq!(load_node_id(storage.path()), Some(5), "remembered on disk");

        let fresh = ControllerService::standalone(fresh_state.path()).unwrap();
        *controller.0.lock().unwrap() = Arc::new(fresh);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let view = loop {
            let view = pool_view(addr, creds.clone()).await;
            if !view.nodes.is_empty() || tokio::time::Instant::now() > deadline {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(view.nodes.len(), 1, "{view:?}");
        assert_eq!(view.nodes[0].id, 5, "{view:?}");
        assert_eq!(view.nodes[0].addr, node.addr());
        assert_eq!(view.nodes[0].state, NodeState::Up);
        assert_eq!(node.node_id(), Some(5));
        server.abort();
    }
}
