//! The shape policy: how many data shards (k) and parity shards (m) a new file gets,
//! from what the user asked (`Redundancy`) and the size of the pool.

use std::fmt;
use std::str::FromStr;

/// Most segments (k + m) a file may have. reed-solomon-simd takes far more, but each
/// segment wants a machine of its own, and wider stripes buy nothing: MinIO caps an
/// erasure set at 16 drives (8 by default) after finding wider sets only cost IOPS.
pub const MAX_SEGMENTS: u32 = 32;

/// Data shards of the automatic shape on pools of 5 or more: 4 (with 1 MiB shards, 4 MiB
/// stripes), small enough that a stripe fits on a small pool, large enough that a 4+4
/// stripe on a big one stores at most twice the file's bytes.
pub const AUTO_DATA_SHARDS: u32 = 4;

/// What the user asked of a new file's shape (`--redundancy K+M`, `--tolerate F`, or
/// nothing): turned into `(k, m)` by `shape` when the file is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Redundancy {
    /// Chosen by pool size (see `shape`): one segment per node on pools of up to 5,
    /// parity growing with the pool up to 4 + 4 from 8 nodes on.
    #[default]
    Auto,
    /// Survive this many machines off at once: m = F parity shards, and up to 4 data
    /// shards.
    Tolerate(u32),
    /// Exactly k data and m parity shards, whatever the pool.
    Exact {
        /// Data shards per stripe (≥ 1).
        k: u32,
        /// Parity shards per stripe.
        m: u32,
    },
}

/// Why a redundancy could not be read or used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedundancyError {
    /// Not of the form K+M.
    #[error("{0:?}: expected K+M such as 4+2 (K data shards, M parity shards)")]
    Syntax(String),
    /// K is 0: a stripe needs one data shard at least.
    #[error("{0:?}: K must be at least 1 (K data shards, M parity shards)")]
    NoData(String),
    /// More segments than `MAX_SEGMENTS`.
    #[error("{0}: at most {MAX_SEGMENTS} shards per stripe (K + M)")]
    TooWide(String),
}

impl Redundancy {
    /// `Tolerate(f)`, refused when a stripe of f + 1 shards would exceed `MAX_SEGMENTS`.
    pub fn tolerate(f: u32) -> Result<Self, RedundancyError> {
        if f >= MAX_SEGMENTS {
            return Err(RedundancyError::TooWide(format!("tolerate {f}")));
        }
        Ok(Redundancy::Tolerate(f))
    }
}

impl FromStr for Redundancy {
    type Err = RedundancyError;

    /// "K+M" (such as "4+2") for `Exact`, or "auto".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Redundancy::Auto);
        }
        let syntax = || RedundancyError::Syntax(s.to_string());
        let (k, m) = text.split_once('+').ok_or_else(syntax)?;
        let k: u32 = k.trim().parse().map_err(|_| syntax())?;
        let m: u32 = m.trim().parse().map_err(|_| syntax())?;
        if k == 0 {
            return Err(RedundancyError::NoData(s.to_string()));
        }
        if k.saturating_add(m) > MAX_SEGMENTS {
            return Err(RedundancyError::TooWide(format!("{k}+{m}")));
        }
        Ok(Redundancy::Exact { k, m })
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::Auto => f.write_str("auto"),
            Redundancy::Tolerate(n) => write!(f, "tolerate {n}"),
            Redundancy::Exact { k, m } => write!(f, "{k}+{m}"),
        }
    }
}

/// The shape `(k, m)` of a new file under `policy` on a pool of `n` members (nodes up
/// or down; leaving and gone ones do not count).
///
/// - `Auto`: n = 1 → 1+0, 2 → 2+0, 3 → 2+1, 4 → 3+1, 5 → 4+1 (one segment per node, the
///   report's behaviour), 6 → 4+2, 7 → 4+3, 8 or more → 4+4. With every machine off
///   10 % of the time, independently, a 4+4 stripe is unreadable with probability
///   0.043 % (binomial: more than 4 of 8 off), whatever the pool size.
/// - `Tolerate(F)`: m = F, k = max(1, min(4, n − F)); on a pool of F machines or fewer,
///   which cannot survive F off, m = n − 1 (every node but one may be off).
/// - `Exact { k, m }`: as given (`place_new` puts several segments on one node when
///   the pool has fewer than k + m members).
pub fn shape(policy: Redundancy, n: usize) -> (u32, u32) {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    match policy {
        Redundancy::Auto => match n {
            1 | 2 => (n, 0),
            3..=5 => (n - 1, 1),
            6 | 7 => (AUTO_DATA_SHARDS, n - AUTO_DATA_SHARDS),
            _ => (AUTO_DATA_SHARDS, AUTO_DATA_SHARDS),
        },
        Redundancy::Tolerate(f) => {
            let m = f.min(n - 1);
            (n.saturating_sub(m).clamp(1, AUTO_DATA_SHARDS), m)
        }
        Redundancy::Exact { k, m } => (k.max(1), m),
    }
}
