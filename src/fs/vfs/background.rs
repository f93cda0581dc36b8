//! Walks of every file for the mount's background work (repair's walk of everything,
//! the sweep, scrub): paced, so they leave the disk and a core to the user's requests,
//! and ended at once when the mount stops, whatever the file count.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Vfs;
use crate::fs::meta::{Inode, PAGE};
use crate::fs::FsError;

/// How long a background walk rests after each page of files, as a share of the time
/// the page took: 1 rests as long as it worked, so a walk takes twice as long as
/// unpaced and uses at most half of the disk and core it would.
const WALK_REST: u32 = 1;

/// How a walk of every file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Every file was visited.
    Done,
    /// The mount began stopping: the files after some page were not visited.
    Stopped,
}

impl Vfs {
    /// Tells background work that the mount stops: walks in progress end at their next
    /// page (`walk_files`), and the repair thread leaves its loop.
    pub fn stop_background(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Has the mount begun stopping (`stop_background`)?
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Calls `f` with every regular file that has data in the pool, a page at a time
    /// (`MetaStore::files_page`), resting after each page (`WALK_REST`), until the
    /// mount stops. A caller that acts on what the walk did not see (the sweep removes
    /// what no file names) must act only on `Walk::Done`.
    ///
    /// Errors: the store's, or the first of `f`'s, which ends the walk.
    pub fn walk_files(
        &self,
        mut f: impl FnMut(Inode) -> Result<(), FsError>,
    ) -> Result<Walk, FsError> {
        let mut from = Some(0);
        while let Some(start) = from {
            if self.stopping() {
                return Ok(Walk::Stopped);
            }
            let began = Instant::now();
            let (page, next) = self.meta().files_page(start, PAGE)?;
            for inode in page {
                f(inode)?;
            }
            from = next;
            self.rest(began.elapsed() * WALK_REST);
        }
        Ok(Walk::Done)
    }

    /// Sleeps `time`, or less if the mount begins stopping meanwhile.
    pub fn rest(&self, time: Duration) {
        let until = Instant::now() + time;
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}
