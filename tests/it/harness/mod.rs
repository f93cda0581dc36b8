//! What the tests stand on: a pool on loopback (`cluster`), a LAN of network
//! namespaces (`lan`), a whole pool mounted with `poolfs up` (`mount`), and the wire
//! by hand (`wire`).

pub mod cluster;
pub mod lan;
pub mod mount;
pub mod wire;
