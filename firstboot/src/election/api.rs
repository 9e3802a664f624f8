//! The election's public types: its configuration, what the driver sends and persists, its events.

use super::auth::ClusterId;
use super::paxos::Value;
use super::rank::Rank;
use super::state::PersistedState;
use super::{NodeId, Role};
use crate::keys::MacKey;

/// Timer settings in milliseconds; the defaults suit a LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Interval between presence announcements (jittered by up to a fifth).
    pub hello_ms: u64,
    /// How long a peer stays in view after its last announcement.
    pub view_ttl_ms: u64,
    /// Time after start to collect announcements before proposing.
    pub settle_ms: u64,
    /// Resend interval of an unanswered prepare or accept (plus up to as much jitter).
    pub resend_ms: u64,
    /// Upper bound of the random back-off after a refused ballot.
    pub backoff_ms: u64,
    /// Quiet time (plus up to half as much jitter) after which a node that is not the best
    /// candidate proposes `Abandon` (which still carries forward any accepted value); also how long
    /// a node waits after learning `Init(x)` for x's fate to be decided before proposing `Abandon`
    /// in the fate instance.
    pub abandon_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            hello_ms: 1000,
            view_ttl_ms: 3500,
            settle_ms: 1500,
            resend_ms: 700,
            backoff_ms: 1000,
            abandon_ms: 6000,
        }
    }
}

/// Everything a node needs to take part in one cluster's election.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// This node's rank inputs (and its id).
    pub rank: Rank,
    /// The bootstrap electorate (`cluster.nodes`).
    pub nodes: u8,
    /// Desired K3s servers (`cluster.servers`).
    pub servers: u8,
    /// This cluster's id.
    pub cluster: ClusterId,
    /// Key authenticating frames.
    pub key: MacKey,
    /// Seed for timer jitter (any value; differs per node and per boot in practice).
    pub seed: u64,
    /// Timer settings.
    pub timing: Timing,
}

/// A request to persist `state` durably, then call [`Node::persisted`](super::Node::persisted) with `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistRequest {
    /// Sequence number to acknowledge.
    pub seq: u64,
    /// The state to write.
    pub state: PersistedState,
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Every peer of the cluster (multicast or one datagram per discovered peer).
    All,
    /// One peer.
    Node(NodeId),
}

/// A frame to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Recipient.
    pub to: Destination,
    /// The encoded, authenticated frame.
    pub frame: Vec<u8>,
}

/// Something the driver acts on or reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An epoch's final value became known (released only once persisted): `Init(x)` once x was
    /// elected and its fate decided Go, `Abandon` when either instance decided it.
    Decided {
        /// The epoch.
        epoch: u32,
        /// Its value.
        value: Value,
    },
    /// This node's role: act on it (released once persisted; repeated after a restart). It
    /// changes at most once, from an agent's to a server's, when a serving server tells the
    /// agent that the seat book holds a seat for it (a promotion, SPEC 4.4).
    Role(Role),
    /// More distinct voters than `nodes` were seen: the quorum was raised. Report it loudly.
    QuorumRaised {
        /// Distinct voters seen, this node included.
        seen: usize,
        /// The quorum now required.
        quorum: usize,
    },
    /// A serving server says the seat book records this server as removed (its Node and etcd
    /// member deleted while it was away): set its etcd data aside and rejoin through the seat
    /// book (see [`crate::election::Node::forget_role`]).
    Removed {
        /// When the book recorded the removal, unix seconds.
        at: i64,
        /// The serving server that said so.
        via: NodeId,
    },
}
