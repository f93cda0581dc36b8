//! poolfs: a storage pool for the machines of one LAN, mounted as a FUSE filesystem.

// Every public item says what it is, in which units, and how it fails (CI denies warnings).
#![warn(missing_docs)]

pub mod client;
pub mod controller;
pub mod daemon;
pub mod fs;
pub mod heap;
pub mod net;
pub mod node;
pub mod proto;
pub mod trust;
pub mod up;
pub mod util;
pub mod versioned;
