//! One place that tells humans what the lifecycle is doing: state file, sd_notify STATUS, journal, LED.

use crate::clock::unix_now;
use crate::clock::InitAgreement;
use crate::config::Token;
use crate::discovery::table::PeerSummary;
use crate::election::{ElectionStatus, Membership, NodeId, Role, Value};
use crate::k3s::{CaHash, K3sPlan};
use crate::status::led::{LedPattern, NoLed, StatusLed};
use crate::status::state::{Member, MembershipState, NodeRole, NodeState, Phase, QUORUM_LOST};
use crate::status::Notifier;
use crate::storage::setup::StorageOutcome;
use crate::systemd::ActiveState;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The lifecycle's reporter; the token, once known, is redacted from everything it writes.
pub struct Report {
    root: PathBuf,
    state: NodeState,
    notifier: Notifier,
    token: Option<Token>,
    led: Box<dyn StatusLed + Send>,
    shown: Option<LedPattern>,
    last_line: String,
    serving: bool,
    /// Members not heard for 10 s or more, and since when (unix seconds): fixed when first
    /// seen gone, so the state file is not rewritten as the clock moves.
    gone_since: BTreeMap<NodeId, u64>,
}

/// What a `servers = 1` node says about its datastore (the steps are in docs/cluster-toml.md).
const GROW_TO_ETCD: &str = "datastore: SQLite, K3s's default for one server (servers = 1; no etcd \
on this node's storage). To grow to 3 servers later: put \"cluster-init: true\" in \
/etc/rancher/k3s/config.yaml.d/50-etcd.yaml and run \"systemctl restart k3s\" (K3s moves the \
SQLite data into embedded etcd), then join two servers to https://<this node-ip>:6443 with the \
token in /var/lib/rancher/k3s/server/token (docs/cluster-toml.md, \"Growing to 3 servers\")";

impl Report {
    /// A reporter continuing `state` (loaded from the state file, or fresh).
    pub fn new(root: PathBuf, state: NodeState, notifier: Notifier) -> Self {
        Report {
            root,
            state,
            notifier,
            token: None,
            led: Box::new(NoLed),
            shown: None,
            last_line: String::new(),
            serving: false,
            gone_since: BTreeMap::new(),
        }
    }

    /// The state as last written.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The token to redact from free text.
    pub fn set_token(&mut self, token: Token) {
        self.token = Some(token);
    }

    /// The LED `[status] led_gpio` opened.
    pub fn set_led(&mut self, led: Box<dyn StatusLed + Send>) {
        self.led = led;
        self.shown = None;
        self.show_led();
    }

    /// Whether the role was reported as up to the election.
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// Notes that the role was reported as up.
    pub fn set_serving(&mut self) {
        self.serving = true;
    }

    /// Enters `phase`, saying `line`.
    pub fn phase(&mut self, phase: Phase, line: &str) {
        self.state.phase = phase;
        self.say(line);
        self.save();
    }

    /// Records the cluster and hostname.
    pub fn identity(&mut self, cluster: &str, hostname: &str) {
        self.state.cluster = Some(cluster.to_string());
        self.state.node_name = Some(hostname.to_string());
        self.save();
    }

    /// Records what the storage step measured and did.
    pub fn storage(&mut self, outcome: &StorageOutcome) {
        let a = &outcome.assessment;
        let summary = &mut self.state.storage;
        summary.class = Some(a.class.to_string());
        summary.fdatasync_p50_us = Some(a.probe.p50_us);
        summary.fdatasync_p99_us = Some(a.probe.p99_us);
        summary.data_dir = Some(a.dir.display().to_string());
        summary.applied = outcome
            .applied
            .changed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        for w in &outcome.warnings {
            tracing::warn!("{w}");
        }
        self.say(&a.status_line());
        self.save();
    }

    /// Election progress: peers seen and what the node waits for (written only on change).
    pub fn election(&mut self, status: &ElectionStatus, peers: &PeerSummary) {
        if status.role.is_some() {
            self.peer_counts(status, peers);
            return;
        }
        let line = if let Some(value) = status.decided {
            match value {
                Value::Init(init) => format!("{init} initializes; waiting for a server seat"),
                Value::Abandon => format!("epoch {} abandoned; electing again", status.epoch),
            }
        } else if status.visible < status.quorum {
            let missing = status.quorum - status.visible;
            format!(
                "waiting for {missing} more node{}: {}/{} visible",
                if missing == 1 { "" } else { "s" },
                status.visible,
                status.nodes
            )
        } else {
            format!(
                "electing: {}/{} visible (quorum {})",
                status.visible, status.nodes, status.quorum
            )
        };
        let line = if peers.foreign + peers.unverified > 0 {
            format!(
                "{line}; ignoring {} foreign and {} unverified",
                peers.foreign, peers.unverified
            )
        } else {
            line
        };
        // The election's view holds this node too; the state file counts the others.
        self.state.peers_visible = status.visible.saturating_sub(1) as u32;
        self.state.peers_expected = status.nodes as u32;
        if line != self.last_line {
            self.say(&line);
            self.save();
        }
    }

    /// After the decision the core's view holds undecided nodes only: count verified peers (the
    /// table never lists this node's own record).
    fn peer_counts(&mut self, status: &ElectionStatus, peers: &PeerSummary) {
        let (visible, expected) = (peers.verified.len() as u32, status.nodes as u32);
        if (self.state.peers_visible, self.state.peers_expected) != (visible, expected) {
            self.state.peers_visible = visible;
            self.state.peers_expected = expected;
            self.save();
        }
    }

    /// The membership as the election sees it now (`names`: hostnames by node id, from the
    /// peer table); the state file is written only when it changes, and a lost or regained
    /// quorum is said once, when it happens.
    pub fn membership(
        &mut self,
        m: &Membership,
        names: &BTreeMap<NodeId, String>,
        hostname: &str,
        replace_after: Option<Duration>,
        now_unix: u64,
    ) {
        if m.seats.is_empty() && m.peers.is_empty() {
            return;
        }
        for p in &m.peers {
            if p.heard_now {
                self.gone_since.remove(&p.node);
            } else {
                let since = now_unix.saturating_sub(m.secs_before_now(p.last_heard));
                self.gone_since.entry(p.node).or_insert(since);
            }
        }
        for seat in &m.seats {
            // A seat holder this node never heard from counts as gone from the first look.
            if !m.alive(*seat) && !m.peers.iter().any(|p| p.node == *seat) {
                self.gone_since.entry(*seat).or_insert(now_unix);
            }
        }
        let quorum_lost = m.quorum_lost();
        let member = |node: NodeId, server: bool| {
            let this_node = node == m.me;
            let peer = m.peers.iter().find(|p| p.node == node);
            let gone_since_unix = if this_node {
                None
            } else {
                self.gone_since.get(&node).copied()
            };
            let replace_from_unix = match (server, gone_since_unix, replace_after) {
                (true, Some(since), Some(after)) if !quorum_lost => {
                    Some(since.saturating_add(after.as_secs()))
                }
                _ => None,
            };
            Member {
                node: node.to_string(),
                name: if this_node {
                    Some(hostname.to_string())
                } else {
                    names.get(&node).cloned()
                },
                server,
                this_node,
                serving: if this_node {
                    m.serving
                } else {
                    peer.is_some_and(|p| p.serving)
                },
                gone_since_unix,
                replace_from_unix,
            }
        };
        let mut members: Vec<Member> = m.seats.iter().map(|n| member(*n, true)).collect();
        let mut others: Vec<NodeId> = m.peers.iter().map(|p| p.node).collect();
        others.push(m.me);
        others.sort();
        others.dedup();
        others.retain(|n| !m.seats.contains(n));
        members.extend(others.into_iter().map(|n| member(n, false)));
        let view = MembershipState {
            servers: m.servers as u32,
            live_servers: m.live_seats() as u32,
            quorum_lost,
            members,
        };
        let was_lost = self
            .state
            .membership
            .as_ref()
            .is_some_and(|old| old.quorum_lost);
        if self.state.membership.as_ref() == Some(&view) {
            return;
        }
        if quorum_lost && !was_lost {
            tracing::error!(
                live = view.live_servers,
                seats = m.seats.len(),
                "server quorum lost"
            );
            self.say(&format!(
                "quorum lost: {} of {} servers alive; {QUORUM_LOST}",
                view.live_servers,
                m.seats.len()
            ));
        } else if was_lost && !quorum_lost {
            self.say(&format!(
                "quorum back: {} of {} servers alive",
                view.live_servers,
                m.seats.len()
            ));
        }
        self.state.membership = Some(view);
        self.save();
    }

    /// The fixed registration address as this server's holder sees it now.
    pub fn api_address(&mut self, address: std::net::Ipv4Addr, held: &crate::api_address::Shared) {
        let view = crate::status::state::ApiAddressState {
            address: address.to_string(),
            held_here: held.holding,
            since_unix: held.since_unix,
        };
        if self.state.api_address.as_ref() == Some(&view) {
            return;
        }
        let was = self.state.api_address.as_ref().is_some_and(|a| a.held_here);
        if view.held_here && !was {
            self.say(&format!("holds the fixed address {address}"));
        } else if was && !view.held_here {
            self.say(&format!("no longer holds the fixed address {address}"));
        }
        self.state.api_address = Some(view);
        self.save();
    }

    /// The role is known.
    pub fn role(&mut self, role: Role, hostname: &str, status: &ElectionStatus) {
        let role_word = NodeRole::from(role);
        // Roles change only by promotion (agent to server): also after a restart that came
        // between the election's durable promotion and this file (a kill -9 mid-way).
        if self.state.role == Some(NodeRole::Agent) && role_word == NodeRole::Server {
            self.promoted(unix_now() as u64);
        }
        self.state.role = Some(role_word);
        self.state.phase = Phase::Joining;
        self.state.peers_expected = status.nodes as u32;
        let line = match role {
            Role::ClusterInit => format!("{hostname} is the cluster-init node"),
            Role::Server { join } => format!("{hostname} joins {join} as a server"),
            Role::Agent { join } => format!("{hostname} joins {join} as an agent"),
        };
        self.say(&line);
        self.save();
        // Resident from here on: tell systemd the service is up (Type=notify).
        self.notifier.ready(&self.last_line);
    }

    /// This agent was promoted to a server at `at` (unix seconds): kept in status; the role
    /// is no longer reported as up until K3s runs as a server.
    pub fn promoted(&mut self, at: u64) {
        if self.state.promoted_unix.is_none() {
            self.state.promoted_unix = Some(at);
            self.save();
        }
        self.serving = false;
    }

    /// The init node the election decided (this node's own id on the init node).
    pub fn init_node(&mut self, init: NodeId) {
        self.state.init_node = Some(init.to_string());
        self.save();
    }

    /// The K3s plan is fixed: node address, server and CA hash (public) go to status.
    pub fn plan(&mut self, plan: &K3sPlan) {
        self.state.node_ip = Some(plan.node_ip.to_string());
        self.state.server_url = plan
            .servers
            .first()
            .copied()
            .map(crate::k3s::plan::server_url);
        if plan.ca_hash.is_some() {
            self.state.ca_hash = plan.ca_hash.clone();
        }
        self.save();
    }

    /// On a server: the datastore its K3s runs; on a SQLite server also how to grow to 3 servers.
    pub fn datastore(&mut self, datastore: crate::k3s::Datastore) {
        self.state.datastore = Some(datastore.as_str().to_string());
        self.save();
        if datastore == crate::k3s::Datastore::Sqlite {
            self.note(GROW_TO_ETCD);
        }
    }

    /// The cluster CA hash, known once K3s is active on a server (or from the announcement).
    pub fn ca_hash(&mut self, ca: CaHash) {
        self.state.ca_hash = Some(ca.to_hex());
        self.save();
    }

    /// What agreeing with the cluster's clock did; kept as a note when it stepped or could not.
    /// `server` is the serving server whose announcement the clock was compared with.
    pub fn clock_agreement(&mut self, agreement: InitAgreement, server: NodeId) {
        let line = match agreement {
            InitAgreement::Agrees => return,
            InitAgreement::StepForward(usec) => format!(
                "clock was {:.1} s behind the serving server {server}: stepped forward",
                usec as f64 / 1e6
            ),
            InitAgreement::Ahead(usec) => format!(
                "clock is {:.1} s ahead of the serving server {server}: not stepped back; check NTP",
                usec as f64 / 1e6
            ),
        };
        self.note(&line);
    }

    /// Something worth knowing later, kept in status notes (once) and said now.
    pub fn note(&mut self, line: &str) {
        if !self.state.notes.iter().any(|n| n == line) {
            self.state.notes.push(line.to_string());
        }
        tracing::warn!("{line}");
        self.say(line);
        self.save();
    }

    /// K3s's unit is not active yet after `waited`: say so (only when the line changes).
    pub fn k3s_waiting(&mut self, unit: &str, state: &ActiveState, waited: std::time::Duration) {
        let word = match state {
            ActiveState::Other(s) => s.as_str(),
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
        };
        let line = format!(
            "{unit} is {word} after {} s; waiting for it to become active",
            waited.as_secs()
        );
        if *state == ActiveState::Failed {
            tracing::warn!("{line}; starting it again");
        }
        if line != self.last_line {
            self.say(&line);
            self.save();
        }
    }

    /// K3s is active and the election knows: phase ready, READY=1 with the line.
    pub fn ready(&mut self, line: &str) {
        self.state.phase = Phase::Ready;
        self.say(line);
        self.save();
        self.notifier.ready(&self.last_line);
    }

    /// No role after `timeouts.bootstrap`: phase blocked, with what is missing, until it forms.
    pub fn blocked(&mut self, waited: std::time::Duration, status: &ElectionStatus) {
        let line = format!(
            "blocked: no role after {} s; {}/{} nodes visible, a majority of {} is needed; \
             check that the other nodes are powered, on this LAN and carry this cluster's token",
            waited.as_secs(),
            status.visible,
            status.nodes,
            status.quorum
        );
        tracing::warn!("{line}");
        self.state.phase = Phase::Blocked;
        self.say(&line);
        self.save();
    }

    /// More voters than `nodes` were seen: said loudly, kept in status.
    pub fn quorum_raised(&mut self, seen: usize, quorum: usize) {
        let line = format!(
            "saw {seen} nodes with this cluster's token, more than cluster.nodes: quorum raised to \
             {quorum}; check that no other kit shares this token"
        );
        tracing::error!("{line}");
        self.state.errors.push(line.clone());
        self.say(&line);
        self.save();
    }

    /// A step failed: phase failed, error in status, LED error.
    pub fn fail(&mut self, error: &anyhow::Error) {
        let text = format!("{error:#}");
        self.state.phase = Phase::Failed;
        // A unit restarting after the same failure says it once, not once per restart.
        let redacted = match &self.token {
            Some(t) => crate::status::state::redact(&text, t),
            None => text.clone(),
        };
        if self.state.errors.last() != Some(&redacted) {
            self.state.errors.push(text.clone());
        }
        tracing::error!("{text}");
        self.say(&format!("failed: {text}"));
        self.save();
    }

    /// One status line to sd_notify and the journal (token redacted), and the phase's LED.
    fn say(&mut self, line: &str) {
        let line = match &self.token {
            Some(t) => crate::status::state::redact(line, t),
            None => line.to_string(),
        };
        tracing::info!(phase = self.state.phase.as_str(), "{line}");
        self.notifier.status(&line);
        self.last_line = line;
        self.show_led();
    }

    fn show_led(&mut self) {
        let pattern = LedPattern::for_phase(self.state.phase);
        if self.shown != Some(pattern) {
            if let Err(e) = self.led.show(pattern) {
                tracing::warn!(error = %e, "status LED");
            }
            self.shown = Some(pattern);
        }
    }

    fn save(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Status is for humans: losing one write must not stop the node from forming its cluster.
        if let Err(e) = self.state.save(&self.root, self.token.as_ref(), now) {
            tracing::warn!(error = %e, "writing the state file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(visible: usize, decided: Option<Value>) -> ElectionStatus {
        ElectionStatus {
            epoch: 0,
            visible,
            quorum: 2,
            decided,
            elected: None,
            role: None,
            overcrowded: false,
            nodes: 3,
            voters_seen: visible,
        }
    }

    fn no_peers() -> PeerSummary {
        PeerSummary {
            verified: Vec::new(),
            foreign: 1,
            unverified: 0,
            resolving: 0,
        }
    }

    #[test]
    fn status_lines_follow_the_election_and_never_hold_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "a-secret-token-of-many-chars";
        let mut report = Report::new(
            dir.path().to_path_buf(),
            NodeState::new(),
            Notifier::to_socket(None),
        );
        report.set_token(Token::new(secret.into()).unwrap());
        report.phase(Phase::Electing, "electing");
        report.election(&status(1, None), &no_peers());
        assert_eq!(
            report.last_line,
            "waiting for 1 more node: 1/3 visible; ignoring 1 foreign and 0 unverified"
        );
        report.election(&status(2, Some(Value::Init(NodeId(9)))), &no_peers());
        assert!(report.last_line.starts_with("0000000000000009 initializes"));
        report.blocked(std::time::Duration::from_secs(600), &status(1, None));
        assert_eq!(report.state().phase, Phase::Blocked);
        report.fail(&anyhow::anyhow!("something mentioned {secret}"));
        let saved = NodeState::load(dir.path()).unwrap().unwrap();
        assert_eq!(saved.phase, Phase::Failed);
        assert_eq!(saved.errors, ["something mentioned <redacted>"]);
        let raw = std::fs::read_to_string(NodeState::path(dir.path())).unwrap();
        assert!(!raw.contains(secret));
        assert!(!report.last_line.contains(secret));
    }

    #[test]
    fn an_agent_becoming_a_server_is_recorded_as_promoted_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Role::Agent { join: NodeId(7) };
        let server = Role::Server { join: NodeId(7) };
        let mut report = Report::new(
            dir.path().to_path_buf(),
            NodeState::new(),
            Notifier::to_socket(None),
        );
        report.role(agent, "lab-9", &status(3, None));
        report.set_serving();
        assert_eq!(report.state().promoted_unix, None);
        // Live: the promotion is recorded with its time, and the role is no longer up.
        report.promoted(1_000);
        assert!(!report.serving());
        report.role(server, "lab-9", &status(3, None));
        let saved = NodeState::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            (saved.role, saved.promoted_unix),
            (Some(NodeRole::Server), Some(1_000))
        );
        // Killed between the election's durable promotion and the state file: the next run
        // reads role agent from the file and gets the server's role from the election.
        let mut before = NodeState::new();
        before.role = Some(NodeRole::Agent);
        let mut restarted =
            Report::new(dir.path().to_path_buf(), before, Notifier::to_socket(None));
        restarted.role(server, "lab-9", &status(3, None));
        assert!(restarted.state().promoted_unix.is_some_and(|t| t > 1_000));
        // A server that was never an agent is not promoted.
        let mut plain = Report::new(
            dir.path().to_path_buf(),
            NodeState::new(),
            Notifier::to_socket(None),
        );
        plain.role(server, "lab-2", &status(3, None));
        assert_eq!(plain.state().promoted_unix, None);
    }

    /// Issue 18: with 2 of 5 nodes up, the state said 2 "other nodes visible" (this node counted
    /// among the others), which reads as 3 of 5, a majority that does not exist.
    #[test]
    fn peer_counts_leave_this_node_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = Report::new(
            dir.path().to_path_buf(),
            NodeState::new(),
            Notifier::to_socket(None),
        );
        let mut two_of_five = status(2, None);
        two_of_five.nodes = 5;
        two_of_five.quorum = 3;
        report.election(&two_of_five, &no_peers());
        assert_eq!(report.state().peers_visible, 1);
        assert_eq!(report.state().peers_expected, 5);
        // After the role, the count comes from the peer table, which never lists this node.
        let mut decided = two_of_five.clone();
        decided.role = Some(Role::ClusterInit);
        report.election(&decided, &no_peers());
        assert_eq!(report.state().peers_visible, 0);
    }

    fn view(now: u64, heard: &[(u64, u64)], ttl_ms: u64) -> Membership {
        Membership {
            me: NodeId(1),
            serving: true,
            seats: vec![NodeId(1), NodeId(2), NodeId(3)],
            peers: heard
                .iter()
                .map(|&(node, at)| crate::election::Seen {
                    node: NodeId(node),
                    last_heard: crate::election::Millis(at),
                    heard_now: at + ttl_ms > now,
                    serving: true,
                })
                .collect(),
            servers: 3,
            now: crate::election::Millis(now),
        }
    }

    /// Issue 18: status shows who is gone since when, when the healer may replace it, and a
    /// lost quorum on every node, said once; the gone time does not drift as the clock moves.
    #[test]
    fn membership_marks_gone_servers_once_and_says_a_lost_quorum() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = Report::new(
            dir.path().to_path_buf(),
            NodeState::new(),
            Notifier::to_socket(None),
        );
        let names = BTreeMap::from([(NodeId(2), "pi-b".to_string())]);
        let thirty_min = Some(Duration::from_secs(1800));
        // Node 3 was last heard at 10 s, now is 40 s (unix 1,040): gone since unix 1,010.
        report.membership(
            &view(40_000, &[(2, 39_000), (3, 10_000)], 15_000),
            &names,
            "pi-a",
            thirty_min,
            1_040,
        );
        let m = report.state().membership.clone().unwrap();
        assert_eq!((m.live_servers, m.quorum_lost), (2, false));
        assert_eq!(m.members[0].name.as_deref(), Some("pi-a"));
        assert!(m.members[0].this_node && m.members[0].serving);
        assert_eq!(m.members[2].gone_since_unix, Some(1_010));
        assert_eq!(m.members[2].replace_from_unix, Some(1_010 + 1_800));
        // A second later (a rounding step away) nothing changes.
        report.membership(
            &view(41_500, &[(2, 41_000), (3, 10_000)], 15_000),
            &names,
            "pi-a",
            thirty_min,
            1_041,
        );
        assert_eq!(report.state().membership.as_ref(), Some(&m));
        // Node 2 goes too: 1 of 3 alive, quorum lost, no replacement planned.
        report.membership(
            &view(60_000, &[(2, 41_000), (3, 10_000)], 15_000),
            &names,
            "pi-a",
            thirty_min,
            1_060,
        );
        let m = report.state().membership.clone().unwrap();
        assert_eq!((m.live_servers, m.quorum_lost), (1, true));
        assert!(m.members.iter().all(|x| x.replace_from_unix.is_none()));
        assert!(
            report
                .last_line
                .starts_with("quorum lost: 1 of 3 servers alive"),
            "{}",
            report.last_line
        );
        let saved = NodeState::load(dir.path()).unwrap().unwrap();
        assert_eq!(saved.membership, Some(m));
    }
}
