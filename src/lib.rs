//! poolfs: a storage pool for the machines of one LAN, mounted as a FUSE filesystem.

pub mod client;
pub mod controller;
pub mod daemon;
pub mod fs;
pub mod net;
pub mod node;
pub mod proto;
pub mod trust;
pub mod up;
pub mod util;
