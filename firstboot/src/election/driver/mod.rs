//! The thin async adapter around the sans-IO election core: UDP frames, discovery events, timers, fsync.
//!
//! One [`ElectionDriver::step`] waits for whichever comes first (a datagram, a browser event, the
//! core's next timer), feeds it to the core, then drains the core's outputs in the order safety
//! needs: persist requests are written durably and acknowledged first, so frames and events that
//! depend on acceptor state are only released (and sent) after that state is on disk.
//!
//! A [`PersistHook`] may pause the node right after a state is durable and before anything that
//! follows leaves it; firstboot installs none (the LAN tests install one from the test crate).

mod store;

use crate::discovery::record::PeerClass;
use crate::discovery::table::PeerSummary;
use crate::discovery::{Browser, FrameTransport, PeerEvent, PeerTable, UdpTransport};
use crate::election::{
    Body, BookView, Destination, ElectionConfig, ElectionStatus, Envelope, Event, Hello,
    Membership, Millis, Node, NodeId, PersistedState, Rank,
};
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
pub use store::ElectionStore;
use tokio::time::Instant;

/// The election of one node on a real LAN.
pub struct ElectionDriver {
    node: Node,
    transport: UdpTransport,
    browser: Browser,
    table: PeerTable,
    /// Where each authenticated peer was last heard or is advertised.
    addrs: BTreeMap<NodeId, SocketAddr>,
    started: Instant,
    store: ElectionStore,
    /// Events released while starting, until taken.
    startup: Vec<Event>,
    /// Sees every durable state first (none in the product).
    hook: Option<Box<dyn PersistHook>>,
    /// The end of a pause the hook asked for; nothing is sent or released before it.
    pause_until: Option<Instant>,
    /// Events drained from the core but not yet returned: kept here so that a `step` cancelled
    /// by the caller's `select!` while sending loses no event (they come with the next step).
    released: Vec<Event>,
}

/// Sees each election state the driver made durable before anything it released leaves the
/// node, and may pause the node there. From outside, the node simply stalls at that point; the
/// core is untouched.
pub trait PersistHook: Send {
    /// `state` of node `me` is on disk: how long to wait before its frames and events leave.
    fn persisted(&mut self, me: NodeId, state: &PersistedState) -> Option<std::time::Duration>;
}

impl ElectionDriver {
    /// Starts the core (restored from `store` when an earlier run left state) and releases
    /// whatever a restored node must say at once.
    pub async fn start(
        config: ElectionConfig,
        store: ElectionStore,
        transport: UdpTransport,
        browser: Browser,
        hook: Option<Box<dyn PersistHook>>,
    ) -> anyhow::Result<Self> {
        let restored = store.load().context("restoring the election state")?;
        if let Some(state) = &restored {
            tracing::info!(epoch = state.epoch, epoch_state = ?state.epoch_state, role = ?state.role,
                "restored the election state");
        }
        let node = Node::new(config, Millis(0), restored);
        let mut driver = ElectionDriver {
            node,
            transport,
            browser,
            table: PeerTable::default(),
            addrs: BTreeMap::new(),
            started: Instant::now(),
            store,
            startup: Vec::new(),
            hook,
            pause_until: None,
            released: Vec::new(),
        };
        driver.startup = driver.drain().await?;
        Ok(driver)
    }

    /// Events the core released at start (a restored node repeats its role): take them once.
    pub fn take_startup_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.startup)
    }

    /// Milliseconds on the driver's monotonic clock.
    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// The core's status now.
    pub fn status(&self) -> ElectionStatus {
        self.node.status(self.now())
    }

    /// The servers serving now as the core sees them (see [`Node::serving_servers`]), with
    /// their frame addresses; those whose address is unknown are left out.
    pub fn serving_servers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.node
            .serving_servers(self.now())
            .into_iter()
            .filter_map(|node| Some((node, self.peer_addr(node)?)))
            .collect()
    }

    /// The membership as this node sees it now (status; SPEC 4.4).
    pub fn membership(&self) -> Membership {
        self.node.membership(self.now())
    }

    /// The live node whose hello gave this node its role (see [`Node::role_via`]).
    pub fn role_via(&self) -> Option<NodeId> {
        self.node.role_via()
    }

    /// What discovery sees: verified peers, foreign and unverified counts.
    pub fn peers(&self) -> PeerSummary {
        self.table.summary()
    }

    /// Where `node` was last heard from or is advertised (its frame address), if known.
    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.addrs.get(&node).copied()
    }

    /// Any authenticated peer's address (to find the local address that routes to the LAN).
    pub fn any_peer_addr(&self) -> Option<SocketAddr> {
        self.addrs.values().next().copied()
    }

    /// Seats are granted through the cluster's seat book (see [`Node::use_seat_book`]).
    pub fn use_seat_book(&mut self) {
        self.node.use_seat_book();
    }

    /// The nodes asking for a server seat now (see [`Node::seat_askers`]).
    pub fn seat_askers(&self) -> Vec<Rank> {
        self.node.seat_askers(self.now())
    }

    /// The peers heard serving now.
    pub fn serving_peers(&self) -> Vec<NodeId> {
        self.node.serving_peers(self.now())
    }

    /// A seat keeper's round ended: the book it saw, the seats it holds for `grant` and the
    /// askers it sends to agent roles; sends what follows.
    pub async fn seat_round(
        &mut self,
        book: BookView,
        grant: Option<NodeId>,
        agents: &[NodeId],
    ) -> anyhow::Result<Vec<Event>> {
        let now = self.now();
        self.node.set_seat_book(now, book);
        if let Some(node) = grant {
            self.node.seat_granted(now, node);
        }
        for node in agents {
            self.node.tell_join_as_agent(now, *node);
        }
        self.drain().await
    }

    /// Tells each of `removed` (node, when the seat book recorded its removal) heard claiming
    /// to serve that it was removed (see [`Node::tell_removed`]); sends what follows.
    pub async fn tell_removed(&mut self, removed: &[(NodeId, i64)]) -> anyhow::Result<Vec<Event>> {
        let now = self.now();
        for (node, at) in removed {
            self.node.tell_removed(now, *node, *at);
        }
        self.drain().await
    }

    /// This server was removed and its etcd data set aside: forget its role, durably (see
    /// [`Node::forget_role`]).
    pub async fn forget_role(&mut self) -> anyhow::Result<Vec<Event>> {
        let now = self.now();
        self.node.forget_role(now);
        self.drain().await
    }

    /// This node rejoins after its removal (see [`Node::rejoin_after_removal`]).
    pub fn rejoin_after_removal(&mut self) {
        self.node.rejoin_after_removal();
    }

    /// Tells the core this node's role is up (K3s active, or the stand-in of `--until role`).
    pub async fn report_serving(&mut self) -> anyhow::Result<Vec<Event>> {
        let now = self.now();
        self.node.report_serving(now);
        self.drain().await
    }

    /// Waits for one input, feeds it to the core, sends and persists what follows; returns the
    /// core's events (released only after their state is durable).
    pub async fn step(&mut self) -> anyhow::Result<Vec<Event>> {
        let wake = self
            .node
            .poll_timeout()
            .map(|at| self.started + std::time::Duration::from_millis(at.0));
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = self.transport.recv() => {
                let (from, frame) = received.context("receiving a frame")?;
                let now = self.now();
                match self.node.handle_datagram(now, &frame) {
                    Ok(sender) => {
                        self.addrs.insert(sender, from);
                    }
                    // Foreign kits, forgers and garbage: dropped, never answered.
                    Err(e) => tracing::debug!(%from, error = %e, "dropped a frame"),
                }
            }
            event = self.browser.next() => {
                let event = event.context("the browser stopped")?;
                self.on_peer_event(event);
            }
            () = sleep => {
                let now = self.now();
                self.node.handle_timeout(now);
            }
        }
        self.drain().await
    }

    /// A browser event: learn verified peers' addresses and pass their signed rank inputs on as
    /// a hello, so that a node hears about the cluster before its first timer fires.
    fn on_peer_event(&mut self, event: PeerEvent) {
        if let PeerEvent::Resolved(peer) = &event {
            if let PeerClass::Verified(advert) = &peer.class {
                let id = advert.node;
                if id != self.node.id() {
                    let addr = SocketAddr::new(peer.addr.ip(), advert.port);
                    self.addrs.insert(id, addr);
                    let now = self.now();
                    let epoch = self.node.status(now).epoch;
                    // The record's MAC was verified under the token-derived record key.
                    self.node.handle_message(
                        now,
                        Envelope {
                            epoch,
                            sender: id,
                            body: Body::Hello(Hello {
                                pin: advert.role,
                                storage: advert.storage,
                                ram_mib: advert.ram_mib,
                                decided: None,
                                serving: false,
                                wants_seat: false,
                                roster: Vec::new(),
                            }),
                        },
                    );
                }
            }
        }
        self.table.apply(event);
    }

    /// Asks the hook (if any) about a state that just became durable.
    fn after_persist(&mut self, state: &PersistedState) {
        let me = self.node.id();
        if let Some(pause) = self
            .hook
            .as_mut()
            .and_then(|hook| hook.persisted(me, state))
        {
            self.pause_until = Some(Instant::now() + pause);
        }
    }

    /// Waits out a pause the hook asked for before anything leaves the node. Cancel-safe: a
    /// `step` cancelled by the caller's `select!` keeps the deadline and waits again on the next call.
    async fn wait_pause(&mut self) {
        if let Some(until) = self.pause_until {
            tokio::time::sleep_until(until).await;
            self.pause_until = None;
        }
    }

    /// Persists, then sends, then collects events, until the core has nothing more to say.
    async fn drain(&mut self) -> anyhow::Result<Vec<Event>> {
        loop {
            let mut progressed = false;
            while let Some(request) = self.node.poll_persist() {
                // Each request supersedes the previous one; fsync before the acknowledgement.
                self.store
                    .save(&request.state)
                    .context("persisting the election state")?;
                self.node.persisted(request.seq);
                self.after_persist(&request.state);
                progressed = true;
            }
            // Nothing the acknowledged state released (frames, events) leaves during a pause.
            self.wait_pause().await;
            while let Some(transmit) = self.node.poll_transmit() {
                progressed = true;
                let targets: Vec<SocketAddr> = match transmit.to {
                    Destination::All => self.addrs.values().copied().collect(),
                    Destination::Node(id) => self.addrs.get(&id).copied().into_iter().collect(),
                };
                // With no address known yet the frame goes nowhere: the core repeats hellos and
                // resends proposals on its own timers.
                for to in targets {
                    // A lost datagram is what the protocol is built for; log and carry on.
                    if let Err(e) = self.transport.send(to, &transmit.frame).await {
                        tracing::debug!(%to, error = %e, "sending a frame failed");
                    }
                }
            }
            while let Some(event) = self.node.poll_event() {
                progressed = true;
                self.released.push(event);
            }
            if !progressed {
                return Ok(std::mem::take(&mut self.released));
            }
        }
    }
}
