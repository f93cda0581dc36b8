//! poolfs's integration tests, in one binary (one link, one run) over one harness: a
//! pool on loopback, a LAN of namespaces, a mounted pool (see `harness`). Each module
//! proves one capability; the ones that mount the kernel's FUSE or build namespaces
//! need root and say SKIPPED without it (and fail under `CI=true`).

mod harness;

mod bench;
mod churn;
mod discovery;
mod erasure;
mod fresh_controller;
mod fuzz;
mod hostile;
mod lan_failover;
mod messages;
mod mount;
mod pool;
mod programs;
mod props;
mod readme;
mod reclaim;
mod recovery;
mod recovery_code;
mod redundancy;
mod service;
mod trust;
