//! The `controller_handler` target: a sequence of arbitrary requests (each a u16
//! length, then bytes decoded as a `ControllerRequest`) driven into the controller's request
//! handler on a fresh registry, from a peer whose key owns the first identity it
//! claims. Every request must get an answer that encodes; no panic; the registry must
//! load back afterwards.

use super::shared;
use poolfs::controller::ControllerService;
use poolfs::net::{Handler, Peer, Reply};
use poolfs::proto::{self, ControllerRequest};

/// Runs one input of the target.
pub fn run(data: &[u8]) {
    let rt = shared::runtime();
    let dir = shared::scratch_dir("poolfs-fuzz-ctrl-");
    let service = ControllerService::standalone(dir.path()).expect("registry");
    let mut rest = data;
    rt.block_on(async {
        while rest.len() >= 3 {
            // One byte picks the peer's key, so some requests claim identities the peer
            // owns and others do not.
            let key = [rest[0] & 3; 32];
            let n = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
            let (msg, tail) = rest[3..].split_at(n);
            rest = tail;
            let Ok(mut req) = proto::decode::<ControllerRequest>(msg) else {
                continue;
            };
            // Make JOIN/HEARTBEAT/LEAVE reachable past the identity check half the time.
            let owned = poolfs::trust::identity_of(&key);
            if n % 2 == 0 {
                match &mut req {
                    ControllerRequest::Join { identity, .. }
                    | ControllerRequest::Heartbeat { identity, .. }
                    | ControllerRequest::Leave { identity, .. } => *identity = owned,
                    _ => {}
                }
            }
            // SCAN on a controller without discovery is refused without sweeping.
            let peer = Peer {
                addr: "127.0.0.1:4000".parse().expect("addr"),
                local: "127.0.0.1:2000".parse().expect("addr"),
                key,
            };
            match service.handle(req, None, peer).await {
                Reply::Msg(resp) => {
                    proto::encode(&resp).expect("every answer encodes");
                }
                Reply::Data(_) | Reply::Sealed(_) => {
                    panic!("the controller never answers with raw bytes")
                }
            }
        }
    });
    // What the handler persisted must load back.
    poolfs::controller::ControllerService::standalone(dir.path()).expect("registry reloads");
}
