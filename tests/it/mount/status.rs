//! `poolfs status` and `df` on a mount read as a person expects (issue 17): counts in
//! English, the pool's room with a shared disk counted once, the mount's own node
//! marked, and the bytes a `cp` just stored.

use super::*;

/// Right after a `cp` into a pool started with `up` (three nodes on this machine's one
/// disk): `status` shows the bytes the nodes hold now, marks the mount's node, says
/// "1 file", and neither it nor `df` counts the disk three times.
#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn status_shows_a_fresh_cp_marks_the_mounts_node_and_counts_a_shared_disk_once() {
    if !can_mount() {
        return;
    }
    let pool = Pool::up("status", 3);
    let src = pool.scratch().join("src");
    random_file(&src, 4 * MIB);
    assert!(cp(&src, &pool.path("f")).status.success());
    let status = |json: bool| {
        let mut cmd = poolfs(["status", "--data-dir"]);
        cmd.arg(&pool.data);
        if json {
            cmd.arg("--json");
        }
        run_ok(&mut cmd).stdout
    };
    // What the cp stored is counted at once, not a heartbeat later: k = 2, m = 1 puts
    // a 2 MiB shard on each node.
    let v: serde_json::Value = serde_json::from_slice(&status(true)).expect("status json");
    let used: Vec<u64> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["used"].as_u64().expect("used"))
        .collect();
    assert!(
        used.len() == 3 && used.iter().all(|&u| u >= 2 * MIB as u64),
        "node usage right after the cp: {used:?}"
    );

    let text = String::from_utf8(status(false)).expect("utf-8");
    let mnt = pool.mnt.display().to_string();
    assert!(
        text.contains(&format!("mount {mnt}: 1 file: 1 healthy")),
        "{text}"
    );
    assert!(!text.contains("epoch"), "unexplained epoch: {text}");
    assert!(
        text.contains("a segment is a file's part on one node"),
        "the repair line does not say what it counts: {text}"
    );
    let marked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("(the node of mount {mnt})")))
        .collect();
    assert_eq!(marked.len(), 1, "the mount's node is marked once: {text}");
    assert!(
        text.contains("nodes 1, 2, 3 keep their segments on one disk"),
        "{text}"
    );

    // df: the pool's size is this disk's room once (what is free plus what the pool
    // uses), not three times it.
    let disk = poolfs::proto::Disk::of(&pool.data).expect("statvfs of the data dir");
    let shown = poolfs::proto::Disk::of(&pool.mnt).expect("statvfs of the mount");
    let slack = 256 * MIB as u64; // other programs write to this disk meanwhile
    assert!(
        shown.size <= disk.free + used.iter().sum::<u64>() + slack,
        "df shows {} bytes for a disk with {} free",
        shown.size,
        disk.free
    );
    assert!(
        shown.size + slack >= disk.free,
        "df shows {} bytes, less than the disk's {} free",
        shown.size,
        disk.free
    );
}
