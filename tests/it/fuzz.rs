//! The fuzz targets' bodies (`fuzz/bodies/`, the code the fuzzer runs) over a small
//! seed corpus in every `cargo test`: each valid message of a fixed sample, framed
//! and unframed, hostile length prefixes, truncations and garbage. A body that panics
//! or breaks one of its assertions fails the test, so a target that no longer holds
//! (or no longer builds: this binary includes its files) is seen without a fuzzer.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use poolfs::proto::{FrameError, MAX_FRAME};

#[path = "../../fuzz/bodies/mod.rs"]
pub(crate) mod bodies;

use bodies::frame::{send_and_read, Path};

/// How many requests the sample holds.
const SAMPLE: usize = 48;

/// A fixed sample of valid requests, encoded: the property tests' generator with a
/// fixed seed, so every variant shows up and no test builds requests by hand.
fn encoded_requests() -> Vec<Vec<u8>> {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[13; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = crate::props::encoded_request();
    (0..SAMPLE)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("a request from the generator")
                .current()
        })
        .collect()
}

/// `msg` behind a u32 big-endian length, as the channel frames it.
fn framed(msg: &[u8]) -> Vec<u8> {
    [&(msg.len() as u32).to_be_bytes()[..], msg].concat()
}

/// Byte strings any target should meet: empty, short, hostile lengths, garbage.
fn hostile() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0],
        vec![0xff; 7],
        u32::MAX.to_be_bytes().to_vec(),
        (MAX_FRAME + 1).to_be_bytes().to_vec(),
        [&MAX_FRAME.to_be_bytes()[..], &[1, 2, 3]].concat(),
        [&10u32.to_be_bytes()[..], &[1, 2, 3]].concat(),
        (0..=255u8).cycle().take(3000).collect(),
    ]
}

#[test]
fn the_frame_target_holds_on_its_seed_corpus() {
    let requests = encoded_requests();
    let mut streams = hostile();
    streams.extend(requests.iter().map(|r| framed(r)));
    streams.push(requests.iter().flat_map(|r| framed(r)).collect());
    // Every stream as sealed plaintext (first byte even) and as raw socket bytes (odd),
    // and every request as one unframed message.
    let mut seeds = Vec::new();
    for s in &streams {
        seeds.push([&[0u8][..], s].concat());
        seeds.push([&[1u8][..], s].concat());
    }
    seeds.extend(requests.iter().cloned());
    for seed in &seeds {
        bodies::frame::run(seed);
    }
    // The body's path carries frames: every request sent comes back whole, in order.
    let rt = bodies::shared::runtime();
    for path in [Path::Sealed, Path::Raw] {
        let stream: Vec<u8> = requests.iter().flat_map(|r| framed(r)).collect();
        let (server, peer) = rt.block_on(bodies::shared::channel_pair());
        let (frames, end) = rt.block_on(send_and_read(server, peer, path, &stream));
        if path == Path::Sealed {
            assert_eq!(frames, requests, "the frames sent, read back");
            assert!(matches!(end, FrameError::Closed), "{end:?}");
        } else {
            // Plain bytes where sealed messages belong: refused, nothing read.
            assert!(
                frames.is_empty(),
                "{} frames read from raw bytes",
                frames.len()
            );
            assert!(matches!(end, FrameError::Io(_)), "{end:?}");
        }
    }
}

#[test]
fn the_node_handler_target_holds_on_its_seed_corpus() {
    // Each request behind a u16 length; a STORE takes its body from what follows.
    let requests = encoded_requests();
    let mut seeds = hostile();
    let sequence: Vec<u8> = requests
        .iter()
        .flat_map(|r| [&(r.len() as u16).to_be_bytes()[..], r].concat())
        .collect();
    seeds.push(sequence);
    for r in &requests {
        seeds.push([&(r.len() as u16).to_be_bytes()[..], r].concat());
    }
    for seed in &seeds {
        bodies::node_handler::run(seed);
    }
}

#[test]
fn the_controller_handler_target_holds_on_its_seed_corpus() {
    // Each request behind a byte picking the peer's key and a u16 length.
    let requests = encoded_requests();
    let mut seeds = hostile();
    for key in 0..2u8 {
        let sequence: Vec<u8> = requests
            .iter()
            .flat_map(|r| [&[key][..], &(r.len() as u16).to_be_bytes()[..], r].concat())
            .collect();
        seeds.push(sequence);
    }
    for seed in &seeds {
        bodies::controller_handler::run(seed);
    }
}
