//! Membership registry: sequential ids bound to node identities, liveness, epochs, and
//! its persistence. Pure state plus a JSON file; no networking here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proto::{Disk, Identity, NodeId, NodeInfo, NodeState, PoolView};

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
    /// The filesystem it last reported (not kept on disk: every heartbeat brings it).
    disk: Disk,
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
                        disk: Disk::default(),
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
    ///
    /// `hint` is the id the node says it had (JOIN's `id`, a sweep's STAT). Manifests
    /// name holders by id, so a registry rebuilt from nothing must give every node the
    /// id it had: an identity the registry knows keeps its recorded id (a differing
    /// hint is warned about); an unknown identity gets its hint unless another identity
    /// holds that id (then a fresh id, warned about with both identities). Fresh ids
    /// stay above every id handed out, hinted ones included.
    pub fn join(
        &mut self,
        identity: Identity,
        addr: SocketAddr,
        (capacity, used): (u64, u64),
        machine: &str,
        hint: Option<NodeId>,
        now: Instant,
    ) -> NodeId {
        let id = match self.member(identity) {
            Some((id, _)) => {
                if let Some(h) = hint.filter(|&h| h != id) {
                    log::warn!(
                        "node {id} ({identity:?}, at {addr}) says it had id {h}; it keeps \
                         the id this controller recorded for it"
                    );
                }
                id
            }
            None => {
                let id = self.id_for_newcomer(identity, addr, hint);
                // The next fresh id stays above this one, hinted or not.
                self.next_id = self.next_id.max(id.saturating_add(1));
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
                        disk: Disk::default(),
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

    /// The id for an identity this registry does not know: its `hint` if that is a
    /// real id no member holds, else the next fresh one.
    fn id_for_newcomer(
        &self,
        identity: Identity,
        addr: SocketAddr,
        hint: Option<NodeId>,
    ) -> NodeId {
        match hint {
            // 0 is never handed out; the largest id would leave no fresh one above it.
            Some(h) if h == 0 || h == NodeId::MAX => {
                log::warn!("node at {addr} ({identity:?}) says it had id {h}, which is never handed out; giving it id {}", self.next_id);
                self.next_id
            }
            Some(h) => match self.members.get(&h) {
                None => {
                    log::info!("node at {addr} ({identity:?}) gets back the id {h} it had");
                    h
                }
                Some(holder) => {
                    log::warn!(
                        "node at {addr} ({identity:?}) says it had id {h}, but id {h} belongs \
                         to {:?} (last at {}); giving it the new id {}",
                        holder.record.identity,
                        holder.record.addr,
                        self.next_id
                    );
                    self.next_id
                }
            },
            None => self.next_id,
        }
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

    /// Records the filesystem member `id` keeps its segments on, as it reported with
    /// its last JOIN or heartbeat (an unknown id is ignored). Not a membership change:
    /// no new epoch.
    pub fn set_disk(&mut self, id: NodeId, disk: Disk) {
        if let Some(m) = self.members.get_mut(&id) {
            m.disk = disk;
        }
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
                    disk: m.disk,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
