//! Fuzz target: arbitrary bytes through the frame reader and the message decoder, as a
//! peer (hostile or not) would send them. Must end in frames or clean errors, never a
//! panic, and never allocate more than a frame's limit.
#![no_main]

#[path = "shared.rs"]
mod shared;

use libfuzzer_sys::fuzz_target;
use poolfs::proto::{self, ControllerRequest, FrameError, NodeRequest, Response, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    // The bytes as a whole message, in both directions.
    let _ = proto::decode_request::<ControllerRequest>(data);
    let _ = proto::decode_request::<NodeRequest>(data);
    let _ = proto::decode::<Response>(data);
    // The bytes as a stream of frames, each decoded as either message.
    let rt = shared::runtime();
    rt.block_on(async {
        let mut rd = data;
        loop {
            match proto::read_frame(&mut rd).await {
                Ok(frame) => {
                    assert!(frame.len() <= MAX_FRAME as usize);
                    if let Ok(req) = proto::decode_request::<NodeRequest>(&frame) {
                        // What decodes must encode back to the same bytes' meaning.
                        let again = proto::encode_request(&req).expect("a decoded request encodes");
                        assert_eq!(proto::decode_request::<NodeRequest>(&again).ok(), Some(req));
                    }
                    if let Ok(req) = proto::decode_request::<ControllerRequest>(&frame) {
                        let again = proto::encode_request(&req).expect("a decoded request encodes");
                        assert_eq!(
                            proto::decode_request::<ControllerRequest>(&again).ok(),
                            Some(req)
                        );
                    }
                    let _ = proto::decode::<Response>(&frame);
                }
                Err(FrameError::Closed) => break,
                Err(FrameError::FrameTooLarge(n)) => {
                    assert!(n > MAX_FRAME);
                    break;
                }
                Err(_) => break,
            }
        }
    });
});
