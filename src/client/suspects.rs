//! Holders that were recently late or failing, so reads ask them last until they expire.
//!
//! The controller needs a few seconds of missed heartbeats to call a node down; a node
//! whose cable was pulled would otherwise cost every stripe read in that window a wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::NodeId;

/// How long a node stays suspect after it was late or failed, unless it answers first.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// Nodes recently late or failing, with when that was last seen.
#[derive(Default)]
pub struct Suspects {
    since: Mutex<HashMap<NodeId, Instant>>,
}

impl Suspects {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` was late or failed just now.
    pub fn mark(&self, node: NodeId) {
        self.lock().insert(node, Instant::now());
    }

    /// `node` answered: trust it again.
    pub fn clear(&self, node: NodeId) {
        self.lock().remove(&node);
    }

    /// Is `node` suspect now?
    pub fn is_suspect(&self, node: NodeId) -> bool {
        let mut since = self.lock();
        match since.get(&node) {
            Some(at) if at.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                since.remove(&node);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_node_is_suspect_until_it_answers() {
        let s = Suspects::default();
        assert!(!s.is_suspect(3));
        s.mark(3);
        assert!(s.is_suspect(3));
        assert!(!s.is_suspect(4));
        s.clear(3);
        assert!(!s.is_suspect(3));
    }

    #[test]
    fn suspicion_expires() {
        let s = Suspects::default();
        s.lock()
            .insert(7, Instant::now() - SUSPECT_FOR - Duration::from_millis(1));
        assert!(!s.is_suspect(7));
        assert!(s.lock().is_empty(), "an expired entry is dropped");
    }
}
