//! The types requests and responses carry, and the one response enum both services
//! answer with (the requests, one enum per service, are in `rpc.rs`).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Short sequential id the controller gives a node (1, 2, 3, ... as in the report).
pub type NodeId = u32;

/// A node's persistent identity, kept in its storage directory; the controller binds
/// the sequential id to it so a restarted node gets its old id back.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(pub [u8; 16]);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Liveness of a member as the controller sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeats arrive.
    Up,
    /// No heartbeat for a few seconds.
    Down,
    /// Announced it is leaving (DRAIN): still serves reads, gets no new placements,
    /// and waits while owners move its segments to other nodes.
    Leaving,
    /// Left the pool with LEAVE.
    Gone,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Leaving => "leaving",
            NodeState::Gone => "gone",
        })
    }
}

/// One member of the pool.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The member's pool id.
    pub id: NodeId,
    /// Where its node listens.
    pub addr: SocketAddr,
    /// Whether it is up, down, leaving or gone.
    pub state: NodeState,
    /// Bytes it offers.
    pub capacity: u64,
    /// Bytes allocated by its segments, as it last reported.
    pub used: u64,
    /// Milliseconds since the controller last heard from the node.
    pub last_seen_ms: u64,
    /// The machine the node runs on, as it names itself (`node --machine`; by default
    /// the host name and a hash of /etc/machine-id): placement puts no two shards of a
    /// stripe on one machine while others have room. Empty for a node that sent none.
    pub machine: String,
    /// The filesystem its storage is on, as it last reported: nodes of one machine on
    /// one disk share its room, which the pool's size counts once.
    pub disk: Disk,
}

/// The filesystem a node keeps its segments on (statvfs(2) of its storage directory),
/// reported with every heartbeat. All zero: not known (a node counted on its own).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Disk {
    /// The filesystem's id on its machine (`f_fsid`): equal for two directories on one
    /// filesystem of one machine; 0 if not known.
    pub fsid: u64,
    /// Its size in bytes (`f_blocks × f_frsize`).
    pub size: u64,
    /// Bytes an unprivileged writer may still allocate on it (`f_bavail × f_frsize`).
    pub free: u64,
}

impl Disk {
    /// The filesystem that holds `path`. Errors: statvfs's.
    pub fn of(path: &std::path::Path) -> std::io::Result<Disk> {
        let st = rustix::fs::statvfs(path)?;
        Ok(Disk {
            fsid: st.f_fsid,
            size: st.f_blocks.saturating_mul(st.f_frsize),
            free: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }
}

/// The whole membership; `epoch` grows on every change.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolView {
    /// Grows by one on every membership change (and on a controller restart).
    pub epoch: u64,
    /// Every member the controller knows, whatever its state.
    pub nodes: Vec<NodeInfo>,
}

impl PoolView {
    /// Members that answer heartbeats, in id order.
    pub fn live(&self) -> Vec<&NodeInfo> {
        let mut live: Vec<&NodeInfo> = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .collect();
        live.sort_by_key(|n| n.id);
        live
    }

    /// Is member `id` up (answering heartbeats)? `false` for one not in the view.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|n| n.state == NodeState::Up)
    }

    /// The member with this id, whatever its state.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The live members' room in bytes, a disk that several of them share counted once
    /// (what `df` of a mount shows). Nodes on one disk (same machine and `Disk::fsid`)
    /// offer together at most what is free on it: their free bytes are
    /// min(Σ (capacity − used), the disk's free bytes), and their size is what they use
    /// plus that, never more than Σ capacity. A node whose disk is not known counts on
    /// its own: its capacity, and that minus its use free.
    pub fn room(&self) -> Room {
        let mut disks: std::collections::BTreeMap<(&str, u64), Room> = Default::default();
        let mut room = Room::default();
        for n in self.live() {
            let own = Room {
                size: n.capacity,
                used: n.used,
                free: n.capacity.saturating_sub(n.used),
            };
            if n.disk.fsid == 0 {
                room.add(own);
                continue;
            }
            let d = disks.entry((n.machine.as_str(), n.disk.fsid)).or_default();
            d.add(own);
            d.free = d.free.min(n.disk.free);
        }
        for d in disks.into_values() {
            room.add(Room {
                size: d.size.min(d.used.saturating_add(d.free)),
                ..d
            });
        }
        room
    }
}

/// Bytes a pool (or a part of it) can hold (`PoolView::room`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Room {
    /// Bytes it can hold: what is used plus what is free.
    pub size: u64,
    /// Bytes its segments have allocated.
    pub used: u64,
    /// Bytes it can still take.
    pub free: u64,
}

impl Room {
    fn add(&mut self, other: Room) {
        self.size = self.size.saturating_add(other.size);
        self.used = self.used.saturating_add(other.used);
        self.free = self.free.saturating_add(other.free);
    }
}

/// The controller's signal to a node: "controller address, your id, pool size".
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    /// Where the controller listens, as the node should reach it.
    pub controller: SocketAddr,
    /// The id the node now has.
    pub node_id: NodeId,
    /// Members in the pool, the node included.
    pub pool_size: u32,
    /// Epoch of the pool view at the assignment.
    pub epoch: u64,
}

/// One segment of one file on one node: segment `index` holds shard `index` of every stripe.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentRef {
    /// File id; validated by the node before it touches the disk.
    pub file: String,
    /// The segment's index: which shard of every stripe it holds (`SHADOW_SEGMENT` set
    /// for a shadow segment).
    pub index: u32,
}

/// One of the sender's segments as LIST reports it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Which segment.
    pub segment: SegmentRef,
    /// Bytes it takes on the node's disk (`st_blocks * 512`).
    pub allocated: u64,
    /// Milliseconds since it was last written (STORE, RESERVE or PUNCH), from its file's
    /// mtime; 0 if that lies in the future.
    pub age_ms: u64,
}

/// One page of a LIST: the sender's segments after the cursor, in (file id, index)
/// order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentPage {
    /// At most the page limit asked for.
    pub segments: Vec<SegmentInfo>,
    /// More segments follow the last one here (ask again with it as the cursor).
    pub more: bool,
}

/// What a conditional segment DELETE (`DeleteSegment`) did.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Removed; this many bytes were freed on the disk.
    Deleted {
        /// Bytes freed (`st_blocks * 512` of the file).
        freed: u64,
    },
    /// Kept: written within the last `older_than_ms` (it is `age_ms` old).
    Young {
        /// Milliseconds since its last write.
        age_ms: u64,
    },
    /// No such segment of the sender's (already gone).
    Missing,
    /// Everything outside the ranges asked to be kept was freed (punched): this many
    /// bytes.
    Trimmed {
        /// Bytes freed (`st_blocks * 512` before, less after).
        freed: u64,
    },
}

/// What a node reports about itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeStat {
    /// The node's pool id: the one it was given in this run or, before a controller
    /// answered, the one it remembers from before (`STORAGE/node.id`), which a
    /// controller that lost its registry gives back; `None` for a node never given one.
    pub node_id: Option<NodeId>,
    /// The node's persistent identity, so a sweep can bind it to its id before ASSIGN.
    pub identity: Identity,
    /// The controller the node reports to, if it has one.
    pub controller: Option<SocketAddr>,
    /// Bytes the node offers.
    pub capacity: u64,
    /// Bytes allocated by all its segments.
    pub used: u64,
    /// Segment files it holds.
    pub segments: u64,
}

/// A node a sweep found on the LAN.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FoundNode {
    /// The node's pool id.
    pub id: NodeId,
    /// Its node-port address.
    pub addr: SocketAddr,
    /// The id was handed out by this sweep (the node was not a member before).
    pub new: bool,
    /// The node was sent ASSIGN (it was new, down, or unaware of its id).
    pub assigned: bool,
}

/// What one sweep of the LAN found: ARP responders, and the nodes among them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// Epoch of the pool view after the sweep.
    pub epoch: u64,
    /// Addresses swept, summed over every target.
    pub swept: u64,
    /// Hosts that answered the ARP requests, in address order.
    pub responders: Vec<IpAddr>,
    /// Nodes found on the node port, in address order.
    pub nodes: Vec<FoundNode>,
    /// Nodes that answered but report to another controller: left alone.
    pub elsewhere: Vec<SocketAddr>,
    /// Time spent on the ARP sweep (all targets).
    pub arp_ms: u64,
    /// Time spent probing the responders and sending ASSIGN.
    pub probe_ms: u64,
    /// Targets that could not be swept, each with its cause.
    pub errors: Vec<String>,
}

/// Kinds of failure a peer reports. The client tells refusals (`NoSpace`, `Quota`)
/// from failures by them (`client::refused`); errno is decided only by the filesystem's
/// table (`fs/fuse/errno.rs`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store is full (`--capacity`), or the disk under it is.
    NoSpace,
    /// The sender holds its whole quota on this node (`--quota`).
    Quota,
    /// No such segment, byte range or node.
    NotFound,
    /// The request is not acceptable (bad id, wrong recipient, ...).
    BadRequest,
    /// The sender is not who it claims to be.
    Unauthorized,
    /// The server failed on its side (disk error, ...).
    Internal,
}

/// Every response, of either service (one enum, so a connection reads errors and raw
/// bodies alike whichever service it talks to).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Done.
    Ok,
    /// Answer to `Join`: the controller's signal.
    Assigned(Assign),
    /// Answer to `Pool` and `Heartbeat`.
    Pool(PoolView),
    /// Answer to `Get`.
    Node(NodeInfo),
    /// Answer to `Fwd`: `len` raw bytes follow (inside the channel's encryption).
    Data {
        /// Bytes of the raw body that follows.
        len: u32,
    },
    /// Answer to `Fwd` of a sealed `SegmentRead::Range`: `len` bytes follow outside the
    /// channel's encryption.
    SealedData {
        /// Bytes that follow outside the channel's encryption.
        len: u32,
    },
    /// Answer to `Stat`.
    Stat(NodeStat),
    /// Answer to `Scan`: what the sweep found.
    Scanned(ScanReport),
    /// Answer to `List`: one page of the sender's segments.
    Segments(SegmentPage),
    /// Answer to `DeleteSegment`: whether the segment went.
    Reclaimed(Reclaim),
    /// The request failed.
    Error {
        /// What kind of failure, for the caller to act on.
        kind: ErrorKind,
        /// What failed, for people.
        message: String,
    },
}

impl Response {
    /// Shorthand for an error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod room_tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn node(id: NodeId, machine: &str, capacity: u64, used: u64, disk: Disk) -> NodeInfo {
        NodeInfo {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
            state: NodeState::Up,
            capacity,
            used,
            last_seen_ms: 0,
            machine: machine.into(),
            disk,
        }
    }

    fn disk(fsid: u64, size: u64, free: u64) -> Disk {
        Disk { fsid, size, free }
    }

    fn room(nodes: Vec<NodeInfo>) -> (u64, u64, u64) {
        let r = PoolView { epoch: 1, nodes }.room();
        (r.size / G, r.used / G, r.free / G)
    }

    #[test]
    fn the_pool_size_counts_a_disk_that_several_nodes_share_once() {
        // (nodes, expected (size, used, free) in GiB)
        let cases = [
            // Three loopback nodes, each offering the 76 G free on one disk of 100 G:
            // the pool has 76 G, not 228 G.
            (
                vec![
                    node(1, "m", 76 * G, 0, disk(9, 100 * G, 76 * G)),
                    node(2, "m", 76 * G, 0, disk(9, 100 * G, 76 * G)),
                    node(3, "m", 76 * G, 0, disk(9, 100 * G, 76 * G)),
                ],
                (76, 0, 76),
            ),
            // They then hold 2 G each: the disk has 6 G less free.
            (
                vec![
                    node(1, "m", 76 * G, 2 * G, disk(9, 100 * G, 70 * G)),
                    node(2, "m", 76 * G, 2 * G, disk(9, 100 * G, 70 * G)),
                    node(3, "m", 76 * G, 2 * G, disk(9, 100 * G, 70 * G)),
                ],
                (76, 6, 70),
            ),
            // Capacities given that the disk can hold together: they add up.
            (
                vec![
                    node(1, "m", 10 * G, 0, disk(9, 100 * G, 76 * G)),
                    node(2, "m", 10 * G, 0, disk(9, 100 * G, 76 * G)),
                ],
                (20, 0, 20),
            ),
            // The same fsid on two machines is two disks.
            (
                vec![
                    node(1, "a", 50 * G, 0, disk(9, 100 * G, 50 * G)),
                    node(2, "b", 50 * G, 0, disk(9, 100 * G, 50 * G)),
                ],
                (100, 0, 100),
            ),
            // Disks not known (a node of an older poolfs would not say): each alone.
            (
                vec![
                    node(1, "m", 40 * G, G, Disk::default()),
                    node(2, "m", 40 * G, G, Disk::default()),
                ],
                (80, 2, 78),
            ),
        ];
        for (nodes, want) in cases {
            let shown: Vec<_> = nodes.iter().map(|n| (n.id, n.capacity / G)).collect();
            assert_eq!(room(nodes), want, "nodes (id, capacity GiB) {shown:?}");
        }
    }

    #[test]
    fn the_pool_size_leaves_out_nodes_that_are_not_up() {
        let mut down = node(2, "b", 50 * G, 0, disk(8, 100 * G, 50 * G));
        down.state = NodeState::Down;
        let up = node(1, "a", 50 * G, 0, disk(9, 100 * G, 50 * G));
        assert_eq!(room(vec![up, down]), (50, 0, 50));
    }
}
