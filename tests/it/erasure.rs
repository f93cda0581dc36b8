//! No data lost: Reed-Solomon parity lets files survive dead nodes and flipped bytes.

use crate::harness;
use std::fs;
use std::time::{Duration, Instant};

use crate::harness::cluster::{assert_ok, wait_until, Cluster};
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
    let seg = harness::cluster::segment_path(&c.storage(i), &m.place.file_id, 0).unwrap();
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

#[test]
fn part_of_one_data_shard_alone_is_verified_and_falls_back_when_bad() {
    let c = Cluster::start(3);
    let len = 4 * MIB + 100_001; // two full stripes (k = 2) and a short one
    let data = put(&c, "f", len, 6, &[]);
    let m = Catalog::new(&c.catalog()).load("f").unwrap();
    let client = PoolClient::new(c.client_config());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layout = m.place.layout;
    for j in 0..layout.stripe_count(m.size) {
        let stripe_len = m.stripe_len(j);
        let shard_len = layout.shard_len(stripe_len) as usize;
        let start = (j * layout.stripe_size()) as usize;
        for i in 0..layout.k as usize {
            let from = (start + i * shard_len).min(start + stripe_len as usize);
            let to = (from + shard_len).min(start + stripe_len as usize);
            let mut shard = data[from..to].to_vec();
            shard.resize(shard_len, 0); // the last shard of a short stripe is padded
                                        // The whole shard, then a few bytes from its middle: whatever comes back
                                        // covers what was asked and holds the right bytes.
            let mid = shard_len / 2;
            for want in [0..shard_len, mid..mid + 10] {
                let (at, got) = rt
                    .block_on(client.read_data_range(
                        &m.place,
                        j,
                        stripe_len,
                        m.stripe(j),
                        i,
                        want.clone(),
                    ))
                    .unwrap_or_else(|e| panic!("stripe {j} shard {i} {want:?}: {e}"));
                assert!(at <= want.start && want.end <= at + got.len(), "{want:?}");
                assert!(
                    got == shard[at..at + got.len()],
                    "stripe {j} shard {i} {want:?}: wrong bytes"
                );
            }
        }
    }
    // A flipped byte in shard 0 of stripe 0: the shard alone is refused, never returned,
    // and a read of the stripe gets the right bytes from the others and heals it.
    let holder = m.place.holders[0].node_id;
    let n = (0..3).find(|&n| c.node_id(n) == holder).unwrap();
    let seg = harness::cluster::segment_path(&c.storage(n), &m.place.file_id, 0).unwrap();
    let good = fs::read(&seg).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0x5a;
    fs::write(&seg, &bad).unwrap();
    let stripe_len = m.stripe_len(0);
    let err = rt
        .block_on(client.read_data_range(&m.place, 0, stripe_len, m.stripe(0), 0, 0..100))
        .expect_err("a corrupt shard must not be returned");
    let err = err.to_string();
    assert!(
        err.contains("checksum") || err.contains("fails authentication"),
        "{err}"
    );
    let got = rt.block_on(client.read_range(&m, 0, 100)).unwrap();
    assert_eq!(got, &data[..100]);
    assert_eq!(fs::read(&seg).unwrap(), good, "the bad shard is healed");
}
