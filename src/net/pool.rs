//! Reuse of connections per peer, so a stripe costs a round trip and not a handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Connection, NetError};
use crate::proto::{Response, ServiceRequest};
use crate::trust::Credentials;

/// Idle connections kept per peer; more may be open while busy.
const IDLE_PER_PEER: usize = 16;

/// A set of idle connections to peers, with per-call timeouts.
pub struct ConnPool {
    idle: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    creds: Arc<Credentials>,
    connect_timeout: Duration,
    call_timeout: Duration,
}

impl ConnPool {
    /// A pool that proves `creds` to every peer, whose connects give up after
    /// `connect_timeout` and whose calls (connect included) give up after `call_timeout`.
    pub fn new(creds: Arc<Credentials>, connect_timeout: Duration, call_timeout: Duration) -> Self {
        ConnPool {
            idle: Mutex::new(HashMap::new()),
            creds,
            connect_timeout,
            call_timeout,
        }
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(&addr).and_then(Vec::pop)
    }

    fn put_idle(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(conn.addr()).or_default();
        if list.len() < IDLE_PER_PEER {
            list.push(conn);
        }
    }

    /// The credentials this pool proves.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.creds
    }

    /// Forgets every idle connection to `addr` (after the peer failed).
    pub fn drop_peer(&self, addr: SocketAddr) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.remove(&addr);
    }

    /// One request to `addr`. A reused connection that turns out stale is retried once
    /// on a fresh one; a connection that failed is never put back.
    pub async fn call<R: ServiceRequest>(
        &self,
        addr: SocketAddr,
        req: &R,
        body: Option<&[u8]>,
    ) -> Result<(Response, Option<Vec<u8>>), NetError> {
        let timeout = self.call_timeout;
        let attempt = async {
            if let Some(mut conn) = self.take_idle(addr) {
                match conn.call(req, body).await {
                    Ok(answer) => {
                        self.put_idle(conn);
                        return Ok(answer);
                    }
                    // The peer answered: the connection is fine, the request failed.
                    Err(e @ NetError::Remote { .. }) => {
                        self.put_idle(conn);
                        return Err(e);
                    }
                    Err(_) => self.drop_peer(addr),
                }
            }
            let mut conn = Connection::connect(addr, &self.creds, self.connect_timeout).await?;
            let answer = conn.call(req, body).await;
            if matches!(answer, Ok(_) | Err(NetError::Remote { .. })) {
                self.put_idle(conn);
            }
            answer
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| NetError::Timeout {
                addr,
                secs: timeout.as_secs_f64(),
            })?
    }
}
