//! Small helpers outside the pool's core: sizes (parsed and printed), atomic file
//! writes, the state directory's lock, free disk space, the default data directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Parses a size given by a person: `10G`, `512M`, `4KiB`, `1.5T`, `1000` (bytes).
///
/// Units are powers of 1024 whether written `K`, `KB` or `KiB` (also `M`, `G`, `T`,
/// `P`, `E`), in any case, with or without a space before them, as `df -h` and `dd`
/// read them. Errors: a text that is not a number and unit, an unknown unit, a
/// fraction of a byte, or a size past `u64::MAX` bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size {text:?} (give a number, e.g. 10G)"));
    }
    // bytesize reads `K`, `M`... as powers of 1000; poolfs always read them as powers
    // of 1024, so name the binary unit before handing the text over.
    let binary = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" if num.contains('.') => {
            return Err(format!("invalid size {text:?}: a byte count is whole"))
        }
        "" => "B",
        "K" => "KiB",
        "M" => "MiB",
        "G" => "GiB",
        "T" => "TiB",
        "P" => "PiB",
        "E" => "EiB",
        _ => {
            return Err(format!(
                "invalid size unit in {text:?} (use K, M, G, T, P or E)"
            ))
        }
    };
    let size: bytesize::ByteSize = format!("{num} {binary}")
        .parse()
        .map_err(|_| format!("invalid size {text:?} (give a number, e.g. 10G)"))?;
    // bytesize saturates instead of failing: u64::MAX is only true when written out.
    if size.0 == u64::MAX && num.parse::<u64>() != Ok(u64::MAX) {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(size.0)
}

/// Formats a byte count for people in binary units, one decimal (`1.5 GiB`, `100 B`).
pub fn human_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// `n` and the noun for it, singular for one (`count(1, "file", "files")` is
/// "1 file", `count(0, ...)` "0 files"): English counts as people write them.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Writes a file atomically: temporary name (`path` with extension `tmp`), fsync,
/// rename, fsync of the directory (made if missing). Errors: the first I/O failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Takes an exclusive lock on `dir/lock` for as long as the returned file lives;
/// fails at once if another process holds it (`io::ErrorKind::AddrInUse`, naming the
/// directory).
pub fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    // std's try_lock is flock(LOCK_EX | LOCK_NB) on Linux: the lock goes with the
    // process, and a crashed process leaves none behind.
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by another poolfs process", dir.display()),
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Bytes available to unprivileged users on the filesystem holding `path`
/// (statvfs(2) `f_bavail * f_frsize`, through rustix). Errors: statvfs's.
pub fn available_space(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Where poolfs keeps its state when no directory is given: `$XDG_DATA_HOME/poolfs`
/// or `~/.local/share/poolfs`. Without `HOME` (mount(8) runs its helpers with an empty
/// environment) the home is the user's entry in the password database
/// (`std::env::home_dir`), never a shared directory such as /tmp, where another user
/// could plant a pool key; a user with no home at all gets `/.local/share/poolfs`,
/// which only root can write.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("poolfs");
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)
        .filter(|h| h.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/share/poolfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_in_powers_of_1024_whatever_the_unit_spelling() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10 GB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("4 kb").unwrap(), 4096);
        assert_eq!(parse_size("1.5T").unwrap(), 3 << 39);
        assert_eq!(parse_size("2P").unwrap(), 2 << 50);
        assert_eq!(parse_size(" 77 ").unwrap(), 77);
        assert_eq!(parse_size("77B").unwrap(), 77);
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn sizes_that_mean_nothing_are_refused_with_the_reason() {
        let err = |t: &str| parse_size(t).unwrap_err();
        assert!(err("ten").contains("give a number"), "{}", err("ten"));
        assert!(err("").contains("give a number"), "{}", err(""));
        assert!(err("-1G").contains("give a number"), "{}", err("-1G"));
        assert!(err("5X").contains("use K, M, G"), "{}", err("5X"));
        assert!(err("1.5").contains("whole"), "{}", err("1.5"));
        assert!(err("99999999999T").contains("too large"));
        assert!(err("99999999999999999999").contains("too large"));
    }

    #[test]
    fn byte_counts_are_shown_in_binary_units() {
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
    }

    #[test]
    fn a_locked_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let e = lock_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        drop(held);
        lock_dir(dir.path()).unwrap();
    }
}
