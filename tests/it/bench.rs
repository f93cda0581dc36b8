//! Smoke test of the benchmark script (issue 7): `bench/run.py --quick` prints every figure of the target table for every configuration, and leaves no pool, mount, process or temp dir behind, also when interrupted; `--namespace-cost` (issue 15) prints the cost of the namespace in the pool as ratios against `--no-pool-namespace`; issue 16's table (small files, rm, first byte, random writes with their bytes on the wire, fsx, stat of a tree) comes with every figure and no wrong byte, and `--scale` prints one row per file count with its trend.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness;
use crate::harness::mount::{assert_nothing_left, can_mount, test_dir, wait_until, BIN};

/// `python3 bench/run.py --quick ARGS` with its temp dirs under `root`.
fn bench(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/run.py"))
        .args(["--quick", "--bin", BIN])
        .args(args)
        .env("TMPDIR", root)
        .env_remove("POOLFS_KEY")
        .stdin(Stdio::null());
    cmd
}

/// Mount table lines (any filesystem) under `root`.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_string)
        .collect()
}

/// A positive, finite figure `key` of configuration `name` in the bench's JSON.
fn figure(json: &serde_json::Value, name: &str, key: &str) -> f64 {
    let v = json["poolfs"][name][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}.{key} missing in {json}"));
    assert!(v.is_finite() && v > 0.0, "{name}.{key} = {v}");
    v
}

#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_python3),
    ignore = "needs root, /dev/fuse read-write and fusermount3; python3"
)]
fn quick_bench_prints_every_figure_and_cleans_up() {
    if !can_mount() || !harness::have_program("python3", "the benchmark script runs on it") {
        return;
    }
    let root = test_dir("bench");
    let out_dir = test_dir("bench-out");
    let json_path = out_dir.path().join("bench.json");
    let json_arg = json_path.to_string_lossy().into_owned();
    let out = bench(root.path(), &["--tables", "issue7", "--json", &json_arg])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "| cp of the big file into the mount, through close | MiB/s |",
        "| cat of it after dropping the page cache | MiB/s |",
        "| create + write + close of 4 KiB files | files/s |",
        "| open + read of the first byte, caches dropped | ms |",
        "| peak resident memory of the mount",
        "| longest read() when a node is killed mid-read",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("| --parity 0 | --no-encryption |"),
        "no cost columns in:\n{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("bench JSON")).expect("JSON");
    for key in ["cp", "cat", "small", "ttfb"] {
        figure(&json, "default", key); // the tmpfs figure must be there too
        assert!(json["tmpfs"][key].as_f64().is_some_and(|v| v > 0.0));
    }
    for name in ["default", "parity0", "noenc"] {
        for key in ["cp", "cat", "small", "ttfb", "rss"] {
            figure(&json, name, key);
        }
    }
    // The mount holds at least the process image while copying, and far less than RAM.
    let rss = figure(&json, "default", "rss");
    assert!(rss > 1.0 && rss < 4096.0, "mount peak RSS {rss} MiB");
    for name in ["default", "noenc"] {
        assert_eq!(
            json["poolfs"][name]["stall_errors"],
            serde_json::json!([]),
            "{name}: reads failed after the kill"
        );
        figure(&json, name, "stall");
    }
    assert!(json["poolfs"]["parity0"]["stall"].is_null());
    assert_nothing_left(root.path(), mounts_under);
}

#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_python3),
    ignore = "needs root, /dev/fuse read-write and fusermount3; python3"
)]
fn interrupted_bench_stops_its_pools_and_unmounts() {
    if !can_mount() || !harness::have_program("python3", "the benchmark script runs on it") {
        return;
    }
    let root = test_dir("bench-int");
    let child = bench(root.path(), &["--only", "default"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let pool_mounted = wait_until(Duration::from_secs(60), || {
        mounts_under(root.path()).iter().any(|l| l.contains("fuse"))
    });
    // SAFETY: SIGINT (Ctrl-C) to the bench process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait for the bench");
    assert!(pool_mounted, "the bench never mounted a pool");
    assert!(
        !out.status.success(),
        "an interrupted bench must not report success; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(root.path(), mounts_under);
}

#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_python3),
    ignore = "needs root, /dev/fuse read-write and fusermount3; python3"
)]
fn namespace_cost_bench_prints_both_ratios_and_cleans_up() {
    if !can_mount() || !harness::have_program("python3", "the benchmark script runs on it") {
        return;
    }
    let root = test_dir("bench-ns");
    let out_dir = test_dir("bench-ns-out");
    let json_path = out_dir.path().join("bench.json");
    let json_arg = json_path.to_string_lossy().into_owned();
    let out = bench(root.path(), &["--namespace-cost", "--json", &json_arg])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in [
        "| create + write + close of 4 KiB files, then sync | files/s |",
        "| cp of the big file into the mount, through close | MiB/s |",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        assert!(
            line.contains("x | >= 0.9x |"),
            "no ratio against the target in {line:?}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("bench JSON")).expect("JSON");
    for name in ["pool", "local"] {
        for key in ["small", "cp"] {
            let v = json["namespace"][name][key]
                .as_f64()
                .unwrap_or_else(|| panic!("namespace.{name}.{key} missing in {json}"));
            assert!(v.is_finite() && v > 0.0, "namespace.{name}.{key} = {v}");
        }
    }
    assert_nothing_left(root.path(), mounts_under);
}

/// A positive, finite median `key` of system `name` in issue 16's part of the JSON.
fn median16(json: &serde_json::Value, name: &str, key: &str) -> f64 {
    let v = json["issue16"]["medians"][name][key]
        .as_f64()
        .unwrap_or_else(|| panic!("issue16 {name}.{key} missing in {json}"));
    assert!(v.is_finite() && v > 0.0, "issue16 {name}.{key} = {v}");
    v
}

#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_python3),
    ignore = "needs root, /dev/fuse read-write and fusermount3; python3"
)]
fn issue16_bench_prints_every_row_with_no_wrong_byte_and_cleans_up() {
    if !can_mount() || !harness::have_program("python3", "the benchmark script runs on it") {
        return;
    }
    let root = test_dir("bench16");
    let out_dir = test_dir("bench16-out");
    let json_path = out_dir.path().join("bench.json");
    let json_arg = json_path.to_string_lossy().into_owned();
    let out = bench(root.path(), &["--tables", "issue16", "--json", &json_arg])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| what | unit | tmpfs | **poolfs** | target | result |"),
        "no issue 16 table in:\n{stdout}"
    );
    for row in [
        "| create + write + close of 4 KiB files, then sync | files/s |",
        "| rm of those files | files/s |",
        "| first byte, cold, in process: os.open + unbuffered os.read(fd, 1) | ms |",
        "| first byte, cold, in process: Python's open(p, 'rb').read(1) | ms |",
        "| random 4 KiB writes into a 256 MiB file, fsync every 64 | writes/s |",
        "| bytes on the wire per random 4 KiB write (fsyncs included) | bytes |",
        "| fsx-style random ops with mmap on an 8 MiB file, every read checked | ops/s |",
        "| stat of every file of a 50 000-file tree",
        "| cp of the big file through close | MiB/s |",
        "| cat of it, caches dropped | MiB/s |",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in:\n{stdout}");
    }
    for system in ["tmpfs", "**poolfs**"] {
        let line = format!("- fsx on {system}: wrong bytes: 0");
        assert!(stdout.contains(&line), "no {line:?} in:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("bench JSON")).expect("JSON");
    for key in [
        "creates", "rm", "fb_raw", "fb_buf", "randw", "fsx", "stat", "cp", "cat",
    ] {
        median16(&json, "tmpfs", key);
        median16(&json, "poolfs", key);
    }
    // Every random write reaches the nodes: at least its 4 KiB cross the loopback.
    let wire = median16(&json, "poolfs", "wire");
    assert!(wire >= 4096.0, "{wire} bytes on the wire per 4 KiB write");
    assert_nothing_left(root.path(), mounts_under);
}

#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_python3),
    ignore = "needs root, /dev/fuse read-write and fusermount3; python3"
)]
fn scale_bench_prints_a_row_per_file_count_with_its_trend_and_cleans_up() {
    if !can_mount() || !harness::have_program("python3", "the benchmark script runs on it") {
        return;
    }
    let root = test_dir("bench-scale");
    let out_dir = test_dir("bench-scale-out");
    let json_path = out_dir.path().join("bench.json");
    let json_arg = json_path.to_string_lossy().into_owned();
    let out = bench(root.path(), &["--scale", "1000,2000", "--json", &json_arg])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("bench JSON")).expect("JSON");
    let rows = json["scale"].as_array().expect("scale rows");
    assert_eq!(rows.len(), 2, "{json}");
    for (row, files) in rows.iter().zip([1000, 2000]) {
        assert_eq!(row["files"], files, "{row}");
        for key in [
            "rss",
            "hwm",
            "mount",
            "rss_after",
            "create",
            "stat",
            "unlink",
        ] {
            let v = row[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} in {row}"));
            assert!(v.is_finite() && v > 0.0, "{key} = {v} in {row}");
        }
        assert!(
            stdout.contains(&format!("\n| {files} | ")),
            "no row {files} in:\n{stdout}"
        );
    }
    let trend = stdout
        .lines()
        .find(|l| l.starts_with("| vs 1000: 2000 |"))
        .unwrap_or_else(|| panic!("no trend line in:\n{stdout}"));
    let verdicts = trend.matches("flat").count() + trend.matches("grows").count();
    assert_eq!(verdicts, 7, "a verdict per column in {trend:?}");
    assert_nothing_left(root.path(), mounts_under);
}
