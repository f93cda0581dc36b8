//! The node's request handler: each `NodeRequest` answered from the segment store, in
//! the namespace of the key the connection proved, disk work on the blocking pool.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::pin::ControllerPin;
use super::{Membership, SegmentStore, Shared, StoreError};
use crate::net::{Handler, Peer, Reply};
use crate::proto::{
    ErrorKind, NodeRequest, Response, SegmentRead, MAX_BODY, MAX_LIST_PAGE, MAX_PARTS,
};
use crate::trust::{identity_of, Credentials};

/// A node's request handler (what `Node::start` serves).
pub struct NodeService(pub(super) Arc<Shared>);

impl NodeService {
    /// The handler on `store` alone, without a listener or membership: requests can be
    /// driven straight into it (fuzzing, tests).
    pub fn standalone(store: SegmentStore, creds: Arc<Credentials>) -> NodeService {
        let (controller, _) = watch::channel(None);
        NodeService(Arc::new(Shared {
            storage: None,
            store,
            pin: ControllerPin::ephemeral(),
            identity: creds.identity(),
            creds,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Never joins a pool: no machine to name.
            machine: String::new(),
            membership: Mutex::new(Membership::default()),
            controller,
        }))
    }
}

/// Would answering this read exceed what one answer may carry (`MAX_BODY` bytes, and
/// `MAX_PARTS` ranges)?
fn fwd_too_big(what: &SegmentRead) -> bool {
    match what {
        SegmentRead::Range { len, .. } => *len > MAX_BODY,
        SegmentRead::Parts(parts) => {
            let total = parts
                .iter()
                .try_fold(0u32, |sum, part| sum.checked_add(part.1));
            parts.len() > MAX_PARTS || total.is_none_or(|t| t > MAX_BODY)
        }
    }
}

/// The answer that reports `e`, with the kind a caller maps to errno (and logged when
/// it is the node's own failure).
pub(super) fn store_error(e: StoreError) -> Response {
    let kind = match e {
        // A full disk is the node having no space, whatever its `--capacity` says: the
        // client reports ENOSPC rather than an I/O error.
        StoreError::NoSpace { .. } | StoreError::DiskFull { .. } => ErrorKind::NoSpace,
        StoreError::Quota { .. } => ErrorKind::Quota,
        StoreError::BadId(_) | StoreError::BadRange { .. } | StoreError::TooManyRanges { .. } => {
            ErrorKind::BadRequest
        }
        StoreError::NotFound(_) | StoreError::OutOfRange { .. } => ErrorKind::NotFound,
        StoreError::Io { .. } => ErrorKind::Internal,
    };
    if kind == ErrorKind::Internal {
        log::error!("{e}");
    } else if matches!(e, StoreError::DiskFull { .. }) {
        log::warn!("{e}");
    }
    Response::error(kind, e.to_string())
}

impl Handler for NodeService {
    type Request = NodeRequest;

    async fn handle(&self, req: NodeRequest, body: Option<Vec<u8>>, peer: Peer) -> Reply {
        // Segments belong to the static key that stored them: every segment verb works
        // inside its caller's own namespace.
        let owner = identity_of(&peer.key);
        let sender_key = peer.key;
        let peer = peer.addr;
        let shared = self.0.clone();
        // Disk work runs on the blocking pool so slow disks never stall the reactor.
        let blocking = |f: Box<dyn FnOnce() -> Reply + Send>| async move {
            tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
                Reply::Msg(Response::error(
                    ErrorKind::Internal,
                    format!("task failed: {e}"),
                ))
            })
        };
        match req {
            NodeRequest::Store {
                segment, offset, ..
            } => {
                let data = body.unwrap_or_default();
                blocking(Box::new(move || {
                    match shared.store.store(&owner, &segment, offset, &data) {
                        Ok(()) => Reply::Msg(Response::Ok),
                        Err(e) => Reply::Msg(store_error(e)),
                    }
                }))
                .await
            }
            // The answer is built in memory before it is sent: a length no reader would
            // accept must not make the node allocate it.
            NodeRequest::Fwd { what, .. } if fwd_too_big(&what) => {
                let asked = match &what {
                    SegmentRead::Range { len, .. } => format!("{len} bytes"),
                    SegmentRead::Parts(parts) => format!("{} ranges", parts.len()),
                };
                Response::error(
                    ErrorKind::BadRequest,
                    format!(
                        "FWD of {asked} exceeds the maximum of {MAX_PARTS} ranges and \
                         {MAX_BODY} bytes"
                    ),
                )
                .into()
            }
            NodeRequest::Fwd { segment, what } => {
                blocking(Box::new(move || {
                    // A range the reader sealed itself travels outside the channel's
                    // encryption; anything else inside it.
                    let (read, reply): (_, fn(Vec<u8>) -> Reply) = match &what {
                        SegmentRead::Range {
                            offset,
                            len,
                            sealed,
                        } => (
                            shared.store.fwd(&owner, &segment, *offset, *len),
                            if *sealed { Reply::Sealed } else { Reply::Data },
                        ),
                        SegmentRead::Parts(parts) => {
                            (shared.store.fwd_parts(&owner, &segment, parts), Reply::Data)
                        }
                    };
                    match read {
                        Ok(data) => reply(data),
                        Err(e) => Reply::Msg(store_error(e)),
                    }
                }))
                .await
            }
            NodeRequest::Reserve {
                segment,
                offset,
                len,
            } => {
                blocking(Box::new(move || {
                    match shared.store.reserve(&owner, &segment, offset, len) {
                        Ok(()) => Reply::Msg(Response::Ok),
                        Err(e) => Reply::Msg(store_error(e)),
                    }
                }))
                .await
            }
            NodeRequest::Punch {
                segment,
                offset,
                len,
            } => {
                blocking(Box::new(move || {
                    match shared.store.punch(&owner, &segment, offset, len) {
                        Ok(_) => Reply::Msg(Response::Ok),
                        Err(e) => Reply::Msg(store_error(e)),
                    }
                }))
                .await
            }
            NodeRequest::Delete { file } => {
                blocking(Box::new(move || match shared.store.delete(&owner, &file) {
                    Ok(_) => Reply::Msg(Response::Ok),
                    Err(e) => Reply::Msg(store_error(e)),
                }))
                .await
            }
            NodeRequest::List { limit, .. } if limit == 0 || limit > MAX_LIST_PAGE => {
                Response::error(
                    ErrorKind::BadRequest,
                    format!("LIST of {limit} segments: a page holds 1 to {MAX_LIST_PAGE}"),
                )
                .into()
            }
            NodeRequest::List { after, limit } => {
                blocking(Box::new(move || {
                    match shared.store.list(&owner, after.as_ref(), limit as usize) {
                        Ok(page) => Reply::Msg(Response::Segments(page)),
                        Err(e) => Reply::Msg(store_error(e)),
                    }
                }))
                .await
            }
            NodeRequest::DeleteSegment {
                segment,
                keep,
                older_than_ms,
            } => {
                blocking(Box::new(move || {
                    match shared
                        .store
                        .delete_segment(&owner, &segment, &keep, older_than_ms)
                    {
                        Ok(outcome) => Reply::Msg(Response::Reclaimed(outcome)),
                        Err(e) => Reply::Msg(store_error(e)),
                    }
                }))
                .await
            }
            NodeRequest::Stat => Response::Stat(shared.stat()).into(),
            NodeRequest::Assign(assign) => {
                log::info!(
                    "received ASSIGN from {peer}: node id {}, pool size {}, controller {}, epoch {}",
                    assign.node_id,
                    assign.pool_size,
                    assign.controller,
                    assign.epoch
                );
                match shared.pin.admit(&sender_key, assign.controller) {
                    Ok(()) => {
                        shared.accept_assign(assign);
                        Response::Ok.into()
                    }
                    Err(why) => {
                        log::warn!("refused ASSIGN from {peer}: {why}");
                        Response::error(ErrorKind::Unauthorized, why).into()
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::MAX_SEGMENT_END;
    use crate::proto::SegmentRef;
    use crate::proto::ServiceRequest;
    use crate::trust::PoolKey;
    use std::os::unix::fs::MetadataExt;

    fn seg(file: &str) -> SegmentRef {
        SegmentRef {
            file: file.into(),
            index: 0,
        }
    }

    #[tokio::test]
    async fn reserve_and_punch_answer_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let b = std::fs::metadata(dir.path()).unwrap().blksize();
        let store = SegmentStore::open(dir.path(), 4 * b, None).unwrap();
        let creds = Arc::new(Credentials::ephemeral(&PoolKey::generate()).unwrap());
        let service = NodeService::standalone(store, creds);
        let peer = Peer {
            addr: "127.0.0.1:4000".parse().unwrap(),
            local: "127.0.0.1:2001".parse().unwrap(),
            key: [7; 32],
        };
        let ask = |req: NodeRequest| {
            let service = &service;
            async move {
                match service.handle(req, None, peer).await {
                    Reply::Msg(resp) => resp,
                    _ => panic!("a data answer to a space request"),
                }
            }
        };
        let kind = |resp: Response| match resp {
            Response::Error { kind, .. } => Some(kind),
            _ => None,
        };
        let used = || async {
            match ask(NodeRequest::Stat).await {
                Response::Stat(stat) => stat.used,
                other => panic!("{other:?}"),
            }
        };
        let reserve = |file: &str, offset, len| NodeRequest::Reserve {
            segment: seg(file),
            offset,
            len,
        };
        let punch = |file: &str, offset, len| NodeRequest::Punch {
            segment: seg(file),
            offset,
            len,
        };
        assert_eq!(ask(reserve("f", 0, 3 * b)).await, Response::Ok);
        assert_eq!(used().await, 3 * b);
        // Past the capacity: NoSpace, and nothing more is allocated.
        assert_eq!(
            kind(ask(reserve("g", 0, 2 * b)).await),
            Some(ErrorKind::NoSpace)
        );
        assert_eq!(used().await, 3 * b);
        // Absurd ranges and bad ids are bad requests, for both verbs.
        for req in [
            reserve("f", u64::MAX, 2),
            reserve("f", MAX_SEGMENT_END, 1),
            punch("f", u64::MAX - 1, 4),
            reserve("../f", 0, 1),
            punch("a/b", 0, 1),
        ] {
            let name = req.verb();
            assert_eq!(kind(ask(req).await), Some(ErrorKind::BadRequest), "{name}");
        }
        // A missing segment is fine to punch; a held one gives its room back.
        assert_eq!(ask(punch("none", 0, b)).await, Response::Ok);
        assert_eq!(ask(punch("f", 0, 2 * b)).await, Response::Ok);
        assert_eq!(used().await, b);
        assert_eq!(ask(reserve("g", 0, 2 * b)).await, Response::Ok);
        assert_eq!(used().await, 3 * b);
        assert_eq!(punch("f", 0, 0).verb(), "PUNCH");
        assert_eq!(reserve("f", 0, 0).verb(), "RESERVE");
    }

    /// LIST pages and refuses a page past the frame's bound; DELETE-SEGMENT answers
    /// what it did; both only in the caller's own namespace.
    #[tokio::test]
    async fn list_and_delete_segment_answer_in_the_caller_s_namespace() {
        use crate::proto::{encode, Reclaim, SegmentInfo, SegmentPage, MAX_FRAME};
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 30, None).unwrap();
        let creds = Arc::new(Credentials::ephemeral(&PoolKey::generate()).unwrap());
        let service = NodeService::standalone(store, creds);
        let peer = |key: u8| Peer {
            addr: "127.0.0.1:4000".parse().unwrap(),
            local: "127.0.0.1:2001".parse().unwrap(),
            key: [key; 32],
        };
        let ask = |req: NodeRequest, who: u8| {
            let service = &service;
            async move {
                match service.handle(req, Some(b"abc".to_vec()), peer(who)).await {
                    Reply::Msg(resp) => resp,
                    _ => panic!("a data answer"),
                }
            }
        };
        for index in 0..3 {
            let store = NodeRequest::Store {
                segment: SegmentRef {
                    file: "f".into(),
                    index,
                },
                offset: 0,
                len: 3,
            };
            assert_eq!(ask(store, 1).await, Response::Ok);
        }
        let list = |after, limit| NodeRequest::List { after, limit };
        let Response::Segments(page) = ask(list(None, 2), 1).await else {
            panic!("no page");
        };
        assert_eq!(page.segments.len(), 2);
        assert!(page.more);
        let Response::Segments(rest) =
            ask(list(page.segments[1].segment.clone().into(), 2), 1).await
        else {
            panic!("no page");
        };
        assert_eq!(rest.segments.len(), 1);
        assert!(!rest.more);
        assert_eq!(
            ask(list(None, 2), 2).await,
            Response::Segments(Default::default())
        );
        for limit in [0, MAX_LIST_PAGE + 1] {
            let answer = ask(list(None, limit), 1).await;
            assert!(
                matches!(
                    answer,
                    Response::Error {
                        kind: ErrorKind::BadRequest,
                        ..
                    }
                ),
                "{answer:?}"
            );
        }
        // A whole page of the longest ids fits in one frame.
        let info = SegmentInfo {
            segment: SegmentRef {
                file: "x".repeat(64),
                index: u32::MAX,
            },
            allocated: u64::MAX,
            age_ms: u64::MAX,
        };
        let full = Response::Segments(SegmentPage {
            segments: vec![info; MAX_LIST_PAGE as usize],
            more: true,
        });
        assert!(encode(&full).unwrap().len() < MAX_FRAME as usize);
        let delete = |older_than_ms| NodeRequest::DeleteSegment {
            segment: SegmentRef {
                file: "f".into(),
                index: 0,
            },
            keep: Vec::new(),
            older_than_ms,
        };
        assert!(matches!(
            ask(delete(600_000), 1).await,
            Response::Reclaimed(Reclaim::Young { .. })
        ));
        assert_eq!(
            ask(delete(0), 2).await,
            Response::Reclaimed(Reclaim::Missing)
        );
        assert!(matches!(
            ask(delete(0), 1).await,
            Response::Reclaimed(Reclaim::Deleted { freed }) if freed > 0
        ));
        assert_eq!(delete(0).verb(), "DELETE-SEGMENT");
        assert_eq!(list(None, 1).verb(), "LIST");
    }

    /// A controller verb sent to a node is refused by its service tag with a clear
    /// error, and the node closes that connection; a fresh one is served as usual.
    #[tokio::test]
    async fn a_controller_verb_sent_to_a_node_is_refused_and_its_connection_closed() {
        use crate::net::{serve, Connection, NetError, ServerLimits};
        use crate::proto::ControllerRequest;
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path(), 1 << 20, None).unwrap();
        let key = PoolKey::generate();
        let node_creds = Arc::new(Credentials::ephemeral(&key).unwrap());
        let service = Arc::new(NodeService::standalone(store, node_creds.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            service,
            ServerLimits::default(),
            node_creds,
        ));
        let client = Credentials::ephemeral(&key).unwrap();
        let timeout = Duration::from_secs(5);

        let mut conn = Connection::connect(addr, &client, timeout).await.unwrap();
        let err = conn.call(&ControllerRequest::Pool, None).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(ErrorKind::BadRequest), "{err}");
        assert!(
            err.to_string()
                .contains("a node does not answer controller requests"),
            "{err}"
        );
        let closed = conn.call(&NodeRequest::Stat, None).await.unwrap_err();
        assert!(matches!(closed, NetError::Frame { .. }), "{closed}");

        let mut fresh = Connection::connect(addr, &client, timeout).await.unwrap();
        let (answer, _) = fresh.call(&NodeRequest::Stat, None).await.unwrap();
        assert!(matches!(answer, Response::Stat(_)), "{answer:?}");
        server.abort();
    }

    #[test]
    fn a_full_disk_is_answered_no_space() {
        let full = StoreError::DiskFull {
            context: "write /s/segments/o/f/0.seg".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        match store_error(full) {
            Response::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::NoSpace);
                assert!(message.contains("0.seg"), "{message}");
                assert!(message.contains("disk is full"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
