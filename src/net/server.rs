//! The accept loop shared by controller and node: handshake, then one request at a time
//! per connection. Anything malformed closes that connection and nothing else.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::proto::{self, Hello, HelloReply, Request, Response, MAGIC, PROTOCOL_VERSION};

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

/// A service: turns one request (with its body, for STORE) into one reply.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request,
        body: Option<Vec<u8>>,
        peer: SocketAddr,
        local: SocketAddr,
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

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, limits: ServerLimits) {
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
        tokio::spawn(async move {
            if let Err(why) = serve_connection(stream, peer, &*handler, limits).await {
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
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);

    let hello = tokio::time::timeout(limits.handshake_timeout, proto::read_frame(&mut rd))
        .await
        .map_err(|_| "no handshake in time".to_string())?
        .map_err(|e| e.to_string())?;
    let hello: Hello = proto::decode(&hello).map_err(|e| e.to_string())?;
    if hello.magic != MAGIC {
        return Err("bad magic".into());
    }
    if hello.version != PROTOCOL_VERSION {
        let reply = HelloReply::VersionMismatch {
            server: PROTOCOL_VERSION,
        };
        send(&mut wr, &reply, None).await?;
        return Err(format!("client speaks version {}", hello.version));
    }
    send(
        &mut wr,
        &HelloReply::Welcome {
            version: PROTOCOL_VERSION,
        },
        None,
    )
    .await?;

    loop {
        // A peer may stay idle between requests, but once a frame has begun the rest must
        // follow promptly: a truncated frame must not hold the connection for the idle time.
        match tokio::time::timeout(limits.idle_timeout, rd.fill_buf()).await {
            Err(_) => return Err("idle".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok([])) => return Ok(()),
            Ok(Ok(_)) => {}
        }
        let frame = tokio::time::timeout(limits.frame_timeout, proto::read_frame(&mut rd))
            .await
            .map_err(|_| "frame not completed in time".to_string())?
            .map_err(|e| e.to_string())?;
        let req: Request = proto::decode(&frame).map_err(|e| e.to_string())?;
        let body = match &req {
            Request::Store { len, .. } => Some(
                tokio::time::timeout(limits.body_timeout, proto::read_body(&mut rd, *len))
                    .await
                    .map_err(|_| "body not sent in time".to_string())?
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        match handler.handle(req, body, peer, local).await {
            Reply::Msg(resp) => send(&mut wr, &resp, None).await?,
            Reply::Data(bytes) => {
                let len = u32::try_from(bytes.len()).map_err(|_| "reply too large".to_string())?;
                send(&mut wr, &Response::Data { len }, Some(&bytes)).await?
            }
        }
    }
}

async fn send<W, T>(wr: &mut W, msg: &T, body: Option<&[u8]>) -> Result<(), String>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: serde::Serialize,
{
    let bytes = proto::encode(msg).map_err(|e| e.to_string())?;
    proto::write_frame(wr, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(body) = body {
        wr.write_all(body).await.map_err(|e| e.to_string())?;
    }
    wr.flush().await.map_err(|e| e.to_string())
}
