//! Bootstrap election core (sans-IO; docs/architecture.md, "Safety"): at most one node ever runs cluster-init.
//!
//! Each bootstrap epoch runs two single-decree Paxos instances over an electorate of `nodes` voters
//! with strict-majority quorums, each with its own ballots and acceptor state (persisted with fsync
//! before any reply that reveals it):
//! - the leader instance decides `Init(x)` (x is elected) or `Abandon`;
//! - after `Init(x)`, the fate instance decides `Init(x)` ("Go") or `Abandon`. x proposes Go at
//!   once; every other node that has not learned the fate within `abandon_ms` (plus jitter) proposes
//!   `Abandon`, which, as Paxos requires, carries forward any Go an acceptor already accepted.
//!
//! x runs cluster-init only once Go is decided and persisted; everyone else joins x only then, and
//! x grants server seats one at a time. `Abandon` from either instance moves everyone to the next
//! epoch, where they elect again; x, if it comes back, learns it (from any frame of a later epoch
//! or from the fate's acceptors) and rejoins as an ordinary candidate, never initializing for the
//! abandoned epoch. So an elected node that dies before Go is replaced, and never two inits.
//! The driver feeds datagrams and timeouts in and polls frames, timers, persist requests and events
//! out; frames and events that depend on persisted state are released only after it is durable.
//!
//! API notes (protocol version 2): `Event::Decided` reports an epoch's final value only: `Init(x)`
//! once x's Go is decided, `Abandon` from either instance; `Event::Role` comes after Go. Paxos
//! bodies carry an [`Instance`]; [`Hello::decided`] announces only a final value.
//! [`PersistedState`] gained the fate acceptor and Go (older state files are upconverted by
//! [`legacy`]); [`ElectionStatus`] gained `elected` (x while its fate is open).
//!
//! Limits, all chosen so that safety never depends on timing:
//! - Once any node other than x has accepted x's Go, Go may be (or become) decided, and x may
//!   already have initialized: if x then dies for good, formation waits for it. Replacing x there
//!   could split the brain. The window is one round trip: from x's Accept(Go) reaching an acceptor
//!   to x learning Go; the simulator counts those runs and asserts liveness in all others.
//! - `Abandon` in the leader instance is decided only when no `Init` was accepted by the prepare
//!   quorum, e.g. when the best-ranked node stays silent.
//! - A node with an open fate answers each undecided hello with the elected `Init`, so while a fate
//!   stays open (x dead after its Go was accepted) that traffic continues at the hello rate.
//! - A granted seat is never revoked, so a seat holder that never joins holds up the next seats.
//! - Only the init node grants seats from the election alone; serving servers relay its roster in
//!   their hellos (a server keeps its copy durably), so a late node gets its role from any
//!   serving server (and [`Node::role_via`] names it). In a full run ([`Node::use_seat_book`])
//!   the election grants nothing by itself: every seat is written to the cluster's seat book
//!   ([`crate::seat_book`]) first, by any serving server's keeper, which then tells the node
//!   (`SeatGranted`; the init also adds it to its roster). While the book has a free seat,
//!   servers relay the roster without the removed nodes, and while a holder is gone (not heard
//!   serving) without that holder, so a new card waits for that seat instead of reading a full
//!   roster as "join as an agent" (the seat keepers then grant, wait or send it to an agent).
//! - A node booting after the cluster exists learns it from any decided peer's hello (decided
//!   nodes answer an undecided hello at once); it proposes only after `settle_ms`. The driver should
//!   also pass what discovery already knows (authenticated TXT records, as [`Body::Hello`] through
//!   [`Node::handle_message`]) before the first timeout, so that a late node that cannot hear the
//!   cluster in time never forms an undecided quorum of its own.
//!
//! Measured with `cargo run --release -p systests --bin election-bench` (simulated ms after a
//! majority booted, p50/p99 of 2000 quiet-LAN runs per row; "elected" is the leader instance,
//! "init" the first node learning Go, "formed" every node serving; 3 server seats):
//!
//! | nodes | loss | elected     | init        | formed       |
//! |-------|------|-------------|-------------|--------------|
//! | 3     | 0%   | 1586 / 2809 | 1670 / 2895 | 5776 / 9402  |
//! | 3     | 20%  | 1612 / 3979 | 1722 / 4355 | 6354 / 10661 |
//! | 5     | 0%   | 1280 / 3095 | 1387 / 3188 | 6332 / 9904  |
//! | 5     | 20%  | 1641 / 3979 | 2033 / 4264 | 7211 / 11005 |
//! | 7     | 0%   | 964 / 3116  | 1070 / 3217 | 6349 / 9790  |
//! | 7     | 20%  | 1731 / 3861 | 2199 / 4160 | 7404 / 11082 |
//!
//! The fate round costs about 0.1 s at p50 without loss (up to 0.5 s with 20% loss, one resend).
//!
//! Layout (each concern in one file, as quinn-proto splits a connection): `api` (public types),
//! `node` (the state machine's steps; `tracing::debug!` at each state change), `epoch`
//! ([`EpochState`], one method per transition), `instance` ([`Acceptors`] indexed by
//! [`Instance`]), `timer` (the timer enum and table), `view` (the peers heard), `outbox` (the
//! persist-gated outbox: the safety mechanism), `state` ([`PersistedState`] and its on-disk
//! layout), [`legacy`] (older layouts upconverted), `status`, `rules`, `paxos`, `message`,
//! `auth`, `rank`, `seats`, `jitter`, and [`driver`] (the async adapter).
//!
//! A driver's loop, here for a one-node cluster that elects itself:
//!
//! ```
//! use firstboot::election::*;
//! use firstboot::keys::MacKey;
//!
//! let token = b"a-cluster-token-of-16+-chars";
//! let config = ElectionConfig {
//!     rank: Rank { pin: RolePin::Auto, storage: 100, ram_mib: 4096, node: NodeId(0xb0a7d) },
//!     nodes: 1,
//!     servers: 1,
//!     cluster: ClusterId::derive(token, 1, 1),
//!     key: MacKey::election(token),
//!     seed: 42,
//!     timing: Timing::default(),
//! };
//! let mut node = Node::new(config, Millis(0), None);
//! let mut role = None;
//! while role.is_none() {
//!     // Sleep until the next timer (or a datagram: pass it to `node.handle_datagram`).
//!     let now = node.poll_timeout().expect("the hello timer is always armed");
//!     node.handle_timeout(now);
//!     while let Some(request) = node.poll_persist() {
//!         // Write `request.state` durably (temp file, fsync, rename), then:
//!         node.persisted(request.seq);
//!     }
//!     while let Some(transmit) = node.poll_transmit() {
//!         // Send `transmit.frame` to `transmit.to` (every peer, or one).
//!         assert!(transmit.frame.len() <= MAX_FRAME);
//!     }
//!     while let Some(event) = node.poll_event() {
//!         if let Event::Role(r) = event {
//!             role = Some(r);
//!         }
//!     }
//! }
//! assert_eq!(role, Some(Role::ClusterInit));
//! ```

mod api;
mod auth;
pub mod driver;
mod epoch;
mod instance;
mod jitter;
pub mod legacy;
mod membership;
mod message;
mod node;
mod outbox;
mod paxos;
mod rank;
mod rules;
mod seats;
mod state;
mod status;
mod timer;
mod view;

use serde::{Deserialize, Serialize};

pub use api::{Destination, ElectionConfig, Event, PersistRequest, Timing, Transmit};
pub use auth::{ClusterId, CLUSTER_ID_LEN, MAC_LEN};
pub use driver::{ElectionDriver, ElectionStore, PersistHook};
pub use epoch::EpochState;
pub use instance::Acceptors;
pub use membership::{Membership, Seen};
pub use message::{
    Body, DecodeError, Envelope, Hello, Instance, MAX_FRAME, MAX_ROSTER, PROTOCOL_VERSION,
};
pub use node::{BookView, Node};
pub use paxos::{Acceptor, Ballot, Value};
pub use rank::Rank;
pub use rules::{Paxos, Rules};
pub use state::PersistedState;
pub use status::ElectionStatus;

pub use crate::model::{NodeId, Role, RolePin};

/// A point on the driver's monotonic clock in milliseconds; the core never reads a clock.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Millis(pub u64);

impl Millis {
    /// This instant plus `ms` milliseconds (saturating).
    pub fn after(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}
