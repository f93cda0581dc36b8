//! The Noise handshake that opens every connection: XXpsk0 with the pool key as the
//! PSK and the protocol version in the prologue, each side proving its static key.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{Channel, FRAMED_MESSAGE, MAX_MESSAGE, SOCKET_BATCH};
use crate::proto::{MAGIC, PROTOCOL_VERSION};
use crate::trust::{Credentials, KEY_LEN};

/// The handshake: mutual static keys (XX), the pool key mixed in before the first
/// message (psk0) so a peer without it is refused at its first message and learns
/// nothing, not even the responder's static key. The name follows the Noise Protocol
/// Framework (noiseprotocol.org: pattern XX with the psk0 modifier, Curve25519,
/// AES-256-GCM, BLAKE2s); snow runs it, with ring's AES-GCM.
pub const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_AESGCM_BLAKE2s";
/// Handshake messages are small; anything longer is refused before it is read.
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;

/// Bound into the handshake, so a peer speaking another protocol version fails it.
pub fn prologue() -> Vec<u8> {
    let mut p = b"poolfs-noise/".to_vec();
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A handshake message failed to decrypt: the peer holds another pool key or protocol
    /// version.
    #[error("the peer does not hold this pool's key or speaks another protocol version ({0})")]
    Refused(snow::Error),
    /// The peer closed the connection mid-handshake.
    #[error(
        "the peer closed the connection during the handshake: one of us does not hold this \
         pool's key, it speaks another protocol version, or all its connections are busy"
    )]
    Closed,
    /// A handshake message announced more than `MAX_HANDSHAKE_MESSAGE` bytes.
    #[error("handshake message of {0} bytes exceeds {MAX_HANDSHAKE_MESSAGE}")]
    TooLarge(usize),
    /// snow failed otherwise.
    #[error("noise: {0}")]
    Noise(snow::Error),
}

fn builder(creds: &Credentials) -> Result<snow::Builder<'_>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(HandshakeError::Noise)?;
    snow::Builder::new(params)
        .local_private_key(creds.private_key())
        .and_then(|b| b.psk(0, creds.psk()))
        .map_err(HandshakeError::Noise)
}

impl Channel {
    fn split(stream: TcpStream) -> (BufReader<OwnedReadHalf>, BufWriter<OwnedWriteHalf>) {
        // Headers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        (
            BufReader::with_capacity(256 * 1024, rd),
            BufWriter::with_capacity(256 * 1024, wr),
        )
    }

    /// Runs the initiator's side of the handshake on `stream`.
    pub async fn initiate(stream: TcpStream, creds: &Credentials) -> Result<Self, HandshakeError> {
        Channel::initiate_with(stream, creds, &prologue()).await
    }

    async fn initiate_with(
        stream: TcpStream,
        creds: &Credentials,
        prologue: &[u8],
    ) -> Result<Self, HandshakeError> {
        let (mut rd, mut wr) = Channel::split(stream);
        let mut hs = builder(creds)?
            .prologue(prologue)
            .and_then(|b| b.build_initiator())
            .map_err(HandshakeError::Noise)?;
        let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        // -> psk, e
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(HandshakeError::Noise)?;
        write_message(&mut wr, &buf[..n]).await?;
        wr.flush().await?;
        // <- e, ee, s, es
        let n = read_handshake_message(&mut rd, &mut buf).await?;
        hs.read_message(&buf[..n], &mut payload)
            .map_err(HandshakeError::Refused)?;
        // -> s, se
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(HandshakeError::Noise)?;
        write_message(&mut wr, &buf[..n]).await?;
        wr.flush().await?;
        Channel::finish(rd, wr, hs)
    }

    /// Runs the responder's side of the handshake on `stream`.
    pub async fn respond(stream: TcpStream, creds: &Credentials) -> Result<Self, HandshakeError> {
        let (mut rd, mut wr) = Channel::split(stream);
        let prologue = prologue();
        let mut hs = builder(creds)?
            .prologue(&prologue)
            .and_then(|b| b.build_responder())
            .map_err(HandshakeError::Noise)?;
        let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = read_handshake_message(&mut rd, &mut buf).await?;
        hs.read_message(&buf[..n], &mut payload)
            .map_err(HandshakeError::Refused)?;
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(HandshakeError::Noise)?;
        write_message(&mut wr, &buf[..n]).await?;
        wr.flush().await?;
        let n = read_handshake_message(&mut rd, &mut buf).await?;
        hs.read_message(&buf[..n], &mut payload)
            .map_err(HandshakeError::Refused)?;
        Channel::finish(rd, wr, hs)
    }

    fn finish(
        rd: BufReader<OwnedReadHalf>,
        wr: BufWriter<OwnedWriteHalf>,
        hs: snow::HandshakeState,
    ) -> Result<Self, HandshakeError> {
        let remote: [u8; KEY_LEN] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(HandshakeError::Noise(snow::Error::Input))?;
        let noise = hs.into_transport_mode().map_err(HandshakeError::Noise)?;
        // Bytes of the first transport messages may already sit in the handshake's
        // reader; the writer was flushed after the last handshake message.
        let mut inbuf = vec![0u8; SOCKET_BATCH + FRAMED_MESSAGE];
        let early = rd.buffer().len();
        inbuf[..early].copy_from_slice(rd.buffer());
        Ok(Channel {
            rd: rd.into_inner(),
            wr: wr.into_inner(),
            noise,
            remote,
            inbuf,
            in_start: 0,
            in_end: early,
            outbuf: vec![0u8; SOCKET_BATCH + FRAMED_MESSAGE],
            out_end: 0,
            buf: vec![0u8; 2 * MAX_MESSAGE],
            pos: 0,
            in_len: 0,
            out_len: 0,
        })
    }
}

async fn write_message(wr: &mut BufWriter<OwnedWriteHalf>, msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("noise message too large"))?;
    wr.write_all(&len.to_be_bytes()).await?;
    wr.write_all(msg).await
}

async fn read_handshake_message(
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut [u8],
) -> Result<usize, HandshakeError> {
    let closed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => HandshakeError::Closed,
        _ => HandshakeError::Io(e),
    };
    let mut len = [0u8; 2];
    rd.read_exact(&mut len).await.map_err(closed)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > buf.len() {
        return Err(HandshakeError::TooLarge(len));
    }
    rd.read_exact(&mut buf[..len]).await.map_err(closed)?;
    Ok(len)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::trust::PoolKey;
    use tokio::net::TcpListener;

    /// Both ends of a handshake over loopback, the server proving `server_key`, the
    /// client `client_key`.
    pub(in crate::net::noise) async fn pair(
        server_key: &PoolKey,
        client_key: &PoolKey,
    ) -> (
        Result<Channel, HandshakeError>,
        Result<Channel, HandshakeError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Credentials::ephemeral(server_key).unwrap();
        let client = Credentials::ephemeral(client_key).unwrap();
        let accept = async {
            let (s, _) = listener.accept().await.unwrap();
            Channel::respond(s, &server).await
        };
        let connect = async {
            let s = TcpStream::connect(addr).await.unwrap();
            Channel::initiate(s, &client).await
        };
        tokio::join!(accept, connect)
    }

    #[tokio::test]
    async fn another_protocol_version_fails_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let key = PoolKey::generate();
        let creds = Credentials::ephemeral(&key).unwrap();
        let accept = async {
            let (s, _) = listener.accept().await.unwrap();
            Channel::respond(s, &creds).await
        };
        let mut old = prologue();
        let last = old.len() - 1;
        old[last] ^= 1;
        let connect = async {
            let s = TcpStream::connect(addr).await.unwrap();
            Channel::initiate_with(s, &creds, &old).await
        };
        let (srv, cli) = tokio::join!(accept, connect);
        assert!(matches!(srv, Err(HandshakeError::Refused(_))));
        assert!(matches!(cli, Err(HandshakeError::Closed)));
    }

    #[tokio::test]
    async fn wrong_key_fails_the_handshake() {
        let (srv, cli) = pair(&PoolKey::generate(), &PoolKey::generate()).await;
        assert!(
            matches!(srv, Err(HandshakeError::Refused(_))),
            "{:?}",
            srv.err()
        );
        assert!(cli.is_err());
    }
}
