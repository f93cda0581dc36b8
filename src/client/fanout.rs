//! Fan-out: how many holders a stripe write needs (its quorum), how long slower holders
//! may still take once it has them (grace), and how a stripe read asks k holders and
//! one more each time it is late (hedging), giving up on one after a deadline.

use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use super::suspects::Suspects;
use super::Layout;
use crate::proto::NodeId;

/// A shard fetch slower than this is routed around (another holder is asked).
pub const READ_DEADLINE: Duration = Duration::from_millis(1000);
/// A stripe read still short of k shards after this long asks one more holder (hedging),
/// and again after each further such wait: a holder that went silent (a pulled cable
/// drops packets without a reset) costs a reader this, not `READ_DEADLINE`.
pub const HEDGE_AFTER: Duration = Duration::from_millis(250);
/// Once a stripe has enough stored shards, how long the slower holders may still take.
pub const STRAGGLER_GRACE: Duration = Duration::from_millis(500);
/// How long a stripe write waits on its holders while it has fewer stored shards than
/// it needs; the shards still unanswered then go to stand-ins. Without it, a holder
/// that hangs (a suspended laptop keeps its connections open) holds a close for the
/// whole call timeout (30 s) until the controller's view catches up.
pub const STORE_DEADLINE: Duration = Duration::from_secs(5);

/// Stored shards a stripe write (or a reservation) needs before it counts as done:
/// with parity k + 1, so that one more loss leaves it readable; without, all k.
pub fn write_quorum(layout: &Layout) -> usize {
    if layout.m == 0 {
        layout.segments() as usize
    } else {
        layout.k as usize + 1
    }
}

/// Awaits `stores` (each yields its shard index `< n` and its outcome) until every one
/// has answered, or until `needed` succeeded and `STRAGGLER_GRACE` passed since, or
/// until `STORE_DEADLINE` passed short of `needed`: which shards are stored, and the
/// failures in the order they came. A store still running at the end is dropped
/// (cancelled); its shard counts as not stored.
pub async fn gather_stores<E, F>(
    stores: impl IntoIterator<Item = F>,
    n: usize,
    needed: usize,
) -> (Vec<bool>, Vec<E>)
where
    F: Future<Output = (usize, Result<(), E>)>,
{
    let mut pending: FuturesUnordered<F> = stores.into_iter().collect();
    let mut stored = vec![false; n];
    let mut failures = Vec::new();
    let mut grace: Option<tokio::time::Instant> = None;
    let short = tokio::time::Instant::now() + STORE_DEADLINE;
    loop {
        // With the quorum: the stragglers' grace; without: the store deadline. Either
        // way a silent holder is left to the stand-ins rather than waited on.
        let deadline = grace.unwrap_or(short);
        let next = match tokio::time::timeout_at(deadline, pending.next()).await {
            Ok(next) => next,
            Err(_) => break,
        };
        match next {
            None => break,
            Some((i, Ok(()))) => stored[i] = true,
            Some((_, Err(e))) => failures.push(e),
        }
        let count = stored.iter().filter(|s| **s).count();
        if count >= needed && grace.is_none() {
            grace = Some(tokio::time::Instant::now() + STRAGGLER_GRACE);
        }
    }
    (stored, failures)
}

/// Why one shard could not be used for a read.
#[derive(Debug)]
pub enum ShardFailure {
    /// Its holder failed, was late or is unknown: the shard may be fine.
    Unreachable(String),
    /// Its bytes are wrong (checksum or authentication): it must be rewritten.
    Corrupt(String),
}

impl std::fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardFailure::Unreachable(why) | ShardFailure::Corrupt(why) => f.write_str(why),
        }
    }
}

/// What a hedged read gathered.
pub struct Gathered<T> {
    /// `shards[i]`: shard i, if it was read.
    pub shards: Vec<Option<T>>,
    /// How many shards were read (k when the read succeeded).
    pub have: usize,
    /// Why each failed shard failed, in the order they failed.
    pub failures: Vec<String>,
    /// Shards whose bytes were wrong: to be rewritten.
    pub corrupt: Vec<usize>,
}

/// Reads `k` of `n` shards: asks the first `k` of `order` at once, and the next one in
/// `order` each time a shard fails and each time the read is `HEDGE_AFTER` late (then
/// every holder not answered yet becomes suspect). Answers clear their holder's
/// suspicion, unreachable holders become suspect; `node(i)` is the holder of shard i.
/// Stops at k shards, or when no holder is left to ask.
pub async fn hedged_read<T, F, Fut>(
    order: Vec<usize>,
    n: usize,
    k: usize,
    fetch: F,
    suspects: &Suspects,
    node: impl Fn(usize) -> NodeId,
) -> Gathered<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (usize, Result<T, ShardFailure>)>,
{
    let mut order = order.into_iter();
    let mut got = Gathered {
        shards: (0..n).map(|_| None).collect(),
        have: 0,
        failures: Vec::new(),
        corrupt: Vec::new(),
    };
    // Holders asked that have not answered yet.
    let mut outstanding: Vec<usize> = order.by_ref().take(k).collect();
    let mut pending: FuturesUnordered<_> = outstanding.iter().map(|&i| fetch(i)).collect();
    let mut hedge_at = tokio::time::Instant::now() + HEDGE_AFTER;
    while got.have < k {
        let (i, result) = match tokio::time::timeout_at(hedge_at, pending.next()).await {
            Ok(Some(answer)) => answer,
            Ok(None) => break,
            Err(_) => {
                // Late: whoever has not answered yet is suspect; ask one more holder.
                for h in &outstanding {
                    suspects.mark(node(*h));
                }
                if let Some(next) = order.next() {
                    outstanding.push(next);
                    pending.push(fetch(next));
                }
                hedge_at += HEDGE_AFTER;
                continue;
            }
        };
        outstanding.retain(|&h| h != i);
        match result {
            Ok(shard) => {
                suspects.clear(node(i));
                got.shards[i] = Some(shard);
                got.have += 1;
            }
            Err(why) => {
                if matches!(why, ShardFailure::Corrupt(_)) {
                    got.corrupt.push(i);
                } else {
                    suspects.mark(node(i));
                }
                got.failures.push(why.to_string());
                if let Some(next) = order.next() {
                    outstanding.push(next);
                    pending.push(fetch(next));
                }
            }
        }
    }
    got
}

#[cfg(test)]
mod tests {
    //! On a paused tokio clock: time moves only when every task waits, so the waits
    //! below are exact.
    use std::time::Duration;

    use tokio::time::{sleep, Instant};

    use super::*;

    /// A store of shard `i` that answers `ok` after `after` (`None`: never).
    async fn store(i: usize, after: Option<u64>, ok: bool) -> (usize, Result<(), String>) {
        match after {
            Some(ms) => sleep(Duration::from_millis(ms)).await,
            None => futures::future::pending().await,
        }
        (
            i,
            if ok {
                Ok(())
            } else {
                Err(format!("shard {i} refused"))
            },
        )
    }

    #[test]
    fn the_write_quorum_is_k_plus_one_with_parity_and_everything_without() {
        let table = [
            ((2, 1), 3),
            ((3, 1), 4),
            ((1, 1), 2),
            ((4, 2), 5),
            ((1, 0), 1),
            ((3, 0), 3),
        ];
        for ((k, m), want) in table {
            let layout = Layout {
                k,
                m,
                shard_size: 4096,
            };
            assert_eq!(write_quorum(&layout), want, "k={k} m={m}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_delays_a_write_by_the_grace_only() {
        let t = Instant::now();
        let stores = vec![
            store(0, Some(0), true),
            store(1, Some(10), true),
            store(2, None, true),
        ];
        let (stored, failures) = gather_stores(stores, 3, 2).await;
        assert_eq!(stored, vec![true, true, false]);
        assert!(failures.is_empty());
        assert_eq!(t.elapsed(), Duration::from_millis(10) + STRAGGLER_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_straggler_answering_within_the_grace_is_counted() {
        let t = Instant::now();
        let stores = vec![
            store(0, Some(0), true),
            store(1, Some(0), true),
            store(2, Some(300), true),
        ];
        let (stored, _) = gather_stores(stores, 3, 2).await;
        assert_eq!(stored, vec![true, true, true]);
        assert_eq!(t.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn short_of_the_quorum_a_write_waits_for_every_holder() {
        let t = Instant::now();
        let stores = vec![
            store(0, Some(0), true),
            store(1, Some(5), false),
            store(2, Some(4000), true),
        ];
        let (stored, failures) = gather_stores(stores, 3, 3).await;
        assert_eq!(stored, vec![true, false, true]);
        assert_eq!(failures, vec!["shard 1 refused".to_string()]);
        assert_eq!(t.elapsed(), Duration::from_millis(4000));
    }

    #[tokio::test(start_paused = true)]
    async fn short_of_the_quorum_a_hung_holder_is_given_up_at_the_store_deadline() {
        // 4 + 3 with three holders hung (suspended, connections open): only 4 of the 5
        // shards needed ever answer. The write gives up on the hung ones at the
        // deadline, for stand-ins to take their shards, not at the 30 s call timeout.
        let t = Instant::now();
        let stores = (0..7).map(|i| store(i, (i < 4).then_some(1), true));
        let (stored, failures) = gather_stores(stores, 7, 5).await;
        assert_eq!(stored, vec![true, true, true, true, false, false, false]);
        assert!(failures.is_empty());
        assert_eq!(t.elapsed(), STORE_DEADLINE);
    }

    /// A fetch of shard `i` per `plan[i]`: after so many ms (`None`: never), its index,
    /// or a failure (`Err(true)`: corrupt).
    async fn fetch(
        i: usize,
        plan: &[(Option<u64>, Result<(), bool>)],
    ) -> (usize, Result<usize, ShardFailure>) {
        let (after, outcome) = &plan[i];
        match after {
            Some(ms) => sleep(Duration::from_millis(*ms)).await,
            None => futures::future::pending().await,
        }
        let r = match outcome {
            Ok(()) => Ok(i),
            Err(true) => Err(ShardFailure::Corrupt(format!("shard {i} is corrupt"))),
            Err(false) => Err(ShardFailure::Unreachable(format!("shard {i} is away"))),
        };
        (i, r)
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_stripe_read_asks_one_more_holder_after_the_hedge_delay() {
        let plan = [(None, Ok(())), (Some(0), Ok(())), (Some(0), Ok(()))];
        let suspects = Suspects::default();
        let t = Instant::now();
        let got = hedged_read(
            vec![0, 1, 2],
            3,
            2,
            |i| fetch(i, &plan),
            &suspects,
            |i| i as NodeId + 1,
        )
        .await;
        assert_eq!(got.have, 2);
        assert_eq!(got.shards, vec![None, Some(1), Some(2)]);
        assert_eq!(t.elapsed(), HEDGE_AFTER);
        assert!(
            suspects.is_suspect(1),
            "the silent holder is asked last for a while"
        );
        assert!(!suspects.is_suspect(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_shard_is_replaced_at_once_and_a_corrupt_one_noted_for_healing() {
        let plan = [
            (Some(0), Err(true)),
            (Some(1), Err(false)),
            (Some(2), Ok(())),
            (Some(3), Ok(())),
        ];
        let suspects = Suspects::default();
        let t = Instant::now();
        let got = hedged_read(
            vec![0, 1, 2, 3],
            4,
            2,
            |i| fetch(i, &plan),
            &suspects,
            |i| i as NodeId + 1,
        )
        .await;
        assert_eq!((got.have, got.corrupt.clone()), (2, vec![0]));
        assert_eq!(got.failures.len(), 2);
        assert!(
            t.elapsed() < HEDGE_AFTER,
            "no hedge wait: {:?}",
            t.elapsed()
        );
        assert!(!suspects.is_suspect(1), "a corrupt shard's holder answered");
        assert!(suspects.is_suspect(2), "an unreachable holder is suspect");
    }
}
