//! Repair's part in compaction: a patched file (random writes kept as slices over its
//! stripes, `fs/file/patches.rs`) is compacted before repair moves its stripes, and
//! once it has rested for `COMPACT_IDLE` even when nothing else needs doing.

use std::time::Duration;

use crate::client::Manifest;
use crate::fs::meta::Time;
use crate::fs::vfs::Vfs;

/// How long a closed file's status must stay unchanged before repair compacts its
/// slices when nothing else needs doing: long enough that a program writing in bursts
/// does not pay for a compaction between them, short enough that space and reads are
/// back to a plain file's soon. The status change time is used because a user can set
/// the modification time.
pub const COMPACT_IDLE: Duration = Duration::from_secs(10);

/// Stripes of an idle file compacted per repair pass (one every 2 s): 8 stripes of
/// 2 MiB are rewritten in a few hundred milliseconds, which is as long as a user who
/// opens the file then waits; a 1 GiB file patched all over is compact in about 2
/// minutes.
pub const COMPACT_BATCH: usize = 8;

/// What `before_repair` did.
pub(super) enum Compaction {
    /// The file has no slices, or is open (its writer compacts as it goes).
    NotNeeded,
    /// Compacted and committed: the manifest now.
    Done(Box<Manifest>),
    /// Patched but neither needed by repair nor idle yet, or compacted in part: look
    /// again at a later pass.
    Later,
    /// The compaction failed (logged): the file waits as pending work.
    Failed,
}

/// Compacts file `ino` (committed as `m`, status changed at `ctime`) if it is patched,
/// closed, and either `needed` by repair (which moves and verifies stripes only, so
/// every byte must be in one) or idle for `COMPACT_IDLE` (its slices hold bytes twice
/// and cost each read an overlay).
pub(super) fn before_repair(
    vfs: &Vfs,
    ino: u64,
    ctime: &Time,
    m: &Manifest,
    needed: bool,
) -> Compaction {
    if m.log.is_empty() || vfs.is_open(ino) {
        return Compaction::NotNeeded;
    }
    if !needed && idle_since(ctime) < COMPACT_IDLE {
        return Compaction::Later;
    }
    // Repair needs every stripe now; an idle file goes a few stripes a pass, so a
    // user who opens it meanwhile waits for those, not for the whole file.
    let most = if needed { usize::MAX } else { COMPACT_BATCH };
    match vfs.compact_file_some(ino, most) {
        Ok((_, true)) => Compaction::Later,
        Ok((compacted, false)) => Compaction::Done(Box::new(compacted)),
        Err(e) => {
            log::warn!("repair: cannot compact file {}: {e}", m.place.file_id);
            Compaction::Failed
        }
    }
}

/// Time since `t` (zero if `t` is in the future).
fn idle_since(t: &Time) -> Duration {
    std::time::SystemTime::from(*t)
        .elapsed()
        .unwrap_or_default()
}
