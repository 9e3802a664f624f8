//! The healer loop on a serving server: every [`ROUND`], take or renew the `firstboot-healer`
//! Lease, read the Nodes and the seat book through `k3s kubectl`, decide ([`super::decide`]) on
//! them and on the LAN view the daemon hands over, and carry out the one action.
//!
//! It runs in its own thread ([`spawn`]), so its kubectl calls (each a process and an apiserver
//! round trip, seconds when etcd is busy) never hold up the daemon's loop; the daemon only
//! replaces the shared [`LanView`] now and then.
//!
//! The actions, each logged with the node's name and why:
//! - delete a gone holder's Node with `k3s kubectl delete node NAME --wait=false`: never forced,
//!   so K3s's finalizer removes its etcd member before the object goes; the next rounds see the
//!   deletion in progress and wait;
//! - once the Node object is gone (so is its member), release the holder's seat in the book by
//!   compare-and-swap; the seat keeper grants it to a new card asking for a seat;
//! - grant a free seat to the best agent in the book by compare-and-swap (its promotion, see
//!   [`super::promotion`]); withdraw such a grant when the agent never takes it up.

use super::reflash::{self, Reflash};
use super::{decide, lease, nodes, Action, AgentView, Inputs, Why};
use crate::clock::unix_now;
use crate::model::NodeId;
use crate::seat_book::{KubectlError, Run, SeatStore, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the healer runs a round.
pub const ROUND: Duration = Duration::from_secs(5);
/// The Lease's duration: a holder that missed this many seconds of renewals (four rounds) lost
/// it to the next server that asks.
pub const LEASE_SECS: i64 = 20;

/// What the daemon sees of the LAN, handed to the healer (replaced as a whole).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LanView {
    /// Nodes heard on the LAN now (authenticated announcements within the election view's TTL).
    pub heard: Vec<NodeId>,
    /// New cards asking for a server seat now.
    pub new_cards: Vec<NodeId>,
    /// The names (hostnames) of the cards asking, as discovery knows them: a card asking under
    /// the name of a Node that is not Ready is a re-flashed card ([`super::reflash`]).
    pub card_names: Vec<(NodeId, String)>,
    /// Agents seen on the LAN, with their ranks.
    pub agents: Vec<AgentView>,
}

/// What one round did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `replace_after = "off"` and no re-flashed card asks: no round at all (no kubectl call
    /// while no card asks).
    Off,
    /// Another server holds the Lease: it heals, this one does nothing.
    NotLeader,
    /// No seat book in the cluster yet (the init writes it once it serves).
    NoBook,
    /// The decision, carried out (a deletion requested, a seat released) or nothing to do.
    Decided(Action),
}

/// Why a round failed (tried again next round).
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    /// kubectl failed (K3s restarting, the apiserver busy).
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
    /// The seat book could not be read or changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a new card seen asking for a seat keeps the healer from promoting an agent into
/// that seat, seconds (several hello intervals).
pub const CARD_MEMORY: i64 = 30;

/// One serving server's healer.
#[derive(Debug)]
pub struct Healer {
    kubectl: Arc<dyn Run>,
    store: SeatStore,
    me: NodeId,
    servers: usize,
    replace_after: Option<i64>,
    /// When each node was last heard on the LAN by this healer, unix seconds.
    lan_seen: BTreeMap<NodeId, i64>,
    /// When each new card was last seen asking for a seat, unix seconds.
    cards_seen: BTreeMap<NodeId, i64>,
    /// The last decision logged, so a steady state is logged once.
    last: Option<Action>,
    /// The Ready Node a card last asked under (logged once).
    name_in_use: Option<String>,
}

impl Healer {
    /// The healer of server `me` in a cluster of `servers` seats; `replace_after` `None` when
    /// "off".
    pub fn new(
        kubectl: Arc<dyn Run>,
        me: NodeId,
        servers: usize,
        replace_after: Option<Duration>,
    ) -> Healer {
        Healer {
            store: SeatStore::shared(kubectl.clone()),
            kubectl,
            me,
            servers,
            replace_after: replace_after.map(|d| d.as_secs() as i64),
            lan_seen: BTreeMap::new(),
            cards_seen: BTreeMap::new(),
            last: None,
            name_in_use: None,
        }
    }

    /// One round at `now` (unix seconds) on what the LAN shows.
    pub fn round(&mut self, lan: &LanView, now: i64) -> Result<Outcome, HealError> {
        // A card asking is on the LAN too (a re-flashed server is not gone while it asks).
        for node in lan.heard.iter().chain(&lan.new_cards).chain([&self.me]) {
            self.lan_seen.insert(*node, now);
        }
        // A card asking a moment ago still counts for CARD_MEMORY: one LAN view without it
        // (a hello late under load, the view taken between two hellos) must not hand its seat
        // to an agent, which would fill the book and send the card to an agent's role.
        for card in &lan.new_cards {
            self.cards_seen.insert(*card, now);
        }
        self.cards_seen.retain(|_, at| now - *at < CARD_MEMORY);
        let new_cards: Vec<NodeId> = self.cards_seen.keys().copied().collect();
        // With replace_after "off" the healer replaces no server, but still handles re-flashed
        // cards (no kubectl call while no card asks).
        if self.replace_after.is_none() && lan.new_cards.is_empty() {
            return Ok(Outcome::Off);
        }
        let me = self.me.to_string();
        if !lease::acquire(&*self.kubectl, &me, now, LEASE_SECS)? {
            self.last = None;
            return Ok(Outcome::NotLeader);
        }
        let list = self.kubectl.json(&["get", "nodes", "-o", "json"], None)?;
        let nodes = nodes::parse_nodes(&list);
        let Some((book, _)) = self.store.read()? else {
            return Ok(Outcome::NoBook);
        };
        let inputs = Inputs {
            servers: self.servers,
            replace_after: self.replace_after,
            now,
            nodes: &nodes,
            lan_seen: &self.lan_seen,
            book: &book,
            new_cards: &new_cards,
            agents: &lan.agents,
        };
        let reflash = reflash::decide(&inputs, &lan.card_names);
        if let Some(Reflash::DeleteOldNode { node, name }) = &reflash {
            tracing::info!(node = %name, id = %node,
                why = "a card asks for its role again (its frames are signed with the cluster's token) under the name of a Node that is not Ready: the same machine with a re-flashed card",
                "healer: deleting the old Node of a re-flashed card (not forced: K3s's finalizer removes its etcd member, K3s its node-password secret); the card is told its role once the Node is gone");
            match self
                .kubectl
                .output(&["delete", "node", name, "--wait=false"], None)
            {
                Ok(_) | Err(KubectlError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let action = Action::DeleteReflashed {
                node: *node,
                name: name.clone(),
            };
            self.last = Some(action.clone());
            return Ok(Outcome::Decided(action));
        }
        if let Some(Reflash::NameInUse { node, name }) = &reflash {
            if self.name_in_use.as_ref() != Some(name) {
                tracing::warn!(node = %name, id = %node,
                    "healer: a card asks for a role under the name of a Ready Node: a duplicate name, not a re-flashed card (or one back within K3s's 40 s node-monitor grace period); nothing is deleted while that Node is Ready, and the card is told nothing");
            }
        }
        self.name_in_use = match reflash {
            Some(Reflash::NameInUse { name, .. }) => Some(name),
            _ => None,
        };
        let action = decide(&inputs);
        // "off": nothing but the release of a dead join (see healer::PENDING_JOIN_EXPIRY).
        if self.replace_after.is_none() && !matches!(action, Action::Release(_)) {
            return Ok(Outcome::Off);
        }
        match &action {
            Action::DeleteNode { node, name } => {
                let after = self.replace_after.unwrap_or_default();
                tracing::info!(node = %name, id = %node,
                    why = %format!("not Ready in K3s and not heard on the LAN for {after} s (replace_after)"),
                    "healer: deleting the Node of a gone server (not forced: K3s's finalizer removes its etcd member)");
                match self
                    .kubectl
                    .output(&["delete", "node", name, "--wait=false"], None)
                {
                    Ok(_) | Err(KubectlError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Release(node) => {
                let name = book
                    .holders
                    .iter()
                    .find(|h| h.node == *node)
                    .map_or(String::new(), |h| h.name.clone());
                // By compare-and-swap on the book as it is when written: a seat another
                // healer released meanwhile is not released twice.
                let updated = self
                    .store
                    .update_existing(|book| ((), book.release(*node, now)))?;
                let released = updated.is_some_and(|u| u.wrote);
                tracing::info!(node = %name, id = %node, released,
                    why = "its Node object and etcd member are gone",
                    "healer: released the seat of a removed server");
            }
            Action::Promote { node, name } => {
                let granted = self.grant_promotion(*node, name, now)?;
                tracing::info!(node = %name, id = %node, granted,
                    why = "a seat is free, no new card asks for it and this agent is the best Ready one",
                    "healer: promoting an agent: its seat is granted in the book; the seat keepers tell it");
            }
            Action::Withdraw(node) => {
                let withdrawn = self
                    .store
                    .update_existing(|book| ((), book.withdraw(*node)))?
                    .is_some_and(|u| u.wrote);
                tracing::warn!(id = %node, withdrawn, timeout_secs = super::promotion::timeout(self.replace_after.unwrap_or_default()),
                    "healer: the agent granted a seat still runs as an agent: its grant is withdrawn and the seat is free again");
            }
            Action::DeleteReflashed { .. } => {}
            Action::Nothing(why) => {
                if self.last.as_ref() != Some(&action) {
                    log_nothing(why);
                }
            }
        }
        self.last = Some(action.clone());
        Ok(Outcome::Decided(action))
    }
}

impl Healer {
    /// Grants `node` (an agent named `name`) the free seat by compare-and-swap on the book as it
    /// is when written, with the book's own rules (never more than `servers` holders, one join
    /// at a time): a seat a keeper granted to a new card meanwhile is not granted twice.
    /// Whether this call wrote the grant.
    fn grant_promotion(&self, node: NodeId, name: &str, now: i64) -> Result<bool, HealError> {
        let servers = self.servers;
        let updated = self
            .store
            .update_existing(|book| ((), book.grant(node, name, now, servers).ok()))?;
        Ok(updated.is_some_and(|u| u.wrote))
    }
}

/// Logs a decision to do nothing (once per change): quorum lost loudly, the rest quietly.
fn log_nothing(why: &Why) {
    match why {
        Why::QuorumLost { alive, holders } => tracing::warn!(alive, holders,
            "healer: quorum lost (fewer live seat holders than a majority): no automatic removal or promotion; restore from a snapshot"),
        Why::Waiting(node, left) => tracing::info!(id = %node, seconds_left = left,
            "healer: a server is gone (not Ready, not heard on the LAN); replacing it after replace_after"),
        Why::Deleting(name) => tracing::info!(node = %name,
            "healer: waiting for a Node deletion (K3s's finalizer removes its etcd member)"),
        Why::NewCardWaiting(node) => tracing::info!(id = %node,
            "healer: a seat is free; the seat keeper grants it to the new card asking"),
        other => tracing::debug!(why = ?other, "healer: nothing to do"),
    }
}

/// Runs `healer` in its own thread: a round every [`ROUND`] on the latest `view`; a failed
/// round is logged and tried again.
pub fn spawn(
    mut healer: Healer,
    view: Arc<Mutex<LanView>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("healer".into())
        .spawn(move || loop {
            let lan = view.lock().map(|v| v.clone()).unwrap_or_default();
            if let Err(e) = healer.round(&lan, unix_now()) {
                tracing::warn!(error = %e, "healer round failed; retrying");
            }
            std::thread::sleep(ROUND);
        })
}

#[cfg(test)]
#[path = "round_tests.rs"]
mod tests;
