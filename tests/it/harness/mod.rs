//! What the tests stand on: a pool on loopback (`cluster`), a LAN of network
//! namespaces (`lan`), a whole pool mounted with `poolfs up` (`mount`), the wire by
//! hand (`wire`), members killed and restarted and the space their shards take
//! (`faults`), a pool started process by process whose mounts are lost and recovered
//! (`owner`), a tree's entries as a user sees them (`tree`), and the one rule for a
//! missing prerequisite (`skip`).

use std::io::Write;
use std::process::{Command, Stdio};

pub mod cluster;
pub mod faults;
pub mod lan;
pub mod mount;
pub mod owner;
pub mod tree;
pub mod wire;

/// Whether this is a CI run (`CI` set, and not empty, `false` or `0`): there every
/// prerequisite is installed (`.ci/run`), so a missing one fails the test.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok(v) if !v.is_empty() && v != "false" && v != "0")
}

/// Skips the calling test for want of a prerequisite (`reason` says which); under CI
/// fails it instead (panics). The caller returns right after.
///
/// The fallback only: build.rs finds the missing prerequisites at build time and the
/// tests that need one are marked `#[cfg_attr(poolfs_no_*, ignore = "needs ...")]`, so
/// they report `ignored`. Reaching here means a check the build script does not make
/// failed (say `unshare` refused to run); libtest cannot ignore a running test, so it
/// reports `ok`, and the `SKIPPED <test>: <reason>` line, written past libtest's output
/// capture, is what tells it apart. CI, where nothing may be skipped, never reports one.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if in_ci() {
        panic!("CI=true forbids skipping {test}: {reason}");
    }
    // Straight to the stream, past the capture, so the line is seen with the results.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Whether `program` runs here (`program --version` exits 0); if not, the test is
/// skipped (see `skip`) with `why` it was needed.
pub fn have_program(program: &str, why: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(&format!("{program} is not installed ({why})"));
    }
    ok
}
