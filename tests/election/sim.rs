//! Deterministic simulator for the election core: virtual clock, lossy links, crashes, rogue senders.
//!
//! Everything random comes from one seed, so a failing seed replays exactly. Safety is checked on
//! every event a node emits; liveness once the run has been quiet (all booted, healed, restarted)
//! for a bounded time.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;

use firstboot::election::{
    Body, ClusterId, Destination, ElectionConfig, Envelope, EpochState, Event, Hello, Instance,
    Millis, Node, NodeId, PersistedState, Rank, Role, RolePin, Rules, Timing, Value,
};
use firstboot::keys::MacKey;

/// A deliberate safety flaw, so the simulator can prove that it catches one. It lives here, in
/// the test crate: `firstboot` only exposes the [`Rules`] a flaw breaks, never a broken rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flaw {
    /// No flaw: the rules as designed.
    #[default]
    None,
    /// Quorum of half the electorate instead of a strict majority.
    HalfQuorum,
    /// Release frames and events before the state they depend on is persisted.
    ReplyBeforePersist,
    /// The elected node runs cluster-init as soon as `Init` is decided, without waiting for Go.
    InitWithoutGo,
}

impl Rules for Flaw {
    fn quorum(&self, electorate: usize) -> usize {
        match self {
            Flaw::HalfQuorum => (electorate / 2).max(1),
            _ => electorate / 2 + 1,
        }
    }

    fn release_after_persist(&self) -> bool {
        *self != Flaw::ReplyBeforePersist
    }

    fn role_waits_for_go(&self) -> bool {
        *self != Flaw::InitWithoutGo
    }
}

/// Electorate sizes the simulator draws from.
pub const NODE_COUNTS: [u8; 7] = [1, 2, 3, 4, 5, 7, 9];
/// Server counts the simulator draws from (never above the electorate).
pub const SERVER_COUNTS: [u8; 3] = [1, 3, 5];

const TOKEN: &[u8] = b"simulated-cluster-token";
const ROGUE_TOKEN: &[u8] = b"some-other-clusters-token";
const STEP_LIMIT: u64 = 3_000_000;

/// Seeded random numbers (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x005E_ED0F_E1EC_7104)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo + 1)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON < p
    }

    /// A random element.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// A network split during `[from_ms, until_ms)`: links between the two sides drop everything.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Start.
    pub from_ms: u64,
    /// Heal time.
    pub until_ms: u64,
    /// Side of each node (index) during the split.
    pub side: Vec<bool>,
    /// Only traffic from the `true` side to the `false` side is lost (a one-way failure).
    pub one_way: bool,
}

/// A planned power loss.
#[derive(Clone, Debug)]
pub struct Crash {
    /// Node index.
    pub node: usize,
    /// When.
    pub at_ms: u64,
    /// Time until it boots again.
    pub down_ms: u64,
}

/// When the elected node loses power, relative to its own progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillPoint {
    /// Once it has persisted that it was elected (its fate still open), after `delay_ms`.
    Elected,
    /// Once it has persisted its own acceptance of Go (the Accept requests may not have left).
    GoAccepted,
    /// Once it learned Go and took the cluster-init role, after `delay_ms`.
    Go,
}

/// The elected node dies before (or just after) it may initialize.
#[derive(Clone, Debug)]
pub struct KillElected {
    /// What the kill waits for.
    pub point: KillPoint,
    /// Delay after that point.
    pub delay_ms: u64,
    /// Time until it boots again; `None`: it never comes back.
    pub down_ms: Option<u64>,
}

/// One simulated world, fully determined by its seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed everything came from.
    pub seed: u64,
    /// `cluster.nodes`.
    pub nodes: u8,
    /// `cluster.servers`.
    pub servers: u8,
    /// Nodes beyond `nodes` that boot after the cluster exists.
    pub late_extras: u8,
    /// Per-datagram loss probability.
    pub loss: f64,
    /// Per-datagram duplication probability.
    pub duplicate: f64,
    /// Per-datagram delay range (reorders whatever overlaps).
    pub delay_ms: (u64, u64),
    /// Boot time of each original node.
    pub boots: Vec<u64>,
    /// Network splits that heal.
    pub partitions: Vec<Partition>,
    /// Planned crashes.
    pub crashes: Vec<Crash>,
    /// Chance to lose power right after sending (before pending persists finish).
    pub crash_after_send: f64,
    /// Chance to lose power right after a persist completes, before sending what it released.
    pub crash_after_persist: f64,
    /// Budget of such random crashes.
    pub random_crashes: u32,
    /// Rogue traffic interval range, if any.
    pub rogue_every_ms: Option<(u64, u64)>,
    /// Time after which no new disruption starts.
    pub chaos_until_ms: u64,
    /// Per-node clock offsets (nodes never share a clock).
    pub clock_offsets: Vec<u64>,
    /// Per-node clock rate error in parts per million (timers run fast or slow).
    pub clock_ppm: Vec<i64>,
    /// Rank of every node (originals then extras).
    pub ranks: Vec<Rank>,
    /// Deliberate flaw built into every node.
    pub flaw: Flaw,
    /// The first node elected is killed before (or just after) it may run cluster-init.
    pub kill_elected: Option<KillElected>,
}

fn random_ranks(rng: &mut Rng, count: usize) -> Vec<Rank> {
    let mut ids = BTreeSet::new();
    while ids.len() < count {
        ids.insert(rng.next_u64() >> rng.range(0, 40));
    }
    let mut ids: Vec<u64> = ids.into_iter().collect();
    // Shuffle so that boot order and id order are unrelated.
    for i in (1..ids.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        ids.swap(i, j);
    }
    ids.into_iter()
        .map(|id| Rank {
            pin: match rng.range(0, 9) {
                0 => RolePin::Server,
                1 => RolePin::Agent,
                _ => RolePin::Auto,
            },
            storage: rng.pick(&[10, 50, 100, 200]),
            ram_mib: rng.pick(&[1024, 2048, 4096, 8192]),
            node: NodeId(id),
        })
        .collect()
}

impl Scenario {
    /// The adversarial world of `seed`.
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed);
        let nodes = rng.pick(&NODE_COUNTS);
        let choices: Vec<u8> = SERVER_COUNTS
            .iter()
            .copied()
            .filter(|s| *s <= nodes)
            .collect();
        let servers = rng.pick(&choices);
        let late_extras = if rng.chance(0.15) {
            rng.range(1, 2) as u8
        } else {
            0
        };
        let loss = if rng.chance(0.4) {
            0.0
        } else {
            rng.range(0, 40) as f64 / 100.0
        };
        let duplicate = if rng.chance(0.5) {
            0.0
        } else {
            rng.range(1, 10) as f64 / 100.0
        };
        let delay_ms = match rng.range(0, 9) {
            0..=4 => (1, rng.range(2, 20)),
            5..=7 => (0, rng.range(50, 500)),
            _ => (0, 2000),
        };
        let boot_window = match rng.range(0, 9) {
            0..=3 => rng.range(0, 2_000),
            4..=6 => rng.range(0, 30_000),
            7..=8 => rng.range(0, 120_000),
            _ => 600_000,
        };
        let n = usize::from(nodes);
        let boots = (0..n).map(|_| rng.range(0, boot_window)).collect();
        let active = boot_window + 30_000;
        let partitions = (0..rng.range(0, 3))
            .map(|_| {
                let from_ms = rng.range(0, active);
                Partition {
                    from_ms,
                    until_ms: from_ms + rng.range(1_000, 60_000),
                    side: (0..n + 2).map(|_| rng.chance(0.5)).collect(),
                    one_way: rng.chance(0.3),
                }
            })
            .collect();
        let crashes = (0..rng.range(0, 4))
            .map(|_| Crash {
                node: rng.range(0, n as u64 - 1) as usize,
                at_ms: rng.range(0, active),
                down_ms: rng.range(100, 20_000),
            })
            .collect();
        let crashy = rng.chance(0.4);
        let (crash_after_send, crash_after_persist) = if crashy {
            (
                rng.range(1, 100) as f64 / 1000.0,
                rng.range(1, 100) as f64 / 1000.0,
            )
        } else {
            (0.0, 0.0)
        };
        let random_crashes = if crashy { rng.range(1, 20) as u32 } else { 0 };
        let rogue_every_ms = rng.chance(0.3).then(|| (100, rng.range(500, 3_000)));
        let clock_offsets = (0..n + usize::from(late_extras))
            .map(|_| rng.range(0, 1 << 40))
            .collect();
        let clock_ppm = (0..n + usize::from(late_extras))
            .map(|_| rng.range(0, 40_000) as i64 - 20_000)
            .collect();
        let ranks = random_ranks(&mut rng, n + usize::from(late_extras));
        // Only where the others still form a strict majority of `nodes` without the elected node.
        let kill_elected = (nodes >= 3 && rng.chance(0.3)).then(|| {
            let point = rng.pick(&[KillPoint::Elected, KillPoint::GoAccepted, KillPoint::Go]);
            KillElected {
                point,
                delay_ms: match point {
                    KillPoint::Elected if rng.chance(0.6) => rng.range(0, 20),
                    KillPoint::Elected => rng.range(0, 4_000),
                    KillPoint::GoAccepted => rng.range(0, 10),
                    KillPoint::Go => rng.range(0, 3_000),
                },
                down_ms: rng.chance(0.5).then(|| rng.range(1_000, 60_000)),
            }
        });
        Scenario {
            seed,
            nodes,
            servers,
            late_extras,
            loss,
            duplicate,
            delay_ms,
            boots,
            partitions,
            crashes,
            crash_after_send,
            crash_after_persist,
            random_crashes,
            rogue_every_ms,
            chaos_until_ms: active,
            clock_offsets,
            clock_ppm,
            ranks,
            flaw: Flaw::None,
            kill_elected,
        }
    }

    /// A quiet LAN: everyone boots within 5 s, 1-20 ms delay, `loss`, nothing else goes wrong.
    pub fn quiet_lan(seed: u64, nodes: u8, servers: u8, loss: f64) -> Scenario {
        let mut rng = Rng::new(seed);
        let n = usize::from(nodes);
        Scenario {
            seed,
            nodes,
            servers,
            late_extras: 0,
            loss,
            duplicate: 0.0,
            delay_ms: (1, 20),
            boots: (0..n).map(|_| rng.range(0, 5_000)).collect(),
            partitions: Vec::new(),
            crashes: Vec::new(),
            crash_after_send: 0.0,
            crash_after_persist: 0.0,
            random_crashes: 0,
            rogue_every_ms: None,
            chaos_until_ms: 0,
            clock_offsets: (0..n).map(|_| rng.range(0, 1 << 40)).collect(),
            clock_ppm: vec![0; n],
            ranks: random_ranks(&mut rng, n),
            flaw: Flaw::None,
            kill_elected: None,
        }
    }

    /// The same world with `flaw` built into every node.
    pub fn with_flaw(mut self, flaw: Flaw) -> Scenario {
        self.flaw = flaw;
        self
    }

    /// How long after the world turns quiet every node must have its role up.
    pub fn liveness_bound_ms(&self) -> u64 {
        120_000 + 20_000 * u64::from(self.servers)
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The first safety or liveness violation, if any.
    pub violation: Option<String>,
    /// The violation broke safety (not only liveness).
    pub unsafe_run: bool,
    /// When a strict majority of `nodes` had booted.
    pub majority_at: Option<u64>,
    /// When the first node durably knew an `Init` decided in the leader instance (fate still open).
    pub first_elected_at: Option<u64>,
    /// When the first node learned a final `Init` (its fate decided Go).
    pub first_init_at: Option<u64>,
    /// When every original node had learned the decided `Init`.
    pub all_init_at: Option<u64>,
    /// When the world turned quiet, and when every node served its role.
    pub quiet_at: u64,
    /// When every node served its role.
    pub done_at: Option<u64>,
    /// Events processed.
    pub steps: u64,
    /// `Abandon` decisions observed (one per node and epoch).
    pub abandons: u64,
    /// Frames rejected by decoding.
    pub rejected: u64,
    /// The elected node was killed (for good or for a while), and when.
    pub killed_at: Option<u64>,
    /// The elected node was killed for good (per its scenario), and when.
    pub killed_for_good_at: Option<u64>,
    /// A node other than the killed one had accepted its Go: Go may be decided, so the others
    /// rightly wait for it forever (liveness is not asserted then).
    pub go_exposed: bool,
    /// The run ended stuck waiting for a dead elected node whose Go was exposed (not a violation).
    pub excused_stall: bool,
    /// Fingerprint of the whole run (for determinism checks).
    pub trace: u64,
}

enum Action {
    Boot(usize),
    Deliver {
        to: usize,
        frame: Rc<[u8]>,
    },
    Timer {
        node: usize,
        life: u32,
        at: u64,
    },
    PersistDone {
        node: usize,
        life: u32,
        seq: u64,
        state: Box<PersistedState>,
    },
    PowerLoss {
        node: usize,
        down_ms: u64,
    },
    KillElected {
        node: usize,
        life: u32,
    },
    Restart(usize),
    Serving {
        node: usize,
        life: u32,
    },
    Rogue,
}

struct Scheduled {
    at: u64,
    order: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

struct SimNode {
    rank: Rank,
    core: Option<Node<Flaw>>,
    life: u32,
    durable: Option<PersistedState>,
    durable_seq: u64,
    timer_at: Option<u64>,
    role: Option<Role>,
    serving: bool,
    booted: bool,
    dead: bool,
    offset: u64,
    ppm: i64,
}

/// Global record of what has been decided, checked on every event.
#[derive(Default)]
struct Ledger {
    by_epoch: BTreeMap<u32, Value>,
    init: Option<NodeId>,
    servers: BTreeSet<NodeId>,
    roles: BTreeMap<NodeId, Role>,
    learned: BTreeSet<usize>,
    /// Every node that ever ran cluster-init: more than one is a split brain.
    initialized: BTreeSet<NodeId>,
    /// The node the kill is aimed at and its epoch, once chosen.
    kill_target: Option<(usize, u32)>,
    /// (epoch, x) for every Go of x that a node other than x accepted.
    go_accepted: BTreeSet<(u32, NodeId)>,
}

struct World<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    index: BTreeMap<NodeId, usize>,
    ledger: Ledger,
    cluster: ClusterId,
    key: MacKey,
    random_crashes_left: u32,
    recent_frames: Vec<Rc<[u8]>>,
    quiet_at: u64,
    healed_at: u64,
    extras_booted: bool,
    verbose: bool,
    outcome: Outcome,
}

impl World<'_> {
    fn schedule(&mut self, at: u64, action: Action) {
        self.order += 1;
        self.queue.push(Scheduled {
            at,
            order: self.order,
            action,
        });
    }

    fn original(&self) -> usize {
        usize::from(self.scenario.nodes)
    }

    fn trace(&mut self, value: u64) {
        self.outcome.trace = (self.outcome.trace ^ value).wrapping_mul(0x100_0000_01B3);
    }

    /// Records a safety violation.
    fn fail(&mut self, message: String) {
        if self.outcome.violation.is_none() {
            self.outcome.unsafe_run = true;
            self.outcome.violation = Some(format!("t={}ms: {message}", self.now));
        }
    }

    /// Records a liveness violation.
    fn stall(&mut self, message: String) {
        if self.outcome.violation.is_none() {
            self.outcome.violation = Some(format!("t={}ms: {message}", self.now));
        }
    }

    fn node_now(&self, i: usize) -> Millis {
        Millis(self.local_time(i, self.now))
    }

    /// Node `i`'s clock at world time `at`: its own offset and rate.
    fn local_time(&self, i: usize, at: u64) -> u64 {
        let drift = (at as i128 * self.nodes[i].ppm as i128 / 1_000_000) as i64;
        (at as i64 + drift) as u64 + self.nodes[i].offset
    }

    /// The earliest world time at which node `i`'s clock reads `local` or later.
    fn world_time(&self, i: usize, local: u64) -> u64 {
        let since = local.saturating_sub(self.nodes[i].offset) as i128;
        let mut at = (since * 1_000_000 / (1_000_000 + self.nodes[i].ppm as i128)) as u64;
        at = at.saturating_sub(2);
        while self.local_time(i, at) < local {
            at += 1;
        }
        at
    }

    fn config(&self, i: usize) -> ElectionConfig {
        ElectionConfig {
            rank: self.nodes[i].rank,
            nodes: self.scenario.nodes,
            servers: self.scenario.servers,
            cluster: self.cluster,
            key: self.key.clone(),
            seed: self.scenario.seed ^ (i as u64) << 48 ^ u64::from(self.nodes[i].life) << 32,
            timing: Timing::default(),
        }
    }

    fn start_node(&mut self, i: usize) {
        self.log(format_args!(
            "node {i} {:?} boots from {:?}",
            self.nodes[i].rank.node, self.nodes[i].durable
        ));
        let now = self.node_now(i);
        if let Some(durable) = self.nodes[i].durable.clone() {
            // What a node persisted it had learned counts as learned, even if it lost power before
            // releasing the event.
            if let Some(epoch) = durable.epoch.checked_sub(1) {
                self.observe(
                    i,
                    Event::Decided {
                        epoch,
                        value: Value::Abandon,
                    },
                );
            }
            if let Some(value) = durable.epoch_state.final_value() {
                let epoch = durable.epoch;
                self.observe(i, Event::Decided { epoch, value });
            }
        }
        let core = Node::with_rules(
            self.config(i),
            now,
            self.nodes[i].durable.clone(),
            self.scenario.flaw,
        );
        self.nodes[i].core = Some(core);
        self.nodes[i].booted = true;
        self.pump(i);
    }

    fn partitioned(&self, from: usize, to: usize) -> bool {
        self.scenario.partitions.iter().any(|p| {
            let from_side = p.side.get(from).copied().unwrap_or(false);
            let to_side = p.side.get(to).copied().unwrap_or(false);
            p.from_ms <= self.now
                && self.now < p.until_ms
                && from_side != to_side
                && (!p.one_way || from_side)
        })
    }

    fn chaos_allowed(&self) -> bool {
        self.now < self.scenario.chaos_until_ms && self.random_crashes_left > 0
    }

    fn send(&mut self, from: usize, to: usize, frame: &Rc<[u8]>) {
        // Once the world has healed the LAN is connected: no loss, LAN delays (duplicates remain).
        let healed = self.now >= self.healed_at;
        let loss = if healed { 0.0 } else { self.scenario.loss };
        if self.partitioned(from, to) || self.rng.chance(loss) {
            return;
        }
        let copies = if self.rng.chance(self.scenario.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.scenario.delay_ms;
            let (lo, hi) = if healed {
                (lo.min(1), hi.min(50))
            } else {
                (lo, hi)
            };
            let at = self.now + self.rng.range(lo, hi);
            self.schedule(
                at,
                Action::Deliver {
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Drains a node's outputs: persists, events, frames, then re-arms its timer.
    fn pump(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let mut persists = Vec::new();
        while let Some(request) = core.poll_persist() {
            persists.push(request);
        }
        let mut events = Vec::new();
        while let Some(event) = core.poll_event() {
            events.push(event);
        }
        let mut transmits = Vec::new();
        while let Some(transmit) = core.poll_transmit() {
            transmits.push(transmit);
        }
        let wake = core.poll_timeout();
        let life = self.nodes[i].life;
        for request in persists {
            let at = self.now + self.rng.range(1, 30);
            self.schedule(
                at,
                Action::PersistDone {
                    node: i,
                    life,
                    seq: request.seq,
                    state: Box::new(request.state),
                },
            );
        }
        for event in events {
            self.observe(i, event);
        }
        let sent = !transmits.is_empty();
        for transmit in transmits {
            let frame: Rc<[u8]> = transmit.frame.into();
            self.trace(frame.len() as u64);
            if self.recent_frames.len() < 256 {
                self.recent_frames.push(frame.clone());
            } else {
                let slot = self.rng.range(0, 255) as usize;
                self.recent_frames[slot] = frame.clone();
            }
            match transmit.to {
                Destination::All => {
                    for to in 0..self.nodes.len() {
                        if to != i {
                            self.send(i, to, &frame);
                        }
                    }
                }
                Destination::Node(id) => {
                    if let Some(&to) = self.index.get(&id) {
                        self.send(i, to, &frame);
                    }
                }
            }
        }
        if sent && self.chaos_allowed() && self.rng.chance(self.scenario.crash_after_send) {
            self.random_crashes_left -= 1;
            let down_ms = self.rng.range(50, 10_000);
            self.power_loss(i, down_ms);
            return;
        }
        if let Some(wake) = wake {
            let at = self.world_time(i, wake.0).max(self.now);
            if self.nodes[i].timer_at.is_none_or(|t| at < t) {
                self.nodes[i].timer_at = Some(at);
                self.schedule(at, Action::Timer { node: i, life, at });
            }
        }
    }

    fn log(&self, line: std::fmt::Arguments<'_>) {
        if self.verbose {
            eprintln!("[{:>9} ms] {line}", self.now);
        }
    }

    fn power_loss(&mut self, i: usize, down_ms: u64) {
        self.log(format_args!("node {i} loses power for {down_ms} ms"));
        let node = &mut self.nodes[i];
        if node.core.is_none() {
            return;
        }
        node.core = None;
        node.life += 1;
        node.durable_seq = 0;
        node.timer_at = None;
        node.role = None;
        node.serving = false;
        self.trace(0xDEAD ^ i as u64);
        let at = self.now + down_ms;
        self.quiet_at = self.quiet_at.max(at);
        self.schedule(at, Action::Restart(i));
    }

    fn observe(&mut self, i: usize, event: Event) {
        let me = self.nodes[i].rank.node;
        self.log(format_args!("node {i} {me:?}: {event:?}"));
        self.trace(i as u64 ^ 0xE0E0);
        match event {
            Event::Decided { epoch, value } => {
                if let Some(earlier) = self.ledger.by_epoch.get(&epoch) {
                    if *earlier != value {
                        self.fail(format!(
                            "epoch {epoch} decided both {earlier:?} and {value:?} (seen by {me:?})"
                        ));
                    }
                } else {
                    self.ledger.by_epoch.insert(epoch, value);
                }
                if value == Value::Abandon {
                    self.outcome.abandons += 1;
                }
                if let Value::Init(x) = value {
                    if !self.index.contains_key(&x) {
                        self.fail(format!(
                            "Init({x:?}) decided for a node that does not exist"
                        ));
                    }
                    match self.ledger.init {
                        Some(y) if y != x => {
                            self.fail(format!("two Init decided: {y:?} and {x:?}"));
                        }
                        _ => self.ledger.init = Some(x),
                    }
                    if let Some(other) = self.ledger.initialized.iter().find(|n| **n != x) {
                        self.fail(format!(
                            "Init({x:?}) is final but {other:?} already ran cluster-init"
                        ));
                    }
                    if i < self.original() {
                        self.outcome.first_init_at.get_or_insert(self.now);
                        self.ledger.learned.insert(i);
                    }
                }
            }
            Event::Role(role) => {
                let join = match role {
                    Role::ClusterInit => {
                        self.ledger.initialized.insert(me);
                        if self.ledger.initialized.len() > 1 {
                            self.fail(format!(
                                "two nodes run cluster-init: {:?}",
                                self.ledger.initialized
                            ));
                        }
                        if self.ledger.init.is_some_and(|init| init != me) {
                            self.fail(format!(
                                "{me:?} runs cluster-init but the decided Init is {:?}",
                                self.ledger.init
                            ));
                        }
                        let epoch = self.nodes[i].durable.as_ref().map_or(0, |d| d.epoch);
                        self.arm_kill(i, KillPoint::Go, epoch);
                        me
                    }
                    Role::Server { join } | Role::Agent { join } => join,
                };
                // Joining needs a final Init; cluster-init is checked above against every other init.
                if self.ledger.init != Some(join) && role != Role::ClusterInit {
                    self.fail(format!(
                        "{me:?} joins {join:?} but the decided Init is {:?}",
                        self.ledger.init
                    ));
                }
                if let Some(before) = self.ledger.roles.insert(me, role) {
                    if before != role {
                        self.fail(format!("{me:?} changed role from {before:?} to {role:?}"));
                    }
                }
                if !matches!(role, Role::Agent { .. }) {
                    self.ledger.servers.insert(me);
                    if self.ledger.servers.len() > usize::from(self.scenario.servers) {
                        self.fail(format!(
                            "{} servers for {} seats: {:?}",
                            self.ledger.servers.len(),
                            self.scenario.servers,
                            self.ledger.servers
                        ));
                    }
                }
                self.nodes[i].role = Some(role);
                let life = self.nodes[i].life;
                let at = self.now + self.rng.range(200, 3_000);
                self.schedule(at, Action::Serving { node: i, life });
            }
            Event::QuorumRaised { seen, quorum } if self.scenario.late_extras == 0 => {
                self.fail(format!(
                    "{me:?} saw {seen} voters for {} nodes (quorum {quorum}) although the contract holds",
                    self.scenario.nodes
                ));
            }
            // Late nodes beyond `nodes` are voters too until they learn the decision: harmless.
            Event::QuorumRaised { .. } => {}
            // Only serving servers in seat-book mode send `Removed`; the simulator runs none.
            Event::Removed { .. } => self.fail(format!("{me:?} was told it was removed")),
        }
    }

    fn rogue(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].core.is_some())
            .collect();
        if up.is_empty() {
            return;
        }
        let to = self.rng.pick(&up);
        let some_node = self.nodes[self.rng.pick(&up)].rank.node;
        let rogue_id = NodeId(self.rng.next_u64() | 1);
        let body = match self.rng.range(0, 3) {
            0 => Body::Decided {
                instance: if self.rng.chance(0.5) {
                    Instance::Leader
                } else {
                    Instance::Fate
                },
                value: Value::Init(rogue_id),
            },
            1 => Body::Accept {
                instance: Instance::Fate,
                ballot: firstboot::election::Ballot {
                    round: u32::MAX,
                    node: rogue_id,
                },
                value: Value::Init(rogue_id),
            },
            2 => Body::Hello(Hello {
                pin: RolePin::Server,
                storage: 255,
                ram_mib: u32::MAX,
                decided: Some(Value::Init(some_node)),
                serving: true,
                wants_seat: false,
                roster: vec![some_node, rogue_id],
            }),
            _ => Body::Prepare {
                instance: Instance::Leader,
                ballot: firstboot::election::Ballot {
                    round: u32::MAX,
                    node: rogue_id,
                },
            },
        };
        let envelope = Envelope {
            epoch: self.rng.range(0, 3) as u32,
            sender: if self.rng.chance(0.5) {
                some_node
            } else {
                rogue_id
            },
            body,
        };
        let frame: Vec<u8> = match self.rng.range(0, 4) {
            // Random bytes.
            0 => (0..self.rng.range(0, 700))
                .map(|_| self.rng.next_u64() as u8)
                .collect(),
            // Right cluster id, wrong key.
            1 => envelope.encode(&self.cluster, &MacKey::election(ROGUE_TOKEN)),
            // Same token but another cluster id (another `nodes`): a replay from another cluster.
            2 => {
                let other = ClusterId::derive(TOKEN, self.scenario.nodes.wrapping_add(1), 1);
                envelope.encode(&other, &self.key)
            }
            // A genuine frame with bits flipped.
            3 if !self.recent_frames.is_empty() => {
                let slot = self.rng.range(0, self.recent_frames.len() as u64 - 1) as usize;
                let mut frame = self.recent_frames[slot].to_vec();
                for _ in 0..self.rng.range(1, 3) {
                    let at = self.rng.range(0, frame.len() as u64 - 1) as usize;
                    frame[at] ^= 1 << self.rng.range(0, 7);
                }
                frame
            }
            // A genuine old frame replayed verbatim (authentic: must be harmless).
            _ if !self.recent_frames.is_empty() => {
                let slot = self.rng.range(0, self.recent_frames.len() as u64 - 1) as usize;
                self.recent_frames[slot].to_vec()
            }
            _ => Vec::new(),
        };
        self.schedule(
            self.now,
            Action::Deliver {
                to,
                frame: frame.into(),
            },
        );
    }

    /// The elected node died for good after another node accepted its Go: waiting is right.
    fn stuck_on_dead_go(&mut self) -> bool {
        let Some((target, epoch)) = self.ledger.kill_target else {
            return false;
        };
        let x = self.nodes[target].rank.node;
        // It may have been elected again in a later epoch before the kill landed.
        self.outcome.go_exposed = self
            .ledger
            .go_accepted
            .iter()
            .any(|(e, node)| *e >= epoch && *node == x);
        self.outcome.killed_for_good_at.is_some() && self.outcome.go_exposed
    }

    fn all_serving(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.dead || (n.core.is_some() && n.role.is_some() && n.serving))
    }

    /// Arms the scenario's kill once the elected node reaches its kill point.
    fn arm_kill(&mut self, i: usize, point: KillPoint, epoch: u32) {
        let Some(kill) = self.scenario.kill_elected.clone() else {
            return;
        };
        if kill.point != point || self.ledger.kill_target.is_some() {
            return;
        }
        self.ledger.kill_target = Some((i, epoch));
        self.log(format_args!(
            "node {i} will be killed in {} ms",
            kill.delay_ms
        ));
        let life = self.nodes[i].life;
        self.schedule(
            self.now + kill.delay_ms,
            Action::KillElected { node: i, life },
        );
    }

    /// Watches what node `i` is about to hold durably: kill points and acceptances of Go.
    fn watch_fate(&mut self, i: usize, state: &PersistedState) {
        let me = self.nodes[i].rank.node;
        if i < self.original() && state.epoch_state.elected().is_some() {
            self.outcome.first_elected_at.get_or_insert(self.now);
        }
        if state.epoch_state == EpochState::Elected(me) {
            self.arm_kill(i, KillPoint::Elected, state.epoch);
            if matches!(state.acceptors[Instance::Fate].accepted, Some((_, Value::Init(x))) if x == me)
            {
                self.arm_kill(i, KillPoint::GoAccepted, state.epoch);
            }
        }
        if let Some((_, Value::Init(x))) = state.acceptors[Instance::Fate].accepted {
            if x != me {
                self.ledger.go_accepted.insert((state.epoch, x));
            }
        }
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Boot(i) => {
                if !self.nodes[i].booted {
                    self.start_node(i);
                }
            }
            Action::Deliver { to, frame } => {
                let now = self.node_now(to);
                if self.verbose && self.nodes[to].core.is_some() {
                    if let Ok(envelope) = Envelope::decode(&frame, &self.cluster, &self.key) {
                        if !matches!(envelope.body, Body::Hello(_))
                            || std::env::var_os("SIM_TRACE_HELLO").is_some()
                        {
                            self.log(format_args!("node {to} receives {envelope:?}"));
                        }
                    }
                }
                if let Some(core) = self.nodes[to].core.as_mut() {
                    if core.handle_datagram(now, &frame).is_err() {
                        self.outcome.rejected += 1;
                    }
                    self.pump(to);
                }
            }
            Action::Timer { node, life, at } => {
                if self.nodes[node].life == life && self.nodes[node].timer_at == Some(at) {
                    self.nodes[node].timer_at = None;
                    let now = self.node_now(node);
                    if let Some(core) = self.nodes[node].core.as_mut() {
                        core.handle_timeout(now);
                        self.pump(node);
                    }
                }
            }
            Action::PersistDone {
                node,
                life,
                seq,
                state,
            } => {
                if self.nodes[node].life != life {
                    return;
                }
                // The driver writes requests in order: an older request never overwrites a newer one.
                if seq > self.nodes[node].durable_seq {
                    self.watch_fate(node, &state);
                    self.nodes[node].durable_seq = seq;
                    self.nodes[node].durable = Some(*state);
                }
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.persisted(seq);
                }
                if self.chaos_allowed() && self.rng.chance(self.scenario.crash_after_persist) {
                    // Power lost between persisting and sending what the persist released.
                    self.random_crashes_left -= 1;
                    let down_ms = self.rng.range(50, 10_000);
                    self.power_loss(node, down_ms);
                    return;
                }
                self.pump(node);
            }
            Action::PowerLoss { node, down_ms } => self.power_loss(node, down_ms),
            Action::KillElected { node, life } => {
                if self.nodes[node].life != life {
                    return;
                }
                self.outcome.killed_at = Some(self.now);
                match self.scenario.kill_elected.as_ref().and_then(|k| k.down_ms) {
                    Some(down_ms) => self.power_loss(node, down_ms),
                    None => {
                        self.log(format_args!("node {node} dies for good"));
                        self.outcome.killed_for_good_at = Some(self.now);
                        self.quiet_at = self.quiet_at.max(self.now);
                        let sim = &mut self.nodes[node];
                        sim.core = None;
                        sim.dead = true;
                        sim.life += 1;
                        sim.timer_at = None;
                        sim.role = None;
                        sim.serving = false;
                    }
                }
            }
            Action::Restart(i) => self.start_node(i),
            Action::Serving { node, life } => {
                // As on a real LAN, a joiner's K3s comes up only through a serving server (it
                // needs that server's announcement of the cluster CA): until one serves, it
                // waits and tries again a second later. Only the init serves on its own.
                let joiner = !matches!(self.nodes[node].role, Some(Role::ClusterInit) | None);
                let a_server_serves = self.nodes.iter().enumerate().any(|(j, n)| {
                    j != node
                        && !n.dead
                        && n.serving
                        && matches!(n.role, Some(Role::ClusterInit) | Some(Role::Server { .. }))
                });
                if self.nodes[node].life == life && joiner && !a_server_serves {
                    let at = self.now + 1_000;
                    self.schedule(at, Action::Serving { node, life });
                } else if self.nodes[node].life == life && self.nodes[node].role.is_some() {
                    self.log(format_args!("node {node} serves its role"));
                    self.nodes[node].serving = true;
                    let now = self.node_now(node);
                    if let Some(core) = self.nodes[node].core.as_mut() {
                        core.report_serving(now);
                        self.pump(node);
                    }
                }
            }
            Action::Rogue => {
                self.rogue();
                if let Some((lo, hi)) = self.scenario.rogue_every_ms {
                    if self.now < self.scenario.chaos_until_ms {
                        let at = self.now + self.rng.range(lo, hi);
                        self.schedule(at, Action::Rogue);
                    }
                }
            }
        }
    }

    /// Every seat is filled when enough nodes may be servers (pinned agents may not, unless init).
    fn check_seats_filled(&mut self) {
        let eligible = self
            .nodes
            .iter()
            .filter(|n| !n.dead)
            .filter(|n| n.rank.pin != RolePin::Agent || self.ledger.init == Some(n.rank.node))
            .count();
        // A node that died for good keeps the seat it held.
        let (dead, alive): (Vec<NodeId>, Vec<NodeId>) = self
            .ledger
            .servers
            .iter()
            .partition(|id| self.index.get(id).is_some_and(|i| self.nodes[*i].dead));
        let want = eligible.min(usize::from(self.scenario.servers).saturating_sub(dead.len()));
        if alive.len() != want {
            self.stall(format!(
                "{} live servers formed where {want} seats could be filled",
                alive.len()
            ));
        }
    }

    fn track_progress(&mut self) {
        let original = self.original();
        if self.outcome.all_init_at.is_none() && self.ledger.learned.len() == original {
            self.outcome.all_init_at = Some(self.now);
        }
        if !self.extras_booted
            && self.now >= self.healed_at
            && self.nodes[..original]
                .iter()
                .all(|n| n.dead || (n.core.is_some() && n.role.is_some() && n.serving))
        {
            self.extras_booted = true;
            for i in original..self.nodes.len() {
                let at = self.now + self.rng.range(0, 5_000);
                self.quiet_at = self.quiet_at.max(at);
                self.schedule(at, Action::Boot(i));
            }
        }
    }
}

/// Runs one scenario to completion (everyone serving) or to its first violation.
pub fn run(scenario: &Scenario) -> Outcome {
    let original = usize::from(scenario.nodes);
    let total = original + usize::from(scenario.late_extras);
    let nodes: Vec<SimNode> = (0..total)
        .map(|i| SimNode {
            rank: scenario.ranks[i],
            core: None,
            life: 0,
            durable: None,
            durable_seq: 0,
            timer_at: None,
            role: None,
            serving: false,
            booted: false,
            dead: false,
            offset: scenario.clock_offsets[i],
            ppm: scenario.clock_ppm[i],
        })
        .collect();
    let index = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.rank.node, i))
        .collect();
    let quiet_at = scenario
        .boots
        .iter()
        .copied()
        .chain(scenario.partitions.iter().map(|p| p.until_ms))
        .chain(scenario.crashes.iter().map(|c| c.at_ms + c.down_ms))
        .chain(std::iter::once(scenario.chaos_until_ms))
        .max()
        .unwrap_or(0);
    let mut world = World {
        scenario,
        rng: Rng::new(scenario.seed.rotate_left(17) ^ 0xA11CE),
        now: 0,
        order: 0,
        queue: BinaryHeap::new(),
        nodes,
        index,
        ledger: Ledger::default(),
        cluster: ClusterId::derive(TOKEN, scenario.nodes, scenario.servers),
        key: MacKey::election(TOKEN),
        random_crashes_left: scenario.random_crashes,
        recent_frames: Vec::new(),
        quiet_at,
        healed_at: quiet_at,
        verbose: std::env::var_os("SIM_TRACE").is_some(),
        extras_booted: scenario.late_extras == 0,
        outcome: Outcome::default(),
    };
    for (i, at) in scenario.boots.iter().enumerate() {
        world.schedule(*at, Action::Boot(i));
    }
    let mut sorted_boots = scenario.boots.clone();
    sorted_boots.sort_unstable();
    world.outcome.majority_at = sorted_boots.get(original / 2).copied();
    for crash in &scenario.crashes {
        if crash.at_ms >= scenario.boots[crash.node] {
            world.schedule(
                crash.at_ms,
                Action::PowerLoss {
                    node: crash.node,
                    down_ms: crash.down_ms,
                },
            );
        }
    }
    if let Some((lo, hi)) = scenario.rogue_every_ms {
        let at = world.rng.range(lo, hi);
        world.schedule(at, Action::Rogue);
    }
    while let Some(Scheduled { at, action, .. }) = world.queue.pop() {
        world.now = at;
        world.outcome.steps += 1;
        world.trace(at);
        world.step(action);
        if world.outcome.violation.is_some() {
            break;
        }
        world.track_progress();
        if world.extras_booted && world.all_serving() && world.now >= world.quiet_at {
            world.outcome.done_at = Some(world.now);
            world.check_seats_filled();
            break;
        }
        let deadline = world.quiet_at + scenario.liveness_bound_ms();
        if world.now > deadline && world.stuck_on_dead_go() {
            world.outcome.excused_stall = true;
            break;
        }
        if world.now > deadline {
            let waiting: Vec<String> = world
                .nodes
                .iter()
                .filter(|n| !(n.dead || (n.core.is_some() && n.role.is_some() && n.serving)))
                .map(|n| {
                    format!(
                        "{:?}: {:?}",
                        n.rank.node,
                        n.core.as_ref().map(|c| c.status(Millis(0)))
                    )
                })
                .collect();
            world.stall(format!(
                "liveness: not every node serves {} ms after the world turned quiet at {} ms; waiting: {}",
                scenario.liveness_bound_ms(),
                world.quiet_at,
                waiting.join("; ")
            ));
            break;
        }
        if world.outcome.steps > STEP_LIMIT {
            world.stall("step limit reached".to_string());
            break;
        }
    }
    if world.outcome.violation.is_none()
        && world.outcome.done_at.is_none()
        && world.stuck_on_dead_go()
    {
        world.outcome.excused_stall = true;
    }
    if world.outcome.violation.is_none()
        && world.outcome.done_at.is_none()
        && !world.outcome.excused_stall
    {
        world.stall("the simulation ran out of events before every node served".to_string());
    }
    world.outcome.quiet_at = world.quiet_at;
    world.outcome
}
