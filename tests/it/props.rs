//! Property tests on hostile input: the Noise channel's frame reader (the one the server
//! and the client read with) and the message codec on arbitrary bytes (no panic, no
//! allocation beyond a frame), round trips of arbitrary messages, and file ids that
//! could name a path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};

use poolfs::node::store::validate_file_id;
use poolfs::node::SegmentStore;
use poolfs::proto::{
    self, Assign, ErrorKind, FoundNode, FrameError, Identity, NodeInfo, NodeStat, NodeState,
    PoolView, Response, ScanReport, SegmentRef, MAX_FRAME,
};
use poolfs::proto::{ControllerRequest, MessageError, NodeRequest, SegmentRead, ServiceRequest};
use proptest::prelude::*;

use crate::fuzz::bodies::frame::{send_and_read, Path};
use crate::fuzz::bodies::shared;

// ---------------------------------------------------------------------------------------
// The largest single allocation made by the current thread, so a test can tell that
// decoding hostile bytes never asked for more than a frame's worth.

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: allocations during thread teardown find no slot and are not counted.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// Requests carry no lists: decoding one never allocates more than the frame limit
/// (bincode claims every string's length against it). Responses carry lists (the pool
/// view, a sweep's report), whose claimed length serde turns into a preallocation it caps
/// at 1 MiB; so a hostile answer costs a client at most that, once.
const RESPONSE_DECODE_BOUND: usize = 1024 * 1024;

/// Bytes that start with a chosen length prefix (often a hostile one) and go on with
/// arbitrary bytes, so both the limit and the truncation paths are reached.
fn framed_bytes() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        any::<u32>(),
        0u32..64,
        Just(MAX_FRAME),
        Just(MAX_FRAME + 1),
        Just(u32::MAX)
    ];
    (len, proptest::collection::vec(any::<u8>(), 0..512))
        .prop_map(|(len, rest)| [&len.to_be_bytes()[..], &rest].concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_frame_reader_never_panics_nor_allocates_past_its_limit(
        bytes in prop_oneof![framed_bytes(), proptest::collection::vec(any::<u8>(), 0..64)]
    ) {
        // The channel's two ends are made first: their buffers are the connection's,
        // not the reader's.
        let rt = shared::runtime();
        let (server, peer) = rt.block_on(shared::channel_pair());
        let ((frames, end), largest) = largest_allocation(|| {
            rt.block_on(send_and_read(server, peer, Path::Sealed, &bytes))
        });
        prop_assert!(largest <= MAX_FRAME as usize, "allocated {largest} bytes");
        let consumed: usize = frames.iter().map(|f| 4 + f.len()).sum();
        prop_assert!(consumed <= bytes.len());
        match end {
            // The stream ended before a whole length prefix.
            FrameError::Closed => prop_assert!(bytes.len() - consumed < 4),
            FrameError::FrameTooLarge(n) => {
                prop_assert!(n > MAX_FRAME);
                prop_assert_eq!(&bytes[consumed..consumed + 4], &n.to_be_bytes()[..]);
            }
            // A frame cut short by the end of the stream.
            FrameError::Io(e) => {
                prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
            }
            other => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_nor_allocates_past_its_bound(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024)
    ) {
        let (_, largest) =
            largest_allocation(|| proto::decode_request::<ControllerRequest>(&bytes));
        prop_assert!(largest <= MAX_FRAME as usize, "request: allocated {largest} bytes");
        let (_, largest) = largest_allocation(|| proto::decode_request::<NodeRequest>(&bytes));
        prop_assert!(largest <= MAX_FRAME as usize, "request: allocated {largest} bytes");
        let (_, largest) = largest_allocation(|| proto::decode::<Response>(&bytes));
        prop_assert!(largest <= RESPONSE_DECODE_BOUND, "response: allocated {largest} bytes");
    }

    #[test]
    fn a_huge_length_inside_a_message_is_refused_without_allocating(
        service in 0u8..2, variant in 0u8..16, claim in (1u64 << 20)..u64::MAX, tail in proptest::collection::vec(any::<u8>(), 0..32)
    ) {
        // Variant index, then a varint length (0xfd + u64) claiming far more than a
        // frame: every string and list field is reached by some variant.
        let bytes = [&[variant, 0xfd][..], &claim.to_le_bytes(), &tail].concat();
        // Where a variant's first field is fixed-size (a Join's identity), the claimed
        // length is just bytes of it and the whole may happen to be a real message: then
        // it must be exactly that message. A request travels after its service tag.
        let tagged = [&[service][..], &bytes].concat();
        refused_without_allocating::<ControllerRequest>(&tagged)?;
        refused_without_allocating::<NodeRequest>(&tagged)?;
        let (response, largest) = largest_allocation(|| proto::decode::<Response>(&bytes));
        prop_assert!(largest <= RESPONSE_DECODE_BOUND, "response: allocated {largest} bytes");
        if let Ok(resp) = response {
            prop_assert_eq!(proto::encode(&resp).unwrap(), bytes);
        }
    }

    #[test]
    fn every_controller_request_round_trips(req in controller_request()) {
        round_trips(req)?;
    }

    #[test]
    fn every_node_request_round_trips(req in node_request()) {
        round_trips(req)?;
    }

    #[test]
    fn every_response_round_trips(resp in response()) {
        let bytes = proto::encode(&resp).unwrap();
        prop_assert_eq!(proto::decode::<Response>(&bytes).unwrap(), resp);
        prop_assert!(proto::decode::<Response>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn file_ids_that_could_name_a_path_are_refused(
        prefix in "[a-zA-Z0-9_-]{0,20}",
        bad in prop_oneof![
            Just("/".to_string()), Just(".".to_string()), Just("..".to_string()),
            Just("\0".to_string()), Just("\\".to_string()), Just(" ".to_string()),
            Just("\n".to_string()), "[^a-zA-Z0-9_-]",
        ],
        suffix in "[a-zA-Z0-9_-]{0,20}",
    ) {
        let id = format!("{prefix}{bad}{suffix}");
        prop_assert!(validate_file_id(&id).is_err(), "{id:?} was accepted");
    }

    #[test]
    fn plain_file_ids_are_accepted_up_to_64_bytes(id in "[a-zA-Z0-9_-]{1,80}") {
        prop_assert_eq!(validate_file_id(&id).is_ok(), id.len() <= 64, "{:?}", id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever id a STORE names, nothing appears outside the store's own directory.
    #[test]
    fn no_file_id_writes_outside_the_store(id in "\\PC{0,12}|[./a-z\\\\\0]{1,12}") {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(&dir.path().join("storage"), 1 << 20, None).unwrap();
        let seg = SegmentRef { file: id.clone(), index: 0 };
        let owner = poolfs::proto::Identity([7; 16]);
        let stored = store.store(&owner, &seg, 0, b"x").is_ok();
        prop_assert_eq!(stored, validate_file_id(&id).is_ok());
        let top: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(top, vec![std::ffi::OsString::from("storage")]);
        // Segments live in one directory per owner: the only entry, if anything was stored.
        let owners: Vec<_> = std::fs::read_dir(dir.path().join("storage/segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        prop_assert_eq!(owners.len(), usize::from(stored));
        if let Some(owner_dir) = owners.first() {
            let inside: Vec<_> = std::fs::read_dir(owner_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            prop_assert_eq!(inside, vec![id.clone()]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Strategies for every message.

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    // Built from an address and a port: serde does not carry an IPv6 flow label or scope.
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn identity() -> impl Strategy<Value = Identity> {
    any::<[u8; 16]>().prop_map(Identity)
}

fn segment() -> impl Strategy<Value = SegmentRef> {
    (any::<String>(), any::<u32>()).prop_map(|(file, index)| SegmentRef { file, index })
}

fn assign() -> impl Strategy<Value = Assign> {
    (socket_addr(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
        |(controller, node_id, pool_size, epoch)| Assign {
            controller,
            node_id,
            pool_size,
            epoch,
        },
    )
}

/// Decoding `bytes` as an `R` allocates no more than a frame, and whatever decodes is
/// exactly those bytes' message.
fn refused_without_allocating<R: ServiceRequest + PartialEq>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let (request, largest) = largest_allocation(|| proto::decode_request::<R>(bytes));
    prop_assert!(
        largest <= MAX_FRAME as usize,
        "request: allocated {largest} bytes"
    );
    if let Ok(req) = request {
        prop_assert_eq!(proto::encode_request(&req).unwrap(), bytes.to_vec());
    }
    Ok(())
}

/// `req` decodes back to itself from its bytes, and not from them cut short or with a
/// byte more; the other service refuses it by its tag.
fn round_trips<R: ServiceRequest + PartialEq>(req: R) -> Result<(), TestCaseError> {
    let bytes = proto::encode_request(&req).unwrap();
    prop_assert_eq!(proto::decode_request::<R>(&bytes).unwrap(), req);
    prop_assert!(proto::decode_request::<R>(&bytes[..bytes.len() - 1]).is_err());
    let longer = [&bytes[..], &[0]].concat();
    prop_assert!(proto::decode_request::<R>(&longer).is_err());
    let misdirected = match R::SERVICE {
        proto::Service::Node => proto::decode_request::<ControllerRequest>(&bytes).err(),
        proto::Service::Controller => proto::decode_request::<NodeRequest>(&bytes).err(),
    };
    prop_assert!(
        matches!(misdirected, Some(MessageError::WrongService { .. })),
        "{misdirected:?}"
    );
    Ok(())
}

/// Any request of either service, encoded as a client sends it (its service tag first):
/// the seed corpus of the fuzz targets' tests draws from it too.
pub(crate) fn encoded_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        controller_request().prop_map(|r| proto::encode_request(&r).expect("a request encodes")),
        node_request().prop_map(|r| proto::encode_request(&r).expect("a request encodes")),
    ]
}

fn controller_request() -> impl Strategy<Value = ControllerRequest> {
    prop_oneof![
        (
            identity(),
            socket_addr(),
            any::<u64>(),
            any::<u64>(),
            ".{0,20}",
            disk(),
            any::<Option<u32>>()
        )
            .prop_map(|(identity, listen, capacity, used, machine, disk, id)| {
                ControllerRequest::Join {
                    identity,
                    listen,
                    capacity,
                    used,
                    machine,
                    disk,
                    id,
                }
            }),
        (
            any::<u32>(),
            identity(),
            any::<u64>(),
            any::<u64>(),
            ".{0,20}",
            disk()
        )
            .prop_map(|(node_id, identity, capacity, used, machine, disk)| {
                ControllerRequest::Heartbeat {
                    node_id,
                    identity,
                    capacity,
                    used,
                    machine,
                    disk,
                }
            }),
        (any::<u32>(), identity())
            .prop_map(|(node_id, identity)| ControllerRequest::Leave { node_id, identity }),
        (any::<u32>(), identity())
            .prop_map(|(node_id, identity)| ControllerRequest::Drain { node_id, identity }),
        any::<u32>().prop_map(|node_id| ControllerRequest::Get { node_id }),
        Just(ControllerRequest::Pool),
        Just(ControllerRequest::Scan),
    ]
}

fn node_request() -> impl Strategy<Value = NodeRequest> {
    prop_oneof![
        assign().prop_map(NodeRequest::Assign),
        (segment(), any::<u64>(), any::<u32>()).prop_map(|(segment, offset, len)| {
            NodeRequest::Store {
                segment,
                offset,
                len,
            }
        }),
        (segment(), any::<u64>(), any::<u32>()).prop_map(|(segment, offset, len)| {
            NodeRequest::Fwd {
                segment,
                what: SegmentRead::Range {
                    offset,
                    len,
                    sealed: false,
                },
            }
        }),
        (
            segment(),
            proptest::collection::vec((any::<u64>(), any::<u32>()), 0..9)
        )
            .prop_map(|(segment, parts)| NodeRequest::Fwd {
                segment,
                what: SegmentRead::Parts(parts)
            }),
        (segment(), any::<u64>(), any::<u32>()).prop_map(|(segment, offset, len)| {
            NodeRequest::Fwd {
                segment,
                what: SegmentRead::Range {
                    offset,
                    len,
                    sealed: true,
                },
            }
        }),
        any::<String>().prop_map(|file| NodeRequest::Delete { file }),
        Just(NodeRequest::Stat),
        (segment(), any::<u64>(), any::<u64>()).prop_map(|(segment, offset, len)| {
            NodeRequest::Reserve {
                segment,
                offset,
                len,
            }
        }),
        (segment(), any::<u64>(), any::<u64>()).prop_map(|(segment, offset, len)| {
            NodeRequest::Punch {
                segment,
                offset,
                len,
            }
        }),
    ]
}

fn node_state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        Just(NodeState::Up),
        Just(NodeState::Down),
        Just(NodeState::Gone)
    ]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        any::<u32>(),
        socket_addr(),
        node_state(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        ".{0,20}",
        disk(),
    )
        .prop_map(
            |(id, addr, state, capacity, used, last_seen_ms, machine, disk)| NodeInfo {
                id,
                addr,
                state,
                capacity,
                used,
                last_seen_ms,
                machine,
                disk,
            },
        )
}

fn disk() -> impl Strategy<Value = poolfs::proto::Disk> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(fsid, size, free)| poolfs::proto::Disk {
        fsid,
        size,
        free,
    })
}

fn pool_view() -> impl Strategy<Value = PoolView> {
    (any::<u64>(), proptest::collection::vec(node_info(), 0..6))
        .prop_map(|(epoch, nodes)| PoolView { epoch, nodes })
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::NoSpace),
        Just(ErrorKind::NotFound),
        Just(ErrorKind::BadRequest),
        Just(ErrorKind::Unauthorized),
        Just(ErrorKind::Internal),
    ]
}

fn node_stat() -> impl Strategy<Value = NodeStat> {
    (
        any::<Option<u32>>(),
        identity(),
        proptest::option::of(socket_addr()),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(node_id, identity, controller, capacity, used, segments)| NodeStat {
                node_id,
                identity,
                controller,
                capacity,
                used,
                segments,
            },
        )
}

fn scan_report() -> impl Strategy<Value = ScanReport> {
    let found = (any::<u32>(), socket_addr(), any::<bool>(), any::<bool>()).prop_map(
        |(id, addr, new, assigned)| FoundNode {
            id,
            addr,
            new,
            assigned,
        },
    );
    (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<IpAddr>(), 0..4),
        proptest::collection::vec(found, 0..4),
        proptest::collection::vec(socket_addr(), 0..3),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<String>(), 0..3),
    )
        .prop_map(
            |(epoch, swept, responders, nodes, elsewhere, arp_ms, probe_ms, errors)| ScanReport {
                epoch,
                swept,
                responders,
                nodes,
                elsewhere,
                arp_ms,
                probe_ms,
                errors,
            },
        )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Ok),
        assign().prop_map(Response::Assigned),
        pool_view().prop_map(Response::Pool),
        node_info().prop_map(Response::Node),
        any::<u32>().prop_map(|len| Response::Data { len }),
        node_stat().prop_map(Response::Stat),
        scan_report().prop_map(Response::Scanned),
        (error_kind(), any::<String>())
            .prop_map(|(kind, message)| Response::Error { kind, message }),
    ]
}
