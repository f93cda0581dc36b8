//! Fuzz target `frame`: its body is `bodies/frame.rs`, which `cargo test` also runs
//! over a seed corpus.
#![no_main]

// Each target runs one of the bodies; the others are dead code here.
#[allow(dead_code)]
#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::frame::run(data));
