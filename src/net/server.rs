//! The accept loop shared by controller and node: Noise handshake, then one request at a
//! time per connection. Anything malformed or unauthenticated closes that connection and
//! nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::noise::Channel;
use crate::proto::{self, Request, Response};
use crate::trust::{identity_of, Credentials, KEY_LEN};

/// What a handler answers: a message, or raw bytes sent as `Data` + body.
pub enum Reply {
    Msg(Response),
    Data(Vec<u8>),
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
    pub addr: SocketAddr,
    pub local: SocketAddr,
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
    fn handle(
        &self,
        req: Request,
        body: Option<Vec<u8>>,
        peer: Peer,
    ) -> impl Future<Output = Reply> + Send;
}

/// Bounds that keep a hostile or idle peer from holding resources.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Once a request frame has begun, the rest of it must arrive within this.
    pub frame_timeout: Duration,
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

/// Serves `handler` on `listener` to peers that complete the handshake with `creds`'s
/// pool key, until the task is dropped.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    creds: Arc<Credentials>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let handler = handler.clone();
        let creds = creds.clone();
        tokio::spawn(async move {
            if let Err(why) = serve_connection(stream, peer, &*handler, limits, &creds).await {
                log::debug!("closed connection from {peer}: {why}");
            }
            drop(permit);
        });
    }
}

async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &H,
    limits: ServerLimits,
    creds: &Credentials,
) -> Result<(), String> {
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let mut chan = tokio::time::timeout(limits.handshake_timeout, Channel::respond(stream, creds))
        .await
        .map_err(|_| "no handshake in time".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let peer = Peer {
        addr: peer,
        local,
        key: *chan.remote_key(),
    };

    loop {
        // A peer may stay idle between requests, but once a frame has begun the rest must
        // follow promptly: a truncated frame must not hold the connection for the idle time.
        match tokio::time::timeout(limits.idle_timeout, chan.readable()).await {
            Err(_) => return Err("idle".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(false)) => return Ok(()),
            Ok(Ok(true)) => {}
        }
        let frame = tokio::time::timeout(limits.frame_timeout, chan.read_frame())
            .await
            .map_err(|_| "frame not completed in time".to_string())?
            .map_err(|e| e.to_string())?;
        let req: Request = proto::decode(&frame).map_err(|e| e.to_string())?;
        let body = match &req {
            Request::Store { len, .. } => Some(
                tokio::time::timeout(limits.body_timeout, chan.read_body(*len))
                    .await
                    .map_err(|_| "body not sent in time".to_string())?
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        match handler.handle(req, body, peer).await {
            Reply::Msg(resp) => send(&mut chan, &resp, None).await?,
            Reply::Data(bytes) => {
                let len = u32::try_from(bytes.len()).map_err(|_| "reply too large".to_string())?;
                send(&mut chan, &Response::Data { len }, Some(&bytes)).await?
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
