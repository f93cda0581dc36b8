//! An open segment file with group commit: concurrent writers share fdatasyncs.
//!
//! A write is durable only once an fdatasync that *started after the write completed*
//! has finished. Syncs of one file are numbered (generations) and run one at a time: a
//! writer that finds none running starts the next one; a writer that finds one running
//! cannot rely on it (it may have started before its write) and waits for the one after,
//! which every writer waiting meanwhile shares. Under load a file sees one fdatasync per
//! group of writes instead of one per write; a lone write still gets its own.

use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};

/// An open segment file and the state of its syncs.
pub struct SegFile {
    file: File,
    sync: Mutex<SyncState>,
    synced: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Generation of the latest sync started; one runs while `started > finished`.
    started: u64,
    /// Generation of the latest sync finished.
    finished: u64,
    /// The latest generation whose sync failed, and how.
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl SegFile {
    /// Wraps an open segment file.
    pub fn new(file: File) -> Self {
        SegFile {
            file,
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
        }
    }

    /// The open file, for reads, writes and its length.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every write to this file that completed before the call durable: returns
    /// once an fdatasync that started after the call has finished. `count` is called
    /// once per fdatasync this caller runs.
    pub fn sync_writes(&self, count: impl FnOnce()) -> io::Result<()> {
        self.sync_writes_with(|f| {
            count();
            f.sync_data()
        })
    }

    /// As `sync_writes`, with `sync` in place of fdatasync (tests observe the order).
    fn sync_writes_with(&self, sync: impl FnOnce(&File) -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state();
        // The first generation that starts from now on: any earlier one may have begun
        // before our write completed.
        let need = st.started + 1;
        loop {
            if st.finished >= need {
                // Any failure from `need` on may have dropped our pages (Linux marks them
                // clean after a failed writeback): report it rather than claim durability.
                return match &st.failed {
                    Some((gen, kind, msg)) if *gen >= need => {
                        Err(io::Error::new(*kind, format!("{msg} (shared sync)")))
                    }
                    _ => Ok(()),
                };
            }
            if st.started == st.finished {
                // None running, and the last one finished is older than `need`, so the
                // next generation is exactly `need`: run it ourselves.
                st.started = need;
                drop(st);
                let result = sync(&self.file);
                let mut st = self.state();
                st.finished = need;
                if let Err(e) = &result {
                    st.failed = Some((need, e.kind(), e.to_string()));
                }
                self.synced.notify_all();
                return result;
            }
            st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn segfile() -> (tempfile::TempDir, Arc<SegFile>) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("0.seg"))
            .unwrap();
        (dir, Arc::new(SegFile::new(file)))
    }

    /// Every ack follows a sync that started after that writer's write and finished
    /// before the ack, and concurrent writers share syncs.
    #[test]
    fn each_ack_follows_a_sync_started_after_its_write() {
        let (_dir, sf) = segfile();
        let clock = Arc::new(AtomicU64::new(0));
        // (start, end) ticks of every sync.
        let syncs = Arc::new(Mutex::new(Vec::new()));
        let writers = 8;
        let rounds = 10;
        let barrier = Arc::new(Barrier::new(writers));
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let (sf, clock, syncs, barrier) =
                    (sf.clone(), clock.clone(), syncs.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut acks = Vec::new();
                    for r in 0..rounds {
                        barrier.wait();
                        let off = ((r * writers + w) * 4) as u64;
                        sf.file().write_all_at(&[w as u8; 4], off).unwrap();
                        let written = clock.fetch_add(1, Ordering::SeqCst);
                        sf.sync_writes_with(|f| {
                            let start = clock.fetch_add(1, Ordering::SeqCst);
                            // A slow disk: the other writers arrive while it runs.
                            std::thread::sleep(Duration::from_millis(5));
                            let r = f.sync_data();
                            let end = clock.fetch_add(1, Ordering::SeqCst);
                            syncs.lock().unwrap().push((start, end));
                            r
                        })
                        .unwrap();
                        acks.push((written, clock.fetch_add(1, Ordering::SeqCst)));
                    }
                    acks
                })
            })
            .collect();
        let acks: Vec<(u64, u64)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let syncs = syncs.lock().unwrap().clone();
        for (written, acked) in &acks {
            assert!(
                syncs.iter().any(|(s, e)| s > written && e < acked),
                "write at {written} acked at {acked} without a sync in between: {syncs:?}"
            );
        }
        assert_eq!(acks.len(), writers * rounds);
        assert!(
            syncs.len() < acks.len() / 2,
            "{} syncs for {} writes",
            syncs.len(),
            acks.len()
        );
        // Syncs never overlap: each starts after the previous one ended.
        let mut sorted = syncs.clone();
        sorted.sort();
        assert!(sorted.windows(2).all(|w| w[0].1 < w[1].0), "{sorted:?}");
    }

    #[test]
    fn a_lone_writer_syncs_every_time() {
        let (_dir, sf) = segfile();
        let count = AtomicU64::new(0);
        for i in 0..5u64 {
            sf.file().write_all_at(b"x", i).unwrap();
            sf.sync_writes(|| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_failed_sync_fails_every_writer_relying_on_it() {
        let (_dir, sf) = segfile();
        let err = sf
            .sync_writes_with(|_| Err(io::Error::other("disk on fire")))
            .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        // The next write gets a sync of its own, which works again.
        sf.sync_writes(|| {}).unwrap();
    }

    #[test]
    fn a_failed_shared_sync_fails_every_writer_waiting_for_it() {
        let (_dir, sf) = segfile();
        let first = {
            let sf = sf.clone();
            std::thread::spawn(move || {
                sf.sync_writes_with(|f| {
                    std::thread::sleep(Duration::from_millis(100));
                    f.sync_data()
                })
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        // Two writers arrive while the first sync runs: they share the next one, which fails.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let sf = sf.clone();
                std::thread::spawn(move || {
                    sf.sync_writes_with(|_| Err(io::Error::other("disk on fire")))
                })
            })
            .collect();
        first.join().unwrap().unwrap();
        for w in waiters {
            let err = w.join().unwrap().unwrap_err();
            assert!(err.to_string().contains("disk on fire"), "{err}");
        }
    }
}
