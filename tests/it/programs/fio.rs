//! fio's verifying random mixed I/O finds every byte it wrote.

use super::*;

/// fio's random reads and writes of mixed sizes (4 KiB to 1 MiB) from two processes,
/// with an fsync every 64 writes, verified with crc32c: every byte it wrote comes back.
#[test]
#[cfg_attr(
    any(poolfs_no_mount, poolfs_no_fio),
    ignore = "needs root, /dev/fuse read-write and fusermount3; fio"
)]
fn fio_random_mixed_io_finds_every_byte_it_wrote() {
    if !can_mount() {
        return;
    }
    if !harness::have_program("fio", "the workload and its verification") {
        return;
    }
    let pool = Pool::up("fio", 3);
    let out = run(Command::new("fio")
        .arg(format!("--directory={}", pool.mnt.display()))
        .args([
            "--name=verify",
            "--rw=randrw",
            "--bsrange=4k-1m",
            "--size=96m",
            "--numjobs=2",
            "--ioengine=psync",
            "--fsync=64",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            // Else fio leaves local-verify-N-verify.state in the working directory: the
            // checkout's root under cargo test.
            "--verify_state_save=0",
            "--randseed=12",
            "--group_reporting",
        ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("err= 0"),
        "fio found wrong bytes or failed ({}):\n{text}\n{}",
        out.status,
        stderr_of(&out)
    );
}
