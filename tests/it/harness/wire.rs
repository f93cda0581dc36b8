//! The wire by hand: the client side of the Noise handshake over a blocking socket,
//! sealed messages and frames, for tests that send hostile or hand-made bytes inside
//! the encrypted channel. Code that builds raw requests lives here and nowhere else.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use poolfs::proto;

/// `msg` encoded as one frame: its length (u32, big-endian), then its bytes.
pub fn frame(msg: &impl serde::Serialize) -> Vec<u8> {
    let payload = proto::encode(msg).expect("a test message encodes");
    [&(payload.len() as u32).to_be_bytes()[..], &payload].concat()
}

/// A request's frame, its service tag first, as a client sends it.
pub fn request_frame<R: proto::ServiceRequest>(req: &R) -> Vec<u8> {
    let payload = proto::encode_request(req).expect("a test request encodes");
    [&(payload.len() as u32).to_be_bytes()[..], &payload].concat()
}

/// The client side of the Noise handshake, by hand over a blocking socket (for tests
/// that then send hostile bytes inside the encrypted channel).
pub fn noise_handshake(
    s: &mut TcpStream,
    key: &poolfs::trust::PoolKey,
) -> Result<snow::TransportState, String> {
    use std::io::Read;
    let creds = poolfs::trust::Credentials::ephemeral(key).map_err(|e| e.to_string())?;
    let prologue = poolfs::net::noise::prologue();
    let params = poolfs::net::noise::NOISE_PARAMS
        .parse()
        .map_err(|e| format!("{e:?}"))?;
    let mut hs = snow::Builder::new(params)
        .local_private_key(creds.private_key())
        .and_then(|b| b.psk(0, creds.psk()))
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_initiator())
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut payload = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut buf).map_err(|e| e.to_string())?;
    s.write_all(&[&(n as u16).to_be_bytes()[..], &buf[..n]].concat())
        .map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
    let len = u16::from_be_bytes(len) as usize;
    if len > buf.len() {
        return Err(format!("handshake message of {len} bytes"));
    }
    s.read_exact(&mut buf[..len])
        .map_err(|e| format!("read: {e}"))?;
    hs.read_message(&buf[..len], &mut payload)
        .map_err(|e| format!("handshake: {e}"))?;
    let n = hs.write_message(&[], &mut buf).map_err(|e| e.to_string())?;
    s.write_all(&[&(n as u16).to_be_bytes()[..], &buf[..n]].concat())
        .map_err(|e| format!("write: {e}"))?;
    hs.into_transport_mode().map_err(|e| e.to_string())
}

/// `plain` (at most one chunk) as one length-prefixed encrypted Noise message.
pub fn seal(t: &mut snow::TransportState, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 65535];
    let n = t.write_message(plain, &mut out).unwrap();
    [&(n as u16).to_be_bytes()[..], &out[..n]].concat()
}

/// Reads and decrypts one frame (u32 length + message) sent inside Noise messages.
pub fn read_sealed_frame(
    s: &mut TcpStream,
    t: &mut snow::TransportState,
) -> Result<Vec<u8>, String> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut plain = Vec::new();
    loop {
        if plain.len() >= 4 {
            let want = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
            if plain.len() >= 4 + want {
                return Ok(plain[4..4 + want].to_vec());
            }
        }
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).map_err(|e| format!("read: {e}"))?;
        let mut out = vec![0u8; msg.len()];
        let n = t
            .read_message(&msg, &mut out)
            .map_err(|e| format!("decrypt: {e}"))?;
        plain.extend_from_slice(&out[..n]);
    }
}

/// Reads until the peer closes (EOF or reset). Returns how long that took from `start`
/// and how many bytes the peer sent first; an error if it is still open `within` after
/// `start`.
pub fn read_until_closed(
    s: &mut TcpStream,
    start: Instant,
    within: Duration,
) -> Result<(Duration, usize), String> {
    let mut buf = [0u8; 4096];
    let mut received = 0;
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!("still open after {within:?}"));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Ok((start.elapsed(), received)),
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    IoKind::ConnectionReset | IoKind::ConnectionAborted
                ) =>
            {
                return Ok((start.elapsed(), received))
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
