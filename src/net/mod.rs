//! Connections: the client side (handshake, request/response, pooled reuse) and the
//! server loop shared by the controller and the node.

mod conn;
mod pool;
mod server;

pub use conn::{Connection, NetError};
pub use pool::ConnPool;
pub use server::{serve, Handler, Reply, ServerLimits};
