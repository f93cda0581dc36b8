//! The scrub: reads and verifies every shard of every closed file, rewriting the bad
//! ones, and keeps the outcome of the last pass for `user.poolfs.scrub`.

use super::STRIPE_PAUSE;
use crate::fs::vfs::Vfs;
use crate::fs::FsError;

/// What one scrub pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubReport {
    /// Files walked.
    pub files: usize,
    /// Shards read and verified (checksum or chunk tags).
    pub verified: usize,
    /// Shards found missing or corrupt and stored again.
    pub healed: usize,
    /// Stripes with fewer than `k` good shards: they could not be healed.
    pub unreadable: usize,
}

impl std::fmt::Display for ScrubReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scrubbed {} files: {} shards verified, {} healed, {} stripes unreadable",
            self.files, self.verified, self.healed, self.unreadable
        )
    }
}

/// Runs a scrub pass and records its outcome for `user.poolfs.scrub`.
pub fn scrub_and_record(vfs: &Vfs) -> Result<ScrubReport, FsError> {
    let report = scrub_pass(vfs)?;
    log::info!("{report}");
    *vfs.last_scrub.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.to_string());
    Ok(report)
}

/// The outcome of the last scrub pass.
pub fn last_scrub(vfs: &Vfs) -> String {
    vfs.last_scrub
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| "no scrub yet".into())
}

/// Reads and verifies every shard of every closed file, rewriting the bad ones. The
/// files are read a page at a time (`Vfs::walk_files`, which rests between pages and
/// ends when the mount stops) and each stripe is followed by a pause
/// (`STRIPE_PAUSE`): the pass holds no list of every file and leaves turns to users'
/// requests.
pub fn scrub_pass(vfs: &Vfs) -> Result<ScrubReport, FsError> {
    let mut report = ScrubReport::default();
    // A scrub the mount's stop cuts short reports what it verified so far.
    vfs.walk_files(|inode| {
        let Some(m) = &inode.manifest else {
            return Ok(());
        };
        if vfs.is_open(inode.ino) {
            return Ok(());
        }
        // Scrub verifies stripes: a patched file is compacted first, which reads (and
        // so verifies) its slices and puts every byte in a stripe.
        let compacted;
        let m = if m.log.is_empty() {
            m
        } else {
            match vfs.compact_file(inode.ino) {
                Ok(c) => {
                    compacted = c;
                    &compacted
                }
                Err(e) => {
                    log::error!("scrub: cannot compact file {}: {e}", m.place.file_id);
                    report.unreadable += 1;
                    return Ok(());
                }
            }
        };
        report.files += 1;
        for (j, rec) in m.records() {
            match vfs.run(vfs.client().scrub_stripe(&m.place, j, m.stripe_len(j), rec)) {
                Ok((verified, healed)) => {
                    report.verified += verified;
                    report.healed += healed;
                }
                Err(e) => {
                    log::error!("scrub: {e}");
                    report.unreadable += 1;
                }
            }
            std::thread::sleep(STRIPE_PAUSE);
        }
        Ok(())
    })?;
    Ok(report)
}
