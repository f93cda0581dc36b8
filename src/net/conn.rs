//! One client connection: connect, version handshake, then request/response with
//! optional raw bodies.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::proto::{
    self, ErrorKind, Hello, HelloReply, Request, Response, MAGIC, PROTOCOL_VERSION,
};

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {secs:.1}s")]
    Timeout { addr: SocketAddr, secs: f64 },
    #[error("{addr} speaks protocol version {server}, we speak {PROTOCOL_VERSION}")]
    Version { addr: SocketAddr, server: u16 },
    #[error("connection to {addr} failed: {source}")]
    Frame {
        addr: SocketAddr,
        source: proto::FrameError,
    },
    #[error("{addr} sent a malformed message: {source}")]
    Codec {
        addr: SocketAddr,
        source: proto::CodecError,
    },
    #[error("{addr} answered {kind:?}: {message}")]
    Remote {
        addr: SocketAddr,
        kind: ErrorKind,
        message: String,
    },
    #[error("{addr} answered out of protocol: {what}")]
    Unexpected { addr: SocketAddr, what: String },
}

impl NetError {
    /// The error kind a peer reported, if the failure came from the peer's answer.
    pub fn remote_kind(&self) -> Option<ErrorKind> {
        match self {
            NetError::Remote { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// An established, version-checked connection.
pub struct Connection {
    addr: SocketAddr,
    rd: BufReader<OwnedReadHalf>,
    wr: BufWriter<OwnedWriteHalf>,
}

impl Connection {
    /// Connects and performs the handshake, all within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, NetError> {
        let fut = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| NetError::Connect { addr, source })?;
            // Headers are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            let (rd, wr) = stream.into_split();
            let mut conn = Connection {
                addr,
                rd: BufReader::with_capacity(256 * 1024, rd),
                wr: BufWriter::with_capacity(256 * 1024, wr),
            };
            conn.handshake().await?;
            Ok(conn)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| NetError::Timeout {
                addr,
                secs: timeout.as_secs_f64(),
            })?
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn handshake(&mut self) -> Result<(), NetError> {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        };
        self.send(&hello, None).await?;
        match self.recv::<HelloReply>().await? {
            HelloReply::Welcome { .. } => Ok(()),
            HelloReply::VersionMismatch { server } => Err(NetError::Version {
                addr: self.addr,
                server,
            }),
        }
    }

    async fn send<T: serde::Serialize>(
        &mut self,
        msg: &T,
        body: Option<&[u8]>,
    ) -> Result<(), NetError> {
        let addr = self.addr;
        let bytes = proto::encode(msg).map_err(|source| NetError::Codec { addr, source })?;
        let frame_err = |source| NetError::Frame { addr, source };
        proto::write_frame(&mut self.wr, &bytes)
            .await
            .map_err(frame_err)?;
        if let Some(body) = body {
            self.wr
                .write_all(body)
                .await
                .map_err(|e| frame_err(e.into()))?;
        }
        self.wr.flush().await.map_err(|e| frame_err(e.into()))
    }

    async fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, NetError> {
        let addr = self.addr;
        let bytes = proto::read_frame(&mut self.rd)
            .await
            .map_err(|source| NetError::Frame { addr, source })?;
        proto::decode(&bytes).map_err(|source| NetError::Codec { addr, source })
    }

    /// Sends a request (and its body, for STORE) and returns the answer; an error
    /// answer becomes `NetError::Remote`. A `Data` answer's body is read and returned.
    pub async fn call(
        &mut self,
        req: &Request,
        body: Option<&[u8]>,
    ) -> Result<(Response, Option<Vec<u8>>), NetError> {
        self.send(req, body).await?;
        let addr = self.addr;
        match self.recv::<Response>().await? {
            Response::Error { kind, message } => Err(NetError::Remote {
                addr,
                kind,
                message,
            }),
            Response::Data { len } => {
                let data = proto::read_body(&mut self.rd, len)
                    .await
                    .map_err(|source| NetError::Frame { addr, source })?;
                Ok((Response::Data { len }, Some(data)))
            }
            other => Ok((other, None)),
        }
    }
}
