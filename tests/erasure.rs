//! No data lost: Reed-Solomon parity lets files survive dead nodes and flipped bytes.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{assert_ok, wait_until, Cluster};
use poolfs::client::catalog::Catalog;
use poolfs::client::PoolClient;
use poolfs::proto::NodeState;

const MIB: usize = 1 << 20;

fn wait_down(c: &Cluster, victim: usize) {
    wait_until(
        "the killed node to be marked down",
        Duration::from_secs(10),
        || {
            let view = c.try_status().ok()?;
            (Cluster::info(&view, &c.nodes[victim])?.state == NodeState::Down).then_some(())
        },
    );
}

fn fetch(c: &Cluster, name: &str) -> Result<Vec<u8>, String> {
    let out = c.path(&format!("{name}.out"));
    let got = c.get(name, &out);
    if !got.status.success() {
        return Err(String::from_utf8_lossy(&got.stderr).into_owned());
    }
    let bytes = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    Ok(bytes)
}

fn put(c: &Cluster, name: &str, len: usize, seed: u64, extra: &[&str]) -> Vec<u8> {
    let (src, data) = c.random_file(name, len, seed);
    let src = src.display().to_string();
    let mut args = vec!["put", src.as_str(), "--name", name];
    args.extend_from_slice(extra);
    assert_ok(&c.cli(&args).output().unwrap(), "put");
    data
}

#[test]
fn one_dead_node_of_four_loses_nothing() {
    let mut c = Cluster::start(4);
    let data = put(&c, "f", 7 * MIB + 12_345, 1, &[]);
    let m = Catalog::new(&c.catalog()).load("f").unwrap();
    assert_eq!(
        (m.place.layout.k, m.place.layout.m),
        (3, 1),
        "default parity on 4 nodes"
    );

    // Kill a holder of a data segment, before the controller even notices.
    c.nodes[0].kill();
    let started = Instant::now();
    assert_eq!(fetch(&c, "f").unwrap(), data, "read with one node dead");
    eprintln!(
        "whole-file read with a dead node took {:?}",
        started.elapsed()
    );

    // Byte ranges route around the dead node too, each well under a second.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = PoolClient::new(c.client_config());
    for (offset, len) in [
        (0u64, 1u64),
        (3 * MIB as u64 - 1, 2),
        (5 * MIB as u64 + 7, 100_000),
    ] {
        let t = Instant::now();
        let got = rt.block_on(client.read_range(&m, offset, len)).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "range read stalled {:?}",
            t.elapsed()
        );
        assert_eq!(got, data[offset as usize..(offset + len) as usize]);
    }

    // Writes go on with a node down: k + 1 shards are enough.
    wait_down(&c, 0);
    let more = put(&c, "g", 2 * MIB + 1, 2, &[]);
    assert_eq!(fetch(&c, "g").unwrap(), more);
}

#[test]
fn two_dead_of_four_fail_fast_and_recover_when_one_returns() {
    let mut c = Cluster::start(4);
    let data = put(&c, "f", 4 * MIB + 3, 3, &[]);
    c.nodes[1].kill();
    c.nodes[2].kill();
    let started = Instant::now();
    let err = fetch(&c, "f").unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failure took {:?}",
        started.elapsed()
    );
    assert!(err.contains("only 2 could be read"), "unclear error: {err}");
    assert!(!c.path("f.out").exists(), "no partial output");
    c.nodes[2].restart();
    assert_eq!(
        fetch(&c, "f").unwrap(),
        data,
        "read after one node came back"
    );
}

#[test]
fn flipped_bytes_are_never_returned_and_the_shard_is_healed() {
    let c = Cluster::start(3);
    let data = put(&c, "f", 3 * MIB, 4, &[]);
    let m = Catalog::new(&c.catalog()).load("f").unwrap();
    // Corrupt segment 0 (a data shard) on whichever node holds it.
    let holder = m.place.holders[0].node_id;
    let i = (0..3).find(|&i| c.node_id(i) == holder).unwrap();
    let seg = common::segment_path(&c.storage(i), &m.place.file_id, 0).unwrap();
    let good = fs::read(&seg).unwrap();
    let mut bad = good.clone();
    for b in bad.iter_mut().skip(1000).step_by(4096) {
        *b ^= 0x5a;
    }
    fs::write(&seg, &bad).unwrap();
    assert_eq!(
        fetch(&c, "f").unwrap(),
        data,
        "bytes served from the other shards"
    );
    let healed = fs::read(&seg).unwrap();
    assert_eq!(
        healed, good,
        "the corrupt shard was rewritten with its right bytes"
    );
}

#[test]
fn six_nodes_with_two_parity_survive_two_kills() {
    let mut c = Cluster::start(6);
    let data = put(&c, "f", 9 * MIB + 5, 5, &["--parity", "2"]);
    let m = Catalog::new(&c.catalog()).load("f").unwrap();
    assert_eq!((m.place.layout.k, m.place.layout.m), (4, 2));
    c.nodes[0].kill();
    c.nodes[3].kill();
    assert_eq!(fetch(&c, "f").unwrap(), data);
}
