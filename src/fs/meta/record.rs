//! The records of the metadata store (`Kind`, `Time`, `Inode`, with the manifest inside
//! the inode) and their encoding: each value starts with a version tag, so a later
//! poolfs can change a record's layout and still read the records already stored.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::client::Manifest;
use crate::fs::legacy::InodeV4;
use crate::fs::FsError;
use crate::proto::decode_record;

/// Most bytes of extended attributes (names and values) one inode may carry: twice the
/// largest single value Linux allows (`XATTR_SIZE_MAX`, 64 KiB), so the largest one
/// fits with its name and others, while an inode's record stays small enough to
/// rewrite on every change.
pub const XATTRS_MAX: usize = 128 * 1024;

/// What an inode is. The order is part of the stored format: new kinds go last.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: its bytes are in the pool (or inline in its manifest).
    File,
    /// A directory: its entries are in the `dirents` table.
    Dir,
    /// A symbolic link: its target is in `Inode::target`.
    Symlink,
    /// A named pipe: the kernel carries its bytes; the pool stores none.
    Fifo,
    /// A unix socket's name: as for a FIFO, only the name and attributes are kept.
    Socket,
    /// A character device node (`rdev` names the device).
    CharDev,
    /// A block device node (`rdev` names the device).
    BlockDev,
}

impl Kind {
    /// The kind a `mknod` mode asks for (its `S_IFMT` bits; none means a regular
    /// file, as mknod(2) says), or `None` for a type that cannot be made that way.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Some(Kind::File),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDev),
            libc::S_IFBLK => Some(Kind::BlockDev),
            _ => None,
        }
    }
}

/// Seconds and nanoseconds since the epoch, as the kernel's timespec: `secs` may be
/// negative, `nanos` is always in `0..1_000_000_000` and counts forward from `secs`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Whole seconds since 1970-01-01 00:00 UTC (negative before it).
    pub secs: i64,
    /// Nanoseconds after `secs`, in `0..1_000_000_000`.
    pub nanos: u32,
}

impl Time {
    /// The current time.
    pub fn now() -> Time {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Time {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Time {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                // `d` before the epoch: -d = -(s + n/1e9) = -(s + 1) + (1e9 - n)/1e9.
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s);
                match d.subsec_nanos() {
                    0 => Time { secs, nanos: 0 },
                    n => Time {
                        secs: secs.saturating_sub(1),
                        nanos: 1_000_000_000 - n,
                    },
                }
            }
        }
    }
}

impl From<Time> for SystemTime {
    /// Saturates at the ends of what `SystemTime` holds (the whole i64 range of
    /// seconds on Linux, so in practice never).
    fn from(t: Time) -> SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(t.nanos));
        let base = if t.secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t.secs as u64))
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(std::time::Duration::from_secs(t.secs.unsigned_abs()))
        };
        base.and_then(|b| b.checked_add(nanos))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// One file, directory, symlink or special file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Inode number, given by the store and never reused (`ROOT` for the root).
    pub ino: u64,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub perm: u16,
    /// Owner's user id.
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
    /// Names that refer to it (for a directory, 2 plus its subdirectories); 0 for an
    /// orphan kept while something still refers to it.
    pub nlink: u32,
    /// Length in bytes (of a symlink: of its target).
    pub size: u64,
    /// Last access.
    pub atime: Time,
    /// Last change of the contents.
    pub mtime: Time,
    /// Last change of the inode.
    pub ctime: Time,
    /// For directories: the directory that contains it (to refuse moving a directory
    /// into itself).
    pub parent: u64,
    /// For symlinks: the target.
    pub target: Vec<u8>,
    /// For device nodes: the device number, as `st_rdev` gives it.
    pub rdev: u32,
    /// Extended attributes set by programs (name, with its namespace, to value).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For files: where the bytes live.
    pub manifest: Option<Manifest>,
}

impl Inode {
    /// A fresh inode of `kind` (its number is given by the store).
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = Time::now();
        Inode {
            ino: 0,
            kind,
            perm,
            uid,
            gid,
            nlink: 1,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            parent: 0,
            target: Vec::new(),
            rdev: 0,
            xattrs: BTreeMap::new(),
            manifest: None,
        }
    }

    /// Bytes its extended attributes take (names and values).
    pub fn xattr_bytes(&self) -> usize {
        self.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Version tag of the inode records this poolfs writes: the first byte of every value
/// of the `inodes` table; the bytes after it are the record in that version's layout.
/// Tag 5 is postcard of `Inode` (its manifest with the log of slices); tag 4 was bincode
/// of the layout before the log (`fs/legacy.rs`, `InodeV4`), read and converted, and
/// written as tag 5 when the record next changes. Format 3's records had no tag and
/// are read only by the migration.
///
/// To change `Inode` (or the `Manifest` inside it, whose layout is part of the inode
/// record's): copy the current struct to `fs/legacy.rs` as `InodeV5` with a
/// `From<InodeV5> for Inode`, bump this tag, and decode the old tag through that copy
/// in `decode_inode`. Old stores then open without a migration, and their records are
/// rewritten in the new layout as they change.
pub const INODE_RECORD: u8 = 5;

/// The tag of bincode records of `InodeV4` (`fs/legacy.rs`).
const INODE_RECORD_V4: u8 = 4;

/// A record that does not encode or decode: the store holds something this version
/// does not understand.
fn rec_err(e: impl std::fmt::Display) -> FsError {
    FsError::Meta(format!("inode record: {e}"))
}

/// The bytes stored for `inode`: its version tag, then the record (postcard).
///
/// Errors: `FsError::Meta` if the codec refuses it (not expected for any `Inode`).
pub(super) fn encode_inode(inode: &Inode) -> Result<Vec<u8>, FsError> {
    let bytes = postcard::to_allocvec(&(INODE_RECORD, inode)).map_err(rec_err)?;
    Ok(bytes)
}

/// The inode stored as `bytes` by `encode_inode` of this or an earlier poolfs.
///
/// Errors: `FsError::Meta` naming the version for a record of a version this poolfs
/// does not know (written by a newer one), or the codec's reason for a damaged record.
pub(super) fn decode_inode(bytes: &[u8]) -> Result<Inode, FsError> {
    match bytes.split_first() {
        Some((&INODE_RECORD, body)) => postcard::from_bytes(body).map_err(rec_err),
        Some((&INODE_RECORD_V4, body)) => decode_untagged_v4(body),
        Some((&version, _)) => Err(rec_err(format_args!(
            "version {version}, but this poolfs reads version {INODE_RECORD} and older \
             (mount it with the poolfs that wrote it)"
        ))),
        None => Err(rec_err("empty")),
    }
}

/// The fields of an inode record before its manifest, in `Inode`'s order: postcard
/// encodes a struct as the tuple of its fields, so this reads a tag-5 record's head and
/// leaves the manifest (which for a large or much patched file is most of the record)
/// undecoded. `decode_head` is tested against `decode_inode`.
type Head = (
    u64,
    Kind,
    u16,
    u32,
    u32,
    u32,
    u64,
    Time,
    Time,
    Time,
    u64,
    Vec<u8>,
    u32,
    BTreeMap<Vec<u8>, Vec<u8>>,
);

/// The inode stored as `bytes`, without its manifest (`manifest` is `None` whatever
/// the record holds): for reads of attributes or extended attributes only, never to
/// be written back. The kernel asks for `security.capability` before every write, and
/// this answer must not cost a decode of the file's whole manifest. Errors: as
/// `decode_inode`.
pub(super) fn decode_head(bytes: &[u8]) -> Result<Inode, FsError> {
    let Some((&INODE_RECORD, body)) = bytes.split_first() else {
        let mut inode = decode_inode(bytes)?;
        inode.manifest = None;
        return Ok(inode);
    };
    let (head, _manifest): (Head, _) = postcard::take_from_bytes(body).map_err(rec_err)?;
    let (ino, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, parent, target, rdev, xattrs) =
        head;
    Ok(Inode {
        ino,
        kind,
        perm,
        uid,
        gid,
        nlink,
        size,
        atime,
        mtime,
        ctime,
        parent,
        target,
        rdev,
        xattrs,
        manifest: None,
    })
}

/// Decodes a record of the layout of tag 4 without its tag (store format 4's records).
pub(super) fn decode_untagged_v4(bytes: &[u8]) -> Result<Inode, FsError> {
    let old: InodeV4 = decode_record(bytes).map_err(rec_err)?;
    Ok(Inode::from(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_across_the_whole_timespec_range() {
        for (secs, nanos) in [
            (0, 0),
            (-1, 999_999_999),
            (-2, 800_000_000),
            (-1_000_000_000_000, 1),
            (1_900_000_000, 123_456_789),
            (i64::MAX, 999_999_999),
            (i64::MIN + 1, 0),
            (i64::MIN, 0),
        ] {
            let t = Time { secs, nanos };
            assert_eq!(Time::from(SystemTime::from(t)), t, "{secs}.{nanos:09}");
        }
    }

    #[test]
    fn an_inode_record_starts_with_its_version_and_reads_back_whole() {
        let mut inode = Inode::new(Kind::CharDev, 0o640, 7, 8);
        inode.ino = 300;
        inode.rdev = 0x0103;
        inode.target = b"t".to_vec();
        inode.xattrs.insert(b"user.k".to_vec(), b"v".to_vec());
        let bytes = encode_inode(&inode).unwrap();
        assert_eq!(bytes[0], INODE_RECORD);
        assert_eq!(decode_inode(&bytes).unwrap(), inode);
    }

    #[test]
    fn a_tag_4_record_with_a_stored_file_reads_back_whole() {
        use crate::client::{Layout, Placement, Sealing, StripeRecord};
        use crate::fs::legacy::ManifestV4;
        let place = Placement {
            file_id: "f1".into(),
            layout: Layout {
                k: 2,
                m: 1,
                shard_size: 1 << 20,
            },
            holders: Vec::new(),
        };
        let record = StripeRecord {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(Sealing { salt: [3; 16] }),
            slot: 1,
        };
        let mut reserved = rangemap::RangeSet::new();
        reserved.insert(4..6);
        let old = InodeV4 {
            ino: 12,
            kind: Kind::File,
            perm: 0o640,
            uid: 5,
            gid: 6,
            nlink: 1,
            size: 3 << 20,
            atime: Time { secs: 1, nanos: 2 },
            mtime: Time { secs: 3, nanos: 4 },
            ctime: Time { secs: 5, nanos: 6 },
            parent: 0,
            target: Vec::new(),
            rdev: 0,
            xattrs: [(b"user.a".to_vec(), b"b".to_vec())].into(),
            manifest: Some(ManifestV4 {
                place: place.clone(),
                size: 3 << 20,
                stripes: [(1, record.clone())].into(),
                reserved: reserved.clone(),
                inline: None,
            }),
        };
        let mut bytes = vec![4];
        bytes.extend(crate::proto::encode_record(&old).unwrap());
        let inode = decode_inode(&bytes).expect("tag 4 decodes");
        assert_eq!((inode.ino, inode.perm, inode.size), (12, 0o640, 3 << 20));
        assert_eq!(inode.mtime, Time { secs: 3, nanos: 4 });
        assert_eq!(inode.xattrs.get(&b"user.a"[..]), Some(&b"b".to_vec()));
        let m = inode.manifest.clone().expect("manifest");
        assert_eq!((&m.place, m.size), (&place, 3 << 20));
        assert_eq!(m.stripe(1), &record);
        assert_eq!(m.reserved, reserved);
        assert!(m.log.is_empty());
        assert_eq!(decode_untagged_v4(&bytes[1..]).unwrap(), inode);
        // Written again, it is tag 5 and reads back the same.
        let again = encode_inode(&inode).unwrap();
        assert_eq!(again[0], 5);
        assert_eq!(decode_inode(&again).unwrap(), inode);
    }

    #[test]
    fn a_manifest_with_slices_and_extents_round_trips() {
        use crate::client::{Extent, Layout, Manifest, Placement, Slice, StripeRecord};
        let mut m = Manifest::new(Placement {
            file_id: "f2".into(),
            layout: Layout {
                k: 2,
                m: 1,
                shard_size: 1 << 20,
            },
            holders: Vec::new(),
        });
        m.size = 9 << 20;
        m.log.slices.insert(
            3,
            Slice {
                record: StripeRecord {
                    slot: crate::client::layout::LOG_SLOT,
                    ..Default::default()
                },
                len: 8192,
            },
        );
        m.log.insert(
            4096,
            Extent {
                len: 4096,
                slice: 3,
                at: 4096,
            },
        );
        m.log.writes.insert(0, 7);
        let mut inode = Inode::new(Kind::File, 0o644, 0, 0);
        inode.manifest = Some(m);
        let bytes = encode_inode(&inode).unwrap();
        assert_eq!(decode_inode(&bytes).unwrap(), inode);
    }

    #[test]
    fn the_head_of_a_record_is_every_field_but_the_manifest() {
        let mut inode = Inode::new(Kind::File, 0o4755, 1000, 100);
        inode.ino = 77;
        inode.nlink = 3;
        inode.size = 123_456;
        inode.parent = 9;
        inode.target = b"somewhere".to_vec();
        inode.rdev = 0x0801;
        inode.mtime = Time { secs: -5, nanos: 7 };
        inode.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
        inode
            .xattrs
            .insert(b"security.selinux".to_vec(), vec![0; 40]);
        let mut m = Manifest::new(crate::client::Placement {
            file_id: "f3".into(),
            layout: crate::client::Layout {
                k: 2,
                m: 1,
                shard_size: 1 << 20,
            },
            holders: Vec::new(),
        });
        m.size = 123_456;
        inode.manifest = Some(m);
        let head = decode_head(&encode_inode(&inode).unwrap()).unwrap();
        inode.manifest = None;
        assert_eq!(head, inode);
    }

    #[test]
    fn a_record_of_a_newer_version_is_refused_naming_its_version() {
        let mut bytes = encode_inode(&Inode::new(Kind::File, 0o644, 0, 0)).unwrap();
        bytes[0] = INODE_RECORD + 1;
        let e = decode_inode(&bytes).unwrap_err().to_string();
        assert!(e.contains(&format!("version {}", INODE_RECORD + 1)), "{e}");
        assert!(decode_inode(&[]).is_err());
    }
}
