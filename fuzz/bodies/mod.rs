//! The fuzz targets' bodies, one function per target taking the fuzzer's bytes. The
//! fuzzer's binaries (`fuzz_targets/`) and `cargo test` (`tests/it/fuzz.rs`, over a
//! seed corpus) both include these files, so the tests run the code the fuzzer runs.

pub mod controller_handler;
pub mod frame;
pub mod node_handler;
pub mod shared;
