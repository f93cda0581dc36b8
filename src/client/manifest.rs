//! A file's manifest: its id, size, layout, which node holds each segment, and the
//! checksum of every shard.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::stripe::Checksum;
use crate::proto::NodeId;

/// The node holding one segment of a file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node_id: NodeId,
    /// Address when the file was placed; the live view's address wins if it changed.
    pub addr: SocketAddr,
}

/// Everything needed to read a file back from the pool.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub file_id: String,
    pub size: u64,
    pub layout: Layout,
    /// `holders[i]` stores segment i.
    pub holders: Vec<Holder>,
    /// `stripes[j][i]` is the checksum of shard i of stripe j.
    pub stripes: Vec<Vec<Checksum>>,
}

impl Manifest {
    /// Records the checksums of a stripe just stored.
    pub fn set_stripe(&mut self, j: u64, sums: Vec<Checksum>) {
        let j = j as usize;
        if self.stripes.len() <= j {
            self.stripes.resize(j + 1, Vec::new());
        }
        self.stripes[j] = sums;
    }

    /// Drops stripes past the end of the file (after a shrink).
    pub fn trim_stripes(&mut self) {
        let n = self.layout.stripe_count(self.size) as usize;
        self.stripes.truncate(n);
    }
}
