//! What every fuzz body shares: one runtime, scratch directories on tmpfs, and a pair
//! of Noise channels over loopback.

use std::sync::{Arc, OnceLock};

use poolfs::net::noise::Channel;
use poolfs::trust::{Credentials, PoolKey};
use tokio::net::{TcpListener, TcpStream};

/// One runtime for every input (building one per input would dominate the run).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A fresh scratch directory for one input, on tmpfs when there is one (stores sync
/// every write).
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("temp dir")
}

/// Credentials of one pool, made once (key generation would dominate the run).
fn credentials() -> Arc<Credentials> {
    static CREDS: OnceLock<Arc<Credentials>> = OnceLock::new();
    CREDS
        .get_or_init(|| {
            Arc::new(Credentials::ephemeral(&PoolKey::generate()).expect("credentials"))
        })
        .clone()
}

/// Two ends of one Noise channel over 127.0.0.1, handshake done: (the server's end,
/// the peer's end), as a server and a client of one pool hold them. Run inside
/// `runtime()`.
pub async fn channel_pair() -> (Channel, Channel) {
    let creds = credentials();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("listener address");
    let accept = async {
        let (s, _) = listener.accept().await.expect("accept");
        // The server's end closes last; with no linger its close resets at once
        // instead of leaving the port in TIME_WAIT (a fuzz run makes thousands of
        // connections a second). A zero linger never blocks the close.
        #[allow(deprecated)]
        s.set_linger(Some(std::time::Duration::ZERO))
            .expect("SO_LINGER");
        Channel::respond(s, &creds)
            .await
            .expect("responder handshake")
    };
    let connect = async {
        let s = TcpStream::connect(addr).await.expect("connect");
        Channel::initiate(s, &creds)
            .await
            .expect("initiator handshake")
    };
    tokio::join!(accept, connect)
}
