//! Faults on a pool started with `poolfs up`: storage members killed at random (by
//! pid) and restarted with their own command line (same storage, same port, so the
//! same id), and the space the shards of the mount's files take on the members against
//! what those files need.

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use poolfs::client::layout::{sealed_len, Layout};
use poolfs::client::DEFAULT_SHARD_SIZE;

use super::cluster::dir_allocated;
use super::mount::{is_ours, kill_ours, Pool, Rng};

/// Filesystem block: what a node's disk allocates in (st_blocks are counted in
/// 512-byte units, but ext4, xfs and tmpfs allocate 4 KiB at a time).
pub const BLOCK: u64 = 4096;

/// A seed for the random choices of a test: `POOLFS_TEST_SEED` to replay a run, else
/// the clock. Printed, so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("POOLFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("random choices from POOLFS_TEST_SEED={seed}");
    seed
}

/// `count` distinct indexes out of `from`, chosen at random.
pub fn pick(rng: &mut Rng, from: &[usize], count: usize) -> Vec<usize> {
    let mut left = from.to_vec();
    let mut out = Vec::new();
    while out.len() < count && !left.is_empty() {
        out.push(left.swap_remove(rng.below(left.len() as u64) as usize));
    }
    out.sort_unstable();
    out
}

/// The command line of a live process, as arguments (argv[0] first).
fn cmdline(pid: u32) -> Vec<std::ffi::OsString> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The TCP port `pid` listens on (on loopback or any address): its socket inodes
/// matched against the listening sockets of its network namespace.
pub fn listen_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        text.lines().skip(1).find_map(|line| {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None; // not listening, or not this process's socket
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
    })
}

/// A storage member killed by the test, with what it takes to start it again.
#[derive(Debug)]
pub struct Killed {
    /// Its index in `Pool::nodes`.
    pub index: usize,
    args: Vec<std::ffi::OsString>,
}

impl Pool {
    /// kill -9 of storage member `i` (by pid); returns how to start it again with the
    /// same storage and the same port, so it keeps its id and its address.
    pub fn kill_member(&mut self, i: usize) -> Killed {
        let pid = self.nodes[i].pid;
        let mut args = cmdline(pid);
        assert!(
            is_ours(pid, &self.root) && !args.is_empty(),
            "member {i} (pid {pid}) is not running"
        );
        let port = listen_port(pid).unwrap_or_else(|| panic!("member {i} listens nowhere"));
        // `up` starts members on port 0; the same port again keeps the address the
        // controller and the mount know.
        if let Some(at) = args.iter().position(|a| a == "--listen") {
            args[at + 1] = format!("127.0.0.1:{port}").into();
        }
        kill_ours(&[pid], &self.root, libc::SIGKILL);
        assert!(
            !is_ours(pid, &self.root),
            "member {i} (pid {pid}) survived kill -9"
        );
        eprintln!("killed member {i} (pid {pid}, port {port})");
        Killed { index: i, args }
    }

    /// Starts a killed member again with its command line, its log appended to, and
    /// waits until it says it is ready (it has joined the pool).
    pub fn restart_member(&mut self, killed: Killed) {
        let storage = self.nodes[killed.index].storage.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(storage.with_extension("log"))
            .expect("member log");
        let mut last = String::new();
        // The port may still be held for a moment by the dead process's socket.
        for _ in 0..20 {
            let mut child = Command::new(&killed.args[0])
                .args(&killed.args[1..])
                .env("POOLFS_NOTIFY_READY", "1")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log.try_clone().expect("member log"))
                .spawn()
                .expect("start the member again");
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
            if line.trim_end() == "READY" {
                self.nodes[killed.index].pid = child.id();
                eprintln!("restarted member {} (pid {})", killed.index, child.id());
                self.adopt(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            last = line;
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("member {} did not start again: {last}", killed.index);
    }

    /// Storage members holding a segment of the file whose segments take the most
    /// bytes (the test's biggest file): killing those is what puts reads to the test.
    pub fn holders_of_biggest_file(&self) -> Vec<usize> {
        let owner = self.owner_dir_name();
        let mut per_file: std::collections::HashMap<std::ffi::OsString, u64> = Default::default();
        for storage in self.storages() {
            for file in std::fs::read_dir(storage.join("segments").join(&owner))
                .into_iter()
                .flatten()
                .flatten()
            {
                *per_file.entry(file.file_name()).or_default() += dir_allocated(&file.path());
            }
        }
        let Some((biggest, _)) = per_file.into_iter().max_by_key(|(_, bytes)| *bytes) else {
            return Vec::new();
        };
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .storage
                    .join("segments")
                    .join(&owner)
                    .join(&biggest)
                    .is_dir()
            })
            .collect()
    }

    /// The directory name under `STORAGE/segments/` of the mount's segments: the
    /// identity of its static key (`STORAGE/node.key`) in hex.
    pub fn owner_dir_name(&self) -> String {
        let pool_key = poolfs::trust::PoolKey::load(super::mount::test_key()).expect("pool key");
        let creds = poolfs::trust::Credentials::load_at(
            &pool_key,
            &self.mount_storage.join(poolfs::trust::NODE_KEY_FILE),
        )
        .expect("the mount's static key");
        hex::encode(creds.identity().0)
    }

    /// Bytes the mount's segments take on the disks of `storages` (allocated blocks).
    pub fn held_bytes(&self, storages: &[PathBuf]) -> u64 {
        let owner = self.owner_dir_name();
        storages
            .iter()
            .map(|s| dir_allocated(&s.join("segments").join(&owner)))
            .sum()
    }
}

/// An extended attribute of `path` as text (what `getfattr -n NAME` prints).
pub fn xattr(path: &Path, name: &str) -> std::io::Result<String> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let n = std::ffi::CString::new(name).expect("name without NUL");
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let len = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// Bytes repair has written so far, from `user.poolfs.repair` on the mount's root;
/// None if it cannot be read or does not say.
pub fn repair_bytes(mnt: &Path) -> Option<u64> {
    bytes_written_by_repair(&xattr(mnt, "user.poolfs.repair").ok()?)
}

/// N in a repair text saying "... N bytes written by repair ...".
pub fn bytes_written_by_repair(text: &str) -> Option<u64> {
    let (before, _) = text.split_once(" bytes written by repair")?;
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The shape (k, m) a file's health text gives ("... (k=4, m=2) ..."); None for a
/// file with no shards in the pool (empty, or kept in the mount's metadata).
pub fn shape_of(health: &str) -> Option<(u32, u32)> {
    let k = health.split("k=").nth(1)?;
    let k: u32 = k[..k.find(|c: char| !c.is_ascii_digit())?].parse().ok()?;
    let m = health.split("m=").nth(1)?;
    let m: u32 = m[..m.find(|c: char| !c.is_ascii_digit()).unwrap_or(m.len())]
        .parse()
        .ok()?;
    Some((k, m))
}

/// Bytes the shards of a file of `size` bytes in shape k + m take on the nodes when
/// every shard is where it belongs, at full redundancy: each of the k + m segments
/// holds one sealed shard per stripe (`sealed_len`, the chunk tags included) at its
/// slot offset, and a disk allocates whole blocks.
pub fn need_bytes(size: u64, k: u32, m: u32) -> u64 {
    let layout = Layout {
        k,
        m,
        shard_size: DEFAULT_SHARD_SIZE,
    };
    let mut blocks = 0;
    let mut last_block = None;
    for j in 0..layout.stripe_count(size) {
        let start = layout.segment_offset(j);
        let len = sealed_len(layout.shard_len(layout.stripe_len(size, j)) as usize) as u64;
        let first = start / BLOCK;
        let end = (start + len).div_ceil(BLOCK);
        // Neighbouring slots may share a block: count it once.
        let from = match last_block {
            Some(b) if b >= first => b + 1,
            _ => first,
        };
        blocks += end.saturating_sub(from);
        last_block = Some(end - 1);
    }
    u64::from(layout.segments()) * blocks * BLOCK
}

/// Every regular file under `dir` (the mount), recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read the mount").flatten() {
        let kind = e.file_type().expect("file type");
        if kind.is_dir() {
            out.extend(files_under(&e.path()));
        } else if kind.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// What the live files of the mount need on the nodes (`need_bytes` summed over the
/// files, their shapes read from their health).
pub fn live_need(mnt: &Path) -> u64 {
    files_under(mnt)
        .iter()
        .map(|f| {
            let size = std::fs::metadata(f)
                .expect("stat a file of the mount")
                .len();
            let health = super::mount::health(f);
            shape_of(&health).map_or(0, |(k, m)| need_bytes(size, k, m))
        })
        .sum()
}

/// Waits (up to `timeout`) until the mount's shards on `storages` take within 5 % of
/// what its live files need, the sweep having reclaimed what no file names; panics
/// with both figures if they never do.
pub fn assert_space_settles(pool: &Pool, storages: &[PathBuf], timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let need = live_need(&pool.mnt);
        let held = pool.held_bytes(storages);
        let within = held.abs_diff(need) * 100 <= need * 5;
        if within {
            eprintln!("{what}: shards take {held} bytes for {need} needed");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: after {timeout:?} the mount's shards take {held} bytes on the nodes, \
             its live files need {need} (more than 5 % apart)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_is_read_from_a_health_text() {
        let h = "healthy: 8 of 8 segments on live nodes (k=4, m=4)";
        assert_eq!(shape_of(h), Some((4, 4)));
        let h = "degraded (readable, repair pending): 3 of 4 segments on live nodes (k=3, m=1); missing: node 2 Down";
        assert_eq!(shape_of(h), Some((3, 1)));
        assert_eq!(
            shape_of("healthy: a small file kept in this mount's metadata"),
            None
        );
    }

    #[test]
    fn a_full_stripe_needs_a_sealed_shard_per_segment_in_whole_blocks() {
        // One 4 MiB stripe in 4 + 2: six shards of 1 MiB, each sealed with 32 tags.
        let sealed = (1 << 20) + 32 * 16;
        assert_eq!(
            need_bytes(4 << 20, 4, 2),
            6 * u64::div_ceil(sealed, BLOCK) * BLOCK
        );
        // Two stripes share the block where one slot ends and the next begins.
        let two = need_bytes(8 << 20, 4, 2) / 6;
        assert_eq!(two, u64::div_ceil(2 * sealed, BLOCK) * BLOCK);
        assert_eq!(need_bytes(0, 4, 2), 0);
    }

    #[test]
    fn the_repair_figure_is_read_from_the_repair_text() {
        let text = "repair: 3 segments rebuilt, 12582912 bytes written by repair; last pass";
        assert_eq!(bytes_written_by_repair(text), Some(12582912));
        assert_eq!(bytes_written_by_repair("repair: no pass yet"), None);
    }
}
