//! The mount's repair passes (`Repairer`): a quiet pool costs a pass the files written
//! since the last one, not every file, and still nothing that needs repair waits for a
//! walk of everything.

use std::time::Duration;

use super::{fixture, pattern, Fixture, SHARD};
use crate::client::Fault;
use crate::fs::meta::ROOT;
use crate::fs::repair::{Repairer, ROLLING_PAGE};

fn pass(f: &Fixture, r: &mut Repairer, grace: Duration) -> crate::fs::repair::RepairReport {
    f.vfs.run(f.vfs.client().refresh_view()).expect("pool view");
    r.pass(&f.vfs, grace).expect("repair pass")
}

#[test]
fn a_quiet_pass_looks_at_what_was_written_not_at_every_file() {
    let f = fixture(3);
    let files = ROLLING_PAGE + 100;
    for i in 0..files {
        f.file(
            ROOT,
            format!("f{i}").as_bytes(),
            &pattern(SHARD + 1, i as u8),
        );
    }
    let mut r = Repairer::new(&f.vfs);
    let grace = Duration::from_secs(60);
    pass(&f, &mut r, grace);
    assert_eq!(
        (r.walks(), r.visited()),
        (1, files),
        "the first pass walks all"
    );
    let report = pass(&f, &mut r, grace);
    assert_eq!(r.walks(), 1, "nothing changed: no walk");
    assert!(r.visited() <= ROLLING_PAGE, "visited {}", r.visited());
    assert_eq!((report.rebuilt, report.pending), (0, 0));
    // The rolling safety net gets round to every file in a few quiet passes.
    let mut seen = r.visited();
    for _ in 0..4 {
        pass(&f, &mut r, grace);
        seen += r.visited();
    }
    assert!(seen >= files, "rolling walk saw {seen} of {files}");
    assert_eq!(r.walks(), 1);
}

#[test]
fn a_store_that_failed_on_a_node_still_up_is_brought_home_by_the_next_quiet_pass() {
    let f = fixture(3);
    let grace = Duration::from_secs(3600);
    let mut r = Repairer::new(&f.vfs);
    pass(&f, &mut r, grace);
    // Node 3 refuses the stores of a write, though the pool still lists it as up.
    f.mem.set_fault(3, Some(Fault::Down));
    let data = pattern(3 * SHARD, 9);
    let ino = f.file(ROOT, b"f", &data);
    f.mem.set_fault(3, None);
    let m = f.manifest(ino);
    assert!(
        m.has_moved()
            || m.records()
                .any(|(_, rec)| rec.missing(&m.place).count() > 0),
        "the write left node 3's shards away"
    );
    // The file may still be leaving the open set when a pass first looks: then it is
    // looked at again by the next one.
    let mut rebuilt = 0;
    for _ in 0..3 {
        rebuilt += pass(&f, &mut r, grace).rebuilt;
    }
    assert_eq!(r.walks(), 1, "the pool did not change: no walk");
    assert!(rebuilt > 0);
    let m = f.manifest(ino);
    assert!(!m.has_moved());
    assert_eq!(
        m.records()
            .map(|(_, rec)| rec.missing(&m.place).count())
            .sum::<usize>(),
        0
    );
    // Whole again: node 1 may go.
    f.mem.kill(1);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_node_gone_for_good_makes_the_next_pass_walk_and_rebuild_its_segments() {
    let f = fixture(3);
    let data = pattern(3 * SHARD, 4);
    let ino = f.file(ROOT, b"f", &data);
    let mut r = Repairer::new(&f.vfs);
    pass(&f, &mut r, Duration::ZERO);
    let spare = f.mem.add_node();
    f.mem.set_fault(2, Some(Fault::Down));
    f.mem.set_state(2, None);
    let report = pass(&f, &mut r, Duration::ZERO);
    assert_eq!(r.walks(), 2, "a node went: everything is looked at");
    assert_eq!((report.rebuilt, report.pending), (1, 0), "{report:?}");
    assert_eq!(f.holders(ino), vec![1, spare, 3]);
    f.mem.kill(1);
    f.vfs.run(f.vfs.client().refresh_view()).expect("view");
    assert_eq!(f.contents(ino), data);
}

#[test]
fn a_walk_of_everything_ends_when_the_mount_stops() {
    let f = fixture(3);
    for i in 0..3 {
        f.file(ROOT, format!("f{i}").as_bytes(), &pattern(SHARD + 1, i));
    }
    let mut r = Repairer::new(&f.vfs);
    f.vfs.stop_background();
    pass(&f, &mut r, Duration::from_secs(60));
    assert_eq!(
        (r.walks(), r.visited()),
        (0, 0),
        "a stopping mount walked its files"
    );
}
