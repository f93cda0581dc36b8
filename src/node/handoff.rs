//! When a leaving node has handed off enough: it waits while owners move their
//! segments away, and stops waiting once it holds none, or once nothing has moved for
//! a while (no owner is left to move them, or no node can take them).

use std::time::{Duration, Instant};

/// How long a leaving node waits without any segment moving away before it gives up.
pub const HANDOFF_IDLE: Duration = Duration::from_secs(8);
/// The longest a leaving node waits in all.
pub const HANDOFF_MAX: Duration = Duration::from_secs(600);

/// What a leaving node should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffStep {
    /// Every segment is gone: leave.
    Done,
    /// Segments are still moving away: wait.
    Wait,
    /// This many bytes did not move in time: leave anyway.
    GiveUp(u64),
}

/// Watches what a leaving node still holds for others (bytes): progress is any
/// decrease, as owners delete what they have moved away.
#[derive(Debug)]
pub struct Handoff {
    started: Instant,
    progressed: Instant,
    left: u64,
    idle: Duration,
    max: Duration,
}

impl Handoff {
    /// Starts watching a node that holds `left` bytes for others now.
    pub fn new(left: u64, now: Instant) -> Self {
        Handoff::with_limits(left, now, HANDOFF_IDLE, HANDOFF_MAX)
    }

    /// As `new`, with other limits.
    pub fn with_limits(left: u64, now: Instant, idle: Duration, max: Duration) -> Self {
        Handoff {
            started: now,
            progressed: now,
            left,
            idle,
            max,
        }
    }

    /// The node now holds `left` bytes for others: what next?
    pub fn observe(&mut self, left: u64, now: Instant) -> HandoffStep {
        if left == 0 {
            return HandoffStep::Done;
        }
        if left < self.left {
            self.progressed = now;
        }
        self.left = left;
        let idle = now.duration_since(self.progressed) >= self.idle;
        if idle || now.duration_since(self.started) >= self.max {
            HandoffStep::GiveUp(left)
        } else {
            HandoffStep::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_while_segments_move_and_gives_up_when_they_stop() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut h = Handoff::with_limits(10, t0, 5 * s, 60 * s);
        assert_eq!(h.observe(10, t0 + 4 * s), HandoffStep::Wait);
        assert_eq!(
            h.observe(8, t0 + 6 * s),
            HandoffStep::Wait,
            "progress resets idle"
        );
        assert_eq!(h.observe(8, t0 + 10 * s), HandoffStep::Wait);
        assert_eq!(h.observe(8, t0 + 11 * s), HandoffStep::GiveUp(8));
        let mut h = Handoff::with_limits(10, t0, 5 * s, 60 * s);
        for i in 1..=9 {
            assert_eq!(h.observe(10 - i, t0 + 4 * i as u32 * s), HandoffStep::Wait);
        }
        assert_eq!(h.observe(0, t0 + 40 * s), HandoffStep::Done);
        let mut h = Handoff::with_limits(100, t0, 5 * s, 20 * s);
        assert_eq!(h.observe(99, t0 + 4 * s), HandoffStep::Wait);
        assert_eq!(
            h.observe(98, t0 + 21 * s),
            HandoffStep::GiveUp(98),
            "the cap holds"
        );
    }
}
