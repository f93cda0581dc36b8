//! The Noise channel every connection runs on: after the handshake (`handshake`),
//! length-prefixed encrypted messages carrying frames, bodies and raw sealed bytes.

mod handshake;

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::proto::{FrameError, MAX_BODY, MAX_FRAME};
use crate::trust::KEY_LEN;
pub use handshake::{prologue, HandshakeError, MAX_HANDSHAKE_MESSAGE, NOISE_PARAMS};

/// Largest Noise message.
pub const MAX_MESSAGE: usize = 65535;
/// Authentication tag added to every encrypted message.
pub const TAG_LEN: usize = 16;
/// Largest plaintext carried by one message.
pub const MAX_CHUNK: usize = MAX_MESSAGE - TAG_LEN;
/// Bytes moved per socket read or write: a few messages at a time.
const SOCKET_BATCH: usize = 256 * 1024;
/// A length prefix and a whole message.
const FRAMED_MESSAGE: usize = 2 + MAX_MESSAGE;

/// A connection after the handshake: frames in and out, encrypted and authenticated.
///
/// Encrypted messages are opened straight from the buffer the socket reads into, and
/// sealed straight into the buffer the socket writes from: each byte is copied once on
/// its way in or out (by the cipher), besides the kernel's own copy.
pub struct Channel {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    noise: snow::TransportState,
    remote: [u8; KEY_LEN],
    /// Bytes read from the socket (`in_start..in_end` not yet consumed).
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// Sealed messages, each with its length prefix, waiting to be sent (`..out_end`).
    outbuf: Vec<u8>,
    out_end: usize,
    /// Two buffers of `MAX_MESSAGE` bytes in one allocation: decrypted bytes
    /// (`pos..in_len` not yet consumed), and plaintext waiting to be sealed (`..out_len`,
    /// at most `MAX_CHUNK`), for reads and writes smaller than a message.
    buf: Vec<u8>,
    pos: usize,
    in_len: usize,
    out_len: usize,
}

impl Channel {
    /// The peer's static public key, proven by the handshake.
    pub fn remote_key(&self) -> &[u8; KEY_LEN] {
        &self.remote
    }

    /// Queues plaintext; full chunks are sealed as they fill and sent in batches.
    pub async fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.out_len == 0 && data.len() >= MAX_CHUNK {
                // A whole message sealed straight from the caller's bytes.
                self.make_room_to_seal().await?;
                seal_into(
                    &mut self.noise,
                    &mut self.outbuf,
                    &mut self.out_end,
                    &data[..MAX_CHUNK],
                )?;
                data = &data[MAX_CHUNK..];
                continue;
            }
            let n = (MAX_CHUNK - self.out_len).min(data.len());
            let at = MAX_MESSAGE + self.out_len;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.out_len += n;
            data = &data[n..];
            if self.out_len == MAX_CHUNK {
                self.seal().await?;
            }
        }
        Ok(())
    }

    /// Seals what is queued and sends everything.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.seal().await?;
        self.send_sealed().await
    }

    /// Seals the queued plaintext into the outgoing buffer.
    async fn seal(&mut self) -> std::io::Result<()> {
        if self.out_len == 0 {
            return Ok(());
        }
        self.make_room_to_seal().await?;
        let plain = &self.buf[MAX_MESSAGE..MAX_MESSAGE + self.out_len];
        seal_into(&mut self.noise, &mut self.outbuf, &mut self.out_end, plain)?;
        self.out_len = 0;
        Ok(())
    }

    /// Sends what is sealed if another whole message might not fit after it.
    async fn make_room_to_seal(&mut self) -> std::io::Result<()> {
        if self.outbuf.len() - self.out_end < FRAMED_MESSAGE {
            self.send_sealed().await?;
        }
        Ok(())
    }

    async fn send_sealed(&mut self) -> std::io::Result<()> {
        self.wr.write_all(&self.outbuf[..self.out_end]).await?;
        self.out_end = 0;
        Ok(())
    }

    /// Makes at least `need` (at most a framed message) unread bytes available in
    /// `inbuf`, reading as much as the socket has.
    async fn fill(&mut self, need: usize) -> std::io::Result<()> {
        while self.in_end - self.in_start < need {
            if self.inbuf.len() - self.in_start < need {
                // Move the start of a message to the front to make room for the rest.
                self.inbuf.copy_within(self.in_start..self.in_end, 0);
                self.in_end -= self.in_start;
                self.in_start = 0;
            }
            let n = self.rd.read(&mut self.inbuf[self.in_end..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.in_end += n;
        }
        Ok(())
    }

    /// The next encrypted message, consumed: where it lies in `inbuf` (valid until the
    /// next read from the socket).
    async fn next_sealed(&mut self) -> std::io::Result<Range<usize>> {
        self.fill(2).await?;
        let at = self.in_start;
        let len = u16::from_be_bytes([self.inbuf[at], self.inbuf[at + 1]]) as usize;
        if len < TAG_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("encrypted message of {len} bytes is shorter than its tag"),
            ));
        }
        self.fill(2 + len).await?;
        let at = self.in_start;
        self.in_start += 2 + len;
        Ok(at + 2..at + 2 + len)
    }

    /// Reads and decrypts the next message; a forged, replayed or reordered one fails.
    async fn open(&mut self) -> std::io::Result<()> {
        let sealed = self.next_sealed().await?;
        let n = self
            .noise
            .read_message(&self.inbuf[sealed], &mut self.buf[..MAX_MESSAGE])
            .map_err(|_| failed_authentication())?;
        self.in_len = n;
        self.pos = 0;
        Ok(())
    }

    /// Fills `buf` with decrypted bytes.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.pos == self.in_len {
                if buf.len() - filled >= MAX_CHUNK {
                    // Room for a whole message: decrypt it straight into the caller's
                    // buffer, no staging copy.
                    let sealed = self.next_sealed().await?;
                    filled += self
                        .noise
                        .read_message(&self.inbuf[sealed], &mut buf[filled..])
                        .map_err(|_| failed_authentication())?;
                } else {
                    self.open().await?;
                }
                continue;
            }
            let n = (self.in_len - self.pos).min(buf.len() - filled);
            let at = self.pos;
            buf[filled..filled + n].copy_from_slice(&self.buf[at..at + n]);
            self.pos += n;
            filled += n;
        }
        Ok(())
    }

    /// Waits until the peer sends something: true, or closes cleanly: false.
    pub async fn readable(&mut self) -> std::io::Result<bool> {
        if self.pos < self.in_len || self.in_start < self.in_end {
            return Ok(true);
        }
        self.in_start = 0;
        self.in_end = 0;
        let n = self.rd.read(&mut self.inbuf).await?;
        self.in_end = n;
        Ok(n > 0)
    }

    /// Reads one frame (u32 length, then the message) of at most `MAX_FRAME` bytes. A
    /// clean end of stream before the length is `Closed`.
    pub async fn read_frame(&mut self) -> Result<Vec<u8>, FrameError> {
        let mut len = [0u8; 4];
        match self.read_exact(&mut len).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len);
        if len > MAX_FRAME {
            return Err(FrameError::FrameTooLarge(len));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// Queues one frame (not flushed: callers batch a header with its body).
    pub async fn write_frame(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or(FrameError::FrameTooLarge(u32::MAX))?;
        self.write_all(&len.to_be_bytes()).await?;
        self.write_all(payload).await?;
        Ok(())
    }

    /// Sends what is queued, then `data` outside the encryption: only for bytes that
    /// are ciphertext already and that the reader authenticates by other means (a sealed
    /// shard's chunk tags). The message before announces their length, so a peer that
    /// adds or drops bytes desynchronises the stream and the next message fails.
    pub async fn write_raw(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.flush().await?;
        self.wr.write_all(data).await
    }

    /// Reads `len` bytes sent by `write_raw`, refusing oversized ones before allocating.
    pub async fn read_raw(&mut self, len: u32) -> Result<Vec<u8>, FrameError> {
        if len > MAX_BODY {
            return Err(FrameError::BodyTooLarge(len));
        }
        if self.pos < self.in_len {
            // Raw bytes follow a whole message, never the middle of one.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "raw bytes announced inside an encrypted message",
            )
            .into());
        }
        let len = len as usize;
        let mut out = Vec::with_capacity(len);
        let early = (self.in_end - self.in_start).min(len);
        out.extend_from_slice(&self.inbuf[self.in_start..self.in_start + early]);
        self.in_start += early;
        while out.len() < len {
            // Straight from the socket into the answer, no zeroing, no staging.
            let want = (len - out.len()) as u64;
            if (&mut self.rd).take(want).read_buf(&mut out).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(out)
    }

    /// Reads a raw body of `len` bytes that a header announced, refusing oversized ones
    /// before allocating.
    pub async fn read_body(&mut self, len: u32) -> Result<Vec<u8>, FrameError> {
        if len > MAX_BODY {
            return Err(FrameError::BodyTooLarge(len));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf).await?;
        Ok(buf)
    }
}

/// Seals `plain` (at most `MAX_CHUNK` bytes) as the next message at the end of `out`,
/// with its length prefix; `out` has room for a framed message there.
fn seal_into(
    noise: &mut snow::TransportState,
    out: &mut [u8],
    end: &mut usize,
    plain: &[u8],
) -> std::io::Result<()> {
    let at = *end;
    let n = noise
        .write_message(plain, &mut out[at + 2..at + FRAMED_MESSAGE])
        .map_err(|e| std::io::Error::other(format!("noise: {e}")))?;
    // A message is at most MAX_MESSAGE (65535) bytes: its length fits the prefix.
    out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
    *end = at + 2 + n;
    Ok(())
}

fn failed_authentication() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "message failed authentication",
    )
}

#[cfg(test)]
mod tests {
    use super::handshake::tests::pair;
    use super::*;
    use crate::trust::PoolKey;

    #[tokio::test]
    async fn same_key_carries_frames_and_large_bodies() {
        let key = PoolKey::generate();
        let (srv, cli) = pair(&key, &key).await;
        let (mut srv, mut cli) = (srv.unwrap(), cli.unwrap());
        assert_eq!(srv.remote_key().len(), KEY_LEN);
        let body: Vec<u8> = (0..3 * MAX_MESSAGE + 17).map(|i| i as u8).collect();
        let send = async {
            cli.write_frame(b"header").await.unwrap();
            cli.write_all(&body).await.unwrap();
            cli.flush().await.unwrap();
        };
        let recv = async {
            assert_eq!(srv.read_frame().await.unwrap(), b"header");
            srv.read_body(body.len() as u32).await.unwrap()
        };
        let ((), got) = tokio::join!(send, recv);
        assert_eq!(got, body);
        assert!(matches!(
            srv.read_body(MAX_BODY + 1).await,
            Err(FrameError::BodyTooLarge(_))
        ));
    }

    /// Sends each body after a frame holding its length (inside the encryption, or
    /// raw), then a last frame; returns the bodies and the last frame as received.
    async fn exchange(bodies: &[Vec<u8>], raw: bool) -> (Channel, Vec<Vec<u8>>, Vec<u8>) {
        let key = PoolKey::generate();
        let (srv, cli) = pair(&key, &key).await;
        let (mut srv, mut cli) = (srv.unwrap(), cli.unwrap());
        let send = async {
            for (i, body) in bodies.iter().enumerate() {
                let len = (body.len() as u32).to_be_bytes();
                cli.write_frame(&len).await.unwrap();
                match raw {
                    true => cli.write_raw(body).await.unwrap(),
                    false => cli.write_all(body).await.unwrap(),
                }
                if i % 7 == 0 {
                    cli.flush().await.unwrap();
                }
            }
            cli.write_frame(b"after").await.unwrap();
            cli.flush().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::new();
            for _ in 0..bodies.len() {
                let header = srv.read_frame().await.unwrap();
                let len = u32::from_be_bytes(header.try_into().unwrap());
                got.push(match raw {
                    true => srv.read_raw(len).await.unwrap(),
                    false => srv.read_body(len).await.unwrap(),
                });
            }
            (got, srv.read_frame().await.unwrap())
        };
        let ((), (got, after)) = tokio::join!(send, recv);
        drop(cli);
        (srv, got, after)
    }

    #[tokio::test]
    async fn mixed_small_and_large_writes_arrive_whole_and_in_order() {
        // Sizes that straddle message and socket-batch boundaries, so messages are cut
        // across reads and the receive buffer is compacted mid-message.
        let bodies: Vec<Vec<u8>> = (0..60)
            .map(|i| {
                let n = [1, 7, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 300_001][i % 6] + i;
                (0..n).map(|b| (b * 31 + i) as u8).collect()
            })
            .collect();
        let (mut srv, got, after) = exchange(&bodies, false).await;
        assert!(got == bodies, "bytes changed on the way");
        assert_eq!(after, b"after");
        // The sender is gone: a clean close is seen as such.
        assert!(!srv.readable().await.unwrap());
    }

    #[tokio::test]
    async fn raw_bodies_between_messages_arrive_whole_and_the_stream_goes_on() {
        let bodies: Vec<Vec<u8>> = [0usize, 1, 5000, 3 * MAX_MESSAGE + 3, 700_000]
            .iter()
            .map(|&n| (0..n).map(|b| (b * 7 + n) as u8).collect())
            .collect();
        let (mut srv, got, after) = exchange(&bodies, true).await;
        assert!(got == bodies, "raw bytes changed on the way");
        assert_eq!(after, b"after", "the encrypted stream did not resume");
        assert!(matches!(
            srv.read_raw(MAX_BODY + 1).await,
            Err(FrameError::BodyTooLarge(_))
        ));
    }
}
