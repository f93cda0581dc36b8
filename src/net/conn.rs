//! One client connection: connect, Noise handshake (pool key and protocol version), then
//! encrypted request/response with optional raw bodies.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::noise::{Channel, HandshakeError};
use crate::proto::{self, ErrorKind, Response, ServiceRequest};
use crate::trust::{Credentials, KEY_LEN};

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("{addr} did not answer within {secs:.1}s")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The time allowed, in seconds.
        secs: f64,
    },
    /// The Noise handshake failed (wrong pool key, protocol version, ...).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// The failure.
        source: HandshakeError,
    },
    /// A frame or body could not be read or written on the channel.
    #[error("connection to {addr} failed: {source}")]
    Frame {
        /// The peer.
        addr: SocketAddr,
        /// The failure.
        source: proto::FrameError,
    },
    /// The peer's response could not be decoded.
    #[error("{addr} sent a malformed message: {source}")]
    Codec {
        /// The peer.
        addr: SocketAddr,
        /// The failure.
        source: proto::MessageError,
    },
    /// The peer answered `Response::Error`.
    #[error("{addr} answered {kind:?}: {message}")]
    Remote {
        /// The peer.
        addr: SocketAddr,
        /// The kind it reported.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// The peer answered with a response the request does not take.
    #[error("{addr} answered out of protocol: {what}")]
    Unexpected {
        /// The peer.
        addr: SocketAddr,
        /// What it answered.
        what: String,
    },
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

/// An established connection to a peer that proved it holds the pool key.
pub struct Connection {
    addr: SocketAddr,
    chan: Channel,
}

impl Connection {
    /// Connects and performs the handshake with `creds`, all within `timeout`.
    ///
    /// Errors: `NetError::Connect`, `Timeout` or `Handshake`.
    pub async fn connect(
        addr: SocketAddr,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Self, NetError> {
        let fut = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| NetError::Connect { addr, source })?;
            let chan = Channel::initiate(stream, creds)
                .await
                .map_err(|source| NetError::Handshake { addr, source })?;
            Ok(Connection { addr, chan })
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

    /// The peer's static public key, proven by the handshake.
    pub fn remote_key(&self) -> &[u8; KEY_LEN] {
        self.chan.remote_key()
    }

    async fn send<R: ServiceRequest>(
        &mut self,
        req: &R,
        body: Option<&[u8]>,
    ) -> Result<(), NetError> {
        let addr = self.addr;
        let bytes =
            proto::encode_request(req).map_err(|source| NetError::Codec { addr, source })?;
        let frame_err = |source| NetError::Frame { addr, source };
        self.chan.write_frame(&bytes).await.map_err(frame_err)?;
        if let Some(body) = body {
            self.chan
                .write_all(body)
                .await
                .map_err(|e| frame_err(e.into()))?;
        }
        self.chan.flush().await.map_err(|e| frame_err(e.into()))
    }

    async fn recv<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, NetError> {
        let addr = self.addr;
        let bytes = self
            .chan
            .read_frame()
            .await
            .map_err(|source| NetError::Frame { addr, source })?;
        proto::decode(&bytes).map_err(|source| NetError::Codec { addr, source })
    }

    /// Sends a request (and its body, for STORE) and returns the answer; an error
    /// answer becomes `NetError::Remote`. A `Data` answer's body is read and returned.
    pub async fn call<R: ServiceRequest>(
        &mut self,
        req: &R,
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
                let data = self
                    .chan
                    .read_body(len)
                    .await
                    .map_err(|source| NetError::Frame { addr, source })?;
                Ok((Response::Data { len }, Some(data)))
            }
            Response::SealedData { len } => {
                let data = self
                    .chan
                    .read_raw(len)
                    .await
                    .map_err(|source| NetError::Frame { addr, source })?;
                Ok((Response::SealedData { len }, Some(data)))
            }
            other => Ok((other, None)),
        }
    }
}
