//! Lifecycle steps 7 and 8 in the daemon: plan, clock agreement, bring-up rounds, the announcement exchange.
//!
//! The election driver keeps running while K3s starts (hellos, seat grants), so everything
//! here is either quick or a spawned task the main loop selects on. Every server (the init node
//! or a joined server) answers announcement queries once K3s is active on it (so its CA hash
//! exists), with the API addresses of the servers serving now; a joiner queries the servers it
//! believes serve, one a second in turn, until a verified answer comes back, and joins the
//! server that answered.

use super::report::Report;
use crate::announce::{
    self, AnnounceCodec, Announcement, AnnouncementWait, Body, Frame, Heard, ANNOUNCE_PORT,
};
use crate::clock::{now_usec, Timedate};
use crate::config::ClusterConfig;
use crate::discovery::{FrameTransport, UdpTransport};
use crate::election::{NodeId, Role};
use crate::k3s::{self, bring_up, node_ip, BringUpError, BroughtUp, CaHash, K3sPlan};
use crate::paths::Paths;
use crate::storage::etcd::EtcdTuning;
use crate::systemd::{ActiveState, Systemd};
use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long one bring-up round follows the unit before the status line is refreshed.
const ROUND: Duration = Duration::from_secs(60);
/// Pause before starting a failed unit again.
const FAILED_RETRY: Duration = Duration::from_secs(5);
/// Interval between a joiner's announcement queries.
const QUERY_INTERVAL: Duration = Duration::from_secs(1);
/// How long the server a joined node's config.yaml names (`server:`) may go unheard serving
/// before the plan and config.yaml name the servers serving now instead (a reboot of that
/// server takes about a minute; renaming is harmless even if it comes back).
pub const RETARGET_AFTER: Duration = Duration::from_secs(60);

/// What step 4 decided that K3s needs (absent when the storage step was skipped).
#[derive(Debug, Clone, Default)]
pub struct StorageChoice {
    /// This node's etcd timing proposal (the init node's becomes the cluster's).
    pub etcd: Option<EtcdTuning>,
    /// Where etcd snapshots go on this node.
    pub snapshot_dir: Option<PathBuf>,
}

/// Where this node's K3s bring-up stands.
pub struct K3sProgress {
    me: NodeId,
    hostname: String,
    role: Option<Role>,
    codec: AnnounceCodec,
    socket: UdpTransport,
    storage: StorageChoice,
    plan: Option<K3sPlan>,
    wait: Option<AnnouncementWait>,
    next_query: Instant,
    /// Queries sent so far (picks the next server to ask in turn).
    queries: usize,
    task: Option<JoinHandle<Result<BroughtUp, BringUpError>>>,
    retry_at: Option<Instant>,
    started: Instant,
    /// This server's CA hash once K3s is active on it: from then on it answers queries.
    ca_hash: Option<CaHash>,
    ready: bool,
    /// Since when the server `server:` names has not been heard serving (joined nodes only).
    named_unheard_since: Option<Instant>,
}

/// What the main loop should select on next.
pub enum Wake {
    /// An announcement datagram.
    Datagram(std::io::Result<(SocketAddr, Vec<u8>)>),
    /// Time to send the next query.
    Query,
    /// A bring-up round ended.
    RoundEnded(Result<Result<BroughtUp, BringUpError>, tokio::task::JoinError>),
    /// Time to start the next round.
    Retry,
}

impl K3sProgress {
    /// Binds the announcement port; nothing happens until [`K3sProgress::on_role`].
    pub async fn bind(
        me: NodeId,
        hostname: &str,
        config: &ClusterConfig,
        storage: StorageChoice,
    ) -> anyhow::Result<Self> {
        let token = config.token.expose().as_bytes();
        Ok(K3sProgress {
            me,
            hostname: hostname.to_string(),
            role: None,
            codec: AnnounceCodec::new(token, config.nodes, config.servers),
            socket: UdpTransport::bind(ANNOUNCE_PORT)
                .await
                .context("binding the announcement port")?,
            storage,
            plan: None,
            wait: None,
            next_query: Instant::now(),
            queries: 0,
            task: None,
            retry_at: None,
            started: Instant::now(),
            ca_hash: None,
            ready: false,
            named_unheard_since: None,
        })
    }

    /// Whether this node's plan (joined nodes) still waits to name the fixed registration
    /// address `fixed` first, so the caller should see whether it answers.
    pub fn wants_fixed(&self, fixed: Option<std::net::Ipv4Addr>) -> bool {
        match (fixed, self.plan.as_ref()) {
            (Some(a), Some(plan)) if self.ready => plan
                .servers
                .first()
                .is_some_and(|s| s.ip() != IpAddr::V4(a)),
            _ => false,
        }
    }

    /// Whether K3s is active here and the election was told.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// This node's `node-ip`, once its plan is fixed.
    pub fn node_ip(&self) -> Option<std::net::IpAddr> {
        self.plan.as_ref().map(|p| p.node_ip)
    }

    /// Waits for whichever of this step's inputs comes first (never returns if none is pending).
    pub async fn wake(&mut self) -> Wake {
        let waiting = self.wait.is_some();
        let next_query = self.next_query;
        let retry_at = self.retry_at;
        let task = &mut self.task;
        tokio::select! {
            received = self.socket.recv() => Wake::Datagram(received),
            () = tokio::time::sleep_until(next_query), if waiting => Wake::Query,
            ended = async { match task.as_mut() {
                Some(t) => t.await,
                None => std::future::pending().await,
            } } => {
                *task = None;
                Wake::RoundEnded(ended)
            }
            () = async { match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => Wake::Retry,
        }
    }

    /// The role is known: resume a persisted plan, make the init node's, or wait for a serving
    /// server's announcement.
    pub fn on_role(
        &mut self,
        role: Role,
        paths: &Paths,
        config: &ClusterConfig,
        any_peer: Option<IpAddr>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        self.role = Some(role);
        if let Some(plan) = K3sPlan::load_for(paths.root(), role)? {
            tracing::info!("resuming the K3s plan of an earlier run");
            return self.start(plan, paths, config, report);
        }
        match role {
            Role::ClusterInit => {
                let plan = K3sPlan {
                    role,
                    node_ip: node_ip::node_ip(any_peer).context("finding the LAN address")?,
                    servers: Vec::new(),
                    ca_hash: None,
                    etcd: self.storage.etcd.unwrap_or(EtcdTuning::K3S_DEFAULT),
                    snapshot_dir: self.storage.snapshot_dir.clone(),
                };
                plan.save(paths.root())?;
                self.start(plan, paths, config, report)
            }
            Role::Server { .. } | Role::Agent { .. } => {
                self.wait = Some(AnnouncementWait::new(self.me));
                self.next_query = Instant::now();
                report.phase(
                    crate::status::Phase::Joining,
                    "waiting for a serving server to announce the cluster CA",
                );
                Ok(())
            }
        }
    }

    /// This agent was promoted (SPEC 4.4; its server role is durable in the election's state):
    /// drop the agent's plan and any bring-up round still following `k3s-agent`, and join as a
    /// server the way a joiner server does: ask a serving server for the cluster's
    /// announcement, fix a server plan on it (`server:` = a live server) and bring K3s up in
    /// the server role, which stops and disables `k3s-agent` first ([`bring_up`]). K3s needs
    /// nothing else cleared on a former agent (K3s v1.31.4): it keeps /etc/rancher/node/password,
    /// which its own node-password check reads (pkg/server/router.go:401-403, 437-468
    /// verifyLocalPassword) and which matches the `<name>.node-password.k3s` secret the agent
    /// registered (router.go:421, nodepassword.Ensure), so neither is removed; an agent never
    /// had an etcd member, so etcd's duplicate-name check passes (pkg/etcd/etcd.go:603-617); and
    /// the server's embedded agent reuses `agent/` (its certificates are fetched at every start,
    /// and the load balancer's file is rewritten when its default server differs,
    /// pkg/agent/loadbalancer/config.go:28-41).
    pub fn promote(&mut self, role: Role, report: &mut Report) {
        if let Some(task) = self.task.take() {
            // Its end would report the agent's K3s as this node's role being up.
            task.abort();
        }
        self.retry_at = None;
        self.role = Some(role);
        self.plan = None;
        self.ca_hash = None;
        self.ready = false;
        self.wait = Some(AnnouncementWait::new(self.me));
        self.next_query = Instant::now();
        report.phase(
            crate::status::Phase::Joining,
            "promoted from agent to server: waiting for a serving server to announce the cluster",
        );
    }

    /// A joiner's query timer: ask the next of `servers` (the servers the election believes
    /// serve, with their frame addresses), in turn, so a dead one is skipped within seconds.
    pub async fn send_query(&mut self, servers: &[(NodeId, SocketAddr)]) -> anyhow::Result<()> {
        self.next_query = Instant::now() + QUERY_INTERVAL;
        let Some(wait) = self.wait.as_mut() else {
            return Ok(());
        };
        if servers.is_empty() {
            return Ok(());
        }
        let (server, addr) = servers[self.queries % servers.len()];
        self.queries = self.queries.wrapping_add(1);
        let nonce = announce::fresh_nonce().context("reading /dev/urandom for a nonce")?;
        let frame = self
            .codec
            .encode(&wait.query(server, nonce, std::time::Instant::now()));
        let to = SocketAddr::new(addr.ip(), ANNOUNCE_PORT);
        if let Err(e) = self.socket.send(to, &frame).await {
            tracing::debug!(%to, error = %e, "sending an announcement query failed");
        }
        Ok(())
    }

    /// A datagram on the announcement port. A ready server answers authentic queries addressed
    /// to it, listing itself and `serving` (the other servers serving now, as the election sees
    /// them); a waiting joiner takes a verified answer to one of its queries, agrees with that
    /// server's clock and starts K3s. Anything else is dropped.
    #[allow(clippy::too_many_arguments)]
    pub async fn on_datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        serving: &[IpAddr],
        conn: Option<&zbus::Connection>,
        paths: &Paths,
        config: &ClusterConfig,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let frame = match self.codec.decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(%from, error = %e, "dropped an announcement frame");
                return Ok(());
            }
        };
        match frame.body {
            Body::Query { to } => self.answer(from, &frame, to, serving, config).await,
            Body::Announcement(_) => {
                let Some(wait) = self.wait.as_mut() else {
                    return Ok(());
                };
                let heard = match wait.answer(&frame, std::time::Instant::now(), now_usec()) {
                    Ok(heard) => heard,
                    Err(why) => {
                        tracing::debug!(%from, ?why, "ignored an announcement");
                        return Ok(());
                    }
                };
                let server = heard.from;
                tracing::info!(%server, ca = %heard.announcement.ca_hash, rtt_ms = heard.rtt.as_millis() as u64,
                    servers = ?heard.announcement.servers, "verified a serving server's announcement");
                if let Some(conn) = conn {
                    // Before K3s first starts: certificates it creates must be valid on the servers.
                    let timedate = Timedate::new(conn)
                        .await
                        .context("connecting to systemd-timedated")?;
                    let agreement = timedate
                        .agree_with_init(now_usec().saturating_add(heard.offset_usec))
                        .await
                        .context("agreeing with the serving server's clock")?;
                    report.clock_agreement(agreement, server);
                }
                let plan = self.joiner_plan(&heard)?;
                plan.save(paths.root())?;
                self.wait = None;
                self.start(plan, paths, config, report)
            }
        }
    }

    async fn answer(
        &self,
        from: SocketAddr,
        query: &Frame,
        to: NodeId,
        serving: &[IpAddr],
        config: &ClusterConfig,
    ) -> anyhow::Result<()> {
        let (Some(ca_hash), Some(plan)) = (self.ca_hash, self.plan.as_ref()) else {
            return Ok(());
        };
        if to != self.me || matches!(plan.role, Role::Agent { .. }) {
            return Ok(());
        }
        let frame = Frame {
            sender: self.me,
            nonce: query.nonce,
            body: Body::Announcement(Announcement {
                ca_hash,
                clock_usec: now_usec(),
                etcd: plan.etcd,
                servers: announced_servers(plan.node_ip, serving, config.servers),
            }),
        };
        if let Err(e) = self.socket.send(from, &self.codec.encode(&frame)).await {
            tracing::debug!(%from, error = %e, "sending the announcement failed");
        } else {
            tracing::debug!(%from, joiner = %query.sender, "announced the cluster CA");
        }
        Ok(())
    }

    fn joiner_plan(&self, heard: &Heard) -> anyhow::Result<K3sPlan> {
        let a = &heard.announcement;
        let role = self.role.context("no role while joining")?;
        let first = a
            .servers
            .first()
            .context("an announcement without servers")?;
        Ok(K3sPlan {
            role,
            node_ip: node_ip::address_towards(first.ip())
                .context("finding the address that routes to the serving server")?,
            servers: a.servers.clone(),
            ca_hash: Some(a.ca_hash.to_hex()),
            etcd: a.etcd,
            snapshot_dir: self.storage.snapshot_dir.clone(),
        })
    }

    /// Fixes `plan` and starts the first bring-up round.
    fn start(
        &mut self,
        plan: K3sPlan,
        paths: &Paths,
        config: &ClusterConfig,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let role = plan
            .k3s_role()
            .context("the K3s plan lacks a server address or the CA hash")?;
        report.plan(&plan);
        if !matches!(role, k3s::K3sRole::Agent { .. }) {
            report.datastore(k3s::Datastore::for_servers(config.servers));
        }
        report.phase(
            crate::status::Phase::StartingK3s,
            &format!("starting {}", k3s::unit_for(&role)),
        );
        self.plan = Some(plan);
        self.started = Instant::now();
        self.spawn_round(paths, config)
    }

    /// One bring-up round as a task: config.yaml (rewritten only if different), the default
    /// route, StartUnit (a no-op on an active unit), then following ActiveState for [`ROUND`].
    fn spawn_round(&mut self, paths: &Paths, config: &ClusterConfig) -> anyhow::Result<()> {
        let plan = self.plan.as_ref().context("no K3s plan")?;
        let role = plan
            .k3s_role()
            .context("the K3s plan lacks a server address or the CA hash")?;
        let facts = plan.facts(&self.hostname);
        let root = paths.root().to_path_buf();
        let config = config.clone();
        // The route belongs to the live system only, never to a test root.
        let live = root == Path::new("/");
        self.retry_at = None;
        self.task = Some(tokio::spawn(async move {
            let conn = zbus::Connection::system().await?;
            let systemd = Systemd::new(&conn).await?;
            bring_up(&root, &config, &role, &facts, &systemd, live, ROUND).await
        }));
        Ok(())
    }

    /// The daemon's periodic look at `serving` (the servers the election hears serving now):
    /// on a node that has joined, when the server its plan names first (config.yaml's
    /// `server:`) has not been heard serving for [`RETARGET_AFTER`] and others serve, the plan
    /// and config.yaml name the servers serving now (SPEC 4.4: nothing in a node's config or
    /// plan names a server that is gone), without restarting K3s ([`k3s::bring_up::retarget`]).
    ///
    /// With a fixed registration address (`[cluster] api_address`, SPEC 4.5), the plan names it
    /// first as soon as it answers (`fixed_answers`, probed by the caller), and is never renamed
    /// away from it: whichever server holds it is live.
    pub fn retarget(
        &mut self,
        serving: &[IpAddr],
        fixed_answers: bool,
        paths: &Paths,
        config: &ClusterConfig,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let Some(plan) = self.plan.as_ref() else {
            return Ok(());
        };
        // Only once K3s runs with this plan, and never beside a bring-up round writing config.yaml.
        if !self.ready || self.task.is_some() {
            return Ok(());
        }
        let fixed = config
            .api_address
            .map(|a| SocketAddr::new(IpAddr::V4(a), k3s::API_PORT));
        let renamed = renamed_servers(
            &plan.servers,
            plan.node_ip,
            serving,
            config.servers,
            fixed.filter(|_| fixed_answers),
            fixed,
        );
        let Some((servers, now)) = renamed else {
            self.named_unheard_since = None;
            return Ok(());
        };
        let since = *self.named_unheard_since.get_or_insert_with(Instant::now);
        if !now && since.elapsed() < RETARGET_AFTER {
            return Ok(());
        }
        let mut plan = plan.clone();
        let gone = plan.servers.first().copied();
        plan.servers = servers;
        let role = plan
            .k3s_role()
            .context("the K3s plan lacks a server address or the CA hash")?;
        plan.save(paths.root())?;
        let live = paths.root() == Path::new("/");
        k3s::bring_up::retarget(
            paths.root(),
            config,
            &role,
            &plan.facts(&self.hostname),
            live,
        )
        .context("rewriting config.yaml for a live server")?;
        if fixed.is_some() && plan.servers.first() == fixed.as_ref() {
            tracing::info!(was = ?gone, servers = ?plan.servers,
                "the fixed registration address answers: the plan and config.yaml now name it (K3s keeps running)");
        } else {
            tracing::info!(gone = ?gone, servers = ?plan.servers,
                "the server config.yaml named has not served for a minute: the plan and config.yaml now name the servers serving (K3s keeps running)");
        }
        report.plan(&plan);
        self.plan = Some(plan);
        self.named_unheard_since = None;
        Ok(())
    }

    /// A bring-up round ended: ready once active (a server reads its CA hash and starts
    /// answering queries; the caller then reports serving to the election, see
    /// [`K3sProgress::is_ready`]), otherwise say so and go another round.
    pub fn on_round_ended(
        &mut self,
        ended: Result<Result<BroughtUp, BringUpError>, tokio::task::JoinError>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let up = ended
            .context("joining the K3s bring-up task")?
            .context("bringing up K3s")?;
        if let Some(to) = &up.set_aside {
            report.note(&format!(
                "a K3s server data directory this node's K3s had before firstboot chose its role \
                 (a standalone or earlier cluster) was moved to {} so K3s starts clean; delete \
                 it once nothing in it is needed",
                to.display()
            ));
        }
        let plan = self.plan.as_ref().context("no K3s plan")?;
        let unit = plan.k3s_role().map(|r| k3s::unit_for(&r)).unwrap_or("k3s");
        if up.state != ActiveState::Active {
            report.k3s_waiting(unit, &up.state, self.started.elapsed());
            let pause = if up.state == ActiveState::Failed {
                FAILED_RETRY
            } else {
                Duration::ZERO
            };
            self.retry_at = Some(Instant::now() + pause);
            return Ok(());
        }
        if let Some(ca) = up.ca_hash {
            report.ca_hash(ca);
            self.ca_hash = Some(ca);
        }
        let line = match plan.role {
            Role::ClusterInit => format!(
                "ready: cluster-init server; announcing CA {} to joiners",
                self.ca_hash.map(|c| c.to_hex()).unwrap_or_default()
            ),
            Role::Server { .. } => format!(
                "ready: server joined through {}; announcing CA {} to joiners",
                plan.servers
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                self.ca_hash.map(|c| c.to_hex()).unwrap_or_default()
            ),
            Role::Agent { .. } => format!(
                "ready: agent joined through {}",
                plan.servers
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
        };
        if !self.ready {
            self.ready = true;
            report.ready(&line);
        }
        Ok(())
    }

    /// The retry timer fired: start the next round.
    pub fn on_retry(&mut self, paths: &Paths, config: &ClusterConfig) -> anyhow::Result<()> {
        self.spawn_round(paths, config)
    }
}

/// What a joined node's plan should name instead of `plan`, and whether at once (`true`) or
/// only once the named server has been unheard for [`RETARGET_AFTER`]: the fixed registration
/// address `fixed` first at once when it answers (`answering`), never away from it once named,
/// else as [`retargeted`] says.
fn renamed_servers(
    plan: &[SocketAddr],
    me: IpAddr,
    serving: &[IpAddr],
    seats: u8,
    answering: Option<SocketAddr>,
    fixed: Option<SocketAddr>,
) -> Option<(Vec<SocketAddr>, bool)> {
    if fixed.is_some() && plan.first() == fixed.as_ref() {
        return None;
    }
    if let Some(f) = answering.filter(|_| !plan.is_empty()) {
        let mut list = vec![f];
        list.extend(plan.iter().copied().filter(|s| *s != f));
        return Some((list, true));
    }
    retargeted(plan, me, serving, seats).map(|list| (list, false))
}

/// The servers a joined node's plan should name instead of `plan` (its servers, the first one
/// named by `server:`), or `None` to keep them: only when the first is not among `serving` (the
/// servers heard serving now) and some server other than `me` serves. The new list keeps the
/// plan's servers that still serve, in order, then the others serving, at most `seats`.
fn retargeted(
    plan: &[SocketAddr],
    me: IpAddr,
    serving: &[IpAddr],
    seats: u8,
) -> Option<Vec<SocketAddr>> {
    let named = plan.first()?;
    let others: Vec<IpAddr> = serving.iter().copied().filter(|ip| *ip != me).collect();
    if others.is_empty() || others.contains(&named.ip()) {
        return None;
    }
    let mut list: Vec<SocketAddr> = plan
        .iter()
        .copied()
        .filter(|s| others.contains(&s.ip()))
        .collect();
    for ip in others {
        let api = SocketAddr::new(ip, k3s::API_PORT);
        if !list.contains(&api) {
            list.push(api);
        }
    }
    list.truncate(usize::from(seats.max(1)).min(announce::frame::MAX_ANNOUNCED_SERVERS));
    Some(list)
}

/// The API addresses an announcement lists: this server's own first, then the other servers
/// serving now, at most `servers` (the cluster's seat count) and never one twice.
fn announced_servers(me: IpAddr, serving: &[IpAddr], servers: u8) -> Vec<SocketAddr> {
    let mut list = vec![SocketAddr::new(me, k3s::API_PORT)];
    for ip in serving {
        let api = SocketAddr::new(*ip, k3s::API_PORT);
        if !list.contains(&api) {
            list.push(api);
        }
    }
    list.truncate(usize::from(servers.max(1)).min(announce::frame::MAX_ANNOUNCED_SERVERS));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_lists_this_server_first_and_at_most_the_seat_count() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let me = ip("198.18.0.11");
        let others = [ip("198.18.0.12"), ip("198.18.0.11"), ip("198.18.0.13")];
        let list = announced_servers(me, &others, 3);
        let want: Vec<SocketAddr> = ["198.18.0.11:6443", "198.18.0.12:6443", "198.18.0.13:6443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(list, want);
        assert_eq!(announced_servers(me, &others, 1), want[..1]);
        assert_eq!(announced_servers(me, &[], 3), want[..1]);
    }

    #[test]
    fn a_joined_node_names_the_servers_serving_once_its_own_is_unheard() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let api = |s: &str| s.parse::<SocketAddr>().unwrap();
        let me = ip("198.18.0.14");
        let plan = [api("198.18.0.10:6443"), api("198.18.0.12:6443")];
        // The named server serves: keep the plan.
        let serving = [ip("198.18.0.10"), ip("198.18.0.12")];
        assert_eq!(retargeted(&plan, me, &serving, 3), None);
        // Nobody else serves (this node alone, or nothing heard): keep it, there is no better.
        assert_eq!(retargeted(&plan, me, &[me], 3), None);
        assert_eq!(retargeted(&[], me, &serving, 3), None);
        // The named one is gone: the plan's servers still serving first, then the others, never me.
        let serving = [ip("198.18.0.13"), me, ip("198.18.0.12")];
        assert_eq!(
            retargeted(&plan, me, &serving, 3),
            Some(vec![api("198.18.0.12:6443"), api("198.18.0.13:6443")])
        );
        assert_eq!(
            retargeted(&plan, me, &serving, 1),
            Some(vec![api("198.18.0.12:6443")])
        );
    }

    #[test]
    fn a_fixed_address_is_named_first_once_it_answers_and_never_renamed_away() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let api = |s: &str| s.parse::<SocketAddr>().unwrap();
        let me = ip("198.18.0.14");
        let vip = api("198.18.0.240:6443");
        let plan = [api("198.18.0.10:6443"), api("198.18.0.12:6443")];
        let serving = [ip("198.18.0.10"), ip("198.18.0.12")];
        // It answers: named first at once, the rest kept behind it.
        assert_eq!(
            renamed_servers(&plan, me, &serving, 3, Some(vip), Some(vip)),
            Some((vec![vip, plan[0], plan[1]], true))
        );
        // Not answering (nobody holds it yet): the plan stays while its server serves.
        assert_eq!(
            renamed_servers(&plan, me, &serving, 3, None, Some(vip)),
            None
        );
        // ... and is renamed the usual way, after a minute, when its server is gone.
        assert_eq!(
            renamed_servers(&plan, me, &[ip("198.18.0.12")], 3, None, Some(vip)),
            Some((vec![plan[1]], false))
        );
        // Once named, the fixed address stays, whoever serves.
        let named = [vip, plan[0]];
        assert_eq!(
            renamed_servers(&named, me, &[ip("198.18.0.13")], 3, None, Some(vip)),
            None
        );
        // The init node's plan (no servers) is never given one.
        assert_eq!(
            renamed_servers(&[], me, &serving, 3, Some(vip), Some(vip)),
            None
        );
    }
}
