//! Repair as a user relies on it: a node gone for good has its segments rebuilt where
//! none of the file is, a file with nowhere to go is re-encoded narrower, a rebuild cut
//! short resumes, and every time the file survives one more loss byte for byte.

use std::time::Duration;

use super::{fixture, pattern, Fixture, SHARD, STRIPE};
use crate::client::Fault;
use crate::fs::meta::ROOT;
use crate::fs::repair::{self, COMMIT_EVERY};
use crate::fs::status;
use crate::proto::NodeId;

/// Node `id` is gone for good: unreachable, and no longer a member of the pool.
fn gone(f: &Fixture, id: NodeId) {
    f.mem.set_fault(id, Some(Fault::Down));
    f.mem.set_state(id, None);
}

/// A repair pass with no grace, after the view has caught up with the pool.
fn repair_now(f: &Fixture) -> repair::RepairReport {
    f.vfs.run(f.vfs.client().refresh_view()).expect("pool view");
    repair::repair_and_record(&f.vfs, Duration::ZERO).expect("repair pass")
}

#[test]
fn a_segment_of_a_node_gone_for_good_is_rebuilt_on_a_node_holding_none_of_the_file() {
    let f = fixture(3);
    let data = pattern(3 * STRIPE as usize + 100, 1);
    let ino = f.file(ROOT, b"f", &data);
    let spare = f.mem.add_node();
    gone(&f, 2);
    let report = repair_now(&f);
    assert_eq!((report.rebuilt, report.pending), (1, 0), "{report:?}");
    assert_eq!(f.holders(ino), vec![1, spare, 3]);
    assert!(!f.manifest(ino).has_moved());
    // Four stripes, one shard each rebuilt (the last one short).
    assert_eq!(report.bytes, 3 * SHARD as u64 + 50);
    let line = repair::repair_progress(&f.vfs);
    assert!(
        line.contains(&format!("{} bytes written by repair", report.bytes)),
        "{line}"
    );
    // Whole again: one more loss is covered.
    f.mem.kill(1);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_file_no_spare_node_can_take_is_re_encoded_narrower_and_survives_another_loss() {
    let f = fixture(4);
    let data = pattern(5 * 3 * SHARD + 777, 2);
    let ino = f.file(ROOT, b"f", &data);
    let old = f.manifest(ino);
    assert_eq!((old.place.layout.k, old.place.layout.m), (3, 1));
    gone(&f, 4);
    let report = repair_now(&f);
    assert_eq!(report.reencoded, 1, "{report:?}");
    let new = f.manifest(ino);
    assert_eq!((new.place.layout.k, new.place.layout.m), (2, 1));
    assert_eq!(f.holders(ino), vec![1, 2, 3]);
    assert_ne!(new.place.file_id, old.place.file_id);
    for id in 1..=3 {
        assert_eq!(
            f.mem.segments_of(id, &old.place.file_id),
            0,
            "node {id} still holds the old segments"
        );
    }
    // Every byte stored again once, plus parity: 3 shards per 2 shards of data.
    let stored: u64 = new
        .records()
        .map(|(j, _)| 3 * new.place.layout.shard_len(new.stripe_len(j)) as u64)
        .sum();
    assert_eq!(report.bytes, stored);
    f.mem.kill(2);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_rebuild_cut_short_resumes_from_its_last_commit_not_from_stripe_zero() {
    let f = fixture(3);
    let stripes = 2 * COMMIT_EVERY as u64 + 4;
    let data = pattern((stripes * STRIPE) as usize, 3);
    let ino = f.file(ROOT, b"f", &data);
    let spare = f.mem.add_node();
    // The spare fills up part way through the second batch of stripes.
    f.mem
        .set_capacity(spare, (COMMIT_EVERY as u64 + 3) * SHARD as u64);
    gone(&f, 2);
    let first = repair_now(&f);
    assert_eq!((first.rebuilt, first.pending), (0, 1), "{first:?}");
    let half = f.manifest(ino);
    let on_spare = half
        .records()
        .filter(|(_, r)| r.holder(&half.place, 1).node_id == spare)
        .count();
    assert_eq!(on_spare, COMMIT_EVERY, "the first batch is committed");
    f.mem.set_capacity(spare, 1 << 30);
    let second = repair_now(&f);
    assert_eq!(second.rebuilt, 1, "{second:?}");
    let left = stripes - COMMIT_EVERY as u64;
    assert_eq!(
        second.bytes,
        left * SHARD as u64,
        "only the stripes not committed are rebuilt again"
    );
    assert_eq!(f.holders(ino), vec![1, spare, 3]);
    assert!(!f.manifest(ino).has_moved());
    f.mem.kill(3);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn an_open_file_is_repaired_once_it_is_closed() {
    let f = fixture(3);
    let data = pattern(2 * STRIPE as usize, 4);
    let ino = f.file(ROOT, b"f", &data);
    let spare = f.mem.add_node();
    gone(&f, 3);
    let fh = f.vfs.open(ino, libc::O_RDONLY).expect("open");
    let open = repair_now(&f);
    assert_eq!((open.rebuilt, open.pending), (0, 1), "{open:?}");
    assert_eq!(f.holders(ino), vec![1, 2, 3]);
    f.vfs.release(fh).expect("close");
    let closed = repair_now(&f);
    assert_eq!(closed.rebuilt, 1, "{closed:?}");
    assert_eq!(f.holders(ino), vec![1, 2, spare]);
}

#[test]
fn a_file_written_while_a_holder_is_down_is_back_on_its_holders_once_it_returns() {
    let f = fixture(4);
    let ino = f.file(ROOT, b"f", &pattern(3 * SHARD, 5));
    let place = f.manifest(ino).place;
    // Node 4 goes down (within the grace: nothing is rebuilt) and the file is rewritten.
    f.mem.kill(4);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    let data = pattern(4 * 3 * SHARD + 10, 6);
    let fh = f.vfs.open(ino, libc::O_WRONLY).expect("open");
    f.vfs.write(fh, 0, &data).expect("write");
    f.vfs.release(fh).expect("close");
    let m = f.manifest(ino);
    assert_eq!(m.place, place, "a file keeps its placement");
    // Every stripe has all 4 shards: the down holder's on stand-ins.
    for (j, rec) in m.records() {
        assert_eq!(rec.moved.len(), 1, "stripe {j}");
        assert_eq!(rec.missing(&m.place).count(), 0, "stripe {j}");
    }
    let grace = Duration::from_secs(3600);
    let waiting = repair::repair_and_record(&f.vfs, grace).expect("repair pass");
    assert_eq!((waiting.rebuilt, waiting.waiting), (0, 1), "{waiting:?}");
    // Node 4 is back: its shards come home.
    f.mem.set_fault(4, None);
    f.mem.set_state(4, Some(crate::proto::NodeState::Up));
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    let back = repair::repair_and_record(&f.vfs, grace).expect("repair pass");
    assert_eq!(back.rebuilt, m.records().count(), "{back:?}");
    assert!(!f.manifest(ino).has_moved());
    f.mem.kill(1);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn status_says_how_many_machines_may_be_off_and_the_live_bytes_each_node_holds() {
    let f = fixture(4);
    let ino = f.file(ROOT, b"f", &pattern(2 * 3 * SHARD, 7));
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!(risk.machines_off, Some(1), "3 + 1 over 4 machines");
    assert_eq!((risk.files, risk.degraded), (1, 0));
    let m = f.manifest(ino);
    for n in &risk.nodes {
        // Two full stripes: two shards on each holder.
        assert_eq!(n.live, 2 * SHARD as u64, "node {}", n.id);
        assert_eq!(n.held, Some(f.mem.used(n.id)), "node {}", n.id);
    }
    assert_eq!(risk.nodes.len(), m.place.holders.len());
    let text = risk.render();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "  risk: any 1 machine may be off at once with every file still readable"
    );
    assert_eq!(lines[1], "  0 of 1 file with data on the pool degraded");
    assert_eq!(
        lines[2],
        format!(
            "  node   1 up      holds {} bytes for {} bytes of live data",
            f.mem.used(1),
            2 * SHARD
        )
    );
}

#[test]
fn status_says_why_each_degraded_file_is_degraded_and_when_it_will_be_whole() {
    let f = fixture(4);
    f.file(ROOT, b"closed", &pattern(3 * SHARD, 8));
    let open = f.file(ROOT, b"open", &pattern(3 * SHARD, 9));
    let fh = f.vfs.open(open, libc::O_RDONLY).expect("open");
    f.mem.kill(4);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    repair::repair_and_record(&f.vfs, Duration::from_secs(60)).expect("repair pass");
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!(risk.machines_off, Some(0), "no parity left");
    assert_eq!(risk.degraded, 2);
    let why: Vec<(&str, &str)> = risk
        .degraded_files
        .iter()
        .map(|d| (d.path.as_str(), d.why.as_str()))
        .collect();
    assert_eq!(
        why,
        vec![
            (
                "closed",
                "node 4 down 0 s, rebuilt after the grace (in 60 s)"
            ),
            (
                "open",
                "open: repaired after close; node 4 down 0 s, rebuilt after the grace (in 60 s)"
            ),
        ]
    );
    f.vfs.release(fh).expect("close");
    // Gone for good, and every live node holds a segment already.
    gone(&f, 4);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!(
        risk.degraded_files[0].why,
        "no node holds none of it: re-encoding to 2+1 queued"
    );
    let text = risk.render();
    assert!(
        text.contains(
            "  2 of 2 files with data on the pool degraded\n    closed: no node holds none of it"
        ),
        "{text}"
    );
    // Once repaired, nothing is degraded and one machine may be off again.
    repair_now(&f);
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!((risk.degraded, risk.machines_off), (0, Some(1)), "{risk:?}");
}

#[test]
fn status_names_degraded_files_up_to_a_limit_then_counts_them() {
    let f = fixture(3);
    for i in 0..status::DEGRADED_LIMIT + 2 {
        f.file(ROOT, format!("f{i:02}").as_bytes(), &pattern(2 * SHARD, 1));
    }
    f.mem.kill(2);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!(risk.degraded, status::DEGRADED_LIMIT + 2);
    assert_eq!(risk.degraded_files.len(), status::DEGRADED_LIMIT);
    assert!(
        risk.render().contains("    and 2 more degraded files\n"),
        "{}",
        risk.render()
    );
}

#[test]
fn a_file_a_narrower_shape_would_not_protect_better_waits_for_a_node_to_join() {
    let f = fixture(3);
    let data = pattern(3 * STRIPE as usize, 10);
    let ino = f.file(ROOT, b"f", &data);
    let old = f.manifest(ino);
    gone(&f, 3);
    // 2 + 1 with one holder gone has no spare shard; 2 + 0 on the two left has none
    // either: re-encoding would only cost traffic.
    let report = repair_now(&f);
    assert_eq!((report.reencoded, report.pending), (0, 1), "{report:?}");
    assert_eq!(f.manifest(ino), old);
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert!(
        risk.degraded_files[0]
            .why
            .ends_with("waits for a node to join"),
        "{:?}",
        risk.degraded_files
    );
    let spare = f.mem.add_node();
    let report = repair_now(&f);
    assert_eq!(report.rebuilt, 1, "{report:?}");
    assert_eq!(f.holders(ino), vec![1, 2, spare]);
    f.mem.kill(1);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_file_written_whole_on_stand_ins_is_re_encoded_when_its_holder_never_returns() {
    let f = fixture(4);
    let (inode, fh) = f.vfs.create(ROOT, b"f", 0o644, 1000, 1000).expect("create");
    // The file is placed (3 + 1 on nodes 1 to 4); node 4 dies before its first byte.
    f.vfs.write(fh, 0, b"x").expect("placed");
    f.mem.kill(4);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    let data = pattern(3 * 3 * SHARD + 5, 11);
    f.vfs.write(fh, 0, &data).expect("write");
    f.vfs.release(fh).expect("close");
    let m = f.manifest(inode.ino);
    assert_eq!(m.place.holders.len(), 4, "placed while node 4 was up");
    // Every stripe has 4 shards, two of them on one node: losing it loses the file.
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!(risk.machines_off, Some(0), "{risk:?}");
    gone(&f, 4);
    let report = repair_now(&f);
    assert_eq!(report.reencoded, 1, "{report:?}");
    let risk = status::pool_risk(&f.vfs).expect("risk");
    assert_eq!((risk.machines_off, risk.degraded), (Some(1), 0), "{risk:?}");
    f.mem.kill(3);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(inode.ino), data);
}

#[test]
fn a_file_narrowed_while_nodes_were_away_is_widened_again_once_they_are_back() {
    let f = fixture(8);
    let data = pattern(3 * 4 * SHARD + 99, 6);
    let ino = f.file(ROOT, b"f", &data);
    let shape = |f: &Fixture| {
        let m = f.manifest(ino);
        (m.place.layout.k, m.place.layout.m)
    };
    assert_eq!(shape(&f), (4, 4));
    // Half the pool away for good: 4 of 8 shards left, none more may go; re-encoded
    // as the 4 nodes left allow, it survives one more.
    for id in 5..=8 {
        gone(&f, id);
    }
    let narrowed = repair_now(&f);
    assert_eq!(narrowed.reencoded, 1, "{narrowed:?}");
    assert_eq!(shape(&f), (3, 1), "4 nodes left");
    // They come back: the policy gives 4 + 4 again, and the file gets it.
    for id in 5..=8 {
        f.mem.set_fault(id, None);
        f.mem.set_state(id, Some(crate::proto::NodeState::Up));
    }
    let widened = repair_now(&f);
    assert_eq!(widened.reencoded, 1, "{widened:?}");
    assert_eq!(shape(&f), (4, 4));
    let again = repair_now(&f);
    assert_eq!(
        again.reencoded, 0,
        "a file in the policy's shape stays: {again:?}"
    );
    // Any four may be off again, as before the outage.
    for id in [1, 3, 5, 7] {
        f.mem.kill(id);
    }
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}
