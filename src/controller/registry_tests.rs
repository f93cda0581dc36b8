//! The registry's tests: ids bound to identities (joins, restarts, the ids nodes say
//! they had), liveness, versions of the saved file.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn ids_are_sequential_and_stable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let (a, b) = (Identity([1; 16]), Identity([2; 16]));
    {
        let mut r = Registry::load(dir.path()).unwrap();
        assert_eq!(r.join(a, addr(1), (10, 0), "m", None, now), 1);
        assert_eq!(r.join(b, addr(2), (10, 0), "m", None, now), 2);
        assert_eq!(
            r.join(a, addr(3), (10, 0), "m", None, now),
            1,
            "a rejoin keeps the id"
        );
    }
    let mut r = Registry::load(dir.path()).unwrap();
    let view = r.view(now);
    assert!(view.nodes.iter().all(|n| n.state == NodeState::Down));
    assert_eq!(view.node(1).unwrap().addr, addr(3));
    assert_eq!(r.join(b, addr(2), (10, 0), "m", None, now), 2);
    assert_eq!(
        r.join(Identity([3; 16]), addr(4), (10, 0), "m", None, now),
        3
    );
}

/// One JOIN of a table case: who joins, the id it says it had, the id it must get.
struct Case {
    who: u8,
    hint: Option<NodeId>,
    gets: NodeId,
    why: &'static str,
}

/// Runs `joins` in order on `r`, checking each id handed out.
fn check(r: &mut Registry, joins: &[Case]) {
    let now = Instant::now();
    for c in joins {
        let id = r.join(
            Identity([c.who; 16]),
            addr(c.who.into()),
            (10, 0),
            "m",
            c.hint,
            now,
        );
        assert_eq!(id, c.gets, "node {}: {}", c.who, c.why);
    }
}

fn case(who: u8, hint: Option<NodeId>, gets: NodeId, why: &'static str) -> Case {
    Case {
        who,
        hint,
        gets,
        why,
    }
}

#[test]
fn a_fresh_registry_gives_every_node_the_id_it_says_it_had() {
    let mut r = Registry::in_memory();
    // Nodes come back in another order than they first joined.
    check(
        &mut r,
        &[
            case(3, Some(3), 3, "its old id, though it is first back"),
            case(1, Some(1), 1, "its old id"),
            case(5, Some(7), 7, "its old id, above the gap"),
            case(2, Some(2), 2, "its old id, inside the gap"),
            case(
                9,
                None,
                8,
                "a new node gets an id above every id handed out",
            ),
            case(3, Some(3), 3, "a rejoin keeps it"),
        ],
    );
    let ids: Vec<NodeId> = r.view(Instant::now()).nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 7, 8]);
}

#[test]
fn a_known_identity_keeps_its_recorded_id_whatever_it_says() {
    let mut r = Registry::in_memory();
    check(
        &mut r,
        &[
            case(1, None, 1, "first join"),
            case(2, None, 2, "first join"),
            case(
                1,
                Some(2),
                1,
                "it says another member's id: the record wins",
            ),
            case(1, Some(40), 1, "it says an unused id: the record wins"),
            case(3, None, 3, "fresh ids did not move for the ignored hint"),
        ],
    );
}

#[test]
fn an_id_held_by_another_identity_is_not_given_twice() {
    let mut r = Registry::in_memory();
    check(
        &mut r,
        &[
            case(1, Some(4), 4, "its old id"),
            case(2, Some(4), 5, "id 4 is node 1's: a fresh id"),
            case(3, Some(0), 6, "0 is never an id: a fresh id"),
            case(
                6,
                Some(NodeId::MAX),
                7,
                "the largest id would leave none above it: a fresh id",
            ),
            case(7, None, 8, "fresh ids stay above every id handed out"),
        ],
    );
    // A gone member still holds its id: manifests may name it.
    let gone = Identity([1; 16]);
    r.leave(4, gone).unwrap();
    check(
        &mut r,
        &[case(8, Some(4), 9, "id 4 is node 1's, gone or not")],
    );
}

#[test]
fn hinted_ids_and_the_next_fresh_id_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut r = Registry::load(dir.path()).unwrap();
        check(&mut r, &[case(1, Some(9), 9, "its old id")]);
    }
    let mut r = Registry::load(dir.path()).unwrap();
    check(
        &mut r,
        &[
            case(1, None, 9, "the record came back from disk"),
            case(2, None, 10, "a new node gets an id above 9"),
        ],
    );
}

#[test]
fn a_registry_saved_before_versions_opens_as_version_1() {
    let dir = tempfile::tempdir().unwrap();
    // registry.json as poolfs wrote it before the version tag.
    let old = r#"{"next_id": 3, "epoch": 7, "members": [{"id": 2,
        "identity": [2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2], "addr": "127.0.0.1:9",
        "capacity": 10, "used": 4, "gone": false}]}"#;
    std::fs::write(dir.path().join("registry.json"), old).unwrap();
    let mut r = Registry::load(dir.path()).unwrap();
    let now = Instant::now();
    assert_eq!(r.view(now).node(2).unwrap().addr, addr(9));
    assert_eq!(
        r.view(now).node(2).unwrap().machine,
        "",
        "no machine named yet"
    );
    assert_eq!(
        r.join(Identity([2; 16]), addr(9), (10, 4), "m", None, now),
        2
    );
    assert_eq!(r.view(now).node(2).unwrap().machine, "m");
    assert_eq!(
        r.join(Identity([5; 16]), addr(5), (10, 0), "m", None, now),
        3
    );
}

#[test]
fn the_machine_a_node_names_is_shown_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let a = Identity([1; 16]);
    {
        let mut r = Registry::load(dir.path()).unwrap();
        let id = r.join(a, addr(1), (10, 0), "desk-1a2b3c4d", None, now);
        assert_eq!(r.view(now).node(id).unwrap().machine, "desk-1a2b3c4d");
        let epoch = r.view(now).epoch;
        // Renamed (`--machine`) and restarted without a new join: a new view.
        r.heartbeat(id, a, (10, 0), "desk", now).unwrap();
        assert_eq!(r.view(now).node(id).unwrap().machine, "desk");
        assert!(r.view(now).epoch > epoch);
    }
    let r = Registry::load(dir.path()).unwrap();
    assert_eq!(r.view(now).node(1).unwrap().machine, "desk");
}

#[test]
fn a_saved_registry_carries_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Registry::load(dir.path()).unwrap();
    r.join(
        Identity([1; 16]),
        addr(1),
        (10, 0),
        "m",
        None,
        Instant::now(),
    );
    let bytes = std::fs::read(dir.path().join("registry.json")).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["version"], REGISTRY_VERSION);
    let r = Registry::load(dir.path()).unwrap();
    assert!(r.view(Instant::now()).node(1).is_some());
}

#[test]
fn a_registry_of_a_newer_version_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    let newer = format!(r#"{{"version": {}, "nodes": {{}}}}"#, REGISTRY_VERSION + 1);
    std::fs::write(&path, &newer).unwrap();
    let err = Registry::load(dir.path())
        .err()
        .expect("a newer registry must be refused");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains(&format!("version {}", REGISTRY_VERSION + 1)),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
}

#[test]
fn liveness_leave_and_impostors() {
    let mut r = Registry::in_memory();
    let t0 = Instant::now();
    let a = Identity([1; 16]);
    let id = r.join(a, addr(1), (10, 0), "m", None, t0);
    let e0 = r.view(t0).epoch;
    assert!(!r.sweep(t0 + Duration::from_secs(1), Duration::from_secs(3)));
    assert!(r.sweep(t0 + Duration::from_secs(4), Duration::from_secs(3)));
    assert_eq!(r.view(t0).nodes[0].state, NodeState::Down);
    assert!(r.view(t0).epoch > e0);
    assert_eq!(
        r.heartbeat(id, Identity([9; 16]), (10, 0), "m", t0),
        Err(RegistryError::Impostor(id))
    );
    assert_eq!(
        r.heartbeat(77, a, (10, 0), "m", t0),
        Err(RegistryError::Unknown(77))
    );
    r.heartbeat(id, a, (10, 5), "m", t0 + Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        r.view(t0 + Duration::from_secs(5)).nodes[0].state,
        NodeState::Up
    );
    r.leave(id, a).unwrap();
    assert_eq!(r.view(t0).nodes[0].state, NodeState::Gone);
    assert_eq!(r.live_count(), 0);
}

#[test]
fn a_leaving_member_stays_leaving_while_it_heartbeats_then_goes() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let a = Identity([1; 16]);
    let mut r = Registry::load(dir.path()).unwrap();
    let id = r.join(a, addr(1), (10, 0), "m", None, t0);
    assert!(r.drain(id, Identity([9; 16])).is_err(), "another identity");
    r.drain(id, a).unwrap();
    let state = |r: &Registry, t| r.view(t).node(id).unwrap().state;
    assert_eq!(state(&r, t0), NodeState::Leaving);
    let t1 = t0 + Duration::from_secs(1);
    r.heartbeat(id, a, (10, 0), "m", t1).unwrap();
    assert_eq!(
        state(&r, t1),
        NodeState::Leaving,
        "a heartbeat does not undo it"
    );
    assert_eq!(
        r.live_count(),
        0,
        "nothing new is placed on a leaving member"
    );
    r.leave(id, a).unwrap();
    assert_eq!(state(&r, t1), NodeState::Gone);
    // A leaving member that falls silent is down, like any other.
    let b = Identity([2; 16]);
    let id_b = r.join(b, addr(2), (10, 0), "m", None, t1);
    r.drain(id_b, b).unwrap();
    assert!(r.sweep(t1 + Duration::from_secs(10), Duration::from_secs(3)));
    assert_eq!(state(&r, t1), NodeState::Gone);
    assert_eq!(r.view(t1).node(id_b).unwrap().state, NodeState::Down);
}
