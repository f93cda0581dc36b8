//! Stores of an earlier format, brought to the current one in the transaction that
//! opens them: records of formats 3 and 4 rewritten in today's record version, and the
//! orphan index of format 6 built for a store of format 5.

use std::path::Path;

use redb::ReadableTable;

use super::{db_err, record, scan, store, Counters, FsError, Inode, Inodes, META_FORMAT};
use crate::fs::legacy::InodeV3;
use crate::proto::decode_record;

/// Brings the store whose tables are `inodes` and `counters` to `META_FORMAT` (its
/// file at `path`, for messages); nothing to do for a store of that format.
///
/// Errors: `Meta` for a store of a format this poolfs does not read (left as it is),
/// or a record that does not decode; `MetaIo`/`NoSpace` from the writes.
pub(super) fn upgrade(
    inodes: &mut Inodes<'_>,
    counters: &mut Counters<'_>,
    path: &Path,
) -> Result<(), FsError> {
    let format = counters.get("format").map_err(db_err)?.map(|g| g.value());
    let migrated = match format {
        Some(META_FORMAT) => return Ok(()),
        Some(5) => scan::index_orphans(inodes)?,
        Some(4) => migrate(inodes, record::decode_untagged_v4)?,
        Some(3) => migrate(inodes, |bytes| {
            let old: InodeV3 = decode_record(bytes)
                .map_err(|e| FsError::Meta(format!("inode record of format 3: {e}")))?;
            Ok(Inode::from(old))
        })?,
        _ => {
            return Err(FsError::Meta(format!(
                "{} holds metadata of format {}, this poolfs reads formats 3 to \
                 {META_FORMAT}; mount it with the poolfs that made it",
                path.display(),
                format.map_or("1".into(), |f| f.to_string())
            )))
        }
    };
    counters.insert("format", META_FORMAT).map_err(db_err)?;
    log::info!(
        "{}: metadata of format {} migrated to format {META_FORMAT} ({migrated} inodes)",
        path.display(),
        format.unwrap_or(0)
    );
    Ok(())
}

/// Rewrites every inode of the store in the current record version, reading each with
/// `old` (the decoder of the store's format); returns how many there were. One
/// transaction: a failure leaves the store as it was.
fn migrate(
    inodes: &mut Inodes<'_>,
    old: impl Fn(&[u8]) -> Result<Inode, FsError>,
) -> Result<usize, FsError> {
    let mut all = Vec::new();
    for item in inodes.iter().map_err(db_err)? {
        let (_, v) = item.map_err(db_err)?;
        all.push(old(v.value())?);
    }
    for inode in &all {
        store(inodes, inode)?;
    }
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::proto::encode_record;

    fn dir_inode() -> Inode {
        Inode::new(Kind::Dir, 0o755, 0, 0)
    }

    fn file() -> Inode {
        Inode::new(Kind::File, 0o644, 0, 0)
    }

    #[test]
    fn a_format_3_store_is_migrated_with_every_file_intact() {
        use crate::client::{Layout, Placement, Sealing, StripeRecord};
        use crate::fs::legacy::{InodeV3, ManifestV3, StripeRecordV3};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let sealed_v3 = StripeRecordV3 {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(Sealing { salt: [1; 16] }),
        };
        let sealed = StripeRecord {
            sums: Vec::new(),
            moved: Vec::new(),
            seal: Some(Sealing { salt: [1; 16] }),
            slot: 0,
        };
        let old = InodeV3 {
            ino: 9,
            kind: Kind::File,
            perm: 0o4750,
            uid: 3,
            gid: 4,
            nlink: 2,
            size: 5 << 20,
            atime: Time { secs: -5, nanos: 6 },
            mtime: Time { secs: 7, nanos: 8 },
            ctime: Time { secs: 9, nanos: 10 },
            parent: 0,
            target: Vec::new(),
            manifest: Some(ManifestV3 {
                place: Placement {
                    file_id: "ab".into(),
                    layout: Layout {
                        k: 2,
                        m: 1,
                        shard_size: 1 << 20,
                    },
                    holders: Vec::new(),
                },
                size: 5 << 20,
                stripes: vec![sealed_v3.clone(), StripeRecordV3::default(), sealed_v3],
                inline: None,
            }),
        };
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut inodes = txn.open_table(INODES).unwrap();
                let mut counters = txn.open_table(COUNTERS).unwrap();
                let root = InodeV3 {
                    ino: ROOT,
                    kind: Kind::Dir,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    nlink: 2,
                    size: 0,
                    atime: Time::default(),
                    mtime: Time::default(),
                    ctime: Time::default(),
                    parent: ROOT,
                    target: Vec::new(),
                    manifest: None,
                };
                let bytes = encode_record(&root).unwrap();
                inodes.insert(ROOT, bytes.as_slice()).unwrap();
                let bytes = encode_record(&old).unwrap();
                inodes.insert(9, bytes.as_slice()).unwrap();
                counters.insert("format", 3).unwrap();
                counters.insert("next_ino", 10).unwrap();
                let mut dirents = txn.open_table(DIRENTS).unwrap();
                dirents.insert((ROOT, &b"f"[..]), 9).unwrap();
            }
            txn.commit().unwrap();
        }
        let m = MetaStore::open(&path, 0, 0).unwrap();
        let f = m.lookup(ROOT, b"f").unwrap();
        assert_eq!((f.ino, f.perm, f.uid, f.gid, f.nlink), (9, 0o4750, 3, 4, 2));
        assert_eq!(
            (f.atime, f.mtime),
            (Time { secs: -5, nanos: 6 }, Time { secs: 7, nanos: 8 })
        );
        let man = f.manifest.unwrap();
        assert_eq!(man.size, 5 << 20);
        let stored: Vec<u64> = man.records().map(|(j, _)| j).collect();
        assert_eq!(stored, vec![0, 2], "the hole in between stays a hole");
        assert_eq!(man.stripe(2), &sealed);
        drop(m);
        // Opened again, it is of the current format and reads the same.
        let m = MetaStore::open(&path, 0, 0).unwrap();
        assert_eq!(m.get(9).unwrap().size, 5 << 20);
    }

    #[test]
    fn a_format_4_store_opens_with_its_records_tagged_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let mut root = dir_inode();
        root.ino = ROOT;
        root.nlink = 2;
        root.parent = ROOT;
        let mut f = Inode::new(Kind::Symlink, 0o777, 3, 4);
        f.ino = 9;
        f.target = b"elsewhere".to_vec();
        f.xattrs.insert(b"user.note".to_vec(), b"kept".to_vec());
        {
            // What a format-4 poolfs wrote: untagged records.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut inodes = txn.open_table(INODES).unwrap();
                let mut counters = txn.open_table(COUNTERS).unwrap();
                let mut dirents = txn.open_table(DIRENTS).unwrap();
                for inode in [&root, &f] {
                    let bytes = encode_record(inode).unwrap();
                    inodes.insert(inode.ino, bytes.as_slice()).unwrap();
                }
                counters.insert("format", 4).unwrap();
                counters.insert("next_ino", 10).unwrap();
                dirents.insert((ROOT, &b"link"[..]), 9).unwrap();
            }
            txn.commit().unwrap();
        }
        let m = MetaStore::open(&path, 0, 0).unwrap();
        assert_eq!(m.lookup(ROOT, b"link").unwrap(), f);
        assert_eq!(m.create(ROOT, b"new", file()).unwrap().ino, 10);
        drop(m);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let counters = txn.open_table(COUNTERS).unwrap();
        assert_eq!(
            counters.get("format").unwrap().unwrap().value(),
            META_FORMAT
        );
        let inodes = txn.open_table(INODES).unwrap();
        for item in inodes.iter().unwrap() {
            let (k, v) = item.unwrap();
            assert_eq!(v.value()[0], INODE_RECORD, "inode {} untagged", k.value());
        }
    }

    #[test]
    fn a_store_of_an_unknown_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        drop(MetaStore::open(&path, 0, 0).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(COUNTERS)
                .unwrap()
                .insert("format", META_FORMAT + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let e = MetaStore::open(&path, 0, 0)
            .err()
            .expect("opened")
            .to_string();
        assert!(e.contains(&format!("format {}", META_FORMAT + 1)), "{e}");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn
            .open_table(COUNTERS)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(format, META_FORMAT + 1);
    }
}
