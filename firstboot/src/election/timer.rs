//! The election's timers: one enum and one table (as quinn-proto's `connection/timer.rs`).
//!
//! Which timers are armed depends on the node's state (a resend only while a proposal is open,
//! the settle, retry and abandon timers only while the epoch is undecided); [`Node::poll_timeout`]
//! asks the table for each of them.
//!
//! [`Node::poll_timeout`]: super::Node::poll_timeout

use super::Millis;

/// One of the election's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The next presence announcement (always armed).
    Hello,
    /// Resending an unanswered prepare or accept.
    Resend,
    /// The end of the back-off after a refused ballot.
    Retry,
    /// The end of the settle time after start: no proposal before it.
    Settle,
    /// Proposing `Abandon` when the best candidate, or the elected node, stays quiet.
    Abandon,
}

impl Timer {
    /// Every timer, in the order [`Node::handle_timeout`](super::Node::handle_timeout) handles them.
    pub(super) const VALUES: [Timer; 5] = [
        Timer::Hello,
        Timer::Resend,
        Timer::Retry,
        Timer::Settle,
        Timer::Abandon,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// When each timer fires, if it is set.
#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable {
    at: [Option<Millis>; 5],
}

impl TimerTable {
    /// Sets `timer` to fire at `at`.
    pub(super) fn set(&mut self, timer: Timer, at: Millis) {
        self.at[timer.slot()] = Some(at);
    }

    /// Stops `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer.slot()] = None;
    }

    /// When `timer` fires, if set.
    pub(super) fn get(&self, timer: Timer) -> Option<Millis> {
        self.at[timer.slot()]
    }

    /// `timer` is set and due at `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Millis) -> bool {
        self.get(timer).is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_timer_has_its_own_slot() {
        let mut table = TimerTable::default();
        for (i, timer) in Timer::VALUES.into_iter().enumerate() {
            table.set(timer, Millis(i as u64 * 10));
        }
        for (i, timer) in Timer::VALUES.into_iter().enumerate() {
            assert_eq!(table.get(timer), Some(Millis(i as u64 * 10)));
        }
        table.stop(Timer::Resend);
        assert_eq!(table.get(Timer::Resend), None);
        assert!(!table.is_expired(Timer::Resend, Millis(1_000)));
        assert!(table.is_expired(Timer::Retry, Millis(20)));
        assert!(!table.is_expired(Timer::Settle, Millis(29)));
    }
}
