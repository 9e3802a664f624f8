//! A joiner waiting for the init node's announcement (sans-IO): queries with fresh nonces, checks answers.
//!
//! An answer counts only if it comes from the init node this node joins, echoes the nonce of a
//! query still outstanding (each nonce is used once), and arrives within [`MAX_RTT`] of that
//! query: so an announcement recorded earlier and replayed later, with its stale clock, is
//! ignored, and the clock estimate is off by at most half a round trip.

use super::frame::{Announcement, Body, Frame, Nonce};
use crate::election::NodeId;
use std::time::{Duration, Instant};

/// Answers slower than this are ignored: the clock estimate would be too uncertain.
pub const MAX_RTT: Duration = Duration::from_secs(1);
/// Queries remembered at once (older ones are forgotten, their answers ignored).
const OUTSTANDING: usize = 4;

/// An announcement heard in answer to one of our queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// What the init node announced.
    pub announcement: Announcement,
    /// The init node's clock minus ours, µs, with the round trip compensated (half each way).
    pub offset_usec: i64,
    /// The query's round trip.
    pub rtt: Duration,
}

/// Why an authentic frame was not taken as the awaited announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// A query, or an answer from a node other than the init node.
    NotFromInit,
    /// Its nonce matches no outstanding query: a replay, a duplicate, or a forgotten query.
    UnknownNonce,
    /// It came back after [`MAX_RTT`].
    TooLate,
}

/// The joiner's side of the exchange with one init node.
#[derive(Debug)]
pub struct AnnouncementWait {
    me: NodeId,
    init: NodeId,
    outstanding: Vec<(Nonce, Instant)>,
}

impl AnnouncementWait {
    /// Waits for `init`'s announcement on behalf of node `me`.
    pub fn new(me: NodeId, init: NodeId) -> Self {
        AnnouncementWait {
            me,
            init,
            outstanding: Vec::new(),
        }
    }

    /// The init node awaited.
    pub fn init(&self) -> NodeId {
        self.init
    }

    /// A query frame with the fresh `nonce`, sent at `now`.
    pub fn query(&mut self, nonce: Nonce, now: Instant) -> Frame {
        if self.outstanding.len() >= OUTSTANDING {
            self.outstanding.remove(0);
        }
        self.outstanding.push((nonce, now));
        Frame {
            sender: self.me,
            nonce,
            body: Body::Query { init: self.init },
        }
    }

    /// Checks an authentic frame received at `now` (monotonic) when our wall clock read
    /// `local_usec`; the nonce is spent either way.
    pub fn answer(
        &mut self,
        frame: &Frame,
        now: Instant,
        local_usec: i64,
    ) -> Result<Heard, Ignored> {
        let Body::Announcement(announcement) = frame.body else {
            return Err(Ignored::NotFromInit);
        };
        if frame.sender != self.init {
            return Err(Ignored::NotFromInit);
        }
        let index = self
            .outstanding
            .iter()
            .position(|(nonce, _)| *nonce == frame.nonce)
            .ok_or(Ignored::UnknownNonce)?;
        let (_, sent) = self.outstanding.remove(index);
        let rtt = now.saturating_duration_since(sent);
        if rtt > MAX_RTT {
            return Err(Ignored::TooLate);
        }
        // The init read its clock about half a round trip before the answer reached us.
        let half = (rtt.as_micros() / 2) as i64;
        Ok(Heard {
            announcement,
            offset_usec: announcement.clock_usec.saturating_add(half) - local_usec,
            rtt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k3s::CaHash;
    use crate::storage::etcd::EtcdTuning;

    const INIT: NodeId = NodeId(1);
    const ME: NodeId = NodeId(2);
    const T: i64 = 1_780_000_000_000_000;

    fn answer_to(query: &Frame, sender: NodeId, clock_usec: i64) -> Frame {
        Frame {
            sender,
            nonce: query.nonce,
            body: Body::Announcement(Announcement {
                ca_hash: CaHash::of_bundle(b"ca"),
                clock_usec,
                api: "198.18.0.10:6443".parse().unwrap(),
                etcd: EtcdTuning::K3S_DEFAULT,
            }),
        }
    }

    #[test]
    fn an_answer_compensates_half_the_round_trip() {
        let mut wait = AnnouncementWait::new(ME, INIT);
        let t0 = Instant::now();
        let q = wait.query(Nonce([1; 16]), t0);
        assert_eq!(q.body, Body::Query { init: INIT });
        // Init's clock is an hour ahead; the answer takes 200 ms round trip.
        let heard = wait
            .answer(
                &answer_to(&q, INIT, T + 3_600_000_000),
                t0 + Duration::from_millis(200),
                T + 200_000,
            )
            .unwrap();
        assert_eq!(heard.rtt, Duration::from_millis(200));
        assert_eq!(heard.offset_usec, 3_600_000_000 + 100_000 - 200_000);
    }

    #[test]
    fn replays_strangers_and_late_answers_are_ignored() {
        let mut wait = AnnouncementWait::new(ME, INIT);
        let t0 = Instant::now();
        let first = wait.query(Nonce([1; 16]), t0);
        let answer = answer_to(&first, INIT, T);
        assert!(wait.answer(&answer, t0, T).is_ok());
        // The same answer again (a replay of an old clock value): its nonce is spent.
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            wait.answer(&answer, later, T + 600_000_000),
            Err(Ignored::UnknownNonce)
        );
        // An answer signed by another member of the cluster, not the init node.
        let second = wait.query(Nonce([2; 16]), later);
        assert_eq!(
            wait.answer(&answer_to(&second, NodeId(3), T), later, T),
            Err(Ignored::NotFromInit)
        );
        // A query is not an answer.
        assert_eq!(wait.answer(&second, later, T), Err(Ignored::NotFromInit));
        // Too slow to trust its clock.
        assert_eq!(
            wait.answer(&answer_to(&second, INIT, T), later + MAX_RTT * 2, T),
            Err(Ignored::TooLate)
        );
        // Old queries are forgotten, their answers with them.
        let mut queries: Vec<Frame> = (10..20u8)
            .map(|i| wait.query(Nonce([i; 16]), later))
            .collect();
        let newest = queries.pop().unwrap();
        assert_eq!(
            wait.answer(&answer_to(&queries[0], INIT, T), later, T),
            Err(Ignored::UnknownNonce)
        );
        assert!(wait.answer(&answer_to(&newest, INIT, T), later, T).is_ok());
    }
}
