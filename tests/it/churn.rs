//! The churn run of issue 14, one minute of it: `bench/churn.py --minutes 1` on 10
//! nodes, members stopped and killed at random (never more than 2 at once) while one
//! process writes, overwrites and deletes and another checks every byte. Zero wrong
//! bytes, zero EIO, zero leaked bytes once the churn stops, and nothing left behind.

use std::process::{Command, Stdio};

use crate::harness;
use crate::harness::mount::{assert_nothing_left, can_mount, fuse_mounts_under, test_dir, BIN};

/// A figure of the run's JSON report, as an integer.
fn figure(json: &serde_json::Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a count in {json}"))
}

#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_python3),
    ignore = "needs root, /dev/fuse read-write and fusermount3; python3"
)]
fn a_minute_of_churn_on_ten_nodes_reads_every_byte_right_and_leaks_nothing() {
    if !can_mount() || !harness::have_program("python3", "the churn script runs on it") {
        return;
    }
    let root = test_dir("churn");
    let out_dir = test_dir("churn-out");
    let json_path = out_dir.path().join("churn.json");
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/churn.py"))
        .args(["--minutes", "1", "--nodes", "10", "--bin", BIN, "--json"])
        .arg(&json_path)
        .env("TMPDIR", root.path())
        .env_remove("POOLFS_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert_nothing_left(root.path(), fuse_mounts_under);
    let text = std::fs::read_to_string(&json_path).unwrap_or_else(|e| {
        panic!(
            "the churn run wrote no report ({e}), exit {}:\n{stdout}\n{stderr}",
            out.status
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    let events = &json["events"];
    let disturbed =
        events["stopped"].as_u64().unwrap_or(0) + events["killed"].as_u64().unwrap_or(0);
    assert!(disturbed >= 3, "hardly any churn happened: {events}");
    assert!(
        figure(&json, "max_off_seen") <= 2,
        "more than 2 members were off at once: {json}"
    );
    assert!(
        figure(&json, "files_verified") > 0,
        "nothing was verified: {json}"
    );
    assert_eq!(
        figure(&json, "wrong_bytes"),
        0,
        "wrong bytes read:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        figure(&json, "eio"),
        0,
        "EIO during the churn:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        figure(&json, "other_errors"),
        0,
        "errors during the churn:\n{stdout}\n{stderr}"
    );
    assert!(
        figure(&json, "leaked_bytes") <= figure(&json, "slack_bytes"),
        "bytes leaked once the churn stopped:\n{stdout}"
    );
    assert_eq!(
        json["unhealthy_files"].as_array().map_or(1, Vec::len),
        0,
        "files not whole again after the churn:\n{stdout}"
    );
    assert!(
        out.status.success(),
        "the churn run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
