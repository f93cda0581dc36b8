//! The mount's repair passes, every 2 s, without visiting every file each time: a pass
//! walks the whole namespace only when the pool changed in a way that concerns files
//! (a node came, went, went down, passed its grace, or the policy's parity changed:
//! `PassView::signature`); otherwise it visits the files written since the last pass
//! (a write made while a holder was away leaves shards moved or missing), the files
//! that had work left (open, no spare node, an error), and one page of a rolling walk
//! that sweeps the whole namespace slowly as a safety net. The cost of a quiet pass is
//! then bounded by the writes since the last one, not by the file count. A walk of
//! everything (every mount starts with one) is paced, and ends early when the mount
//! stops (`Vfs::walk_files`): at a million files it takes tens of seconds of reads.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::pass::{repair_file, PassView, Signature};
use super::{record, RepairReport};
use crate::fs::meta::{Inode, WrittenSince, PAGE};
use crate::fs::vfs::{Vfs, Walk};
use crate::fs::FsError;

/// Most files with work left that a pass remembers to look at again; past that the
/// next walks of the whole namespace find them (at most one every `RETRY_WALK_EVERY`).
/// 4096 inode numbers: 32 KiB.
pub const RETRY_MAX: usize = 4096;

/// How often the whole namespace is walked again while more files have work left than
/// `RETRY_MAX` (a large pool with a node lost and no spare node to rebuild on).
pub const RETRY_WALK_EVERY: Duration = Duration::from_secs(60);

/// Inode records each quiet pass reads of the rolling safety-net walk: at one pass
/// every 2 s, a million inodes are all looked at within some 2 hours, 10 000 within
/// 80 s, and a quiet pass reads no more than this from the store for it.
pub const ROLLING_PAGE: usize = PAGE;

/// Repair's memory across passes (`pass`).
pub struct Repairer {
    /// The pool's signature at the last walk of the whole namespace.
    walked: Option<Signature>,
    /// When that walk ended.
    walked_at: Option<Instant>,
    /// Files that had work left at their last visit.
    retry: BTreeSet<u64>,
    /// Pending segments of files that did not fit in `retry` at the last walk.
    unlisted_pending: usize,
    /// Segments waiting for their node (down within the grace) at the last walk.
    waiting: usize,
    /// Where the next page of the rolling walk starts.
    cursor: u64,
    /// Walks of the whole namespace so far.
    walks: u64,
    /// Files the last pass looked at.
    visited: usize,
}

impl Repairer {
    /// Repair for the mount behind `vfs`; from now on its store names the inodes each
    /// write changes (`MetaStore::watch_writes`). The first pass walks everything.
    pub fn new(vfs: &Vfs) -> Self {
        vfs.meta().watch_writes();
        Repairer {
            walked: None,
            walked_at: None,
            retry: BTreeSet::new(),
            unlisted_pending: 0,
            waiting: 0,
            cursor: 0,
            walks: 0,
            visited: 0,
        }
    }

    /// Walks of the whole namespace so far (the others visited only some files).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Files the last pass looked at.
    pub fn visited(&self) -> usize {
        self.visited
    }

    /// One pass, recorded for `user.poolfs.repair`: a walk of every file when the pool
    /// changed (or too much was written to name), else the files written since, those
    /// with work left and a page of the rolling walk. Errors: no pool view, or the
    /// metadata store failing.
    pub fn pass(&mut self, vfs: &Vfs, grace: Duration) -> Result<RepairReport, FsError> {
        let result = self.run(vfs, grace);
        record(vfs, grace, &result);
        result
    }

    fn run(&mut self, vfs: &Vfs, grace: Duration) -> Result<RepairReport, FsError> {
        self.visited = 0;
        let pv = PassView::new(vfs, grace)?;
        let signature = pv.signature();
        let written = vfs.meta().take_written();
        let overdue = self.unlisted_pending > 0
            && self
                .walked_at
                .is_none_or(|t| t.elapsed() >= RETRY_WALK_EVERY);
        if self.walked.as_ref() != Some(&signature) || written == WrittenSince::Anything || overdue
        {
            return self.walk_all(vfs, &pv, signature);
        }
        let mut visit: BTreeSet<u64> = std::mem::take(&mut self.retry);
        if let WrittenSince::Inodes(inodes) = written {
            visit.extend(inodes);
        }
        let mut report = RepairReport::default();
        let (page, next) = vfs.meta().files_page(self.cursor, ROLLING_PAGE)?;
        self.cursor = next.unwrap_or(0);
        // Work found that the retry list has no room for makes the next walk of
        // everything due (`overdue`), counted once.
        let mut unlisted = 0;
        for inode in page {
            // Visited here with the record just read, and so not again below.
            visit.remove(&inode.ino);
            unlisted += self.visit(vfs, &pv, inode, &mut report);
        }
        for ino in visit {
            match vfs.meta().get(ino) {
                Ok(inode) => unlisted += self.visit(vfs, &pv, inode, &mut report),
                Err(FsError::NotFound) => {} // removed since
                Err(e) => {
                    self.remember(ino);
                    return Err(e);
                }
            }
        }
        // Files left waiting are the last walk's: none became waiting since without a
        // node changing state, which walks everything again.
        report.waiting = self.waiting;
        self.unlisted_pending = self.unlisted_pending.max(unlisted);
        report.pending += self.unlisted_pending;
        Ok(report)
    }

    /// Visits every file, a page at a time, and starts the retry list afresh.
    fn walk_all(
        &mut self,
        vfs: &Vfs,
        pv: &PassView,
        signature: Signature,
    ) -> Result<RepairReport, FsError> {
        self.retry.clear();
        self.unlisted_pending = 0;
        let mut report = RepairReport::default();
        let mut unlisted = 0;
        let walk = vfs.walk_files(|inode| {
            unlisted += self.visit(vfs, pv, inode, &mut report);
            Ok(())
        })?;
        if walk == Walk::Stopped {
            // Unfinished: `walked` stays as it was, so the next pass walks again.
            return Ok(report);
        }
        self.unlisted_pending = unlisted;
        self.walked = Some(signature);
        self.walks += 1;
        self.walked_at = Some(Instant::now());
        self.waiting = report.waiting;
        Ok(report)
    }

    /// Repairs one file, remembering it for the next pass if it has work left;
    /// returns the pending segments the retry list had no room for.
    fn visit(
        &mut self,
        vfs: &Vfs,
        pv: &PassView,
        inode: Inode,
        report: &mut RepairReport,
    ) -> usize {
        let ino = inode.ino;
        self.visited += 1;
        let before = report.pending;
        let again = repair_file(vfs, pv, inode, report);
        let left = report.pending - before;
        match again && !self.remember(ino) {
            true => left.max(1),
            false => 0,
        }
    }

    /// Adds `ino` to the retry list; false when the list is full.
    fn remember(&mut self, ino: u64) -> bool {
        if self.retry.len() >= RETRY_MAX && !self.retry.contains(&ino) {
            return false;
        }
        self.retry.insert(ino);
        true
    }
}
