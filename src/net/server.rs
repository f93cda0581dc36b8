//! The accept loop shared by controller and node: Noise handshake, then one request at a
//! time per connection. Anything malformed or unauthenticated closes that connection and
//! nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, TryAcquireError};

use super::noise::Channel;
use crate::proto::{self, ErrorKind, MessageError, Response, ServiceRequest};
use crate::trust::{identity_of, Credentials, KEY_LEN};

/// What a handler answers: a message, or raw bytes sent as `Data` + body.
pub enum Reply {
    /// A response message.
    Msg(Response),
    /// Bytes sent as `Response::Data` followed by the raw body, inside the channel's
    /// encryption.
    Data(Vec<u8>),
    /// Bytes that are ciphertext already (a sealed shard), sent outside the channel's
    /// encryption.
    Sealed(Vec<u8>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Msg(r)
    }
}

/// Who sent a request: its address, the local address it reached, and the static key it
/// proved in the handshake.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The local address the peer connected to (which of our addresses it reached).
    pub local: SocketAddr,
    /// The peer's static Noise public key (X25519), proved in the handshake.
    pub key: [u8; KEY_LEN],
}

impl Peer {
    /// Does `identity` belong to this peer's static key?
    pub fn owns(&self, identity: proto::Identity) -> bool {
        identity_of(&self.key) == identity
    }
}

/// A service: turns one request (with its body, for STORE) into one reply.
pub trait Handler: Send + Sync + 'static {
    /// The request type this service answers; a request of another service's type is
    /// refused before the handler sees it.
    type Request: ServiceRequest;

    /// The answer to `req`, sent by `peer`; `body` holds the raw bytes its
    /// `body_len` announced (a STORE's), read in full before the call.
    fn handle(
        &self,
        req: Self::Request,
        body: Option<Vec<u8>>,
        peer: Peer,
    ) -> impl Future<Output = Reply> + Send;
}

/// Bounds that keep a hostile or idle peer from holding resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections held at once; at the cap a newcomer takes the place of the
    /// connection that has waited longest without a request in progress (see `serve`).
    pub max_connections: usize,
    /// The Noise handshake must finish within this (5 s; `POOLFS_HANDSHAKE_TIMEOUT_MS`).
    pub handshake_timeout: Duration,
    /// A connection with no request begun for this long is closed (300 s;
    /// `POOLFS_IDLE_TIMEOUT_MS`).
    pub idle_timeout: Duration,
    /// Once a request frame has begun, the rest of it must arrive within this.
    pub frame_timeout: Duration,
    /// A STORE's body must arrive in full within this (30 s; `POOLFS_BODY_TIMEOUT_MS`).
    pub body_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Environment variables that override the defaults (for tests and for tuning a busy
/// node): a count and four durations in milliseconds.
pub const LIMIT_VARS: [&str; 5] = [
    "POOLFS_MAX_CONNECTIONS",
    "POOLFS_HANDSHAKE_TIMEOUT_MS",
    "POOLFS_IDLE_TIMEOUT_MS",
    "POOLFS_FRAME_TIMEOUT_MS",
    "POOLFS_BODY_TIMEOUT_MS",
];

impl ServerLimits {
    /// The defaults, overridden by whichever of `LIMIT_VARS` are set; a value that is not
    /// a positive integer is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut limits = ServerLimits::default();
        for name in LIMIT_VARS {
            let Some(value) = get(name) else { continue };
            let n: u64 = value
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}={value:?}: expected a positive integer"))?;
            let ms = Duration::from_millis(n);
            match name {
                "POOLFS_MAX_CONNECTIONS" => {
                    limits.max_connections =
                        usize::try_from(n).map_err(|e| format!("{name}: {e}"))?
                }
                "POOLFS_HANDSHAKE_TIMEOUT_MS" => limits.handshake_timeout = ms,
                "POOLFS_IDLE_TIMEOUT_MS" => limits.idle_timeout = ms,
                "POOLFS_FRAME_TIMEOUT_MS" => limits.frame_timeout = ms,
                _ => limits.body_timeout = ms,
            }
        }
        Ok(limits)
    }
}

/// Connections that are waiting for their peer (in the handshake, or idle between
/// requests) and may therefore be closed to make room for a newcomer at the cap.
#[derive(Default)]
struct Waiting {
    next: u64,
    entries: Vec<WaitEntry>,
}

struct WaitEntry {
    id: u64,
    since: Instant,
    /// Past the handshake: a member's (pooled) connection rather than a stranger's.
    authenticated: bool,
    kick: Arc<Notify>,
}

struct Evictor(Mutex<Waiting>);

impl Evictor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, authenticated: bool, kick: &Arc<Notify>) -> u64 {
        let mut w = self.lock();
        w.next += 1;
        let id = w.next;
        w.entries.push(WaitEntry {
            id,
            since: Instant::now(),
            authenticated,
            kick: kick.clone(),
        });
        id
    }

    fn remove(&self, id: u64) {
        self.lock().entries.retain(|e| e.id != id);
    }

    /// Closes the connection that has waited longest, strangers still in the handshake
    /// before members idle between requests; false if every connection is busy.
    fn evict_one(&self) -> bool {
        let mut w = self.lock();
        let victim = w
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| (e.authenticated, e.since))
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                // notify_one keeps the wake-up if the task is not waiting yet.
                w.entries.swap_remove(i).kick.notify_one();
                true
            }
            None => false,
        }
    }
}

/// How long a newcomer at the cap waits for the evicted connection to let go.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Serves `handler` on `listener` to peers that complete the handshake with `creds`'s
/// pool key, until the task is dropped.
///
/// At most `limits.max_connections` connections are held. At the cap, a new connection
/// takes the place of the one that has waited longest for its peer (a stranger stuck in
/// the handshake first, else a member idle between requests, whose pool reconnects), so
/// thousands of idle connections cannot lock members out; if every connection is busy
/// with a request, the newcomer is closed at once rather than left hanging.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    creds: Arc<Credentials>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Evictor(Mutex::new(Waiting::default())));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return,
            Err(TryAcquireError::NoPermits) => {
                let freed = if waiting.evict_one() {
                    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match freed {
                    Some(p) => p,
                    None => {
                        log::warn!(
                            "refused {peer}: {} connections, all busy",
                            limits.max_connections
                        );
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let handler = handler.clone();
        let creds = creds.clone();
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let conn = Conn {
                limits,
                waiting: &waiting,
                kick: Arc::new(Notify::new()),
            };
            if let Err(why) = conn.serve(stream, peer, &*handler, &creds).await {
                log::debug!("closed connection from {peer}: {why}");
            }
            drop(permit);
        });
    }
}

/// One served connection and what lets the accept loop close it while it waits.
struct Conn<'a> {
    limits: ServerLimits,
    waiting: &'a Evictor,
    kick: Arc<Notify>,
}

impl Conn<'_> {
    /// Runs `fut` while this connection is listed as waiting for its peer; gives up if
    /// it is evicted meanwhile.
    async fn wait<T>(
        &self,
        authenticated: bool,
        fut: impl Future<Output = T>,
    ) -> Result<T, String> {
        let id = self.waiting.add(authenticated, &self.kick);
        let out = tokio::select! {
            out = fut => Ok(out),
            _ = self.kick.notified() => Err("closed to make room for a new connection".into()),
        };
        self.waiting.remove(id);
        out
    }

    async fn serve<H: Handler>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        handler: &H,
        creds: &Credentials,
    ) -> Result<(), String> {
        let limits = self.limits;
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        let handshake =
            tokio::time::timeout(limits.handshake_timeout, Channel::respond(stream, creds));
        let mut chan = self
            .wait(false, handshake)
            .await?
            .map_err(|_| "no handshake in time".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let peer = Peer {
            addr: peer,
            local,
            key: *chan.remote_key(),
        };

        loop {
            // A peer may stay idle between requests, but once a frame has begun the rest
            // must follow promptly: a truncated frame must not hold the connection for the
            // idle time.
            let idle = tokio::time::timeout(limits.idle_timeout, chan.readable());
            match self.wait(true, idle).await? {
                Err(_) => return Err("idle".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(false)) => return Ok(()),
                Ok(Ok(true)) => {}
            }
            let frame = tokio::time::timeout(limits.frame_timeout, chan.read_frame())
                .await
                .map_err(|_| "frame not completed in time".to_string())?
                .map_err(|e| e.to_string())?;
            let req: H::Request = match proto::decode_request(&frame) {
                Ok(req) => req,
                Err(e @ MessageError::WrongService { .. }) => {
                    // Well-formed but misdirected: say so, then close as for any
                    // request this server cannot read.
                    let refusal = Response::error(ErrorKind::BadRequest, e.to_string());
                    send(&mut chan, &refusal, None).await?;
                    return Err(e.to_string());
                }
                Err(e) => return Err(e.to_string()),
            };
            let body = match req.body_len() {
                Some(len) => Some(
                    tokio::time::timeout(limits.body_timeout, chan.read_body(len))
                        .await
                        .map_err(|_| "body not sent in time".to_string())?
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            match handler.handle(req, body, peer).await {
                Reply::Msg(resp) => send(&mut chan, &resp, None).await?,
                Reply::Data(bytes) => {
                    let len =
                        u32::try_from(bytes.len()).map_err(|_| "reply too large".to_string())?;
                    send(&mut chan, &Response::Data { len }, Some(&bytes)).await?
                }
                Reply::Sealed(bytes) => {
                    let len =
                        u32::try_from(bytes.len()).map_err(|_| "reply too large".to_string())?;
                    send(&mut chan, &Response::SealedData { len }, None).await?;
                    chan.write_raw(&bytes).await.map_err(|e| e.to_string())?
                }
            }
        }
    }
}

async fn send<T: serde::Serialize>(
    chan: &mut Channel,
    msg: &T,
    body: Option<&[u8]>,
) -> Result<(), String> {
    let bytes = proto::encode(msg).map_err(|e| e.to_string())?;
    chan.write_frame(&bytes).await.map_err(|e| e.to_string())?;
    if let Some(body) = body {
        chan.write_all(body).await.map_err(|e| e.to_string())?;
    }
    chan.flush().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_the_environment() {
        let none = ServerLimits::from_vars(|_| None).unwrap();
        assert_eq!(none, ServerLimits::default());
        let set = ServerLimits::from_vars(|name| match name {
            "POOLFS_MAX_CONNECTIONS" => Some("12".into()),
            "POOLFS_IDLE_TIMEOUT_MS" => Some("1500".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.max_connections, 12);
        assert_eq!(set.idle_timeout, Duration::from_millis(1500));
        assert_eq!(set.frame_timeout, ServerLimits::default().frame_timeout);
        for bad in ["0", "-1", "ten", ""] {
            let err = ServerLimits::from_vars(|name| {
                (name == "POOLFS_BODY_TIMEOUT_MS").then(|| bad.to_string())
            })
            .unwrap_err();
            assert!(err.contains("POOLFS_BODY_TIMEOUT_MS"), "{err}");
        }
    }

    #[test]
    fn eviction_prefers_the_oldest_stranger_then_the_oldest_idle_member() {
        let ev = Evictor(Mutex::new(Waiting::default()));
        let kicks: Vec<Arc<Notify>> = (0..3).map(|_| Arc::new(Notify::new())).collect();
        let member_old = ev.add(true, &kicks[0]);
        let stranger = ev.add(false, &kicks[1]);
        let _member_new = ev.add(true, &kicks[2]);
        assert!(ev.evict_one());
        let left: Vec<u64> = ev.lock().entries.iter().map(|e| e.id).collect();
        assert!(
            !left.contains(&stranger),
            "the stranger goes first: {left:?}"
        );
        assert!(ev.evict_one());
        let left: Vec<u64> = ev.lock().entries.iter().map(|e| e.id).collect();
        assert!(
            !left.contains(&member_old),
            "then the oldest member: {left:?}"
        );
        ev.remove(left[0]);
        assert!(!ev.evict_one(), "nothing waiting: nothing to evict");
    }
}
