//! Build script: finds which prerequisites of the integration tests (tests/it) this
//! machine lacks and sets one `poolfs_no_*` cfg for each, so the tests that need one
//! are marked `#[ignore]` with the reason (libtest cannot ignore a test once it runs).
//! Under `CI` nothing is set: there every prerequisite must be present, and a missing
//! one fails the test (see `harness::skip`).

use std::path::Path;

/// `(cfg, missing?)` for each prerequisite; the probes mirror the runtime checks in
/// tests/it/harness (`mount::missing_capability`, `lan::fuse_missing`, `Lan::new`,
/// `have_program`).
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=PATH");
    let cfgs = [
        "poolfs_no_mount",
        "poolfs_no_netns",
        "poolfs_no_fuse",
        "poolfs_no_fio",
        "poolfs_no_python3",
    ];
    for cfg in cfgs {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        return;
    }
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse_rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    let missing = [
        !root || !fuse_rw || !on_path("fusermount3"),
        !root || !["ip", "unshare", "nsenter"].into_iter().all(on_path),
        !fuse_device() || !fuse_in_kernel(),
        !on_path("fio"),
        !on_path("python3"),
    ];
    for (cfg, missing) in cfgs.into_iter().zip(missing) {
        if missing {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

fn fuse_device() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.file_type().is_char_device())
}

fn fuse_in_kernel() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|fs| {
        fs.lines()
            .any(|l| l.split_whitespace().last() == Some("fuse"))
    })
}
