//! Kernel types into ours and back: file kinds, times as the kernel meant them, and
//! the process behind a request.

use std::time::SystemTime;

use fuser::{FileType, Request, TimeOrNow};

use crate::fs::caller::Caller;
use crate::fs::meta::{Kind, Time};

/// The kernel's file type for an inode kind.
pub(super) fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// A time the kernel sent. fuser turns the kernel's (seconds, nanoseconds) into a
/// `SystemTime` as `epoch + secs + nanos` when `secs >= 0` but as
/// `epoch - (-secs) - nanos` when `secs < 0` (fuser 0.18, `time.rs`), which is not the
/// timespec's meaning (`nanos` counts forward from `secs`); undo that to get the
/// kernel's exact pair back.
fn kernel_time(t: SystemTime) -> Time {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(_) => t.into(),
        Err(before) => {
            let d = before.duration();
            Time {
                secs: i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s),
                nanos: d.subsec_nanos(),
            }
        }
    }
}

/// A time from a SETATTR: the one given, or now.
pub(super) fn time(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => kernel_time(t),
        TimeOrNow::Now => SystemTime::now().into(),
    }
}

/// The process behind `req` (for the set-group-ID rule).
pub(super) fn caller(req: &Request) -> Caller {
    Caller::of(req.pid(), req.uid(), req.gid())
}
