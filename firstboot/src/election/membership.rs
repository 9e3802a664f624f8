//! The membership as one node sees it (SPEC 4.4, `firstboot status`): the server seats, every
//! peer heard and whether it is heard now, who serves; and whether the seat holders heard now
//! are still a majority of the seats (etcd's quorum).
//!
//! Seen from the LAN, not from K3s: it is the same on agents and servers, and it still answers
//! when K3s cannot (a lost quorum stops the apiserver).

use super::{Millis, NodeId};

/// A peer not heard for this long counts as gone in the membership view: several hello periods
/// and longer than the candidate view's TTL, so that a late hello or two on a busy LAN does not
/// make a live server look gone (nor a quorum look lost).
pub const GONE_AFTER_MS: u64 = 10_000;

/// One peer this node has heard from (authenticated hellos only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The peer.
    pub node: NodeId,
    /// When its last hello arrived.
    pub last_heard: Millis,
    /// Heard within [`GONE_AFTER_MS`] before now.
    pub heard_now: bool,
    /// It said it serves its K3s role.
    pub serving: bool,
}

/// What this node knows of the cluster's members at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// This node.
    pub me: NodeId,
    /// This node serves its K3s role.
    pub serving: bool,
    /// Server seat holders in grant order: the seat book's on a serving server that keeps it,
    /// else the init's roster as this node last heard it; nodes the book removed are left out.
    pub seats: Vec<NodeId>,
    /// Every peer heard, by node id.
    pub peers: Vec<Seen>,
    /// The configured number of server seats (`servers`).
    pub servers: usize,
    /// The instant this view was taken (the clock of `last_heard`).
    pub now: Millis,
}

impl Membership {
    /// Whether `node` (a seat holder or any peer) is alive now: this node itself, or a peer heard
    /// within [`GONE_AFTER_MS`].
    pub fn alive(&self, node: NodeId) -> bool {
        node == self.me || self.peers.iter().any(|p| p.node == node && p.heard_now)
    }

    /// Seat holders alive now.
    pub fn live_seats(&self) -> usize {
        self.seats.iter().filter(|n| self.alive(**n)).count()
    }

    /// The seat holders alive now are not a majority of the seats: etcd has lost its quorum
    /// (or the only server is gone), so no node may remove or add a member (SPEC 4.4). Unknown
    /// (no seats known yet) is not lost.
    pub fn quorum_lost(&self) -> bool {
        !self.seats.is_empty() && self.live_seats() * 2 <= self.seats.len()
    }

    /// Peers heard before but not within [`GONE_AFTER_MS`], with when they were last heard.
    pub fn gone(&self) -> impl Iterator<Item = &Seen> + '_ {
        self.peers.iter().filter(|p| !p.heard_now)
    }

    /// Seconds between `at` and this view's instant.
    pub fn secs_before_now(&self, at: Millis) -> u64 {
        self.now.0.saturating_sub(at.0) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(node: u64, heard_now: bool) -> Seen {
        Seen {
            node: NodeId(node),
            last_heard: Millis(1_000),
            heard_now,
            serving: heard_now,
        }
    }

    fn membership(seats: &[u64], peers: Vec<Seen>) -> Membership {
        Membership {
            me: NodeId(1),
            serving: true,
            seats: seats.iter().copied().map(NodeId).collect(),
            peers,
            servers: 3,
            now: Millis(60_000),
        }
    }

    #[test]
    fn two_of_three_live_seats_keep_the_quorum_one_loses_it() {
        let m = membership(&[1, 2, 3], vec![seen(2, true), seen(3, false)]);
        assert_eq!(m.live_seats(), 2);
        assert!(!m.quorum_lost());
        let m = membership(&[1, 2, 3], vec![seen(2, false), seen(3, false)]);
        assert_eq!(
            m.live_seats(),
            1,
            "this node counts once, the two gone ones not"
        );
        assert!(m.quorum_lost());
    }

    #[test]
    fn an_agent_sees_the_quorum_of_the_seats_it_does_not_hold() {
        // This node (1) is an agent: it holds no seat; 2 of the 3 holders are gone.
        let m = membership(
            &[2, 3, 4],
            vec![seen(2, true), seen(3, false), seen(4, false)],
        );
        assert_eq!(m.live_seats(), 1);
        assert!(m.quorum_lost());
        assert_eq!(
            m.gone().map(|p| p.node).collect::<Vec<_>>(),
            [NodeId(3), NodeId(4)]
        );
    }

    #[test]
    fn half_of_an_even_seat_count_is_no_majority_and_no_seats_is_unknown() {
        let m = membership(&[1, 2, 3, 4], vec![seen(2, true)]);
        assert!(m.quorum_lost(), "2 of 4 is not a majority");
        assert!(!membership(&[], vec![]).quorum_lost());
        let single = membership(&[2], vec![seen(2, false)]);
        assert!(single.quorum_lost(), "the only server is gone");
    }
}
