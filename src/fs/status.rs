//! `poolfs status` for a mount: every file's health and the repair progress, read from
//! outside the mount process through the mount's extended attributes.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::fuse::{HEALTH_XATTR, NAMESPACE_XATTR, REPAIR_XATTR, RISK_XATTR};

mod risk;

pub use risk::{
    machine_of, pool_risk, stripe_machines_off, stripe_nodes_off, stripe_tolerance, DegradedFile,
    NodeSpace, PoolRisk, DEGRADED_LIMIT,
};

/// Reads the extended attribute `name` of `path` (not following a final symlink) as
/// text, invalid UTF-8 replaced. Errors: those of lgetxattr(2); an attribute the file
/// does not have is `ENODATA`, as the syscall reports it.
pub fn get_xattr(path: &Path, name: &str) -> io::Result<String> {
    match xattr::get(path, name)? {
        Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        // The crate folds ENODATA into None; callers tell "not a poolfs mount" by it.
        None => Err(io::Error::from_raw_os_error(libc::ENODATA)),
    }
}

/// A file's health, from the first word of its `user.poolfs.health` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Every segment on a live node (or no data at all).
    Healthy,
    /// Readable, but some segments are on nodes that are down or gone.
    Degraded,
    /// Fewer than k segments reachable: reads fail.
    Unavailable,
    /// The attribute could not be read or said something else.
    Unknown,
}

impl Health {
    /// Classifies a `user.poolfs.health` text.
    pub fn of(text: &str) -> Health {
        let word = text
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        match word {
            "healthy" | "empty" => Health::Healthy,
            "degraded" => Health::Degraded,
            "unavailable" => Health::Unavailable,
            _ => Health::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unavailable => "unavailable",
            Health::Unknown => "unknown",
        }
    }
}

/// One file of a mount and what its health attribute says.
#[derive(Debug, Clone, Serialize)]
pub struct FileHealth {
    /// Path relative to the mount point.
    pub path: PathBuf,
    /// What the attribute's first word says.
    pub health: Health,
    /// The attribute's text, or why it could not be read.
    pub detail: String,
}

/// The state of one mount's files.
#[derive(Debug, Clone, Serialize)]
pub struct MountStatus {
    /// The mount point walked.
    pub mountpoint: PathBuf,
    /// The repair progress line (or why it could not be read).
    pub repair: String,
    /// How current the namespace's copy in the pool is (`None` from a mount that does
    /// not tell it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pool's risk as the mount sees it (`None` from a mount that does not tell
    /// it); `risk_error` says why it could not be read.
    pub risk: Option<PoolRisk>,
    /// Why `risk` could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_error: Option<String>,
    /// Every regular file, sorted by path.
    pub files: Vec<FileHealth>,
}

/// Counts per health.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Files with every segment on a live node.
    pub healthy: usize,
    /// Files readable with some segments missing.
    pub degraded: usize,
    /// Files that cannot be read.
    pub unavailable: usize,
    /// Files whose health could not be read.
    pub unknown: usize,
}

/// Walks the mount at `mountpoint` and reads the health of every file and the repair
/// progress. Fails if `mountpoint` is not a live poolfs mount.
pub fn mount_status(mountpoint: &Path) -> io::Result<MountStatus> {
    let repair = get_xattr(mountpoint, REPAIR_XATTR).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP)
                if !crate::fs::mount::is_mountpoint(mountpoint) =>
            {
                "not mounted (nothing is mounted on this directory)".to_string()
            }
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => {
                "not a poolfs mount (another filesystem is mounted there)".to_string()
            }
            Some(libc::ENOTCONN | libc::ECONNABORTED) => {
                crate::fs::mount::dead_mount_advice(mountpoint)
            }
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("{}: {why}", mountpoint.display()))
    })?;
    let (risk, risk_error) = match get_xattr(mountpoint, RISK_XATTR) {
        Ok(text) => match serde_json::from_str::<PoolRisk>(&text) {
            Ok(risk) => (Some(risk), None),
            Err(e) => (None, Some(format!("unreadable risk report: {e}"))),
        },
        Err(e) => (None, Some(format!("cannot read the risk report: {e}"))),
    };
    let namespace = get_xattr(mountpoint, NAMESPACE_XATTR).ok();
    let mut files = Vec::new();
    walk(mountpoint, Path::new(""), &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(MountStatus {
        mountpoint: mountpoint.to_path_buf(),
        repair,
        namespace,
        risk,
        risk_error,
        files,
    })
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<FileHealth>) -> io::Result<()> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let path = rel.join(entry.file_name());
        // Not following symlinks: they carry no data in the pool.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let (health, detail) = match get_xattr(&root.join(&path), HEALTH_XATTR) {
                Ok(text) => (Health::of(&text), text),
                Err(e) => (Health::Unknown, format!("cannot read its health: {e}")),
            };
            out.push(FileHealth {
                path,
                health,
                detail,
            });
        }
    }
    Ok(())
}

impl MountStatus {
    /// How many files are in each state.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for f in &self.files {
            match f.health {
                Health::Healthy => s.healthy += 1,
                Health::Degraded => s.degraded += 1,
                Health::Unavailable => s.unavailable += 1,
                Health::Unknown => s.unknown += 1,
            }
        }
        s
    }

    /// The report for a person: a summary line, the repair line, one line per file.
    pub fn render(&self) -> String {
        let s = self.summary();
        let mut out = format!(
            "mount {}: {}: {} healthy, {} degraded, {} unavailable",
            self.mountpoint.display(),
            crate::util::count(self.files.len() as u64, "file", "files"),
            s.healthy,
            s.degraded,
            s.unavailable
        );
        if s.unknown > 0 {
            out.push_str(&format!(", {} unknown", s.unknown));
        }
        out.push('\n');
        out.push_str(&format!("  {}\n", self.repair));
        if let Some(ns) = &self.namespace {
            out.push_str(&format!("  {ns}\n"));
        }
        match (&self.risk, &self.risk_error) {
            (Some(risk), _) => out.push_str(&risk.render()),
            (None, Some(e)) => out.push_str(&format!("  risk: {e}\n")),
            (None, None) => {}
        }
        let width = self
            .files
            .iter()
            .map(|f| f.path.as_os_str().len())
            .max()
            .unwrap_or(0)
            .min(48);
        for f in &self.files {
            // The label already says what the text's verdict says: keep the facts.
            let facts = match (f.health, f.detail.split_once(": ")) {
                (Health::Unknown, _) | (_, None) => f.detail.as_str(),
                (_, Some((_, rest))) => rest,
            };
            out.push_str(&format!(
                "  {:<11} {:<width$}  {facts}\n",
                f.health.label(),
                f.path.display().to_string(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_texts_are_classified_by_their_first_word() {
        assert_eq!(
            Health::of("healthy: 4 of 4 segments on live nodes (k=3, m=1)"),
            Health::Healthy
        );
        assert_eq!(Health::of("empty: no data in the pool"), Health::Healthy);
        assert_eq!(
            Health::of("degraded (readable, repair pending): 3 of 4"),
            Health::Degraded
        );
        assert_eq!(
            Health::of("unavailable (not enough segments): 2 of 4"),
            Health::Unavailable
        );
        assert_eq!(Health::of("something else"), Health::Unknown);
        assert_eq!(Health::of(""), Health::Unknown);
    }

    #[test]
    fn render_sums_up_and_lists_files_in_order() {
        let file = |p: &str, text: &str| FileHealth {
            path: p.into(),
            health: Health::of(text),
            detail: text.into(),
        };
        let st = MountStatus {
            mountpoint: "/mnt/pool".into(),
            repair: "repair: 2 segments rebuilt on other nodes, 0 pending".into(),
            namespace: None,
            risk: None,
            risk_error: None,
            files: vec![
                file("a", "healthy: 4 of 4"),
                file("dir/b", "degraded (readable, repair pending): 3 of 4"),
                file("z", "unavailable (not enough segments): 2 of 4"),
            ],
        };
        assert_eq!(
            st.summary(),
            Summary {
                healthy: 1,
                degraded: 1,
                unavailable: 1,
                unknown: 0
            }
        );
        let text = st.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "mount /mnt/pool: 3 files: 1 healthy, 1 degraded, 1 unavailable"
        );
        assert_eq!(
            lines[1],
            "  repair: 2 segments rebuilt on other nodes, 0 pending"
        );
        assert!(lines[2].starts_with("  healthy     a    "), "{}", lines[2]);
        assert_eq!(lines[3], "  degraded    dir/b  3 of 4");
        assert!(lines[4].starts_with("  unavailable z"), "{}", lines[4]);
    }
}
