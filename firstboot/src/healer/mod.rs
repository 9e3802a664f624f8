//! Replacing a dead server (SPEC 4.4, `[cluster] replace_after`): the healer's decision as a pure function of what the cluster and the LAN show.
//!
//! A server is gone when K3s does not see it Ready and the LAN has not seen it either, both for
//! `replace_after`. The healer then, one step per round and only on the leader (the holder of
//! the `firstboot-healer` Lease, [`lease`]):
//! 1. deletes the gone server's Node object, non-forced: K3s's finalizer removes its etcd member
//!    before the object disappears (a forced deletion would skip that, so it is never used);
//! 2. once the Node object is gone (so is the member), releases its seat in the seat book;
//! 3. leaves a free seat to a new card that asks for one (the seat keeper grants it), else
//!    promotes the best Ready agent (SSD first, then RAM, then the lowest id; never one pinned
//!    to the agent role), see [`promotion`].
//!
//! Safety: the seat is released only after the member is gone, and granted only from a released
//! seat, so the voting members never exceed `servers`; nothing happens while a join is in
//! progress, and nothing at all while the live seat holders are not a majority of the holders
//! (quorum lost: any removal or grant could fork the cluster; status names the restore instead).
//!
//! The daemon runs this decision on every serving server in its own thread ([`round`]): the
//! Lease holder deletes the gone server's Node (`k3s kubectl delete node NAME --wait=false`) and
//! then releases its seat in the book; the seat keeper grants the freed seat to a new card,
//! which waits for it meanwhile instead of becoming an agent. With no new card asking, the
//! Lease holder grants the seat to the best agent in the book by compare-and-swap; the seat
//! keepers tell the agent (`SeatGranted`), which records the server role durably and joins as
//! a K3s server; a grant the agent never takes up is withdrawn ([`promotion`]).
//!
//! A card re-flashed in the same machine asks for its role again under the name of a Node K3s
//! still has: the Lease holder deletes that Node (never a Ready one) before the seat keepers
//! tell the card anything, also with `replace_after = "off"` ([`reflash`]).
//!
//! A released seat's former holder stays listed under the book's `removed`; when it comes back
//! (a healed partition), the seat keepers tell it, and it sets its etcd data aside and rejoins
//! through the seat book (`lifecycle/rejoin.rs`).

pub mod lease;
pub mod nodes;
pub mod promotion;
pub mod reflash;
pub mod round;

use crate::election::Rank;
use crate::model::{NodeId, RolePin};
use crate::seat_book::SeatBook;
use std::collections::BTreeMap;

/// K3s's Ready condition of a Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// `True`: the kubelet heartbeats.
    True,
    /// `False`: the kubelet reports not ready.
    False,
    /// `Unknown`: no heartbeat for node-monitor-grace-period.
    Unknown,
}

/// A Node object as `k3s kubectl get nodes -o json` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The Node's name (the hostname).
    pub name: String,
    /// Its Ready condition.
    pub ready: Ready,
    /// The condition's lastHeartbeatTime, unix seconds.
    pub last_heartbeat: i64,
    /// It carries a deletionTimestamp (a deletion is in progress: the finalizer runs).
    pub deleting: bool,
}

/// An agent the healer could promote: its Node name and its rank inputs (from discovery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView {
    /// Its K3s node name.
    pub name: String,
    /// Its rank (the node id inside).
    pub rank: Rank,
}

/// Everything the healer decides on.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `cluster.servers`.
    pub servers: usize,
    /// `cluster.replace_after` in seconds; `None` when "off".
    pub replace_after: Option<i64>,
    /// Now, unix seconds.
    pub now: i64,
    /// The Node objects K3s has.
    pub nodes: &'a [NodeView],
    /// When each node was last seen on the LAN (a verified record or frame), unix seconds.
    pub lan_seen: &'a BTreeMap<NodeId, i64>,
    /// The seat book.
    pub book: &'a SeatBook,
    /// New cards asking for a seat now.
    pub new_cards: &'a [NodeId],
    /// Agents (Nodes without a seat), with their ranks.
    pub agents: &'a [AgentView],
}

/// What the healer does this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do (or not allowed now); the reason is for the log and status.
    Nothing(Why),
    /// `k3s kubectl delete node NAME` (non-forced) for this gone seat holder.
    DeleteNode {
        /// The holder.
        node: NodeId,
        /// Its Node name.
        name: String,
    },
    /// The holder's Node (and etcd member) is gone: release its seat in the book.
    Release(NodeId),
    /// A seat is free and no new card asks: promote this agent to a server (grant it the seat
    /// in the book; the seat keepers tell it, see [`promotion`]).
    Promote {
        /// The agent.
        node: NodeId,
        /// Its Node name.
        name: String,
    },
    /// `k3s kubectl delete node NAME` (non-forced) for the old Node of a re-flashed card (see
    /// [`reflash`]); decided by [`reflash::decide`], not by [`decide`].
    DeleteReflashed {
        /// The card.
        node: NodeId,
        /// Its old Node's name.
        name: String,
    },
    /// The agent granted a seat still announces itself as an agent after
    /// [`promotion::timeout`]: it never took the promotion up, so its grant is withdrawn.
    Withdraw(NodeId),
}

/// Why the healer does nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// `replace_after = "off"`.
    Off,
    /// Every seat holder is alive and every seat is held.
    Healthy,
    /// A server join is in progress (one at a time).
    JoinInProgress(NodeId),
    /// A Node deletion is in progress (its finalizer removes the member).
    Deleting(String),
    /// This holder is not Ready or not seen, but not yet for `replace_after` (seconds left).
    Waiting(NodeId, i64),
    /// Fewer live holders than a majority: no automatic action could be safe.
    QuorumLost {
        /// Seat holders alive.
        alive: usize,
        /// Seat holders.
        holders: usize,
    },
    /// A seat is free for a new card that asks: the seat keeper grants it.
    NewCardWaiting(NodeId),
    /// A seat is free but there is no Ready agent to promote and no new card.
    NoCandidate,
}

/// How recently a LAN sighting makes a holder count as alive for the quorum check, seconds.
const LAN_FRESH: i64 = 30;

/// Since when `name`/`node` has been unseen by both K3s and the LAN (`None`: it is alive).
fn unseen_since(view: Option<&NodeView>, lan: Option<i64>, created: i64) -> Option<i64> {
    if view.is_some_and(|v| v.ready == Ready::True) {
        return None;
    }
    let heartbeat = view.map_or(created, |v| v.last_heartbeat);
    Some(heartbeat.max(lan.unwrap_or(created)))
}

/// Each seat holder: its id, its Node name, and since when it is unseen (`None`: alive).
fn unseen_holders<'a>(inputs: &Inputs<'a>) -> Vec<(NodeId, &'a str, Option<i64>)> {
    inputs
        .book
        .holders
        .iter()
        .map(|h| {
            let since = unseen_since(
                inputs.nodes.iter().find(|n| n.name == h.name),
                inputs.lan_seen.get(&h.node).copied(),
                h.granted_at,
            );
            // The later of the two sightings counts: a server K3s lost but the LAN still
            // sees (a broken K3s, a partition of the API only) is not gone.
            (h.node, h.name.as_str(), since)
        })
        .collect()
}

/// The seat holders alive for the quorum check, and all of them: alive is Ready in K3s, or
/// heard on the LAN just now (a conservative count: a server rebooting counts as down, so
/// nothing is removed while another one is).
fn alive_holders(inputs: &Inputs) -> (usize, usize) {
    let alive = unseen_holders(inputs)
        .iter()
        .filter(|(n, _, since)| {
            since.is_none()
                || inputs
                    .lan_seen
                    .get(n)
                    .is_some_and(|at| inputs.now - at < LAN_FRESH)
        })
        .count();
    (alive, inputs.book.holders.len())
}

/// The healer's one step (see the module docs for the rules).
/// With `replace_after = "off"`, how long a pending join whose node has no Node and is not heard
/// keeps its seat, seconds (the default `replace_after`).
pub const PENDING_JOIN_EXPIRY: i64 = 30 * 60;

pub fn decide(inputs: &Inputs) -> Action {
    let book = inputs.book;
    let node = |name: &str| inputs.nodes.iter().find(|n| n.name == name);
    if let Some(deleting) = inputs.nodes.iter().find(|n| n.deleting) {
        return Action::Nothing(Why::Deleting(deleting.name.clone()));
    }
    let unseen = unseen_holders(inputs);
    let (alive, holders) = alive_holders(inputs);
    if alive < holders / 2 + 1 {
        return Action::Nothing(Why::QuorumLost { alive, holders });
    }
    if let Some(pending) = &book.pending {
        // A joiner that never got a Node and vanished for replace_after frees its seat (a
        // learner it may have left is removed by K3s after 5 min; it never voted). With
        // replace_after "off" too, after PENDING_JOIN_EXPIRY: one join at a time, so a dead
        // join would otherwise block every later server seat for good.
        let expiry = inputs.replace_after.unwrap_or(PENDING_JOIN_EXPIRY);
        let joiner = unseen.iter().find(|(n, _, _)| *n == pending.node);
        if let Some((n, name, Some(since))) = joiner {
            if node(name).is_none() && inputs.now - since.max(&pending.since) >= expiry {
                return Action::Release(*n);
            }
        }
        if let Some(replace_after) = inputs.replace_after {
            if let Some(action) = promotion::pending(inputs, pending, replace_after) {
                return action;
            }
        }
        return Action::Nothing(Why::JoinInProgress(pending.node));
    }
    let Some(replace_after) = inputs.replace_after else {
        return Action::Nothing(Why::Off);
    };
    // The holder gone longest first.
    let mut gone: Vec<&(NodeId, &str, Option<i64>)> =
        unseen.iter().filter(|(_, _, s)| s.is_some()).collect();
    gone.sort_by_key(|(n, _, s)| (*s, *n));
    let mut waiting = None;
    for (n, name, since) in gone {
        let since = since.expect("filtered");
        let left = replace_after - (inputs.now - since);
        if left > 0 {
            waiting.get_or_insert(Why::Waiting(*n, left));
            continue;
        }
        return match node(name) {
            Some(_) => Action::DeleteNode {
                node: *n,
                name: name.to_string(),
            },
            // Its Node object is gone, so is its etcd member (non-forced deletion).
            None => Action::Release(*n),
        };
    }
    if let Some(why) = waiting {
        return Action::Nothing(why);
    }
    if holders >= inputs.servers {
        return Action::Nothing(Why::Healthy);
    }
    if let Some(card) = inputs.new_cards.iter().find(|c| !book.holds(**c)) {
        return Action::Nothing(Why::NewCardWaiting(*card));
    }
    inputs
        .agents
        .iter()
        .filter(|a| {
            // An agent pinned by `[node] role = "agent"` is never made a server.
            a.rank.pin != RolePin::Agent
                && !book.holds(a.rank.node)
                && node(&a.name).is_some_and(|v| v.ready == Ready::True)
        })
        .max_by_key(|a| a.rank)
        .map_or(Action::Nothing(Why::NoCandidate), |a| Action::Promote {
            node: a.rank.node,
            name: a.name.clone(),
        })
}

#[cfg(test)]
mod tests;
