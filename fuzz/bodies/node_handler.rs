//! The `node_handler` target: a sequence of arbitrary requests (each a u16 length, then
//! bytes decoded as a `NodeRequest`, then for STORE the rest of its body) driven into a
//! node's request handler on a fresh, small segment store. Every request must get an
//! answer; no panic, no file outside the store, no answer larger than a body may be.

use std::sync::Arc;

use super::shared;
use poolfs::net::{Handler, Peer, Reply};
use poolfs::node::{NodeService, SegmentStore};
use poolfs::proto::{self, NodeRequest, MAX_BODY};
use poolfs::trust::{Credentials, PoolKey};

/// Capacity of the store: large enough for sparse segments past a body's size.
const CAPACITY: u64 = 64 * 1024 * 1024;

/// Runs one input of the target.
pub fn run(data: &[u8]) {
    let rt = shared::runtime();
    let dir = shared::scratch_dir("poolfs-fuzz-node-");
    let storage = dir.path().join("storage");
    let store = SegmentStore::open(&storage, CAPACITY, None).expect("store");
    let creds = Arc::new(Credentials::ephemeral(&PoolKey::generate()).expect("credentials"));
    let service = NodeService::standalone(store, creds);
    let peer = Peer {
        addr: "127.0.0.1:4000".parse().expect("addr"),
        local: "127.0.0.1:2001".parse().expect("addr"),
        key: [7; 32],
    };
    let mut rest = data;
    rt.block_on(async {
        while rest.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            let (msg, tail) = rest[2..].split_at(n);
            rest = tail;
            let Ok(mut req) = proto::decode::<NodeRequest>(msg) else {
                continue;
            };
            // The server reads exactly the announced body before calling the handler.
            let body = match &mut req {
                NodeRequest::Store { len, .. } => {
                    let take = (*len as usize).min(rest.len()).min(64 * 1024);
                    let (b, tail) = rest.split_at(take);
                    rest = tail;
                    *len = take as u32;
                    Some(b.to_vec())
                }
                _ => None,
            };
            match service.handle(req, body, peer).await {
                Reply::Data(bytes) | Reply::Sealed(bytes) => {
                    assert!(bytes.len() <= MAX_BODY as usize)
                }
                Reply::Msg(resp) => {
                    proto::encode(&resp).expect("every answer encodes");
                }
            }
        }
    });
    // Nothing may appear beside the storage directory (ids cannot traverse out of it).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("storage")],
        "{names:?}"
    );
}
