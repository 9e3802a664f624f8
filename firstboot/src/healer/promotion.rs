//! Promoting an agent (SPEC 4.4): the hand-off of a seat from the book to an agent, and what the healer does while it is pending.
//!
//! 1. The healer ([`super::round`]) grants the free seat to the agent in the seat book by
//!    compare-and-swap, as a seat keeper grants one: the agent becomes a holder and the book's
//!    pending join, so no other seat is granted until it serves as a voting member.
//! 2. An agent has no admin kubeconfig and cannot read the book: every serving server's seat
//!    keeper round tells the pending joiner, while its signed record still says `agent`, with
//!    the election's signed `SeatGranted` frame (the same frame a new card gets), every round
//!    until the agent acts. So the grant reaches the agent even if the healer that wrote it dies
//!    the next moment.
//! 3. The agent (its daemon, `lifecycle`) records the server role durably (the election's
//!    fsync'd state) before anything else, publishes `promoting` in its record, asks a serving
//!    server for the cluster's announcement and joins as a K3s server; its record says `server`
//!    only once K3s is active there, and only then do the keepers end the pending join.
//! 4. A grant the agent never takes up (an older firstboot that ignores the frame, a node
//!    pinned to the agent role by a mismatched config) would hold up every later join: when
//!    the agent still announces itself as an agent [`timeout`] after the grant, the healer
//!    withdraws the grant ([`crate::seat_book::SeatBook::withdraw`]; the agent is not recorded
//!    as removed), and the seat is free for a new card or another agent.
//! 5. A pending joiner that keeps its Node object (a promoted agent that died mid-way) and is
//!    gone for `replace_after` is deleted like any gone server (non-forced: its etcd member, if
//!    it got one, goes with it), then its seat is released.
//!
//! Limit: the agent cannot write the book, so its taking the grant up and the withdrawal are
//! not one compare-and-swap. An agent that hears its grant only after [`timeout`] (at least
//! 120 s; it is repeated every 3 s and the agent's record changes within seconds) while the
//! healer withdraws it would join without a seat. The timeout is chosen far above that path's
//! delays on a LAN; a node pinned to the agent role or outside book mode never acts on a grant.

use super::{Action, Inputs, Ready};
use crate::seat_book::PendingJoin;

/// The least time an agent has to take up its promotion, seconds; it normally takes it within
/// one seat-keeper round (3 s) and says so in its record within seconds.
pub const MIN_TIMEOUT: i64 = 120;

/// How long after the grant an agent that still announces itself as an agent loses it:
/// `replace_after`, at least [`MIN_TIMEOUT`].
pub fn timeout(replace_after: i64) -> i64 {
    replace_after.max(MIN_TIMEOUT)
}

/// What the healer does about the pending join `pending`, if it is a promotion that stalled
/// (see the module docs, points 4 and 5); `None`: wait for the join.
pub fn pending(inputs: &Inputs, pending: &PendingJoin, replace_after: i64) -> Option<Action> {
    let waited = inputs.now - pending.since;
    if inputs.agents.iter().any(|a| a.rank.node == pending.node) {
        // Still heard announcing itself as an agent: it has not taken the grant up.
        return (waited >= timeout(replace_after)).then_some(Action::Withdraw(pending.node));
    }
    let holder = inputs
        .book
        .holders
        .iter()
        .find(|h| h.node == pending.node)?;
    let view = inputs.nodes.iter().find(|n| n.name == holder.name)?;
    if view.ready == Ready::True {
        return None;
    }
    let lan = inputs.lan_seen.get(&pending.node).copied();
    let since = view
        .last_heartbeat
        .max(lan.unwrap_or(pending.since))
        .max(pending.since);
    (inputs.now - since >= replace_after).then(|| Action::DeleteNode {
        node: pending.node,
        name: holder.name.clone(),
    })
}
