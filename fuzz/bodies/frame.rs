//! The `frame` target: arbitrary bytes from a peer through the Noise channel's frame
//! reader (the one the server and the client read with), and through the message
//! decoder. Must end in frames or clean errors, never a panic, and never allocate more
//! than a frame's limit.
//!
//! The first byte picks how the bytes reach the reader: even, as plaintext inside the
//! encrypted channel (a peer that holds the pool key and sends hostile frames); odd, as
//! raw bytes on the socket after the handshake (forged or truncated ciphertext).

use poolfs::net::noise::Channel;
use poolfs::proto::{self, ControllerRequest, FrameError, NodeRequest, Response, MAX_FRAME};

use super::shared;

/// How `bytes` reach the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// As plaintext sealed by the peer's end of the channel.
    Sealed,
    /// As bytes on the socket past the channel's encryption.
    Raw,
}

/// Runs one input of the target.
pub fn run(data: &[u8]) {
    // The bytes as a whole message, in both directions.
    let _ = proto::decode_request::<ControllerRequest>(data);
    let _ = proto::decode_request::<NodeRequest>(data);
    let _ = proto::decode::<Response>(data);
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let path = if mode & 1 == 0 {
        Path::Sealed
    } else {
        Path::Raw
    };
    let (frames, end) = shared::runtime().block_on(async {
        let (server, peer) = shared::channel_pair().await;
        send_and_read(server, peer, path, bytes).await
    });
    for frame in &frames {
        assert!(frame.len() <= MAX_FRAME as usize);
        // What decodes must encode back to the same meaning, for either service.
        if let Ok(req) = proto::decode_request::<NodeRequest>(frame) {
            let again = proto::encode_request(&req).expect("a decoded request encodes");
            assert_eq!(proto::decode_request::<NodeRequest>(&again).ok(), Some(req));
        }
        if let Ok(req) = proto::decode_request::<ControllerRequest>(frame) {
            let again = proto::encode_request(&req).expect("a decoded request encodes");
            assert_eq!(
                proto::decode_request::<ControllerRequest>(&again).ok(),
                Some(req)
            );
        }
        let _ = proto::decode::<Response>(frame);
    }
    if let FrameError::FrameTooLarge(n) = end {
        assert!(n > MAX_FRAME);
    }
    if path == Path::Sealed {
        // Inside the channel the reader sees exactly the bytes sent.
        let consumed: usize = frames.iter().map(|f| 4 + f.len()).sum();
        assert!(consumed <= bytes.len());
    }
}

/// The peer sends `bytes` by `path` and closes; the server's end reads frames until
/// the first error. Returns the frames read and the error that ended them.
pub async fn send_and_read(
    mut server: Channel,
    mut peer: Channel,
    path: Path,
    bytes: &[u8],
) -> (Vec<Vec<u8>>, FrameError) {
    let send = async move {
        // A reader that stops early closes its end: the writes then fail, as they may.
        let _ = match path {
            Path::Sealed => match peer.write_all(bytes).await {
                Ok(()) => peer.flush().await,
                Err(e) => Err(e),
            },
            Path::Raw => peer.write_raw(bytes).await,
        };
    };
    let read = async move {
        let mut frames = Vec::new();
        loop {
            match server.read_frame().await {
                Ok(f) => frames.push(f),
                Err(e) => return (frames, e),
            }
        }
    };
    tokio::join!(send, read).1
}
