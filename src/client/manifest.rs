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

/// Where a file's segments live: fixed when the file is placed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub file_id: String,
    pub layout: Layout,
    /// `holders[i]` stores segment i.
    pub holders: Vec<Holder>,
}

/// Everything needed to read a file back from the pool.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub place: Placement,
    pub size: u64,
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

    /// Checksums of stripe `j`; empty for a stripe never written (a hole, read as zeros).
    pub fn sums(&self, j: u64) -> &[Checksum] {
        self.stripes.get(j as usize).map_or(&[], Vec::as_slice)
    }

    /// Data bytes in stripe `j`.
    pub fn stripe_len(&self, j: u64) -> u64 {
        self.place.layout.stripe_len(self.size, j)
    }

    /// Drops stripes past the end of the file (after a shrink).
    pub fn trim_stripes(&mut self) {
        let n = self.place.layout.stripe_count(self.size) as usize;
        self.stripes.truncate(n);
    }
}
