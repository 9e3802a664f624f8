//! The election state machine of one node: inputs in, polled outputs out; no sockets, clock or entropy.

use super::api::{Destination, ElectionConfig, Event, PersistRequest, Timing, Transmit};
use super::auth::ClusterId;
use super::instance::Acceptors;
use super::jitter::Jitter;
use super::membership::{Membership, GONE_AFTER_MS};
use super::message::{Body, DecodeError, Envelope, Hello, Instance, MAX_ROSTER};
use super::outbox::Outbox;
use super::paxos::{Acceptor, Ballot, Phase, Proposal, Value, Verdict};
use super::rank::Rank;
use super::rules::{Paxos, Rules};
use super::seats;
use super::state::PersistedState;
use super::status::ElectionStatus;
use super::timer::{Timer, TimerTable};
use super::view::PeerView;
use super::{Millis, NodeId, Role, RolePin};
use crate::keys::MacKey;

/// One node's election: feed it frames and timeouts, poll it for what to do.
#[derive(Debug)]
pub struct Node<R: Rules = Paxos> {
    rank: Rank,
    nodes: usize,
    servers: usize,
    cluster: ClusterId,
    key: MacKey,
    timing: Timing,
    jitter: Jitter,
    state: PersistedState,
    outbox: Outbox,
    peers: PeerView,
    proposal: Option<Proposal>,
    max_round: u32,
    last_now: Millis,
    timers: TimerTable,
    /// The longest roster heard for the decided init: from the init itself or relayed by a
    /// serving seat holder (rosters only grow and all are prefixes of the init's).
    init_roster: Vec<NodeId>,
    /// Who sent `init_roster`: the live node a late joiner got its role from.
    roster_via: Option<NodeId>,
    /// Seats are granted through the cluster's seat book (SPEC 4.4), not by the init alone.
    book_mode: bool,
    /// The seat book as the daemon last read it (on a serving server in book mode).
    book: Option<BookView>,
    /// This node was removed from the cluster and rejoins ([`Node::rejoin_after_removal`]): a
    /// roster naming it is stale (its old seat), so only the seat book grants it a seat again.
    rejoining: bool,
    rules: R,
}

/// What a serving server knows of the cluster's seat book ([`crate::seat_book::SeatBook`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BookView {
    /// Seat holders (the pending joiner included).
    pub holders: Vec<NodeId>,
    /// Whether a server join is in progress.
    pub pending: bool,
    /// Nodes removed from the cluster (their seats released).
    pub removed: Vec<NodeId>,
}

impl Node {
    /// Starts a node at `now`, fresh or rebuilt from the state it last persisted.
    pub fn new(config: ElectionConfig, now: Millis, restored: Option<PersistedState>) -> Node {
        Node::with_rules(config, now, restored, Paxos)
    }
}

impl<R: Rules> Node<R> {
    /// [`Node::new`] under other [`Rules`] (the simulator's self-test breaks one on purpose).
    pub fn with_rules(
        config: ElectionConfig,
        now: Millis,
        restored: Option<PersistedState>,
        rules: R,
    ) -> Node<R> {
        let state = restored.unwrap_or_default();
        let rejoining = state.rejoining;
        let me = config.rank.node;
        let mut outbox = Outbox::new(rules.release_after_persist());
        if let Some(role) = state.role {
            // Restored from disk: already durable.
            outbox.emit_now(Event::Role(role));
        }
        let peers = PeerView::new(me, config.timing.view_ttl_ms);
        let mut timers = TimerTable::default();
        timers.set(Timer::Hello, now);
        timers.set(Timer::Resend, now);
        timers.set(Timer::Retry, now);
        timers.set(Timer::Settle, now.after(config.timing.settle_ms));
        // The init keeps the roster; a server keeps the copy it relays once serving.
        let init_roster = match state.role {
            Some(Role::ClusterInit | Role::Server { .. }) => state.roster.clone(),
            _ => Vec::new(),
        };
        Node {
            rank: config.rank,
            nodes: usize::from(config.nodes.max(1)),
            servers: usize::from(config.servers).clamp(1, MAX_ROSTER),
            cluster: config.cluster,
            key: config.key,
            timing: config.timing,
            jitter: Jitter(config.seed),
            state,
            outbox,
            peers,
            proposal: None,
            max_round: 0,
            last_now: now,
            timers,
            init_roster,
            roster_via: None,
            book_mode: false,
            book: None,
            rejoining,
            rules,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.rank.node
    }

    /// Handles one received datagram and returns its authenticated sender (so the driver can map
    /// node ids to source addresses); frames that are not authentic frames of this cluster are rejected.
    pub fn handle_datagram(&mut self, now: Millis, frame: &[u8]) -> Result<NodeId, DecodeError> {
        let envelope = Envelope::decode(frame, &self.cluster, &self.key)?;
        let sender = envelope.sender;
        self.handle_message(now, envelope);
        Ok(sender)
    }

    /// Handles one message the driver has already authenticated (e.g. a discovery announcement
    /// turned into a [`Body::Hello`]); never pass it unauthenticated input.
    pub fn handle_message(&mut self, now: Millis, envelope: Envelope) {
        self.last_now = self.last_now.max(now);
        let Envelope {
            epoch,
            sender,
            body,
        } = envelope;
        if sender == self.id() {
            return;
        }
        if epoch > self.state.epoch {
            if self.state.epoch_state.is_go() {
                // An epoch whose fate is Go is final; a later epoch cannot exist under the contract.
                return;
            }
            // Nodes only ever enter an epoch after every earlier one decided Abandon (in its leader
            // or its fate instance), so x's fate cannot be Go any more either.
            let old = self.state.epoch;
            self.emit_after_persist(Event::Decided {
                epoch: old,
                value: Value::Abandon,
            });
            self.enter_epoch(now, epoch);
        }
        if epoch < self.state.epoch {
            if !matches!(
                body,
                Body::Hello(_) | Body::Nack { .. } | Body::Decided { .. }
            ) {
                // The sender is behind: our announcement moves it to our epoch.
                self.send_hello(Destination::Node(sender));
            }
            return;
        }
        match body {
            Body::Hello(hello) => self.on_hello(now, sender, hello),
            Body::Prepare { instance, ballot } => {
                self.note_voter(sender);
                if instance == self.instance() {
                    self.timers.stop(Timer::Abandon);
                }
                self.on_prepare(now, sender, instance, ballot);
            }
            Body::Promise {
                instance,
                ballot,
                accepted,
            } => {
                self.note_voter(sender);
                self.on_promise(now, sender, instance, ballot, accepted);
            }
            Body::Nack {
                instance,
                ballot,
                promised,
            } => self.on_nack(now, instance, ballot, promised),
            Body::Accept {
                instance,
                ballot,
                value,
            } => {
                self.note_voter(sender);
                if instance == self.instance() {
                    self.timers.stop(Timer::Abandon);
                }
                self.on_accept(now, sender, instance, ballot, value);
            }
            Body::Accepted {
                instance,
                ballot,
                value,
            } => {
                self.note_voter(sender);
                self.on_accepted(now, sender, instance, ballot, value);
            }
            Body::Decided { instance, value } => self.learn(now, instance, value, false),
            Body::JoinAsAgent { node } => {
                if node == self.id() {
                    self.join_as_agent(now, sender);
                }
            }
            Body::SeatGranted { node } => {
                if node == self.id() {
                    if matches!(self.state.role, Some(Role::Agent { .. })) {
                        self.take_promotion(now, sender);
                    } else {
                        self.take_granted_seat(now, sender);
                    }
                }
            }
            Body::Removed { node, at } => {
                if node == self.id() {
                    self.on_removed(sender, at);
                }
            }
        }
        self.progress(now);
    }

    /// Handles timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        for timer in Timer::VALUES {
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            match timer {
                Timer::Hello => {
                    self.send_hello(Destination::All);
                    let hello = self.timing.hello_ms;
                    let at = now.after(hello + self.jitter.below(hello / 5 + 1));
                    self.timers.set(Timer::Hello, at);
                }
                Timer::Resend => self.resend(now),
                // These act through `maybe_propose`, which checks them.
                Timer::Retry | Timer::Settle | Timer::Abandon => {}
            }
        }
        self.progress(now);
    }

    /// Resends the open proposal's prepare or accept, if there is one.
    fn resend(&mut self, now: Millis) {
        let instance = self.instance();
        if let Some(proposal) = &self.proposal {
            let ballot = proposal.ballot;
            let body = match &proposal.phase {
                Phase::Preparing { .. } => Body::Prepare { instance, ballot },
                Phase::Accepting { value, .. } => Body::Accept {
                    instance,
                    ballot,
                    value: *value,
                },
            };
            self.send_after_persist(Destination::All, body);
            self.arm_resend(now);
        }
    }

    /// The driver's K3s role is up (server unit active, or agent running).
    pub fn report_serving(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        if self.state.role.is_some() && !self.state.serving {
            self.state.serving = true;
            self.persist();
            self.timers.set(Timer::Hello, now);
            self.progress(now);
        }
    }

    /// Next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.poll_transmit()
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let hello = self.timers.get(Timer::Hello);
        Timer::VALUES
            .into_iter()
            .filter(|timer| self.is_armed(*timer))
            .filter_map(|timer| self.timers.get(timer))
            // Wake-ups already handled are not repeated; the hello timer always lies ahead.
            .filter(|at| *at > self.last_now || Some(*at) == hello)
            .min()
    }

    /// Whether `timer` matters in the node's current state.
    fn is_armed(&self, timer: Timer) -> bool {
        match timer {
            Timer::Hello => true,
            Timer::Resend => self.proposal.is_some(),
            Timer::Retry | Timer::Settle | Timer::Abandon => {
                !self.state.epoch_state.is_go() && self.proposal.is_none()
            }
        }
    }

    /// State to persist before the frames and events that depend on it are released.
    ///
    /// Write requests in the order polled (each supersedes the previous one), e.g. write a
    /// temporary file, fsync, rename; then acknowledge with [`Node::persisted`].
    pub fn poll_persist(&mut self) -> Option<PersistRequest> {
        let seq = self.outbox.poll_persist()?;
        Some(PersistRequest {
            seq,
            state: self.state.clone(),
        })
    }

    /// The state of persist request `seq` is durable (written and fsync'd).
    pub fn persisted(&mut self, seq: u64) {
        self.outbox.persisted(seq);
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.outbox.poll_event()
    }

    /// Status for `firstboot status`, sd_notify and the LED.
    pub fn status(&self, now: Millis) -> ElectionStatus {
        ElectionStatus {
            epoch: self.state.epoch,
            visible: self.view(now).len(),
            quorum: self.quorum(),
            decided: self.final_value(),
            elected: self.state.epoch_state.awaiting_fate(),
            role: self.state.role,
            overcrowded: self.peers.voters_seen() > self.nodes,
            nodes: self.nodes,
            voters_seen: self.peers.voters_seen(),
        }
    }

    /// The instance this node's proposals and timers are about: the leader until `Init` is decided.
    fn instance(&self) -> Instance {
        self.state.epoch_state.instance()
    }

    /// The epoch's final value as far as this node knows.
    fn final_value(&self) -> Option<Value> {
        self.state.epoch_state.final_value()
    }

    fn acceptor(&mut self, instance: Instance) -> &mut Acceptor {
        &mut self.state.acceptors[instance]
    }

    fn quorum(&self) -> usize {
        self.rules.quorum(self.nodes.max(self.peers.voters_seen()))
    }

    fn note_voter(&mut self, sender: NodeId) {
        if self.state.epoch_state.elected().is_some() {
            return;
        }
        if let Some(seen) = self.peers.add_voter(sender, self.nodes) {
            let quorum = self.quorum();
            self.outbox.emit_now(Event::QuorumRaised { seen, quorum });
        }
    }

    fn on_hello(&mut self, now: Millis, sender: NodeId, hello: Hello) {
        self.peers.heard(now, sender, self.state.epoch, &hello);
        let me = self.id();
        if hello.serving
            && hello.decided == Some(Value::Init(me))
            && self.state.role.is_none()
            && !self.rejoining
        {
            // The cluster whose init this node is runs (nothing serves before the init took
            // its role, durably), yet this node has no role: its card was re-flashed (or its
            // state lost). Initializing again would start a second cluster: it asks the seat
            // book for a seat instead, durably (re-flashed cards, SPEC 4.4).
            tracing::warn!(node = %me, via = %sender, "this node is the cluster-init node of a cluster that serves without it, and has no role (a re-flashed card?): it never initializes again, it asks for a seat");
            self.rejoining = true;
            self.state.rejoining = true;
            self.persist();
        }
        match hello.decided {
            None => {
                self.note_voter(sender);
                if self.state.epoch_state.is_go() {
                    // A late or restarted node: tell it at once that this epoch is decided.
                    self.send_hello(Destination::Node(sender));
                } else if let Some(value) = self.state.epoch_state.known(Instance::Leader) {
                    // It may not know who was elected yet: tell it, so it can weigh in on the fate.
                    self.send_after_persist(
                        Destination::Node(sender),
                        Body::Decided {
                            instance: Instance::Leader,
                            value,
                        },
                    );
                }
            }
            // An announced decision is final: Go for `Init` (an `Abandon` moves the sender on).
            Some(value @ Value::Init(_)) => self.learn(now, Instance::Fate, value, false),
            Some(Value::Abandon) => {}
        }
        if hello.wants_seat && self.is_excess_candidate(now, sender) {
            if !self.state.agents.contains(&sender) {
                self.state.agents.push(sender);
                tracing::debug!(node = %self.id(), agent = %sender, "grant: told to join as an agent");
                self.persist();
            }
            self.send_after_persist(
                Destination::Node(sender),
                Body::JoinAsAgent { node: sender },
            );
        }
        if self.is_roster_source(sender, &hello) && hello.roster.len() > self.init_roster.len() {
            // The roster only grows; an older (shorter) one is stale.
            self.init_roster = hello.roster;
            self.init_roster.truncate(self.servers);
            self.roster_via = Some(sender);
            if matches!(self.state.role, Some(Role::Server { .. })) {
                // Kept durably, so this server can relay it after a restart with the init gone.
                self.state.roster = self.init_roster.clone();
                self.persist();
            }
        }
    }

    /// Whether `sender`'s hello carries the decided init's roster: the init's own, or a copy
    /// relayed by a serving seat holder (any serving server answers joiners, SPEC 4.4). Only the
    /// init grants seats, so every copy is a prefix of its roster.
    fn is_roster_source(&self, sender: NodeId, hello: &Hello) -> bool {
        let Some(Value::Init(init)) = self.final_value() else {
            return false;
        };
        if hello.decided != Some(Value::Init(init)) {
            return false;
        }
        sender == init
            || (hello.serving
                && hello.roster.first() == Some(&init)
                && hello.roster.contains(&sender))
    }

    /// The servers a joiner may ask for the announcement, and a server lists in its own: the
    /// seat holders of the init's roster (this node's copy) other than this node that said they
    /// serve and were heard within the view's TTL, the node this one got its role from first.
    /// Without a roster (a pinned agent, or a role restored from disk), every serving peer.
    pub fn serving_servers(&self, now: Millis) -> Vec<NodeId> {
        let mut servers: Vec<NodeId> = if self.init_roster.is_empty() {
            self.peers.serving_now(now).collect()
        } else {
            self.init_roster
                .iter()
                .copied()
                .filter(|node| *node != self.id() && self.peers.serves_now(now, *node))
                .collect()
        };
        if let Some(at) = servers.iter().position(|n| Some(*n) == self.roster_via) {
            servers[..=at].rotate_right(1);
        }
        servers
    }

    /// The live node whose hello gave this node its role (the init itself, or a serving server
    /// relaying the init's roster); `None` for the init and for a role restored from disk.
    pub fn role_via(&self) -> Option<NodeId> {
        match self.state.role {
            Some(Role::Server { .. } | Role::Agent { .. }) => self.roster_via,
            _ => None,
        }
    }

    /// The instance's value if this node knows it is decided.
    fn known(&self, instance: Instance) -> Option<Value> {
        self.state.epoch_state.known(instance)
    }

    fn on_prepare(&mut self, now: Millis, from: NodeId, instance: Instance, ballot: Ballot) {
        if let Some(value) = self.known(instance) {
            self.send_after_persist(Destination::Node(from), Body::Decided { instance, value });
            return;
        }
        if instance == self.instance() {
            self.max_round = self.max_round.max(ballot.round);
        }
        match self.acceptor(instance).prepare(ballot) {
            Verdict::Granted { changed } => {
                if changed {
                    tracing::debug!(node = %self.id(), epoch = self.state.epoch, ?instance,
                        round = ballot.round, from = %ballot.node, "ballot: promised");
                }
                if changed {
                    self.persist();
                }
                self.yield_to(now, instance, ballot);
                let accepted = self.acceptor(instance).accepted;
                self.send_after_persist(
                    Destination::Node(from),
                    Body::Promise {
                        instance,
                        ballot,
                        accepted,
                    },
                );
            }
            Verdict::Refused { promised } => self.send_now(
                Destination::Node(from),
                Body::Nack {
                    instance,
                    ballot,
                    promised,
                },
            ),
        }
    }

    fn on_accept(
        &mut self,
        now: Millis,
        from: NodeId,
        instance: Instance,
        ballot: Ballot,
        value: Value,
    ) {
        if let Some(decided) = self.known(instance) {
            self.send_after_persist(
                Destination::Node(from),
                Body::Decided {
                    instance,
                    value: decided,
                },
            );
            return;
        }
        if instance == self.instance() {
            self.max_round = self.max_round.max(ballot.round);
        }
        match self.acceptor(instance).accept(ballot, value) {
            Verdict::Granted { changed } => {
                if changed {
                    tracing::debug!(node = %self.id(), epoch = self.state.epoch, ?instance,
                        round = ballot.round, from = %ballot.node, ?value, "ballot: accepted");
                }
                if changed {
                    self.persist();
                }
                self.yield_to(now, instance, ballot);
                self.send_after_persist(
                    Destination::Node(from),
                    Body::Accepted {
                        instance,
                        ballot,
                        value,
                    },
                );
            }
            Verdict::Refused { promised } => self.send_now(
                Destination::Node(from),
                Body::Nack {
                    instance,
                    ballot,
                    promised,
                },
            ),
        }
    }

    /// Drops our own attempt when we granted a higher ballot: it cannot win at our acceptor anyway.
    fn yield_to(&mut self, now: Millis, instance: Instance, ballot: Ballot) {
        if instance == self.instance() && self.proposal.as_ref().is_some_and(|p| p.ballot < ballot)
        {
            self.proposal = None;
            self.back_off(now);
        }
    }

    fn on_promise(
        &mut self,
        now: Millis,
        from: NodeId,
        instance: Instance,
        ballot: Ballot,
        accepted: Option<(Ballot, Value)>,
    ) {
        let quorum = self.quorum();
        if instance != self.instance() {
            return;
        }
        let Some(proposal) = self.proposal.as_mut().filter(|p| p.ballot == ballot) else {
            return;
        };
        if let Some(value) = proposal.on_promise(from, accepted, quorum) {
            self.begin_accept(now, value);
        }
    }

    fn on_accepted(
        &mut self,
        now: Millis,
        from: NodeId,
        instance: Instance,
        ballot: Ballot,
        value: Value,
    ) {
        let quorum = self.quorum();
        if instance != self.instance() {
            return;
        }
        let Some(proposal) = self.proposal.as_mut().filter(|p| p.ballot == ballot) else {
            return;
        };
        if let Some(decided) = proposal.on_accepted(from, quorum) {
            debug_assert_eq!(decided, value);
            self.learn(now, instance, decided, true);
        }
    }

    fn on_nack(&mut self, now: Millis, instance: Instance, ballot: Ballot, promised: Ballot) {
        if instance != self.instance() {
            return;
        }
        self.max_round = self.max_round.max(promised.round);
        if self.proposal.as_ref().is_some_and(|p| p.ballot == ballot) {
            self.proposal = None;
            self.back_off(now);
        }
    }

    fn back_off(&mut self, now: Millis) {
        let backoff = self.timing.backoff_ms;
        let at = now.after(backoff / 10 + self.jitter.below(backoff));
        self.timers.set(Timer::Retry, at);
    }

    fn arm_resend(&mut self, now: Millis) {
        let resend = self.timing.resend_ms;
        let at = now.after(resend + self.jitter.below(resend + 1));
        self.timers.set(Timer::Resend, at);
    }

    /// Undecided voters of our epoch heard recently, this node first.
    fn view(&self, now: Millis) -> Vec<Rank> {
        let mut view = vec![self.rank];
        view.extend(self.peers.undecided(now, self.state.epoch));
        view
    }

    fn progress(&mut self, now: Millis) {
        self.update_role(now);
        self.grant_seat(now);
        self.maybe_propose(now);
    }

    fn maybe_propose(&mut self, now: Millis) {
        if self.state.epoch_state.is_go()
            || self.proposal.is_some()
            || !self.timers.is_expired(Timer::Retry, now)
            || !self.timers.is_expired(Timer::Settle, now)
        {
            return;
        }
        if let Some(elected) = self.state.epoch_state.elected() {
            // The fate instance: the elected node asks for Go at once, everyone else waits a while
            // for the fate to be decided and then proposes Abandon (Paxos still carries Go forward).
            if elected == self.id() {
                self.start(now, Value::Init(elected));
                return;
            }
            self.abandon_when_quiet(now);
            return;
        }
        let view = self.view(now);
        if view.len() < self.quorum() {
            self.timers.stop(Timer::Abandon);
            return;
        }
        let best = view.iter().max().map(|rank| rank.node);
        if best == Some(self.id()) {
            self.start(now, Value::Init(self.id()));
            return;
        }
        self.abandon_when_quiet(now);
    }

    /// Arms the abandon timer on first call; proposes `Abandon` once it has expired.
    fn abandon_when_quiet(&mut self, now: Millis) {
        match self.timers.get(Timer::Abandon) {
            None => {
                let abandon = self.timing.abandon_ms;
                let at = now.after(abandon + self.jitter.below(abandon / 2 + 1));
                self.timers.set(Timer::Abandon, at);
            }
            Some(at) if now >= at => self.start(now, Value::Abandon),
            Some(_) => {}
        }
    }

    fn start(&mut self, now: Millis, intent: Value) {
        self.timers.stop(Timer::Abandon);
        let promised = self
            .acceptor(self.instance())
            .promised
            .map_or(0, |b| b.round);
        let round = self.max_round.max(promised).saturating_add(1);
        self.max_round = round;
        let ballot = Ballot {
            round,
            node: self.id(),
        };
        // Our own promise is persisted before the prepare leaves, so a restart never reuses a ballot.
        let instance = self.instance();
        if let Verdict::Refused { .. } = self.acceptor(instance).prepare(ballot) {
            return;
        }
        self.persist();
        tracing::debug!(node = %self.id(), epoch = self.state.epoch, ?instance, round,
            ?intent, "ballot: proposing");
        let own = self.acceptor(instance).accepted;
        let quorum = self.quorum();
        let mut proposal = Proposal::new(ballot, intent);
        let ready = proposal.on_promise(self.id(), own, quorum);
        self.proposal = Some(proposal);
        self.send_after_persist(Destination::All, Body::Prepare { instance, ballot });
        self.arm_resend(now);
        if let Some(value) = ready {
            self.begin_accept(now, value);
        }
    }

    fn begin_accept(&mut self, now: Millis, value: Value) {
        let Some(ballot) = self.proposal.as_ref().map(|p| p.ballot) else {
            return;
        };
        let instance = self.instance();
        match self.acceptor(instance).accept(ballot, value) {
            Verdict::Granted { changed } => {
                if changed {
                    self.persist();
                }
            }
            Verdict::Refused { promised } => {
                self.max_round = self.max_round.max(promised.round);
                self.proposal = None;
                self.back_off(now);
                return;
            }
        }
        let quorum = self.quorum();
        let me = self.id();
        let decided = self.proposal.as_mut().and_then(|proposal| {
            proposal.begin_accept(value);
            proposal.on_accepted(me, quorum)
        });
        self.send_after_persist(
            Destination::All,
            Body::Accept {
                instance,
                ballot,
                value,
            },
        );
        self.arm_resend(now);
        if let Some(decided) = decided {
            self.learn(now, instance, decided, true);
        }
    }

    /// Records a decided value of one of the current epoch's instances (from our quorum or from an
    /// authenticated peer).
    fn learn(&mut self, now: Millis, instance: Instance, value: Value, announce: bool) {
        if self.known(instance).is_some() {
            // Paxos makes a second, different value impossible; the simulator checks exactly that.
            return;
        }
        let epoch = self.state.epoch;
        tracing::debug!(node = %self.id(), epoch, ?instance, ?value, from_quorum = announce,
            "learn: decided");
        match (instance, value) {
            (Instance::Leader, Value::Init(x)) => {
                // Elected, not final: the fate instance decides whether x may run cluster-init.
                self.state.epoch_state.elect(x);
                self.proposal = None;
                self.timers.stop(Timer::Abandon);
                self.timers.set(Timer::Retry, now);
                self.persist();
            }
            (Instance::Fate, Value::Init(x)) => {
                if self
                    .state
                    .epoch_state
                    .elected()
                    .is_some_and(|elected| elected != x)
                {
                    // Only the elected node proposes Go for itself; nothing else can be decided.
                    return;
                }
                self.state.epoch_state.go(x);
                self.proposal = None;
                self.timers.stop(Timer::Abandon);
                self.persist();
                self.emit_after_persist(Event::Decided { epoch, value });
            }
            (_, Value::Abandon) => {
                self.persist();
                self.emit_after_persist(Event::Decided { epoch, value });
            }
        }
        if announce {
            self.send_after_persist(Destination::All, Body::Decided { instance, value });
        }
        self.timers.set(Timer::Hello, now);
        match (instance, value) {
            (_, Value::Abandon) => self.enter_epoch(now, epoch.saturating_add(1)),
            // The elected node asks for Go at once (its first attempt may have just decided Init).
            (Instance::Leader, Value::Init(_)) => self.maybe_propose(now),
            (Instance::Fate, Value::Init(_)) => self.update_role(now),
        }
    }

    fn enter_epoch(&mut self, now: Millis, epoch: u32) {
        tracing::debug!(node = %self.id(), from = self.state.epoch, to = epoch,
            "epoch: the previous one was abandoned");
        self.state.epoch = epoch;
        self.state.acceptors = Acceptors::default();
        self.state.epoch_state.abandon();
        self.proposal = None;
        self.timers.stop(Timer::Abandon);
        self.max_round = 0;
        self.init_roster.clear();
        self.roster_via = None;
        self.persist();
        self.timers.set(Timer::Hello, now);
    }

    fn update_role(&mut self, now: Millis) {
        let Some(init) = self.state.epoch_state.elected() else {
            return;
        };
        if self.state.role.is_some() {
            return;
        }
        let premature = !self.rules.role_waits_for_go() && init == self.id();
        if !self.state.epoch_state.is_go() && !premature {
            return;
        }
        // A cluster-init node removed while away never initializes again (a second cluster):
        // it rejoins through the seat book like any other node.
        let role = if init == self.id() && !self.rejoining {
            self.state.roster = vec![init];
            self.init_roster = vec![init];
            self.roster_via = None;
            Some(Role::ClusterInit)
        } else {
            // A node rejoining after its removal never takes its old seat from a roster.
            let me = self.id();
            let roster: Vec<NodeId> = self
                .init_roster
                .iter()
                .copied()
                .filter(|node| !self.rejoining || *node != me)
                .collect();
            match seats::role_for(self.rank.pin, me, init, &roster, self.servers) {
                // In book mode a roster gives no role but a pinned agent's: the seat keepers
                // tell every other card (`SeatGranted`, `JoinAsAgent`), once they know it is no
                // re-flashed card whose old Node must go first (K3s would refuse it under its old
                // name, see `healer::reflash`). A roster naming this card may be its old seat,
                // relayed while its old self still counted as serving.
                Some(_) if self.book_mode && self.rank.pin != RolePin::Agent => None,
                role => role,
            }
        };
        if let Some(role) = role {
            self.state.role = Some(role);
            if matches!(role, Role::Server { .. }) {
                self.state.roster = self.init_roster.clone();
            }
            tracing::debug!(node = %self.id(), epoch = self.state.epoch, ?role,
                via = ?self.roster_via, "grant: role taken");
            self.persist();
            self.emit_after_persist(Event::Role(role));
            self.timers.set(Timer::Hello, now);
        }
    }

    /// Ranks of the nodes currently asking the init node for a seat.
    fn seat_candidates(&self, now: Millis) -> impl Iterator<Item = Rank> + '_ {
        self.peers
            .seat_askers(now, self.state.epoch, self.final_value())
            .filter(move |rank| {
                !self.state.roster.contains(&rank.node) && !self.state.agents.contains(&rank.node)
            })
    }

    /// At the serving init node: `node` ranks below the candidates that will fill the free seats,
    /// so it can join as an agent now instead of waiting for every seat to be filled.
    fn is_excess_candidate(&self, now: Millis, node: NodeId) -> bool {
        if self.state.role != Some(Role::ClusterInit) || !self.state.serving {
            return false;
        }
        let held = if self.book_mode {
            // Unknown until the daemon has read the book: tell nobody anything yet. Nor while
            // a holder is gone: its seat may be freed, the seat keepers decide. Nor once every
            // seat is held: an asker then may be a re-flashed card whose old Node must go
            // first, which only the seat keepers know (they read the Nodes).
            match &self.book {
                Some(book) if self.gone_holders(book).is_some() => return false,
                Some(book) if book.holders.len() >= self.servers => return false,
                Some(book) => book.holders.len(),
                None => return false,
            }
        } else {
            self.state.roster.len()
        };
        let free = self.servers.saturating_sub(held);
        let mut candidates: Vec<Rank> = self.seat_candidates(now).collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        if self.state.agents.contains(&node) {
            return true;
        }
        if self
            .book
            .as_ref()
            .is_some_and(|book| book.holders.contains(&node))
        {
            return false;
        }
        candidates
            .iter()
            .position(|rank| rank.node == node)
            .is_some_and(|position| position >= free)
    }

    fn join_as_agent(&mut self, now: Millis, sender: NodeId) {
        let Some(Value::Init(init)) = self.final_value() else {
            return;
        };
        // From the init (formation), or from any serving server whose seat book is full.
        if (sender != init && !self.peers.is_serving(sender)) || self.state.role.is_some() {
            return;
        }
        let role = Role::Agent { join: init };
        self.state.role = Some(role);
        self.roster_via = Some(sender);
        tracing::debug!(node = %self.id(), ?role, "grant: told to join as an agent");
        self.persist();
        self.emit_after_persist(Event::Role(role));
        self.timers.set(Timer::Hello, now);
    }

    fn grant_seat(&mut self, now: Millis) {
        if self.book_mode || self.state.role != Some(Role::ClusterInit) || !self.state.serving {
            return;
        }
        let candidates = self.seat_candidates(now);
        let me = self.id();
        let peers = &self.peers;
        let serving = |holder: NodeId| holder == me || peers.is_serving(holder);
        if let Some(node) = seats::next_grant(&self.state.roster, self.servers, serving, candidates)
        {
            self.state.roster.push(node);
            tracing::debug!(node = %self.id(), seat = %node, roster = self.state.roster.len(),
                "grant: server seat");
            self.init_roster = self.state.roster.clone();
            self.persist();
            self.timers.set(Timer::Hello, now);
        }
    }

    /// Seats are granted through the cluster's seat book from now on (a full run, where K3s's
    /// etcd keeps the book): the init no longer grants seats by itself; the daemon grants them
    /// with [`Node::seat_granted`] after writing them to the book. Call before reporting serving.
    pub fn use_seat_book(&mut self) {
        self.book_mode = true;
    }

    /// The seat book as the daemon read it now (book mode, on a serving server).
    pub fn set_seat_book(&mut self, now: Millis, book: BookView) {
        self.last_now = self.last_now.max(now);
        self.book = Some(book);
        self.progress(now);
    }

    /// Ranks of the nodes asking for a server seat now (for the daemon's seat keeper): decided
    /// for this cluster's init, no role yet, not pinned to agent, and (outside book mode) not
    /// told to join as an agent.
    pub fn seat_askers(&self, now: Millis) -> Vec<Rank> {
        // In book mode a card told to join as an agent that asks again lost that frame or its
        // state (a re-flashed card): it is asked about again (the seat keepers tell it again).
        self.peers
            .seat_askers(now, self.state.epoch, self.final_value())
            .filter(|rank| {
                rank.pin != RolePin::Agent
                    && (self.book_mode || !self.state.agents.contains(&rank.node))
            })
            .collect()
    }

    /// The membership as this node sees it at `now` (status; SPEC 4.4).
    pub fn membership(&self, now: Millis) -> Membership {
        let mut seats = match self.book.as_ref().filter(|_| self.book_mode) {
            Some(book) => book.holders.clone(),
            None => self.init_roster.clone(),
        };
        if let Some(book) = &self.book {
            seats.retain(|node| !book.removed.contains(node));
        }
        Membership {
            me: self.id(),
            serving: self.state.serving,
            seats,
            peers: self.peers.seen(now, GONE_AFTER_MS).collect(),
            servers: self.servers,
            now,
        }
    }

    /// The peers that said they serve, heard within the view's TTL.
    pub fn serving_peers(&self, now: Millis) -> Vec<NodeId> {
        self.peers.serving_now(now).collect()
    }

    /// The seat book holds a seat for `node` (written by compare-and-swap before this call):
    /// tell it to join as a server. The init also adds it to the election's roster while that
    /// has room, so nodes that learn roles from the roster see the seat too.
    pub fn seat_granted(&mut self, now: Millis, node: NodeId) {
        self.last_now = self.last_now.max(now);
        if !self.book_mode || !self.state.serving || node == self.id() {
            return;
        }
        match self.state.role {
            Some(Role::ClusterInit) => {
                if !self.state.roster.contains(&node) && self.state.roster.len() < self.servers {
                    self.state.roster.push(node);
                    self.init_roster = self.state.roster.clone();
                    tracing::debug!(node = %self.id(), seat = %node,
                        roster = self.state.roster.len(), "grant: server seat (book)");
                    self.persist();
                    self.timers.set(Timer::Hello, now);
                }
            }
            Some(Role::Server { .. }) => {}
            _ => return,
        }
        self.send_after_persist(Destination::Node(node), Body::SeatGranted { node });
    }

    /// The seat book is full: tell an asking `node` to join as an agent (any serving server may,
    /// after formation; being an agent never touches etcd's membership).
    pub fn tell_join_as_agent(&mut self, now: Millis, node: NodeId) {
        self.last_now = self.last_now.max(now);
        if !self.book_mode || !self.state.serving || node == self.id() {
            return;
        }
        if !self.state.agents.contains(&node) {
            self.state.agents.push(node);
            self.persist();
        }
        self.send_after_persist(Destination::Node(node), Body::JoinAsAgent { node });
    }

    /// A serving server told this node that the seat book holds a seat for it.
    fn take_granted_seat(&mut self, now: Millis, sender: NodeId) {
        let Some(Value::Init(init)) = self.final_value() else {
            return;
        };
        if self.state.role.is_some()
            || self.rank.pin == RolePin::Agent
            || !self.peers.is_serving(sender)
        {
            return;
        }
        let role = Role::Server { join: init };
        self.state.role = Some(role);
        // Kept durably, so this server relays the roster after a restart (as a role taken from
        // the roster keeps it).
        self.state.roster = self.init_roster.clone();
        self.roster_via = Some(sender);
        tracing::debug!(node = %self.id(), ?role, via = %sender, "grant: seat from the book");
        self.persist();
        self.emit_after_persist(Event::Role(role));
        self.timers.set(Timer::Hello, now);
    }

    /// A serving server told this agent that the seat book holds a server seat for it (the
    /// healer promotes it, SPEC 4.4): its role becomes a server's, durably, and it no longer
    /// serves until K3s runs as a server (so no keeper ends its join early). Ignored outside
    /// book mode, from a sender not heard serving, and on a node pinned to the agent role.
    fn take_promotion(&mut self, now: Millis, sender: NodeId) {
        let Some(Role::Agent { join }) = self.state.role else {
            return;
        };
        if !self.book_mode || self.rank.pin == RolePin::Agent || !self.peers.is_serving(sender) {
            return;
        }
        let role = Role::Server { join };
        self.state.role = Some(role);
        self.state.serving = false;
        self.roster_via = Some(sender);
        tracing::debug!(node = %self.id(), ?role, via = %sender, "grant: promoted from agent (book)");
        self.persist();
        self.emit_after_persist(Event::Role(role));
        self.timers.set(Timer::Hello, now);
    }

    /// Book holders (other than this node) not heard serving now, when the book's joins are
    /// complete; `None` when there are none (a joining holder does not serve yet: not gone).
    fn gone_holders(&self, book: &BookView) -> Option<Vec<NodeId>> {
        if book.pending {
            return None;
        }
        let me = self.id();
        let gone: Vec<NodeId> = book
            .holders
            .iter()
            .copied()
            .filter(|h| *h != me && !self.peers.serves_now(self.last_now, *h))
            .collect();
        (!gone.is_empty()).then_some(gone)
    }

    /// The seat book records `node` as removed (at `at`, unix seconds) and it is heard claiming
    /// to serve: tell it (any serving server in book mode may; the node decides what to do).
    pub fn tell_removed(&mut self, now: Millis, node: NodeId, at: i64) {
        self.last_now = self.last_now.max(now);
        if !self.book_mode
            || !self.state.serving
            || node == self.id()
            || !self.peers.serves_now(now, node)
        {
            return;
        }
        self.send_after_persist(Destination::Node(node), Body::Removed { node, at });
    }

    /// A serving server said the book records this node as removed: only a server role cares
    /// (an agent's rejoin never touched etcd), and only a sender heard serving is believed.
    fn on_removed(&mut self, sender: NodeId, at: i64) {
        if !matches!(
            self.state.role,
            Some(Role::Server { .. } | Role::ClusterInit)
        ) || !self.peers.is_serving(sender)
        {
            return;
        }
        tracing::debug!(node = %self.id(), via = %sender, at, "told: removed from the cluster");
        self.outbox.emit_now(Event::Removed { at, via: sender });
    }

    /// This server was removed from the cluster while away and its etcd data set aside: drop
    /// its role (persisted, so a restarted node asks for a seat again through the seat book,
    /// as a new card does) and the roster it kept. The cluster-init node too: from now on
    /// ([`Node::rejoin_after_removal`]) it never initializes again, it asks for a seat.
    pub fn forget_role(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        if !matches!(
            self.state.role,
            Some(Role::Server { .. } | Role::ClusterInit)
        ) {
            return;
        }
        tracing::debug!(node = %self.id(), role = ?self.state.role, "forgetting the role: removed from the cluster");
        self.state.role = None;
        self.state.serving = false;
        self.state.roster.clear();
        self.init_roster.clear();
        self.roster_via = None;
        self.rejoining = true;
        self.persist();
    }

    /// This node was removed from the cluster earlier and has no role yet: it takes a server
    /// seat only from the seat book (`SeatGranted`), never from a roster that still names it,
    /// and, if the election made it the cluster-init node, never initializes again.
    pub fn rejoin_after_removal(&mut self) {
        self.rejoining = true;
    }

    fn wants_seat(&self) -> bool {
        matches!(self.final_value(), Some(Value::Init(init)) if init != self.id() || self.rejoining)
            && self.state.role.is_none()
            && self.rank.pin != RolePin::Agent
    }

    fn send_hello(&mut self, to: Destination) {
        // The init's roster, or a serving server's copy of it (relayed to late joiners).
        let mut roster = match self.state.role {
            Some(Role::ClusterInit) => self.state.roster.clone(),
            Some(Role::Server { .. }) if self.state.serving => {
                // A relayed copy names only the seat holders heard serving now (and this one):
                // a full roster naming a dead holder reads as "every seat is taken, join as an
                // agent" to a new card, whatever this server's view of the book is (not read
                // yet after a restart, or a join pending), while that seat is being freed.
                // (Book mode: the seat keepers answer a card the roster no longer settles.)
                let me = self.id();
                let mut roster = self.init_roster.clone();
                if self.book_mode {
                    roster.retain(|n| *n == me || self.peers.serves_now(self.last_now, *n));
                }
                roster
            }
            _ => Vec::new(),
        };
        if let Some(book) = self.book.as_ref().filter(|_| self.book_mode) {
            if book.holders.len() < self.servers {
                // A seat is free in the book: relay the roster without the removed nodes, so that
                // a new card does not read it as full and take an agent's role; it waits for a
                // grant from the book instead (a roster without the init is not taken at all).
                roster.retain(|node| !book.removed.contains(node));
            } else if let Some(gone) = self.gone_holders(book) {
                // A holder is gone (not heard serving): the healer may free its seat, so the
                // roster is relayed without it and a new card asks the seat keepers instead of
                // reading a full roster as "join as an agent" (they grant, wait or say agent).
                roster.retain(|node| !gone.contains(node));
            }
        }
        let hello = Hello {
            pin: self.rank.pin,
            storage: self.rank.storage,
            ram_mib: self.rank.ram_mib,
            decided: self.final_value(),
            serving: self.state.serving,
            wants_seat: self.wants_seat(),
            roster,
        };
        self.send_after_persist(to, Body::Hello(hello));
    }

    fn persist(&mut self) {
        self.outbox.persist();
    }

    fn frame(&self, body: Body) -> Vec<u8> {
        Envelope {
            epoch: self.state.epoch,
            sender: self.id(),
            body,
        }
        .encode(&self.cluster, &self.key)
    }

    fn send_now(&mut self, to: Destination, body: Body) {
        let frame = self.frame(body);
        self.outbox.send_now(Transmit { to, frame });
    }

    fn send_after_persist(&mut self, to: Destination, body: Body) {
        let frame = self.frame(body);
        self.outbox.send_after_persist(Transmit { to, frame });
    }

    fn emit_after_persist(&mut self, event: Event) {
        self.outbox.emit_after_persist(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::EpochState;

    const TOKEN: &[u8] = b"unit-test-token-0123";

    fn config(node: u64, nodes: u8) -> ElectionConfig {
        ElectionConfig {
            rank: Rank {
                pin: RolePin::Auto,
                storage: 100,
                ram_mib: 4096,
                node: NodeId(node),
            },
            nodes,
            servers: 3,
            cluster: ClusterId::derive(TOKEN, nodes, 3),
            key: MacKey::election(TOKEN),
            seed: node,
            timing: Timing::default(),
        }
    }

    fn frame(nodes: u8, sender: u64, body: Body) -> Vec<u8> {
        Envelope {
            epoch: 0,
            sender: NodeId(sender),
            body,
        }
        .encode(
            &ClusterId::derive(TOKEN, nodes, 3),
            &MacKey::election(TOKEN),
        )
    }

    fn decode(nodes: u8, transmit: &Transmit) -> Envelope {
        Envelope::decode(
            &transmit.frame,
            &ClusterId::derive(TOKEN, nodes, 3),
            &MacKey::election(TOKEN),
        )
        .expect("the node's own frames decode")
    }

    fn drain_transmits(node: &mut Node) -> Vec<Transmit> {
        std::iter::from_fn(|| node.poll_transmit()).collect()
    }

    fn undecided_hello() -> Body {
        Body::Hello(Hello {
            pin: RolePin::Auto,
            storage: 10,
            ram_mib: 1024,
            decided: None,
            serving: false,
            wants_seat: false,
            roster: Vec::new(),
        })
    }

    #[test]
    fn a_single_node_inits_itself_only_after_persisting() {
        let mut node = Node::new(config(7, 1), Millis(0), None);
        node.handle_timeout(Millis(0));
        assert!(node.poll_timeout().is_some_and(|at| at <= Millis(1500)));
        node.handle_timeout(Millis(1500));
        assert_eq!(
            node.poll_event(),
            None,
            "nothing is released before the persist"
        );
        let request = node.poll_persist().expect("the decision must be persisted");
        assert_eq!(request.state.epoch_state, EpochState::Go(NodeId(7)));
        assert_eq!(request.state.role, Some(Role::ClusterInit));
        node.persisted(request.seq);
        assert_eq!(
            node.poll_event(),
            Some(Event::Decided {
                epoch: 0,
                value: Value::Init(NodeId(7))
            })
        );
        assert_eq!(node.poll_event(), Some(Event::Role(Role::ClusterInit)));
        // Status's membership: the init holds the first seat, alive; no quorum lost.
        let m = node.membership(Millis(1500));
        assert_eq!(m.seats, [NodeId(7)]);
        assert_eq!((m.live_seats(), m.quorum_lost()), (1, false));
    }

    /// A writer into a shared buffer, for capturing the journal of a test.
    #[derive(Clone, Default)]
    struct Journal(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Journal {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_debug_journal_tells_the_story_of_the_election() {
        let journal = Journal::default();
        let writer = journal.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Other tests' threads may have registered these callsites while only the no-op
            // dispatcher existed, racing this dispatcher's registration (the interest cache is
            // global); recompute every callsite's interest now that this one is live.
            tracing::callsite::rebuild_interest_cache();
            let mut node = Node::new(config(7, 1), Millis(0), None);
            node.handle_timeout(Millis(1500));
            persist_all(&mut node);
        });
        let text = String::from_utf8(journal.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let story: Vec<&str> = lines
            .iter()
            .filter_map(|line| line.split_once("node: ")?.1.split(" node=").next())
            .collect();
        assert_eq!(
            story,
            [
                "ballot: proposing",
                "learn: decided",
                "ballot: proposing",
                "learn: decided",
                "grant: role taken"
            ],
            "{text}"
        );
        assert!(lines[0].contains("instance=Leader"), "{text}");
        assert!(lines[3].contains("instance=Fate"), "{text}");
        assert!(
            lines[3].contains("Init(NodeId(0000000000000007))"),
            "{text}"
        );
        assert!(lines[4].contains("role=ClusterInit"), "{text}");
    }

    #[test]
    fn a_promise_leaves_only_after_its_state_is_durable() {
        let mut node = Node::new(config(2, 3), Millis(0), None);
        node.handle_timeout(Millis(0));
        drain_transmits(&mut node);
        let ballot = Ballot {
            round: 1,
            node: NodeId(1),
        };
        node.handle_datagram(
            Millis(10),
            &frame(
                3,
                1,
                Body::Prepare {
                    instance: Instance::Leader,
                    ballot,
                },
            ),
        )
        .expect("genuine frame");
        assert!(drain_transmits(&mut node).is_empty());
        let request = node.poll_persist().expect("the promise must be persisted");
        assert_eq!(
            request.state.acceptors[Instance::Leader].promised,
            Some(ballot)
        );
        node.persisted(request.seq);
        let sent = drain_transmits(&mut node);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to, Destination::Node(NodeId(1)));
        assert_eq!(
            decode(3, &sent[0]).body,
            Body::Promise {
                instance: Instance::Leader,
                ballot,
                accepted: None
            }
        );
        // A lower ballot is refused at once.
        let lower = Ballot {
            round: 0,
            node: NodeId(9),
        };
        node.handle_datagram(
            Millis(20),
            &frame(
                3,
                9,
                Body::Prepare {
                    instance: Instance::Leader,
                    ballot: lower,
                },
            ),
        )
        .expect("genuine frame");
        let sent = drain_transmits(&mut node);
        assert_eq!(
            decode(3, &sent[0]).body,
            Body::Nack {
                instance: Instance::Leader,
                ballot: lower,
                promised: ballot
            }
        );
    }

    #[test]
    fn more_voters_than_nodes_raise_the_quorum_loudly() {
        let mut node = Node::new(config(1, 3), Millis(0), None);
        for sender in 2..=4 {
            node.handle_datagram(Millis(5), &frame(3, sender, undecided_hello()))
                .expect("genuine frame");
        }
        assert_eq!(
            node.poll_event(),
            Some(Event::QuorumRaised { seen: 4, quorum: 3 })
        );
        let status = node.status(Millis(5));
        assert_eq!(
            status.to_string(),
            "WARNING: 4 voters seen for nodes = 3, quorum raised to 3; electing (epoch 0): 4/3 visible"
        );
        assert!(status.overcrowded);
        assert_eq!(status.quorum, 3);
        assert_eq!(status.visible, 4);
    }

    #[test]
    fn status_says_how_many_nodes_are_missing() {
        let mut node = Node::new(config(1, 5), Millis(0), None);
        assert_eq!(
            node.status(Millis(0)).to_string(),
            "waiting for 2 more nodes: 1/5 visible"
        );
        node.handle_datagram(Millis(5), &frame(5, 2, undecided_hello()))
            .expect("genuine frame");
        assert_eq!(
            node.status(Millis(5)).to_string(),
            "waiting for 1 more node: 2/5 visible"
        );
        assert_eq!(
            node.status(Millis(60_000)).to_string(),
            "waiting for 2 more nodes: 1/5 visible",
            "a silent peer leaves the view"
        );
    }

    #[test]
    fn frames_of_other_clusters_are_rejected() {
        let mut node = Node::new(config(1, 3), Millis(0), None);
        assert_eq!(
            node.handle_datagram(Millis(1), &frame(5, 2, undecided_hello())),
            Err(DecodeError::ForeignCluster)
        );
        assert_eq!(node.status(Millis(1)).visible, 1);
    }

    fn persist_all(node: &mut Node) {
        while let Some(request) = node.poll_persist() {
            node.persisted(request.seq);
        }
    }

    #[test]
    fn the_init_node_grants_one_seat_and_sends_the_surplus_to_agents() {
        let mut x = Node::new(config(7, 1), Millis(0), None);
        x.handle_timeout(Millis(1500));
        persist_all(&mut x);
        assert!(std::iter::from_fn(|| x.poll_event()).any(|e| e == Event::Role(Role::ClusterInit)));
        x.report_serving(Millis(1600));
        persist_all(&mut x);
        drain_transmits(&mut x);
        // servers = 3: the best candidate gets the next seat at once.
        x.handle_datagram(Millis(1700), &frame(1, 2, asking_hello(200)))
            .expect("genuine frame");
        x.handle_datagram(Millis(1701), &frame(1, 3, asking_hello(100)))
            .expect("genuine frame");
        x.handle_datagram(Millis(1702), &frame(1, 4, asking_hello(10)))
            .expect("genuine frame");
        let request = x.poll_persist().expect("grants are persisted");
        assert_eq!(request.state.roster, vec![NodeId(7), NodeId(2)]);
        assert_eq!(request.state.agents, vec![NodeId(4)]);
        assert!(
            drain_transmits(&mut x).is_empty(),
            "nothing leaves before the persist"
        );
        x.persisted(request.seq);
        // The grant is announced by the next hello, which is due at once.
        assert!(x.poll_timeout().is_some_and(|at| at <= Millis(1702)));
        x.handle_timeout(Millis(1702));
        persist_all(&mut x);
        let bodies: Vec<(Destination, Body)> = drain_transmits(&mut x)
            .iter()
            .map(|t| (t.to, decode(1, t).body))
            .collect();
        assert!(bodies.contains(&(
            Destination::Node(NodeId(4)),
            Body::JoinAsAgent { node: NodeId(4) }
        )));
        assert!(bodies.iter().any(|(to, body)| *to == Destination::All
            && matches!(body, Body::Hello(h) if h.roster == vec![NodeId(7), NodeId(2)])));
        // Node 3 waits for the last seat, which is granted only once node 2 serves.
        assert!(!bodies
            .iter()
            .any(|(to, _)| *to == Destination::Node(NodeId(3))));
    }

    fn decided_hello(serving: bool, roster: &[u64]) -> Body {
        Body::Hello(Hello {
            pin: RolePin::Auto,
            storage: 50,
            ram_mib: 1024,
            decided: Some(Value::Init(NodeId(7))),
            serving,
            wants_seat: false,
            roster: roster.iter().copied().map(NodeId).collect(),
        })
    }

    #[test]
    fn a_late_node_takes_its_role_from_a_serving_server_when_the_init_is_gone() {
        let mut late = Node::new(config(9, 3), Millis(0), None);
        // It learns Go from server 2 (the init, 7, is never heard).
        late.handle_datagram(Millis(10), &frame(3, 2, decided_hello(false, &[])))
            .expect("genuine frame");
        persist_all(&mut late);
        assert_eq!(late.status(Millis(10)).role, None);
        // Rosters that are not a serving seat holder's copy of the init's are not taken: from a
        // node outside the roster, from a server not serving yet, from a roster of another init.
        late.handle_datagram(Millis(20), &frame(3, 4, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        late.handle_datagram(Millis(21), &frame(3, 3, decided_hello(false, &[7, 2, 3])))
            .expect("genuine frame");
        late.handle_datagram(Millis(22), &frame(3, 3, decided_hello(true, &[8, 2, 3])))
            .expect("genuine frame");
        persist_all(&mut late);
        assert_eq!(late.status(Millis(22)).role, None);
        assert!(std::iter::from_fn(|| late.poll_event()).all(|e| !matches!(e, Event::Role(_))));
        // Server 3 serves and relays the full roster: every seat is taken, so an agent.
        late.handle_datagram(Millis(30), &frame(3, 3, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        persist_all(&mut late);
        let agent = Role::Agent { join: NodeId(7) };
        assert!(std::iter::from_fn(|| late.poll_event()).any(|e| e == Event::Role(agent)));
        assert_eq!(late.role_via(), Some(NodeId(3)));
    }

    #[test]
    fn a_serving_server_relays_the_roster_and_keeps_it_across_a_restart() {
        let mut server = Node::new(config(2, 3), Millis(0), None);
        server
            .handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 2])))
            .expect("genuine frame");
        persist_all(&mut server);
        let role = Role::Server { join: NodeId(7) };
        assert!(std::iter::from_fn(|| server.poll_event()).any(|e| e == Event::Role(role)));
        assert_eq!(server.role_via(), Some(NodeId(7)));
        // Not serving yet: nothing relayed.
        assert!(relayed_rosters(&mut server, 2_000)
            .iter()
            .all(Vec::is_empty));
        server.report_serving(Millis(2_100));
        // The init grants the last seat; the server's copy grows and is persisted.
        server
            .handle_datagram(Millis(2_200), &frame(3, 7, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        let request = server.poll_persist().expect("the copy is persisted");
        assert_eq!(request.state.roster, [7, 2, 3].map(NodeId));
        server.persisted(request.seq);
        assert!(relayed_rosters(&mut server, 4_000).contains(&[7, 2, 3].map(NodeId).to_vec()));
        // Restarted with the init gone: it relays the copy it kept.
        let mut restarted = Node::new(config(2, 3), Millis(0), Some(request.state));
        assert!(relayed_rosters(&mut restarted, 1).contains(&[7, 2, 3].map(NodeId).to_vec()));
    }

    fn asking_hello(storage: u8) -> Body {
        Body::Hello(Hello {
            pin: RolePin::Auto,
            storage,
            ram_mib: 1024,
            decided: Some(Value::Init(NodeId(7))),
            serving: false,
            wants_seat: true,
            roster: Vec::new(),
        })
    }

    #[test]
    fn in_book_mode_the_init_grants_only_the_seats_the_book_holds() {
        let mut x = Node::new(config(7, 1), Millis(0), None);
        x.use_seat_book();
        x.handle_timeout(Millis(1500));
        persist_all(&mut x);
        x.report_serving(Millis(1600));
        persist_all(&mut x);
        drain_transmits(&mut x);
        for (node, storage) in [(2, 200), (3, 100)] {
            x.handle_datagram(Millis(1700), &frame(1, node, asking_hello(storage)))
                .expect("genuine frame");
        }
        // Nobody gets a seat (or an agent's role) from the election alone.
        persist_all(&mut x);
        assert!(drain_transmits(&mut x).iter().all(|t| !matches!(
            decode(1, t).body,
            Body::JoinAsAgent { .. } | Body::SeatGranted { .. }
        )));
        assert_eq!(x.seat_askers(Millis(1700)).len(), 2);
        // The keeper wrote node 2's seat to the book: the roster grows, node 2 is told, after
        // the roster is durable.
        x.set_seat_book(
            Millis(1800),
            BookView {
                holders: vec![NodeId(7), NodeId(2)],
                pending: true,
                removed: Vec::new(),
            },
        );
        x.seat_granted(Millis(1800), NodeId(2));
        let request = x.poll_persist().expect("the grant is persisted");
        assert_eq!(request.state.roster, [7, 2].map(NodeId));
        assert!(
            drain_transmits(&mut x).is_empty(),
            "nothing before the persist"
        );
        x.persisted(request.seq);
        persist_all(&mut x);
        let told: Vec<Transmit> = drain_transmits(&mut x);
        assert!(told.iter().any(|t| t.to == Destination::Node(NodeId(2))
            && decode(1, t).body == Body::SeatGranted { node: NodeId(2) }));
        // Node 3 is not excess while the book has a free seat: no agent's role for it.
        assert!(told.iter().all(|t| t.to != Destination::Node(NodeId(3))));
    }

    /// A server of roster [7, 2, 3] (this is 2), serving, in book mode.
    fn serving_book_server() -> Node {
        let mut server = Node::new(config(2, 3), Millis(0), None);
        server.use_seat_book();
        server
            .handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        server
            .handle_datagram(Millis(11), &frame(3, 3, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        // In book mode its role comes from the book (a seat keeper's frame), not the roster.
        server
            .handle_datagram(
                Millis(12),
                &frame(3, 7, Body::SeatGranted { node: NodeId(2) }),
            )
            .expect("genuine frame");
        persist_all(&mut server);
        server.report_serving(Millis(20));
        persist_all(&mut server);
        drain_transmits(&mut server);
        server
    }

    fn relayed_rosters(node: &mut Node, at: u64) -> Vec<Vec<NodeId>> {
        node.handle_timeout(Millis(at));
        persist_all(node);
        drain_transmits(node)
            .iter()
            .filter_map(|t| match decode(3, t).body {
                Body::Hello(h) => Some(h.roster),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_freed_seat_is_not_relayed_as_full_and_a_new_card_takes_it_from_the_book() {
        let mut server = serving_book_server();
        assert!(relayed_rosters(&mut server, 2_000).contains(&[7, 2, 3].map(NodeId).to_vec()));
        // The dead init 7 was removed and its seat released: the relayed roster leaves it out.
        server.set_seat_book(
            Millis(2_100),
            BookView {
                holders: vec![NodeId(2), NodeId(3)],
                pending: false,
                removed: vec![NodeId(7)],
            },
        );
        server
            .handle_datagram(Millis(3_900), &frame(3, 3, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        let rosters = relayed_rosters(&mut server, 4_000);
        assert!(
            rosters.contains(&[2, 3].map(NodeId).to_vec()),
            "{rosters:?}"
        );

        // A new card hears that roster: it is not the init's, so the card waits for a seat.
        let mut card = Node::new(config(9, 3), Millis(0), None);
        card.handle_datagram(Millis(10), &frame(3, 2, decided_hello(true, &[2, 3])))
            .expect("genuine frame");
        persist_all(&mut card);
        assert_eq!(card.status(Millis(10)).role, None);
        // A grant from a node not heard serving, or addressed to another node, is ignored.
        card.handle_datagram(
            Millis(11),
            &frame(3, 5, Body::SeatGranted { node: NodeId(9) }),
        )
        .expect("genuine frame");
        card.handle_datagram(
            Millis(12),
            &frame(3, 2, Body::SeatGranted { node: NodeId(8) }),
        )
        .expect("genuine frame");
        persist_all(&mut card);
        assert_eq!(card.status(Millis(12)).role, None);
        // The serving server's grant (after its keeper wrote the book) gives the seat.
        server.set_seat_book(
            Millis(4_100),
            BookView {
                holders: vec![NodeId(2), NodeId(3), NodeId(9)],
                pending: true,
                removed: vec![NodeId(7)],
            },
        );
        server.seat_granted(Millis(4_100), NodeId(9));
        persist_all(&mut server);
        let grant = drain_transmits(&mut server)
            .into_iter()
            .find(|t| t.to == Destination::Node(NodeId(9)))
            .expect("the card is told");
        assert_eq!(
            decode(3, &grant).body,
            Body::SeatGranted { node: NodeId(9) }
        );
        card.handle_datagram(Millis(20), &grant.frame)
            .expect("genuine frame");
        persist_all(&mut card);
        let role = Role::Server { join: NodeId(7) };
        assert!(std::iter::from_fn(|| card.poll_event()).any(|e| e == Event::Role(role)));
        assert_eq!(card.role_via(), Some(NodeId(2)));
        // With the book full again, the relay still names only holders heard serving: the
        // dead init stays out (a roster without it is no roster source for a card).
        let rosters = relayed_rosters(&mut server, 6_000);
        assert!(
            rosters.iter().all(|r| !r.contains(&NodeId(7))),
            "{rosters:?}"
        );
    }

    #[test]
    fn a_gone_holders_seat_is_not_relayed_as_full() {
        let mut server = serving_book_server();
        let hear = |server: &mut Node, at: u64, from: u64| {
            server
                .handle_datagram(Millis(at), &frame(3, from, decided_hello(true, &[7, 2, 3])))
                .expect("genuine frame");
        };
        hear(&mut server, 1_000, 7);
        hear(&mut server, 1_000, 3);
        server.set_seat_book(
            Millis(1_000),
            BookView {
                holders: [7, 2, 3].map(NodeId).to_vec(),
                pending: false,
                removed: Vec::new(),
            },
        );
        assert!(relayed_rosters(&mut server, 2_000).contains(&[7, 2, 3].map(NodeId).to_vec()));
        // 3 keeps announcing, the init 7 fell silent (powered off) past the view's TTL: the
        // roster leaves it out, so a new card does not read a full roster as an agent's role.
        hear(&mut server, 5_500, 3);
        let rosters = relayed_rosters(&mut server, 6_000);
        assert!(
            rosters.contains(&[2, 3].map(NodeId).to_vec())
                && rosters.iter().all(|r| !r.contains(&NodeId(7))),
            "{rosters:?}"
        );
        let mut card = Node::new(config(9, 3), Millis(0), None);
        card.handle_datagram(Millis(10), &frame(3, 2, decided_hello(true, &[2, 3])))
            .expect("genuine frame");
        persist_all(&mut card);
        assert_eq!(card.status(Millis(10)).role, None, "the card must wait");
        // 7 is heard serving again: the full roster again.
        hear(&mut server, 6_500, 7);
        assert!(relayed_rosters(&mut server, 8_000).contains(&[7, 2, 3].map(NodeId).to_vec()));
    }

    #[test]
    fn a_removed_server_is_told_forgets_its_role_and_takes_a_seat_only_from_the_book() {
        let mut server = serving_book_server();
        // Server 3 of roster [7, 2, 3], serving, hears server 2 serving.
        let mut x = Node::new(config(3, 3), Millis(0), None);
        x.use_seat_book();
        x.handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        x.handle_datagram(
            Millis(11),
            &frame(3, 7, Body::SeatGranted { node: NodeId(3) }),
        )
        .expect("genuine frame");
        persist_all(&mut x);
        x.report_serving(Millis(20));
        persist_all(&mut x);
        x.handle_datagram(Millis(30), &frame(3, 2, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        assert_eq!(
            x.status(Millis(30)).role,
            Some(Role::Server { join: NodeId(7) })
        );
        std::iter::from_fn(|| x.poll_event()).for_each(drop);
        // Node 9 (removed too) is not heard claiming to serve: not told; 3 is heard: told.
        server
            .handle_datagram(Millis(40), &frame(3, 3, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        server.tell_removed(Millis(50), NodeId(9), 90);
        server.tell_removed(Millis(50), NodeId(3), 100);
        persist_all(&mut server);
        let told: Vec<Transmit> = drain_transmits(&mut server)
            .into_iter()
            .filter(|t| matches!(decode(3, t).body, Body::Removed { .. }))
            .collect();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].to, Destination::Node(NodeId(3)));
        // From a node not heard serving, or addressed to another node: ignored.
        for (sender, node) in [(5, 3), (2, 4)] {
            x.handle_datagram(
                Millis(55),
                &frame(
                    3,
                    sender,
                    Body::Removed {
                        node: NodeId(node),
                        at: 100,
                    },
                ),
            )
            .expect("genuine frame");
        }
        assert!(x.poll_event().is_none());
        x.handle_datagram(Millis(60), &told[0].frame)
            .expect("genuine frame");
        assert_eq!(
            x.poll_event(),
            Some(Event::Removed {
                at: 100,
                via: NodeId(2)
            })
        );
        // The daemon set the data aside: the role is forgotten durably, serving too.
        x.forget_role(Millis(70));
        let request = x.poll_persist().expect("the forgotten role is persisted");
        assert_eq!(request.state.role, None);
        assert!(!request.state.serving && request.state.roster.is_empty());
        x.persisted(request.seq);

        // Restarted: a roster that still names it (its old seat) gives it no role...
        let restart = |rejoining: bool| {
            let mut x = Node::new(config(3, 3), Millis(0), Some(request.state.clone()));
            x.use_seat_book();
            if rejoining {
                x.rejoin_after_removal();
            }
            x.handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 2, 3])))
                .expect("genuine frame");
            persist_all(&mut x);
            x
        };
        let mut x = restart(true);
        assert_eq!(x.status(Millis(10)).role, None, "it must ask the seat book");
        // (in book mode a roster gives no role without the rejoin flag either)
        assert_eq!(restart(false).status(Millis(10)).role, None);
        // ...it asks for a seat, and takes the one the book grants.
        x.handle_timeout(Millis(2_000));
        persist_all(&mut x);
        assert!(drain_transmits(&mut x)
            .iter()
            .any(|t| matches!(decode(3, t).body, Body::Hello(h) if h.wants_seat && !h.serving)));
        x.handle_datagram(Millis(2_100), &frame(3, 2, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        x.handle_datagram(
            Millis(2_200),
            &frame(3, 2, Body::SeatGranted { node: NodeId(3) }),
        )
        .expect("genuine frame");
        persist_all(&mut x);
        assert_eq!(
            x.status(Millis(2_200)).role,
            Some(Role::Server { join: NodeId(7) })
        );
        // Had the seat been refilled (a full roster without it): an agent once a seat keeper
        // says so (in book mode a full roster alone makes no agent: the keepers first check
        // that no old Node of its name is left, see `healer::reflash`).
        let mut y = Node::new(config(3, 3), Millis(0), Some(request.state));
        y.use_seat_book();
        y.rejoin_after_removal();
        y.handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 2, 9, 3])))
            .expect("genuine frame");
        persist_all(&mut y);
        assert_eq!(y.status(Millis(10)).role, None);
        y.handle_datagram(
            Millis(20),
            &frame(3, 7, Body::JoinAsAgent { node: NodeId(3) }),
        )
        .expect("genuine frame");
        persist_all(&mut y);
        assert_eq!(
            y.status(Millis(20)).role,
            Some(Role::Agent { join: NodeId(7) })
        );
    }

    #[test]
    fn a_reflashed_init_never_initializes_again_and_asks_the_seat_book_durably() {
        // Node 7 was the cluster-init node; its card was re-flashed: no state. Servers 2 and 3
        // serve and say 7 was decided. Without the guard it would take `ClusterInit` (a second
        // cluster, `cluster-init` on empty data).
        let hear = |x: &mut Node, at: u64| {
            for from in [2, 3] {
                x.handle_datagram(Millis(at), &frame(3, from, decided_hello(true, &[2, 3])))
                    .expect("genuine frame");
            }
            persist_all(x);
        };
        let mut x = Node::new(config(7, 3), Millis(0), None);
        x.use_seat_book();
        x.handle_datagram(Millis(10), &frame(3, 2, decided_hello(true, &[2, 3])))
            .expect("genuine frame");
        let request = x.poll_persist().expect("state to persist");
        assert!(request.state.rejoining, "the guard is durable");
        x.persisted(request.seq);
        hear(&mut x, 11);
        assert_eq!(x.status(Millis(11)).role, None);
        x.handle_timeout(Millis(2_000));
        persist_all(&mut x);
        assert!(drain_transmits(&mut x)
            .iter()
            .any(|t| matches!(decode(3, t).body, Body::Hello(h) if h.wants_seat)));
        // Restarted from its state (before it heard anybody again): still never the init.
        let mut y = Node::new(config(7, 3), Millis(0), Some(request.state.clone()));
        y.use_seat_book();
        y.handle_timeout(Millis(1_000));
        persist_all(&mut y);
        assert_eq!(y.status(Millis(1_000)).role, None);
        hear(&mut y, 1_010);
        y.handle_datagram(
            Millis(1_020),
            &frame(3, 2, Body::SeatGranted { node: NodeId(7) }),
        )
        .expect("genuine frame");
        persist_all(&mut y);
        assert_eq!(
            y.status(Millis(1_020)).role,
            Some(Role::Server { join: NodeId(7) })
        );
        // The state file carries the flag, and reads back.
        let text = serde_json::to_string(&request.state).unwrap();
        assert!(text.contains("\"rejoining\":true"), "{text}");
        assert_eq!(
            serde_json::from_str::<PersistedState>(&text).unwrap(),
            request.state
        );
    }

    #[test]
    fn in_book_mode_a_roster_gives_no_role_the_seat_keepers_tell_the_card() {
        // A card (9) hears a serving server relay a full roster: outside book mode it is an
        // agent at once; in book mode it keeps asking (it may be a re-flashed card whose old
        // Node must go first), and the init, whose book is full, does not tell it either.
        for book_mode in [false, true] {
            let mut card = Node::new(config(9, 3), Millis(0), None);
            if book_mode {
                card.use_seat_book();
            }
            card.handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 2, 3])))
                .expect("genuine frame");
            persist_all(&mut card);
            let role = card.status(Millis(10)).role;
            if book_mode {
                assert_eq!(role, None);
                card.handle_timeout(Millis(2_000));
                persist_all(&mut card);
                assert!(drain_transmits(&mut card)
                    .iter()
                    .any(|t| matches!(decode(3, t).body, Body::Hello(h) if h.wants_seat)));
            } else {
                assert_eq!(role, Some(Role::Agent { join: NodeId(7) }));
            }
        }
        // A roster naming the card (its old seat, relayed while its old self still counted as
        // serving): a server outside book mode, nothing in book mode (the keepers grant).
        for book_mode in [false, true] {
            let mut card = Node::new(config(9, 3), Millis(0), None);
            if book_mode {
                card.use_seat_book();
            }
            card.handle_datagram(Millis(10), &frame(3, 7, decided_hello(true, &[7, 9, 3])))
                .expect("genuine frame");
            persist_all(&mut card);
            let expected = (!book_mode).then_some(Role::Server { join: NodeId(7) });
            assert_eq!(
                card.status(Millis(10)).role,
                expected,
                "book mode {book_mode}"
            );
        }
        // The init (7, alone at first so it inits), serving, its book full.
        let mut init = Node::new(config(7, 1), Millis(0), None);
        init.use_seat_book();
        init.handle_timeout(Millis(1500));
        persist_all(&mut init);
        init.report_serving(Millis(1600));
        persist_all(&mut init);
        init.set_seat_book(
            Millis(1650),
            BookView {
                holders: [7, 2, 3].map(NodeId).to_vec(),
                pending: false,
                removed: Vec::new(),
            },
        );
        for node in [2, 3] {
            init.handle_datagram(
                Millis(1_660),
                &frame(1, node, decided_hello(true, &[7, 2, 3])),
            )
            .expect("genuine frame");
        }
        persist_all(&mut init);
        drain_transmits(&mut init);
        init.handle_datagram(Millis(1_700), &frame(1, 9, asking_hello(90)))
            .expect("genuine frame");
        persist_all(&mut init);
        assert!(
            !drain_transmits(&mut init)
                .iter()
                .any(|t| matches!(decode(1, t).body, Body::JoinAsAgent { .. })),
            "the init told a card asking with a full book to be an agent"
        );
        // The seat keepers see it asking (and tell it once no old Node of its name is left).
        assert_eq!(init.seat_askers(Millis(1_700)).len(), 1);
    }

    #[test]
    fn a_removed_init_never_initializes_again_and_rejoins_through_the_book() {
        let mut x = Node::new(config(7, 1), Millis(0), None);
        x.use_seat_book();
        x.handle_timeout(Millis(1500));
        persist_all(&mut x);
        x.report_serving(Millis(1600));
        persist_all(&mut x);
        assert_eq!(x.status(Millis(1600)).role, Some(Role::ClusterInit));
        x.handle_datagram(Millis(1700), &frame(1, 2, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        std::iter::from_fn(|| x.poll_event()).for_each(drop);
        x.handle_datagram(
            Millis(1800),
            &frame(
                1,
                2,
                Body::Removed {
                    node: NodeId(7),
                    at: 100,
                },
            ),
        )
        .expect("genuine frame");
        assert_eq!(
            x.poll_event(),
            Some(Event::Removed {
                at: 100,
                via: NodeId(2)
            })
        );
        x.forget_role(Millis(1900));
        let request = x.poll_persist().expect("the forgotten role is persisted");
        assert_eq!(request.state.role, None);
        x.persisted(request.seq);
        let restart = |rejoining: bool| {
            let mut x = Node::new(config(7, 1), Millis(0), Some(request.state.clone()));
            x.use_seat_book();
            if rejoining {
                x.rejoin_after_removal();
            }
            x.handle_timeout(Millis(1500));
            persist_all(&mut x);
            x
        };
        // Without the rejoin flag it would run cluster-init again: a second cluster.
        assert_eq!(
            restart(false).status(Millis(1500)).role,
            Some(Role::ClusterInit)
        );
        let mut x = restart(true);
        assert_eq!(x.status(Millis(1500)).role, None);
        assert!(drain_transmits(&mut x)
            .iter()
            .any(|t| matches!(decode(1, t).body, Body::Hello(h) if h.wants_seat)));
        // A roster naming it (its old seat) gives it nothing; the book's grant gives a seat.
        x.handle_datagram(Millis(1600), &frame(1, 2, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        persist_all(&mut x);
        assert_eq!(x.status(Millis(1600)).role, None);
        x.handle_datagram(
            Millis(1700),
            &frame(1, 2, Body::SeatGranted { node: NodeId(7) }),
        )
        .expect("genuine frame");
        persist_all(&mut x);
        assert_eq!(
            x.status(Millis(1700)).role,
            Some(Role::Server { join: NodeId(7) })
        );
    }

    #[test]
    fn any_serving_server_sends_a_new_card_to_an_agent_role_when_the_book_is_full() {
        let mut server = serving_book_server();
        server.tell_join_as_agent(Millis(30), NodeId(9));
        persist_all(&mut server);
        let told = drain_transmits(&mut server)
            .into_iter()
            .find(|t| t.to == Destination::Node(NodeId(9)))
            .expect("the card is told");
        let mut card = Node::new(config(9, 3), Millis(0), None);
        card.handle_datagram(Millis(10), &frame(3, 5, decided_hello(false, &[])))
            .expect("genuine frame");
        // From a node not serving: ignored.
        card.handle_datagram(
            Millis(11),
            &frame(3, 5, Body::JoinAsAgent { node: NodeId(9) }),
        )
        .expect("genuine frame");
        persist_all(&mut card);
        assert_eq!(card.status(Millis(11)).role, None);
        card.handle_datagram(Millis(12), &frame(3, 2, decided_hello(true, &[2, 3])))
            .expect("genuine frame");
        card.handle_datagram(Millis(13), &told.frame)
            .expect("genuine frame");
        persist_all(&mut card);
        let agent = Role::Agent { join: NodeId(7) };
        assert!(std::iter::from_fn(|| card.poll_event()).any(|e| e == Event::Role(agent)));
    }

    /// An agent of init 7 (this is 9), serving as an agent, hearing server 2 serve.
    fn serving_agent(book_mode: bool, pin: RolePin) -> Node {
        let mut cfg = config(9, 3);
        cfg.rank.pin = pin;
        let mut agent = Node::new(cfg, Millis(0), None);
        if book_mode {
            agent.use_seat_book();
        }
        agent
            .handle_datagram(Millis(10), &frame(3, 2, decided_hello(true, &[7, 2, 3])))
            .expect("genuine frame");
        agent
            .handle_datagram(
                Millis(11),
                &frame(3, 2, Body::JoinAsAgent { node: NodeId(9) }),
            )
            .expect("genuine frame");
        persist_all(&mut agent);
        agent.report_serving(Millis(12));
        persist_all(&mut agent);
        let _ = std::iter::from_fn(|| agent.poll_event()).count();
        assert_eq!(
            agent.status(Millis(12)).role,
            Some(Role::Agent { join: NodeId(7) })
        );
        agent
    }

    #[test]
    fn a_granted_seat_promotes_a_serving_agent_durably_and_it_stops_serving_until_k3s_runs() {
        let server = Role::Server { join: NodeId(7) };
        let mut agent = serving_agent(true, RolePin::Auto);
        // From a node not heard serving, or for another node: ignored.
        for (from, to) in [(5, 9), (2, 8)] {
            agent
                .handle_datagram(
                    Millis(20),
                    &frame(3, from, Body::SeatGranted { node: NodeId(to) }),
                )
                .expect("genuine frame");
        }
        persist_all(&mut agent);
        assert_eq!(
            agent.status(Millis(20)).role,
            Some(Role::Agent { join: NodeId(7) })
        );
        agent
            .handle_datagram(
                Millis(30),
                &frame(3, 2, Body::SeatGranted { node: NodeId(9) }),
            )
            .expect("genuine frame");
        // The new role is released only once it is durable, and it no longer serves.
        assert_eq!(agent.poll_event(), None);
        let request = agent.poll_persist().expect("the promotion is persisted");
        assert_eq!(request.state.role, Some(server));
        assert!(!request.state.serving);
        agent.persisted(request.seq);
        persist_all(&mut agent);
        assert!(std::iter::from_fn(|| agent.poll_event()).any(|e| e == Event::Role(server)));
        // Its next hello (due at once) says it does not serve.
        agent.handle_timeout(Millis(30));
        persist_all(&mut agent);
        let hellos: Vec<Hello> = drain_transmits(&mut agent)
            .iter()
            .filter_map(|t| match decode(3, t).body {
                Body::Hello(h) => Some(h),
                _ => None,
            })
            .collect();
        assert!(
            !hellos.is_empty() && hellos.iter().all(|h| !h.serving),
            "{hellos:?}"
        );
        // A restart continues as a server; a repeated grant changes nothing.
        let mut restarted = Node::new(config(9, 3), Millis(0), Some(request.state));
        assert_eq!(restarted.poll_event(), Some(Event::Role(server)));
        agent
            .handle_datagram(
                Millis(40),
                &frame(3, 2, Body::SeatGranted { node: NodeId(9) }),
            )
            .expect("genuine frame");
        assert_eq!(agent.poll_persist().map(|r| r.state.role), None);
        // Serving again once K3s runs as a server.
        agent.report_serving(Millis(50));
        assert!(agent.poll_persist().is_some_and(|r| r.state.serving));
    }

    #[test]
    fn no_promotion_outside_book_mode_or_for_a_node_pinned_to_the_agent_role() {
        for (book_mode, pin) in [(false, RolePin::Auto), (true, RolePin::Agent)] {
            let mut agent = serving_agent(book_mode, pin);
            agent
                .handle_datagram(
                    Millis(30),
                    &frame(3, 2, Body::SeatGranted { node: NodeId(9) }),
                )
                .expect("genuine frame");
            persist_all(&mut agent);
            assert_eq!(
                agent.status(Millis(30)).role,
                Some(Role::Agent { join: NodeId(7) }),
                "book mode {book_mode}, pin {pin:?}"
            );
            assert_eq!(agent.poll_event(), None);
        }
    }

    /// Persists everything asked for, then returns the bodies sent and the events released.
    fn settle(node: &mut Node, nodes: u8) -> (Vec<Body>, Vec<Event>) {
        persist_all(node);
        let bodies = drain_transmits(node)
            .iter()
            .map(|t| decode(nodes, t).body)
            .collect();
        (bodies, std::iter::from_fn(|| node.poll_event()).collect())
    }

    fn prepared(bodies: &[Body], want: Instance) -> Ballot {
        bodies
            .iter()
            .find_map(|body| match body {
                Body::Prepare { instance, ballot } if *instance == want => Some(*ballot),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {want:?} prepare in {bodies:?}"))
    }

    #[test]
    fn the_elected_node_inits_only_once_its_go_is_decided() {
        let mut x = Node::new(config(9, 3), Millis(0), None);
        x.handle_datagram(Millis(5), &frame(3, 2, undecided_hello()))
            .expect("genuine frame");
        x.handle_timeout(Millis(1500));
        let (bodies, _) = settle(&mut x, 3);
        let ballot = prepared(&bodies, Instance::Leader);
        let promise = Body::Promise {
            instance: Instance::Leader,
            ballot,
            accepted: None,
        };
        x.handle_datagram(Millis(1510), &frame(3, 2, promise))
            .expect("genuine frame");
        settle(&mut x, 3);
        let value = Value::Init(NodeId(9));
        let accepted = Body::Accepted {
            instance: Instance::Leader,
            ballot,
            value,
        };
        x.handle_datagram(Millis(1520), &frame(3, 2, accepted))
            .expect("genuine frame");
        let (bodies, events) = settle(&mut x, 3);
        assert!(events.is_empty(), "elected is not final: {events:?}");
        assert_eq!(
            x.status(Millis(1520)).to_string(),
            "0000000000000009 elected (epoch 0); waiting for it to confirm"
        );
        let go = prepared(&bodies, Instance::Fate);
        let promise = Body::Promise {
            instance: Instance::Fate,
            ballot: go,
            accepted: None,
        };
        x.handle_datagram(Millis(1530), &frame(3, 2, promise))
            .expect("genuine frame");
        let (bodies, events) = settle(&mut x, 3);
        assert!(events.is_empty());
        assert!(bodies.contains(&Body::Accept {
            instance: Instance::Fate,
            ballot: go,
            value
        }));
        let accepted = Body::Accepted {
            instance: Instance::Fate,
            ballot: go,
            value,
        };
        x.handle_datagram(Millis(1540), &frame(3, 2, accepted))
            .expect("genuine frame");
        let (_, events) = settle(&mut x, 3);
        assert_eq!(
            events,
            vec![
                Event::Decided { epoch: 0, value },
                Event::Role(Role::ClusterInit)
            ]
        );
    }

    /// Node 2 learns that node 1 was elected, then hears nothing more; node 3 answers its fate prepare.
    fn abandon_a_silent_elected_node(reported: Option<(Ballot, Value)>) -> (Node, Vec<Event>) {
        let mut node = Node::new(config(2, 3), Millis(0), None);
        let elected = Body::Decided {
            instance: Instance::Leader,
            value: Value::Init(NodeId(1)),
        };
        node.handle_datagram(Millis(100), &frame(3, 1, elected))
            .expect("genuine frame");
        let (_, events) = settle(&mut node, 3);
        assert!(events.is_empty());
        let (now, ballot) = loop {
            let now = node.poll_timeout().expect("a timer is armed");
            assert!(now < Millis(20_000), "no fate prepare by {now:?}");
            node.handle_timeout(now);
            let (bodies, _) = settle(&mut node, 3);
            if let Some(ballot) = bodies.iter().find_map(|b| match b {
                Body::Prepare {
                    instance: Instance::Fate,
                    ballot,
                } => Some(*ballot),
                _ => None,
            }) {
                break (now, ballot);
            }
        };
        assert!(now >= Millis(6_000), "abandoned too early: {now:?}");
        let promise = Body::Promise {
            instance: Instance::Fate,
            ballot,
            accepted: reported,
        };
        node.handle_datagram(now, &frame(3, 3, promise))
            .expect("genuine frame");
        let (bodies, _) = settle(&mut node, 3);
        let value = reported.map_or(Value::Abandon, |(_, v)| v);
        assert!(bodies.contains(&Body::Accept {
            instance: Instance::Fate,
            ballot,
            value
        }));
        let accepted = Body::Accepted {
            instance: Instance::Fate,
            ballot,
            value,
        };
        node.handle_datagram(now, &frame(3, 3, accepted))
            .expect("genuine frame");
        let (_, events) = settle(&mut node, 3);
        (node, events)
    }

    #[test]
    fn a_silent_elected_node_is_abandoned_and_the_next_epoch_begins() {
        let (node, events) = abandon_a_silent_elected_node(None);
        assert_eq!(
            events,
            vec![Event::Decided {
                epoch: 0,
                value: Value::Abandon
            }]
        );
        assert_eq!(node.status(Millis(0)).epoch, 1);
    }

    #[test]
    fn an_accepted_go_is_carried_forward_by_an_abandon_proposal() {
        let go = Value::Init(NodeId(1));
        let ballot = Ballot {
            round: 1,
            node: NodeId(1),
        };
        let (node, events) = abandon_a_silent_elected_node(Some((ballot, go)));
        assert_eq!(
            events,
            vec![Event::Decided {
                epoch: 0,
                value: go
            }]
        );
        assert_eq!(node.status(Millis(0)).decided, Some(go));
    }

    #[test]
    fn a_restarted_node_repeats_its_role() {
        let state = PersistedState {
            epoch_state: EpochState::Go(NodeId(4)),
            role: Some(Role::Agent { join: NodeId(4) }),
            ..PersistedState::default()
        };
        let mut node = Node::new(config(1, 3), Millis(0), Some(state));
        assert_eq!(
            node.poll_event(),
            Some(Event::Role(Role::Agent { join: NodeId(4) }))
        );
    }
}
