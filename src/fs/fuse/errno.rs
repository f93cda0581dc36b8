//! The errno table: the one place in poolfs where a failure becomes an errno (the
//! rules are in `fs/error.rs`).

use fuser::Errno;

use crate::client::ClientError;
use crate::fs::FsError;

/// The errno the kernel is given for `e`, logged at `warn` when it is a failure (see
/// `is_failure`) rather than an answer a program expects.
pub(super) fn errno(e: &FsError) -> Errno {
    if is_failure(e) {
        log::warn!("{e}");
    }
    Errno::from_i32(code(e))
}

/// `errno`, for a failure of reading or writing the file `ino`: the warning names the
/// inode (`find MOUNT -inum INO` gives its name) besides the error's own facts (the
/// file id, the stripe, and which nodes failed and why), since the program that gets
/// the EIO tells its user no more than "Input/output error".
pub(super) fn errno_of_file(op: &str, ino: u64, e: &FsError) -> Errno {
    if is_failure(e) {
        log::warn!("{op} of inode {ino} failed: {e}");
    }
    Errno::from_i32(code(e))
}

/// The table. No wildcard on `FsError`: a new variant does not compile until it has
/// its errno here.
pub(crate) fn code(e: &FsError) -> i32 {
    match e {
        FsError::NotFound => libc::ENOENT,
        FsError::Exists => libc::EEXIST,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::IsDir => libc::EISDIR,
        FsError::NotDir => libc::ENOTDIR,
        FsError::NameTooLong => libc::ENAMETOOLONG,
        FsError::Invalid => libc::EINVAL,
        FsError::Permission => libc::EPERM,
        FsError::BadHandle => libc::EBADF,
        FsError::NotSupported => libc::EOPNOTSUPP,
        FsError::NoData => libc::ENODATA,
        FsError::Stale => libc::ESTALE,
        FsError::NoSuchOffset => libc::ENXIO,
        FsError::FileTooBig => libc::EFBIG,
        FsError::TooManyLinks => libc::EMLINK,
        FsError::BufferTooSmall => libc::ERANGE,
        FsError::NoIoctl => libc::ENOTTY,
        // As ext4 answers a full attribute block.
        FsError::XattrsFull { .. } => libc::ENOSPC,
        FsError::NoSpace(_) => libc::ENOSPC,
        FsError::Meta(_) | FsError::MetaIo(_) | FsError::Task(_) => libc::EIO,
        FsError::Pool(e) => match **e {
            // A node without room, or an owner over its quota, are the user's to act
            // on: `df` and `du` explain them, EIO would not.
            ClientError::NoSpace { .. } => libc::ENOSPC,
            ClientError::Quota { .. } => libc::EDQUOT,
            _ => libc::EIO,
        },
    }
}

/// Is `e` a failure of the pool, the metadata store, the disk or a task (worth a
/// warning), rather than an answer to the request (ENOENT, EEXIST, ENODATA, ...)
/// that programs probe with and would flood the log?
fn is_failure(e: &FsError) -> bool {
    matches!(
        e,
        FsError::Pool(_)
            | FsError::Meta(_)
            | FsError::MetaIo(_)
            | FsError::NoSpace(_)
            | FsError::Task(_)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::client::SegmentError;
    use crate::net::NetError;
    use crate::proto::{ErrorKind, NodeId};

    fn pool(e: ClientError) -> FsError {
        FsError::from(e)
    }

    /// A task that failed, as tokio reports it (a cancelled one).
    fn join_error() -> tokio::task::JoinError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let task = tokio::spawn(std::future::pending::<()>());
            task.abort();
            task.await.expect_err("an aborted task fails")
        })
    }

    /// Every variant of `FsError` with the errno a user has always seen for it
    /// (ENOSPC and EDQUOT for a full node or quota, EIO for other pool failures).
    fn table() -> Vec<(FsError, i32)> {
        let addr = "127.0.0.1:2001".parse().expect("address");
        let node: NodeId = 2;
        let refused = |kind| SegmentError::Refused {
            addr,
            kind,
            message: "refused".into(),
        };
        vec![
            (FsError::NotFound, libc::ENOENT),
            (FsError::Exists, libc::EEXIST),
            (FsError::NotEmpty, libc::ENOTEMPTY),
            (FsError::IsDir, libc::EISDIR),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::NameTooLong, libc::ENAMETOOLONG),
            (FsError::Invalid, libc::EINVAL),
            (FsError::Permission, libc::EPERM),
            (FsError::BadHandle, libc::EBADF),
            (FsError::NotSupported, libc::EOPNOTSUPP),
            (FsError::NoData, libc::ENODATA),
            (FsError::Stale, libc::ESTALE),
            (FsError::NoSuchOffset, libc::ENXIO),
            (FsError::FileTooBig, libc::EFBIG),
            (FsError::TooManyLinks, libc::EMLINK),
            (FsError::BufferTooSmall, libc::ERANGE),
            (FsError::NoIoctl, libc::ENOTTY),
            (FsError::XattrsFull { ino: 5, max: 1 }, libc::ENOSPC),
            (FsError::NoSpace("metadata store".into()), libc::ENOSPC),
            (FsError::Meta("record".into()), libc::EIO),
            (FsError::MetaIo("fsync".into()), libc::EIO),
            (FsError::task("upload", join_error()), libc::EIO),
            (
                pool(ClientError::NoSpace {
                    node,
                    file: "00ab".into(),
                    segment: 1,
                    message: "full".into(),
                }),
                libc::ENOSPC,
            ),
            (
                pool(ClientError::Quota {
                    node,
                    file: "00ab".into(),
                    segment: 1,
                    message: "over quota".into(),
                }),
                libc::EDQUOT,
            ),
            (
                pool(ClientError::Store {
                    node,
                    file: "00ab".into(),
                    segment: 1,
                    source: refused(ErrorKind::Internal),
                }),
                libc::EIO,
            ),
            (
                pool(ClientError::Delete {
                    node,
                    file: "00ab".into(),
                    source: SegmentError::Net(NetError::Timeout { addr, secs: 1.0 }),
                }),
                libc::EIO,
            ),
            (pool(ClientError::NoNodes), libc::EIO),
        ]
    }

    /// Which variant `e` is, by a match without a wildcard: a variant added to
    /// `FsError` does not compile here until the table test covers it.
    fn variant(e: &FsError) -> &'static str {
        match e {
            FsError::NotFound => "NotFound",
            FsError::Exists => "Exists",
            FsError::NotEmpty => "NotEmpty",
            FsError::IsDir => "IsDir",
            FsError::NotDir => "NotDir",
            FsError::NameTooLong => "NameTooLong",
            FsError::Invalid => "Invalid",
            FsError::Permission => "Permission",
            FsError::BadHandle => "BadHandle",
            FsError::NotSupported => "NotSupported",
            FsError::NoData => "NoData",
            FsError::Stale => "Stale",
            FsError::NoSuchOffset => "NoSuchOffset",
            FsError::FileTooBig => "FileTooBig",
            FsError::TooManyLinks => "TooManyLinks",
            FsError::BufferTooSmall => "BufferTooSmall",
            FsError::NoIoctl => "NoIoctl",
            FsError::XattrsFull { .. } => "XattrsFull",
            FsError::NoSpace(_) => "NoSpace",
            FsError::Meta(_) => "Meta",
            FsError::MetaIo(_) => "MetaIo",
            FsError::Task(_) => "Task",
            FsError::Pool(_) => "Pool",
        }
    }

    const VARIANTS: usize = 23;

    #[test]
    fn every_filesystem_error_has_the_errno_users_have_always_seen() {
        let table = table();
        for (e, want) in &table {
            assert_eq!(code(e), *want, "{} ({e})", variant(e));
        }
        let covered: BTreeSet<_> = table.iter().map(|(e, _)| variant(e)).collect();
        assert_eq!(covered.len(), VARIANTS, "variants covered: {covered:?}");
    }

    #[test]
    fn a_failure_reported_again_keeps_its_errno() {
        for (e, want) in table() {
            assert_eq!(code(&e.again()), want, "{e} reported again");
            assert_eq!(e.again().to_string(), e.to_string());
        }
    }

    #[test]
    fn only_failures_are_logged_never_the_answers_programs_probe_with() {
        let logged: BTreeSet<_> = table()
            .iter()
            .filter(|(e, _)| is_failure(e))
            .map(|(e, _)| variant(e))
            .collect();
        let want: BTreeSet<_> = ["NoSpace", "Meta", "MetaIo", "Task", "Pool"].into();
        assert_eq!(logged, want);
    }
}
