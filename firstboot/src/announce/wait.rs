//! A joiner waiting for a serving server's announcement (sans-IO): queries with fresh nonces, checks answers.
//!
//! The joiner may ask any server it believes serves (the init node, or any server relaying the
//! roster); an answer counts only if it comes from the server that query addressed, echoes the
//! nonce of a query still outstanding (each nonce is used once), and arrives within [`MAX_RTT`]
//! of that query: so an announcement recorded earlier and replayed later, with its stale clock,
//! is ignored, and the clock estimate is off by at most half a round trip.

use super::frame::{Announcement, Body, Frame, Nonce};
use crate::election::NodeId;
use std::time::{Duration, Instant};

/// Answers slower than this are ignored: the clock estimate would be too uncertain.
pub const MAX_RTT: Duration = Duration::from_secs(1);
/// Queries remembered at once (older ones are forgotten, their answers ignored).
const OUTSTANDING: usize = 4;

/// An announcement heard in answer to one of our queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heard {
    /// The server that answered.
    pub from: NodeId,
    /// What it announced.
    pub announcement: Announcement,
    /// The server's clock minus ours, µs, with the round trip compensated (half each way).
    pub offset_usec: i64,
    /// The query's round trip.
    pub rtt: Duration,
}

/// Why an authentic frame was not taken as the awaited announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// A query, or an answer from a node other than the one the query addressed.
    NotFromAddressed,
    /// Its nonce matches no outstanding query: a replay, a duplicate, or a forgotten query.
    UnknownNonce,
    /// It came back after [`MAX_RTT`].
    TooLate,
}

/// The joiner's side of the exchange with the cluster's serving servers.
#[derive(Debug)]
pub struct AnnouncementWait {
    me: NodeId,
    /// Queries still outstanding: nonce, when sent, the server addressed.
    outstanding: Vec<(Nonce, Instant, NodeId)>,
}

impl AnnouncementWait {
    /// Waits for an announcement on behalf of node `me`.
    pub fn new(me: NodeId) -> Self {
        AnnouncementWait {
            me,
            outstanding: Vec::new(),
        }
    }

    /// A query to server `to` with the fresh `nonce`, sent at `now`.
    pub fn query(&mut self, to: NodeId, nonce: Nonce, now: Instant) -> Frame {
        if self.outstanding.len() >= OUTSTANDING {
            self.outstanding.remove(0);
        }
        self.outstanding.push((nonce, now, to));
        Frame {
            sender: self.me,
            nonce,
            body: Body::Query { to },
        }
    }

    /// Checks an authentic frame received at `now` (monotonic) when our wall clock read
    /// `local_usec`; the nonce is spent once its addressee answered (a node it did not address
    /// cannot spend it).
    pub fn answer(
        &mut self,
        frame: &Frame,
        now: Instant,
        local_usec: i64,
    ) -> Result<Heard, Ignored> {
        let Body::Announcement(announcement) = &frame.body else {
            return Err(Ignored::NotFromAddressed);
        };
        let index = self
            .outstanding
            .iter()
            .position(|(nonce, _, _)| *nonce == frame.nonce)
            .ok_or(Ignored::UnknownNonce)?;
        if self.outstanding[index].2 != frame.sender {
            return Err(Ignored::NotFromAddressed);
        }
        let (_, sent, _) = self.outstanding.remove(index);
        let rtt = now.saturating_duration_since(sent);
        if rtt > MAX_RTT {
            return Err(Ignored::TooLate);
        }
        // The server read its clock about half a round trip before the answer reached us.
        let half = (rtt.as_micros() / 2) as i64;
        Ok(Heard {
            from: frame.sender,
            announcement: announcement.clone(),
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
                etcd: EtcdTuning::K3S_DEFAULT,
                servers: vec!["198.18.0.10:6443".parse().unwrap()],
            }),
        }
    }

    #[test]
    fn an_answer_compensates_half_the_round_trip() {
        let mut wait = AnnouncementWait::new(ME);
        let t0 = Instant::now();
        let q = wait.query(INIT, Nonce([1; 16]), t0);
        assert_eq!(q.body, Body::Query { to: INIT });
        // Init's clock is an hour ahead; the answer takes 200 ms round trip.
        let heard = wait
            .answer(
                &answer_to(&q, INIT, T + 3_600_000_000),
                t0 + Duration::from_millis(200),
                T + 200_000,
            )
            .unwrap();
        assert_eq!(heard.rtt, Duration::from_millis(200));
        assert_eq!(heard.from, INIT);
        assert_eq!(heard.offset_usec, 3_600_000_000 + 100_000 - 200_000);
    }

    #[test]
    fn replays_strangers_and_late_answers_are_ignored() {
        let mut wait = AnnouncementWait::new(ME);
        let t0 = Instant::now();
        let first = wait.query(INIT, Nonce([1; 16]), t0);
        let answer = answer_to(&first, INIT, T);
        assert!(wait.answer(&answer, t0, T).is_ok());
        // The same answer again (a replay of an old clock value): its nonce is spent.
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            wait.answer(&answer, later, T + 600_000_000),
            Err(Ignored::UnknownNonce)
        );
        // An answer signed by another member of the cluster, not the server addressed.
        let second = wait.query(INIT, Nonce([2; 16]), later);
        assert_eq!(
            wait.answer(&answer_to(&second, NodeId(3), T), later, T),
            Err(Ignored::NotFromAddressed)
        );
        // A query is not an answer.
        assert_eq!(
            wait.answer(&second, later, T),
            Err(Ignored::NotFromAddressed)
        );
        // Too slow to trust its clock.
        assert_eq!(
            wait.answer(&answer_to(&second, INIT, T), later + MAX_RTT * 2, T),
            Err(Ignored::TooLate)
        );
        // Old queries are forgotten, their answers with them.
        let mut queries: Vec<Frame> = (10..20u8)
            .map(|i| wait.query(INIT, Nonce([i; 16]), later))
            .collect();
        let newest = queries.pop().unwrap();
        assert_eq!(
            wait.answer(&answer_to(&queries[0], INIT, T), later, T),
            Err(Ignored::UnknownNonce)
        );
        assert!(wait.answer(&answer_to(&newest, INIT, T), later, T).is_ok());
    }

    #[test]
    fn any_server_addressed_may_answer_when_the_init_is_gone() {
        let mut wait = AnnouncementWait::new(ME);
        let t0 = Instant::now();
        // The init is asked first and never answers; server 3 is asked next and answers.
        let to_init = wait.query(INIT, Nonce([1; 16]), t0);
        let to_three = wait.query(NodeId(3), Nonce([2; 16]), t0);
        // Server 3 answering the query sent to the init does not count.
        assert_eq!(
            wait.answer(&answer_to(&to_init, NodeId(3), T), t0, T),
            Err(Ignored::NotFromAddressed)
        );
        let heard = wait
            .answer(&answer_to(&to_three, NodeId(3), T), t0, T)
            .unwrap();
        assert_eq!(heard.from, NodeId(3));
        assert_eq!(
            heard.announcement.servers,
            ["198.18.0.10:6443".parse::<std::net::SocketAddr>().unwrap()]
        );
    }
}
