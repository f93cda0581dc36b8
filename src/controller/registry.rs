//! Membership registry: sequential ids bound to node identities, liveness, epochs, and
//! its persistence. Pure state plus a JSON file; no networking here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proto::{Identity, NodeId, NodeInfo, NodeState, PoolView};

/// Why the registry refused a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// No member has this id.
    #[error("node {0} is not a member")]
    Unknown(NodeId),
    /// The id is bound to another identity than the sender's.
    #[error("node {0} belongs to another identity")]
    Impostor(NodeId),
}

#[derive(Serialize, Deserialize, Clone)]
struct MemberRecord {
    id: NodeId,
    identity: Identity,
    addr: SocketAddr,
    capacity: u64,
    used: u64,
    gone: bool,
    /// The machine the node names (`NodeInfo::machine`); files from before machine
    /// names read as empty until the node's next heartbeat.
    #[serde(default)]
    machine: String,
}

/// The version of `registry.json` this poolfs writes (see `crate::versioned`; files
/// from before the tag read as 1).
const REGISTRY_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    next_id: NodeId,
    epoch: u64,
    members: Vec<MemberRecord>,
}

struct Member {
    record: MemberRecord,
    state: NodeState,
    last_seen: Instant,
}

/// The pool's members.
pub struct Registry {
    path: Option<PathBuf>,
    next_id: NodeId,
    epoch: u64,
    members: BTreeMap<NodeId, Member>,
}

impl Registry {
    /// An empty registry that is never written to disk (tests).
    pub fn in_memory() -> Self {
        Registry {
            path: None,
            next_id: 1,
            epoch: 0,
            members: BTreeMap::new(),
        }
    }

    /// Loads `state/registry.json` (or starts empty). Every known member starts down
    /// until it is heard from again.
    ///
    /// Errors: the read's I/O error, or `InvalidData` for a file that is not a registry
    /// or is of a version newer than `REGISTRY_VERSION` (the file is left as it is).
    pub fn load(state: &Path) -> std::io::Result<Self> {
        let path = state.join("registry.json");
        let persisted: Persisted = match std::fs::read(&path) {
            Ok(bytes) => {
                crate::versioned::decode(&bytes, REGISTRY_VERSION, &path)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
                    .1
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let members = persisted
            .members
            .into_iter()
            .map(|record| {
                let state = if record.gone {
                    NodeState::Gone
                } else {
                    NodeState::Down
                };
                (
                    record.id,
                    Member {
                        record,
                        state,
                        last_seen: now,
                    },
                )
            })
            .collect();
        Ok(Registry {
            path: Some(path),
            next_id: persisted.next_id.max(1),
            // A restart is a change of view: start above anything handed out before.
            epoch: persisted.epoch + 1,
            members,
        })
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let persisted = Persisted {
            next_id: self.next_id,
            epoch: self.epoch,
            members: self.members.values().map(|m| m.record.clone()).collect(),
        };
        let result = crate::versioned::encode(&persisted, REGISTRY_VERSION, path)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::util::write_atomic(path, &bytes));
        if let Err(e) = result {
            log::error!("cannot save the registry to {}: {e}", path.display());
        }
    }

    fn bump(&mut self) {
        self.epoch += 1;
    }

    /// Admits a node, or recognises it by identity and gives its old id back; records
    /// its address, `capacity` and `used` bytes, and the `machine` it runs on (`""`:
    /// not known, the one recorded stays).
    pub fn join(
        &mut self,
        identity: Identity,
        addr: SocketAddr,
        (capacity, used): (u64, u64),
        machine: &str,
        now: Instant,
    ) -> NodeId {
        let existing = self
            .members
            .values()
            .find(|m| m.record.identity == identity)
            .map(|m| m.record.id);
        let id = match existing {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let record = MemberRecord {
                    id,
                    identity,
                    addr,
                    capacity,
                    used,
                    gone: false,
                    machine: machine.to_string(),
                };
                self.members.insert(
                    id,
                    Member {
                        record,
                        state: NodeState::Up,
                        last_seen: now,
                    },
                );
                id
            }
        };
        if let Some(m) = self.members.get_mut(&id) {
            m.record.addr = addr;
            m.record.capacity = capacity;
            m.record.used = used;
            m.record.gone = false;
            // "" (a sweep, which does not learn the machine) keeps the one known.
            if !machine.is_empty() && m.record.machine != machine {
                m.record.machine = machine.to_string();
            }
            m.state = NodeState::Up;
            m.last_seen = now;
        }
        self.bump();
        self.save();
        id
    }

    fn member_of(&mut self, id: NodeId, identity: Identity) -> Result<&mut Member, RegistryError> {
        let m = self
            .members
            .get_mut(&id)
            .ok_or(RegistryError::Unknown(id))?;
        if m.record.identity != identity {
            return Err(RegistryError::Impostor(id));
        }
        Ok(m)
    }

    /// Records a heartbeat (`capacity` and `used` in bytes, the `machine` the node runs
    /// on); a down or departed member comes back up, a leaving one stays leaving.
    ///
    /// Errors: `RegistryError::Unknown` for an id no member has, `Impostor` if the id
    /// belongs to another identity.
    pub fn heartbeat(
        &mut self,
        id: NodeId,
        identity: Identity,
        (capacity, used): (u64, u64),
        machine: &str,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let m = self.member_of(id, identity)?;
        m.last_seen = now;
        m.record.capacity = capacity;
        m.record.used = used;
        // A renamed machine changes where files are placed: a new view, kept on disk.
        let renamed = m.record.machine != machine;
        if renamed {
            m.record.machine = machine.to_string();
        }
        let was = m.state;
        // A leaving member keeps heartbeating while it hands its segments off.
        if was != NodeState::Up && was != NodeState::Leaving {
            m.state = NodeState::Up;
            m.record.gone = false;
            log::info!("node {id} is up again");
            self.bump();
            if was == NodeState::Gone {
                self.save();
            }
        }
        if renamed {
            self.bump();
            self.save();
        }
        Ok(())
    }

    /// Marks a member gone at once. Errors as `heartbeat`.
    pub fn leave(&mut self, id: NodeId, identity: Identity) -> Result<(), RegistryError> {
        let m = self.member_of(id, identity)?;
        m.state = NodeState::Gone;
        m.record.gone = true;
        log::info!("node {id} left the pool");
        self.bump();
        self.save();
        Ok(())
    }

    /// Marks a member as leaving: it stays readable, but nothing new is placed on it
    /// and owners move its segments away. Errors as `heartbeat`.
    pub fn drain(&mut self, id: NodeId, identity: Identity) -> Result<(), RegistryError> {
        let m = self.member_of(id, identity)?;
        if m.state != NodeState::Leaving {
            m.state = NodeState::Leaving;
            log::info!("node {id} is leaving: handing its segments off");
            self.bump();
        }
        Ok(())
    }

    /// Marks members silent for longer than `down_after` as down; true if any changed.
    pub fn sweep(&mut self, now: Instant, down_after: Duration) -> bool {
        let mut changed = false;
        for m in self.members.values_mut() {
            let heard_from = matches!(m.state, NodeState::Up | NodeState::Leaving);
            if heard_from && now.duration_since(m.last_seen) > down_after {
                m.state = NodeState::Down;
                log::warn!(
                    "node {} ({}) is down: no heartbeat for {:?}",
                    m.record.id,
                    m.record.addr,
                    down_after
                );
                changed = true;
            }
        }
        if changed {
            self.bump();
        }
        changed
    }

    /// The id and state of the member with this identity, if it is one.
    pub fn member(&self, identity: Identity) -> Option<(NodeId, NodeState)> {
        self.members
            .values()
            .find(|m| m.record.identity == identity)
            .map(|m| (m.record.id, m.state))
    }

    /// Members that are up.
    pub fn live_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.state == NodeState::Up)
            .count()
    }

    /// The current view.
    pub fn view(&self, now: Instant) -> PoolView {
        PoolView {
            epoch: self.epoch,
            nodes: self
                .members
                .values()
                .map(|m| NodeInfo {
                    id: m.record.id,
                    addr: m.record.addr,
                    state: m.state,
                    capacity: m.record.capacity,
                    used: m.record.used,
                    last_seen_ms: now.duration_since(m.last_seen).as_millis() as u64,
                    machine: m.record.machine.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
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
            assert_eq!(r.join(a, addr(1), (10, 0), "m", now), 1);
            assert_eq!(r.join(b, addr(2), (10, 0), "m", now), 2);
            assert_eq!(
                r.join(a, addr(3), (10, 0), "m", now),
                1,
                "a rejoin keeps the id"
            );
        }
        let mut r = Registry::load(dir.path()).unwrap();
        let view = r.view(now);
        assert!(view.nodes.iter().all(|n| n.state == NodeState::Down));
        assert_eq!(view.node(1).unwrap().addr, addr(3));
        assert_eq!(r.join(b, addr(2), (10, 0), "m", now), 2);
        assert_eq!(r.join(Identity([3; 16]), addr(4), (10, 0), "m", now), 3);
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
        assert_eq!(r.join(Identity([2; 16]), addr(9), (10, 4), "m", now), 2);
        assert_eq!(r.view(now).node(2).unwrap().machine, "m");
        assert_eq!(r.join(Identity([5; 16]), addr(5), (10, 0), "m", now), 3);
    }

    #[test]
    fn the_machine_a_node_names_is_shown_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let a = Identity([1; 16]);
        {
            let mut r = Registry::load(dir.path()).unwrap();
            let id = r.join(a, addr(1), (10, 0), "desk-1a2b3c4d", now);
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
        r.join(Identity([1; 16]), addr(1), (10, 0), "m", Instant::now());
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
        let id = r.join(a, addr(1), (10, 0), "m", t0);
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
        let id = r.join(a, addr(1), (10, 0), "m", t0);
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
        let id_b = r.join(b, addr(2), (10, 0), "m", t1);
        r.drain(id_b, b).unwrap();
        assert!(r.sweep(t1 + Duration::from_secs(10), Duration::from_secs(3)));
        assert_eq!(state(&r, t1), NodeState::Gone);
        assert_eq!(r.view(t1).node(id_b).unwrap().state, NodeState::Down);
    }
}
