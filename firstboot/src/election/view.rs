//! The peer view: who was heard, when, in which epoch and with what rank; the voters seen.
//!
//! Fed only by authenticated hellos and Paxos frames; read for the candidate view (undecided
//! voters of the epoch heard within the view's TTL), for seat candidates and for the quorum.

use std::collections::{BTreeMap, BTreeSet};

use super::membership::Seen;
use super::message::Hello;
use super::paxos::Value;
use super::rank::Rank;
use super::{Millis, NodeId};

/// What the last hello of one peer said.
#[derive(Clone, Debug)]
struct Peer {
    rank: Rank,
    last_heard: Millis,
    epoch: u32,
    decided: Option<Value>,
    serving: bool,
    wants_seat: bool,
}

/// Every peer heard from, and every voter seen.
#[derive(Debug)]
pub(super) struct PeerView {
    peers: BTreeMap<NodeId, Peer>,
    voters: BTreeSet<NodeId>,
    /// The voter count the quorum was last raised for.
    raised_for: usize,
    /// How long a peer stays in view after its last announcement.
    ttl_ms: u64,
}

impl PeerView {
    /// A view holding only this node (`me`) as a voter.
    pub(super) fn new(me: NodeId, ttl_ms: u64) -> PeerView {
        PeerView {
            peers: BTreeMap::new(),
            voters: BTreeSet::from([me]),
            raised_for: 0,
            ttl_ms,
        }
    }

    /// Records `sender`'s hello, heard at `now` in `epoch`.
    pub(super) fn heard(&mut self, now: Millis, sender: NodeId, epoch: u32, hello: &Hello) {
        let rank = Rank {
            pin: hello.pin,
            storage: hello.storage,
            ram_mib: hello.ram_mib,
            node: sender,
        };
        let peer = self.peers.entry(sender).or_insert(Peer {
            rank,
            last_heard: now,
            epoch,
            decided: None,
            serving: false,
            wants_seat: false,
        });
        peer.rank = rank;
        peer.last_heard = peer.last_heard.max(now);
        peer.epoch = epoch;
        peer.decided = hello.decided;
        // Serving only ever turns on, so a replayed old announcement cannot undo it.
        peer.serving |= hello.serving;
        peer.wants_seat = hello.wants_seat;
    }

    /// Counts `sender` as a voter; returns the voters seen when that is more than `nodes` for
    /// the first time at this count (the quorum must be raised, loudly).
    pub(super) fn add_voter(&mut self, sender: NodeId, nodes: usize) -> Option<usize> {
        if !self.voters.insert(sender) {
            return None;
        }
        let seen = self.voters.len();
        if seen > nodes && seen > self.raised_for {
            self.raised_for = seen;
            return Some(seen);
        }
        None
    }

    /// Distinct voters seen, this node included.
    pub(super) fn voters_seen(&self) -> usize {
        self.voters.len()
    }

    /// Ranks of the undecided peers of `epoch` heard within the TTL before `now`.
    pub(super) fn undecided(&self, now: Millis, epoch: u32) -> impl Iterator<Item = Rank> + '_ {
        self.fresh(now, epoch)
            .filter(|p| p.decided.is_none())
            .map(|p| p.rank)
    }

    /// Ranks of the peers of `epoch` heard within the TTL that know `decided` and ask for a seat.
    pub(super) fn seat_askers(
        &self,
        now: Millis,
        epoch: u32,
        decided: Option<Value>,
    ) -> impl Iterator<Item = Rank> + '_ {
        self.fresh(now, epoch)
            .filter(move |p| p.wants_seat && p.decided == decided)
            .map(|p| p.rank)
    }

    /// `node` said it serves its K3s role.
    pub(super) fn is_serving(&self, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|p| p.serving)
    }

    /// `node` said it serves and was heard within the TTL before `now`.
    pub(super) fn serves_now(&self, now: Millis, node: NodeId) -> bool {
        self.peers
            .get(&node)
            .is_some_and(|p| p.serving && p.last_heard.after(self.ttl_ms) > now)
    }

    /// Peers that said they serve and were heard within the TTL before `now`.
    pub(super) fn serving_now(&self, now: Millis) -> impl Iterator<Item = NodeId> + '_ {
        self.peers
            .iter()
            .filter(move |(node, _)| self.serves_now(now, **node))
            .map(|(node, _)| *node)
    }

    /// Every peer heard, by node id: when last, whether within `horizon_ms` (at least the TTL)
    /// before `now`, serving.
    pub(super) fn seen(&self, now: Millis, horizon_ms: u64) -> impl Iterator<Item = Seen> + '_ {
        let horizon = horizon_ms.max(self.ttl_ms);
        self.peers.iter().map(move |(node, p)| Seen {
            node: *node,
            last_heard: p.last_heard,
            heard_now: p.last_heard.after(horizon) > now,
            serving: p.serving,
        })
    }

    fn fresh(&self, now: Millis, epoch: u32) -> impl Iterator<Item = &Peer> + '_ {
        let ttl = self.ttl_ms;
        self.peers
            .values()
            .filter(move |p| p.epoch == epoch && p.last_heard.after(ttl) > now)
    }
}
