//! Connections: the Noise channel, the client side (handshake, request/response, pooled
//! reuse) and the server loop shared by the controller and the node.

mod conn;
pub mod noise;
mod pool;
mod server;

pub use conn::{Connection, NetError};
pub use pool::ConnPool;
pub use server::{serve, Handler, Peer, Reply, ServerLimits};
