//! Records of earlier layouts, read to bring a store to the current one (see
//! `fs/meta/record.rs` for the version tags). Format 3, read once by the migration, had
//! no device numbers or extended attributes, and kept every stripe of a file in a dense
//! list (a hole was an empty record). Tag 4 (and format 4's untagged records) is
//! bincode of `InodeV4`: today's inode without the manifest's log of slices; it is
//! decoded through these copies and converted, and written back as tag 5 (postcard)
//! when it next changes.

use std::collections::BTreeMap;

use rangemap::RangeSet;
use serde::{Deserialize, Serialize};

use super::meta::{Inode, Kind, Time};
use crate::client::stripe::Checksum;
use crate::client::{Manifest, Moved, Placement, Sealing, StripeRecord};

/// A stripe's record as format 3 stored it: its shards always in slot 0 (rewritten in
/// place).
#[derive(Serialize, Deserialize, Clone, Default)]
pub struct StripeRecordV3 {
    pub sums: Vec<Checksum>,
    pub moved: Vec<Moved>,
    pub seal: Option<Sealing>,
}

/// A file's manifest as format 3 stored it.
#[derive(Serialize, Deserialize)]
pub struct ManifestV3 {
    pub place: Placement,
    pub size: u64,
    /// `stripes[j]` is stripe j's record; an empty record is a hole.
    pub stripes: Vec<StripeRecordV3>,
    pub inline: Option<Vec<u8>>,
}

/// An inode as format 3 stored it. Format 3's kinds are the first three of `Kind`, in
/// the same order, so they decode as `Kind`.
#[derive(Serialize, Deserialize)]
pub struct InodeV3 {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub parent: u64,
    pub target: Vec<u8>,
    pub manifest: Option<ManifestV3>,
}

impl From<ManifestV3> for Manifest {
    fn from(old: ManifestV3) -> Manifest {
        let mut m = Manifest::new(old.place);
        m.size = old.size;
        m.inline = old.inline;
        m.stripes = old
            .stripes
            .into_iter()
            .enumerate()
            .map(|(j, r)| {
                let record = StripeRecord {
                    sums: r.sums,
                    moved: r.moved,
                    seal: r.seal,
                    slot: 0,
                };
                (j as u64, record)
            })
            .filter(|(_, r)| !r.is_hole())
            .collect::<BTreeMap<_, _>>();
        m
    }
}

impl From<InodeV3> for Inode {
    fn from(old: InodeV3) -> Inode {
        let mut inode = Inode::new(old.kind, old.perm, old.uid, old.gid);
        inode.ino = old.ino;
        inode.nlink = old.nlink;
        inode.size = old.size;
        inode.atime = old.atime;
        inode.mtime = old.mtime;
        inode.ctime = old.ctime;
        inode.parent = old.parent;
        inode.target = old.target;
        inode.manifest = old.manifest.map(Manifest::from);
        inode
    }
}

/// A file's manifest as record tag 4 stored it: today's without `log`.
#[derive(Serialize, Deserialize)]
pub struct ManifestV4 {
    pub place: Placement,
    pub size: u64,
    pub stripes: BTreeMap<u64, StripeRecord>,
    pub reserved: RangeSet<u64>,
    pub inline: Option<Vec<u8>>,
}

/// An inode as record tag 4 (bincode) stored it.
#[derive(Serialize, Deserialize)]
pub struct InodeV4 {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub parent: u64,
    pub target: Vec<u8>,
    pub rdev: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub manifest: Option<ManifestV4>,
}

impl From<ManifestV4> for Manifest {
    fn from(old: ManifestV4) -> Manifest {
        let mut m = Manifest::new(old.place);
        m.size = old.size;
        m.stripes = old.stripes;
        m.reserved = old.reserved;
        m.inline = old.inline;
        m
    }
}

impl From<InodeV4> for Inode {
    fn from(old: InodeV4) -> Inode {
        Inode {
            ino: old.ino,
            kind: old.kind,
            perm: old.perm,
            uid: old.uid,
            gid: old.gid,
            nlink: old.nlink,
            size: old.size,
            atime: old.atime,
            mtime: old.mtime,
            ctime: old.ctime,
            parent: old.parent,
            target: old.target,
            rdev: old.rdev,
            xattrs: old.xattrs,
            manifest: old.manifest.map(Manifest::from),
        }
    }
}
