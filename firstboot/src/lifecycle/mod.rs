//! `firstboot run`: the daemon's lifecycle (steps in docs/architecture.md), intake to a running K3s node, each step idempotent.
//!
//! Steps: intake -> identity -> clock -> storage -> discovery + election -> role -> K3s -> ready,
//! then resident. Progress goes to the state file (`firstboot status`), sd_notify STATUS lines,
//! the journal and the LED. Every step can run again after a power loss: intake resumes from the
//! root copy, the node id and hostname are stable, storage tuning is idempotent, the election
//! restores its fsync'd state (a node that has a role never elects again), the K3s plan is read
//! back, config.yaml is rewritten only when it differs and starting an active unit is a no-op.
//!
//! K3s (steps 7 and 8, in `k3s_step`): the init node starts `k3s.service` with cluster-init;
//! once it is active it tells the election it serves, so seats are granted one at a time. Every
//! server whose K3s is active answers joiners' queries with its signed announcement (CA hash,
//! clock, etcd timing, the API addresses of the servers serving now; see [`crate::announce`]). A
//! joiner queries the servers the election sees serving, in turn, until a verified answer
//! arrives, steps its clock forward to that server's if it is more than 2 s behind, and starts
//! `k3s.service` or `k3s-agent.service` joining that server with the secure token
//! `K10<CA hash>::server:<token>`.
//!
//! Day 2 (SPEC 4.4), on every serving server: a seat keeper round every 3 s (its kubectl calls
//! in a blocking task the loop does not wait for), and the healer in its own thread
//! ([`crate::healer::round`]), fed the LAN view every keeper round. A keeper round also tells
//! nodes the book lists as removed that still claim a server role; such a node sets its etcd
//! data aside and rejoins through the seat book (`rejoin`).

mod k3s_step;
mod rejoin;
mod report;

use crate::clock::unix_now;
use crate::clock::{image_build_time, Timedate};
use crate::config::ClusterConfig;
use crate::discovery::{Advert, Browser, Publisher, UdpTransport, FRAME_PORT};
use crate::election::{
    BookView, ElectionConfig, ElectionDriver, ElectionStore, Event, PersistHook, Rank, Timing,
};
use crate::healer::round::{Healer, LanView};
use crate::healer::AgentView;
use crate::identity::{hostname_for, node_id, set_hostname_and_hosts};
use crate::keys::TokenKeys;
use crate::model::{NodeId, Role};
use crate::paths::Paths;
use crate::seat_book::{
    Asker, Decision, Kubectl, Run, SeatBook, SeatKeeper, SeatStore, StoreError,
};
use crate::status::led::open_led;
use crate::status::state::{NodeState, Phase};
use crate::status::Notifier;

use crate::storage::setup::StorageSetup;
use anyhow::Context;
use k3s_step::{K3sProgress, StorageChoice, Wake};
use report::Report;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a serving server's seat keeper reads the seat book and grants (SPEC 4.4).
const SEAT_ROUND: Duration = Duration::from_secs(3);
/// Interval of a joined node's look at the server its config.yaml names (see
/// [`k3s_step::K3sProgress::retarget`]).
const PLAN_CHECK: Duration = Duration::from_secs(5);
/// How often the clock step polls timedated while waiting for NTP.
const NTP_POLL: Duration = Duration::from_secs(1);
/// The storage score a node ranks with when `--no-storage` skips the probe: the "other device"
/// tier of `storage::score`, so such nodes neither win nor lose on storage against each other.
const UNMEASURED_STORAGE_SCORE: u8 = 30;

/// Where `firstboot run` stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// Once the role is known: print it as one JSON line on stdout, then stay resident (announce,
    /// answer late joiners, grant seats) as if K3s were up, until SIGTERM.
    Role,
}

/// Options of `firstboot run`; the switches exist for test environments that lack a piece.
/// Without `--until`, the run brings up K3s and stays resident once ready.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Stop the lifecycle at a step instead of bringing up K3s (see the values).
    #[arg(long, value_enum)]
    pub until: Option<Until>,
    /// Skip the clock steps (waiting for NTP, the image build-time floor, agreeing with the init
    /// node's clock). For test LANs whose private D-Bus has no systemd-timedated and whose clock
    /// must not be stepped.
    #[arg(long)]
    pub no_clock: bool,
    /// Skip the storage probe and tuning and rank with a neutral storage score. For test LANs
    /// whose nodes share one host disk (the probe would measure the same device N times at once).
    #[arg(long)]
    pub no_storage: bool,
}

/// Runs the lifecycle on a fresh single-threaded runtime (small RSS: one thread).
pub fn run(args: &RunArgs, paths: &Paths) -> anyhow::Result<()> {
    run_with_hook(args, paths, None)
}

/// [`run`] with a hook on the election driver's durable states (the LAN tests stall a node with
/// one; see [`PersistHook`]).
pub fn run_with_hook(
    args: &RunArgs,
    paths: &Paths,
    hook: Option<Box<dyn PersistHook>>,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(lifecycle(args, paths, hook))
}

/// The steps, in order; a failure is recorded in status (phase failed, LED error) and returned.
async fn lifecycle(
    args: &RunArgs,
    paths: &Paths,
    hook: Option<Box<dyn PersistHook>>,
) -> anyhow::Result<()> {
    let state = match NodeState::load(paths.root()) {
        Ok(Some(state)) => state,
        Ok(None) => NodeState::new(),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable state file; starting a fresh one");
            NodeState::new()
        }
    };
    let mut report = Report::new(paths.root().to_path_buf(), state, Notifier::from_env());
    let joined = report.state().phase.has_joined();
    let config = match crate::intake::intake(paths.boot_dir(), paths.root(), joined) {
        Ok(intake) => {
            for note in &intake.notes {
                tracing::info!("{note}");
            }
            intake.config
        }
        Err(e) => {
            let e = anyhow::Error::new(e).context("reading cluster.toml");
            report.fail(&e);
            return Err(e);
        }
    };
    report.set_token(config.token.clone());
    report.set_led(open_led(config.status.led_gpio));
    match steps(args, paths, &config, &mut report, hook).await {
        Ok(()) => Ok(()),
        Err(e) => {
            report.fail(&e);
            Err(e)
        }
    }
}

/// Everything after intake.
async fn steps(
    args: &RunArgs,
    paths: &Paths,
    config: &ClusterConfig,
    report: &mut Report,
    hook: Option<Box<dyn PersistHook>>,
) -> anyhow::Result<()> {
    // Step 2: identity.
    report.phase(
        Phase::Identity,
        "finding the node id and setting the hostname",
    );
    let (id, source) = node_id(paths).context("finding the node id")?;
    let hostname = hostname_for(&config.name, id, config.node.hostname.as_deref());
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system bus")?;
    // Usually set already by `firstboot identity` before avahi-daemon started: then a no-op.
    set_hostname_and_hosts(&conn, paths.root(), &hostname).await?;
    tracing::info!(node = %id, ?source, %hostname, "identity");
    report.identity(&config.name, &hostname);

    // K3s needs the memory cgroup controller: say what to do before electing a node that cannot
    // run it (the service restarts and checks again; a reboot with the fixed cmdline.txt passes).
    if args.until.is_none() {
        crate::cgroup::check_memory_controller(paths.root())
            .context("checking that this kernel can run K3s")?;
    }

    // Step 3: clock.
    if args.no_clock {
        tracing::info!("clock step skipped (--no-clock)");
    } else {
        report.phase(Phase::Clock, "waiting for the clock (NTP)");
        let timedate = Timedate::new(&conn)
            .await
            .context("connecting to systemd-timedated")?;
        let build = image_build_time(paths.root()).context("reading the image build time")?;
        let settled = timedate
            .settle(build, config.timeouts.time_sync, NTP_POLL)
            .await
            .context("settling the clock")?;
        tracing::info!(ntp = ?settled.ntp, step_usec = ?settled.floor_step_usec, "clock settled");
        if let Some(usec) = settled.floor_step_usec {
            report.note(&format!(
                "clock was {:.1} s below the image build time: stepped forward",
                usec as f64 / 1e6
            ));
        }
    }

    // Step 4: storage.
    let (storage_score, storage) = if args.no_storage {
        tracing::info!("storage step skipped (--no-storage)");
        (UNMEASURED_STORAGE_SCORE, StorageChoice::default())
    } else {
        report.phase(Phase::Storage, "measuring and tuning storage");
        let setup = storage_setup(paths, config);
        let outcome = tokio::task::spawn_blocking(move || setup.run())
            .await
            .context("joining the storage step")??;
        report.storage(&outcome);
        let choice = StorageChoice {
            etcd: Some(outcome.assessment.etcd),
            snapshot_dir: outcome.assessment.plan.snapshot_dir.clone(),
        };
        (outcome.assessment.score, choice)
    };

    // Steps 5 and 6: discovery and election.
    report.phase(Phase::Discovering, "publishing and browsing for peers");
    let keys = TokenKeys::derive(&config.token, config.nodes, config.servers);
    let pin = config.node.role;
    let ram_mib = ram_mib();
    let mut advert = Advert {
        cluster: keys.cluster,
        node: id,
        state: "electing".into(),
        role: pin,
        storage: storage_score,
        ram_mib,
        port: FRAME_PORT,
    };
    let election_config = ElectionConfig {
        rank: Rank {
            pin,
            storage: storage_score,
            ram_mib,
            node: id,
        },
        nodes: config.nodes,
        servers: config.servers,
        cluster: keys.cluster,
        key: keys.election.clone(),
        seed: seed(id.value()),
        timing: Timing::default(),
    };
    let transport = UdpTransport::bind(FRAME_PORT)
        .await
        .context("binding the frame transport")?;
    let publisher = Publisher::spawn(
        conn.clone(),
        hostname.clone(),
        advert.clone(),
        keys.record.clone(),
    );
    let browser = Browser::spawn(conn.clone(), keys.cluster, keys.record.clone());
    let store = ElectionStore::new(&paths.state_dir());
    let mut driver =
        ElectionDriver::start(election_config, store, transport, browser, hook).await?;
    if args.until.is_none() {
        // K3s's etcd keeps the seat book: seats are granted through it (SPEC 4.4).
        driver.use_seat_book();
    }
    // Removed from the cluster earlier (see `rejoin`): a seat only from the book, never the
    // old one from a roster.
    let removed_before = rejoin::load(paths.root()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable {}; ignored", rejoin::REMOVED_RECORD);
        None
    });
    if rejoin::was_removed(paths.root()) {
        driver.rejoin_after_removal();
    }
    report.phase(Phase::Electing, "electing the cluster-init node");

    // Steps 7 and 8 (unless the run stops at the role).
    let mut k3s = match args.until {
        Some(Until::Role) => None,
        None => Some(K3sProgress::bind(id, &hostname, config, storage).await?),
    };
    // The clock step's bus, also for the joiner's agreement with the init node's clock.
    let timedate_bus = (!args.no_clock).then_some(&conn);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut role: Option<Role> = None;
    let mut pending = driver.take_startup_events();
    // Past `timeouts.bootstrap` without a role the node says it is blocked, and keeps trying.
    let blocked_at = tokio::time::Instant::now() + config.timeouts.bootstrap;
    let mut blocked = false;
    // Once this server serves: its seat keeper (a round every SEAT_ROUND, its kubectl calls in a
    // blocking task the loop does not wait for) and its healer (own thread, fed the LAN view).
    let mut keeper: Option<SeatKeeper> = None;
    let mut keeper_task: Option<tokio::task::JoinHandle<KeeperRound>> = None;
    let mut healer_view: Option<Arc<Mutex<LanView>>> = None;
    // The fixed registration address's holder on this server (`api_address` set).
    let mut api_address: Option<Arc<Mutex<crate::api_address::Shared>>> = None;
    // `<name>.local` while this server holds the fixed address.
    let mut cluster_name: Option<crate::discovery::name::Published> = None;
    let mut seat_round = tokio::time::interval(SEAT_ROUND);
    seat_round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A joined node's look at whether the server its config.yaml names still serves.
    let mut plan_check = tokio::time::interval(PLAN_CHECK);
    plan_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for event in pending.drain(..) {
            match event {
                Event::Role(r) if role.is_none() => {
                    role = Some(r);
                    if let Some(removed) = &removed_before {
                        report.note(&format!(
                            "rejoined as {} after the removal recorded at unix {} (etcd data set aside: {})",
                            r.word(),
                            removed.at,
                            removed.set_aside.as_ref().map_or("none".into(), |p| p.display().to_string())
                        ));
                    }
                    report.role(r, &hostname, &driver.status());
                    advert.state = record_state(r, report.state().promoted_unix, false).into();
                    publisher.update(advert.clone());
                    report.init_node(r.init_node(id));
                    match k3s.as_mut() {
                        None => println!("{}", role_json(r, id, &hostname, driver.role_via())),
                        Some(k3s) => {
                            let peer = driver.any_peer_addr().map(|a| a.ip());
                            k3s.on_role(r, paths, config, peer, report)?;
                        }
                    }
                }
                Event::Role(r @ Role::Server { .. })
                    if matches!(role, Some(Role::Agent { .. })) =>
                {
                    // Promoted (SPEC 4.4): the server role is durable in the election's state.
                    tracing::info!(via = ?driver.role_via(), "promoted from agent to server: a serving server says the seat book holds a seat for this node");
                    role = Some(r);
                    report.promoted(unix_now() as u64);
                    report.role(r, &hostname, &driver.status());
                    advert.state = record_state(r, report.state().promoted_unix, false).into();
                    publisher.update(advert.clone());
                    if let Some(k3s) = k3s.as_mut() {
                        k3s.promote(r, report);
                    }
                }
                Event::Role(_) => {}
                Event::Decided { epoch, value } => {
                    tracing::info!(epoch, ?value, "election decided");
                }
                Event::QuorumRaised { seen, quorum } => {
                    report.quorum_raised(seen, quorum);
                }
                removed @ Event::Removed { .. } => {
                    let handled =
                        rejoin::on_removed(removed, role, &conn, paths, &mut driver, report)
                            .await?;
                    if handled == rejoin::Handled::Restart {
                        publisher.withdraw().await;
                        return Err(rejoin::restart_daemon());
                    }
                }
            }
        }
        // `--until role` stands in for K3s being up, so that seats keep being granted; a full
        // run reports serving once K3s is active.
        let up = match &k3s {
            None => role.is_some(),
            Some(k3s) => k3s.is_ready(),
        };
        if up && !report.serving() {
            report.set_serving();
            if let Some(r) = role {
                // A promoted node says `server` only now that K3s serves as one.
                let word = record_state(r, report.state().promoted_unix, true);
                if advert.state != word {
                    advert.state = word.into();
                    publisher.update(advert.clone());
                }
            }
            pending.extend(driver.report_serving().await?);
            continue;
        }
        if keeper.is_none() && k3s.is_some() && report.serving() {
            if let Some(r @ (Role::ClusterInit | Role::Server { .. })) = role {
                let kubectl: Arc<dyn Run> = Arc::new(Kubectl::for_root(paths.root()));
                let store = SeatStore::shared(kubectl.clone());
                let init = r == Role::ClusterInit;
                keeper = Some(
                    SeatKeeper::new(store, id, &hostname, init, config.servers.into())
                        .replacing(config.replace_after.is_some()),
                );
                let node_ip = k3s.as_ref().and_then(|k| k.node_ip());
                api_address = start_api_address(kubectl.clone(), id, config, node_ip);
                healer_view = start_healer(kubectl, id, config);
            }
        }
        if let Some(shared) = &api_address {
            let held = shared.lock().map(|s| s.clone()).unwrap_or_default();
            // The holder publishes `<name>.local` over mDNS: the fixed address, or without
            // one, this server's own node-ip.
            let address: Option<std::net::IpAddr> = match config.api_address {
                Some(a) => {
                    report.api_address(a, &held);
                    Some(a.into())
                }
                None => k3s.as_ref().and_then(|k| k.node_ip()),
            };
            match (held.holding, address, cluster_name.take()) {
                (true, Some(address), None) => {
                    match crate::discovery::name::publish(&conn, &config.name, address).await {
                        Ok(p) => {
                            tracing::info!(name = %format!("{}.local", config.name), %address, "published the cluster's name");
                            cluster_name = Some(p);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not publish the cluster's name over mDNS; retrying")
                        }
                    }
                }
                (false, _, Some(p)) => p.withdraw().await,
                (_, _, kept) => cluster_name = kept,
            }
        }
        let peers = driver.peers();
        report.election(&driver.status(), &peers);
        let names = peers
            .verified
            .into_iter()
            .map(|p| (p.advert.node, p.service))
            .collect();
        report.membership(
            &driver.membership(),
            &names,
            &hostname,
            config.replace_after,
            unix_now() as u64,
        );
        let overdue = role.is_none() && !blocked;
        let joined = k3s.as_ref().is_some_and(|k| k.is_ready());
        let k3s_wake = async {
            match k3s.as_mut() {
                Some(k3s) => k3s.wake().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            events = driver.step() => pending.extend(events?),
            wake = k3s_wake => {
                // Present: a wake only comes from a bound K3s step.
                let Some(k3s) = k3s.as_mut() else { continue };
                match wake {
                    Wake::Datagram(received) => {
                        let (from, bytes) = received.context("receiving an announcement frame")?;
                        let serving: Vec<std::net::IpAddr> =
                            driver.serving_servers().iter().map(|(_, a)| a.ip()).collect();
                        k3s.on_datagram(from, &bytes, &serving, timedate_bus, paths, config, report)
                            .await?;
                    }
                    Wake::Query => {
                        let mut servers = driver.serving_servers();
                        if servers.is_empty() {
                            // Nothing heard serving yet (e.g. a pinned agent's early role): the init.
                            let init = role.map(|r| r.init_node(id));
                            servers.extend(init.and_then(|i| Some((i, driver.peer_addr(i)?))));
                        }
                        k3s.send_query(&servers).await?;
                    }
                    Wake::RoundEnded(ended) => {
                        k3s.on_round_ended(ended, report)?;
                    }
                    Wake::Retry => k3s.on_retry(paths, config)?,
                }
            }
            _ = plan_check.tick(), if joined => {
                let serving: Vec<std::net::IpAddr> =
                    driver.serving_servers().iter().map(|(_, a)| a.ip()).collect();
                let fixed_answers = match config.api_address {
                    Some(a) if k3s.as_ref().is_some_and(|k| k.wants_fixed(Some(a))) => {
                        answers_on_api_port(a).await
                    }
                    _ => false,
                };
                if let Some(k3s) = k3s.as_mut() {
                    if let Err(e) = k3s.retarget(&serving, fixed_answers, paths, config, report) {
                        tracing::warn!(error = format!("{e:#}"), "could not rename the servers config.yaml names; trying again");
                    }
                }
            }
            _ = seat_round.tick(), if keeper.is_some() && keeper_task.is_none() => {
                let Some(keeper) = keeper.clone() else { continue };
                keeper_task = Some(start_keeper_round(keeper, &driver, config));
                if let Some(view) = &healer_view {
                    let lan = lan_view(&driver, config);
                    if let Ok(mut shared) = view.lock() {
                        *shared = lan;
                    }
                }
            }
            round = async { keeper_task.as_mut().expect("guarded").await }, if keeper_task.is_some() => {
                keeper_task = None;
                let round = round.context("joining the seat keeper")?;
                pending.extend(finish_keeper_round(round, &mut driver, config).await?);
            }
            () = tokio::time::sleep_until(blocked_at), if overdue => {
                blocked = true;
                report.blocked(config.timeouts.bootstrap, &driver.status());
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: withdrawing the record and stopping");
                publisher.withdraw().await;
                return Ok(());
            }
        }
    }
}

/// Whether a server holds the fixed registration address `address` now: a TCP connection to
/// its K3s API port is accepted within 300 ms (on the LAN an answer takes well under a
/// millisecond; an unheld address gets no ARP reply, so this bounds the daemon loop's wait).
async fn answers_on_api_port(address: std::net::Ipv4Addr) -> bool {
    let to = std::net::SocketAddr::new(address.into(), crate::k3s::API_PORT);
    matches!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(to)
        )
        .await,
        Ok(Ok(_))
    )
}

/// What a seat keeper round returns from its blocking task.
type KeeperRound = Result<Option<(Decision, SeatBook)>, StoreError>;

/// Starts one seat keeper round in a blocking task (its kubectl calls never hold up the loop):
/// read the book, decide on what the election sees now, write by compare-and-swap.
fn start_keeper_round(
    keeper: SeatKeeper,
    driver: &ElectionDriver,
    config: &ClusterConfig,
) -> tokio::task::JoinHandle<KeeperRound> {
    let names: std::collections::BTreeMap<NodeId, String> = driver
        .peers()
        .verified
        .into_iter()
        .map(|p| (p.advert.node, p.service))
        .collect();
    let askers: Vec<Asker> = driver
        .seat_askers()
        .into_iter()
        .map(|rank| Asker {
            name: names
                .get(&rank.node)
                .cloned()
                .unwrap_or_else(|| hostname_for(&config.name, rank.node, None)),
            rank,
        })
        .collect();
    // Serving as a server: an agent serves too (and an agent being promoted keeps saying so
    // until its hello says otherwise), but its join ends only once it serves as a server.
    let not_servers = records_saying(driver, &[AGENT, PROMOTING]);
    let serving: Vec<NodeId> = driver
        .serving_peers()
        .into_iter()
        .filter(|n| !not_servers.contains(n))
        .collect();
    let now = unix_now();
    tokio::task::spawn_blocking(move || keeper.round(&askers, &serving, now))
}

/// A seat keeper round ended: tell the election what the book says. A failed round (K3s
/// restarting, the apiserver busy) is logged and tried again next round.
async fn finish_keeper_round(
    round: KeeperRound,
    driver: &mut ElectionDriver,
    config: &ClusterConfig,
) -> anyhow::Result<Vec<Event>> {
    let (decision, book) = match round {
        Ok(Some(done)) => done,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => {
            tracing::warn!(error = %e, "seat keeper round failed; retrying");
            return Ok(Vec::new());
        }
    };
    if decision != Decision::Idle {
        tracing::info!(?decision, holders = book.holders.len(), "seat keeper");
    }
    let view = BookView {
        holders: book.holders.iter().map(|h| h.node).collect(),
        pending: book.pending.is_some(),
        removed: book.removed.iter().map(|r| r.node).collect(),
    };
    // The healer granted the pending seat to an agent (a promotion): tell it every round
    // while its record still says `agent` (it cannot read the book itself).
    let promotion = book
        .pending
        .as_ref()
        .map(|p| p.node)
        .filter(|node| records_saying(driver, &[AGENT]).contains(node));
    let (grant, agents) = match decision {
        Decision::Grant(node) => (Some(node), Vec::new()),
        Decision::Agents(nodes) => (promotion, nodes),
        Decision::Idle
        | Decision::Joined(_)
        | Decision::Wait(_)
        | Decision::Replacing(_)
        | Decision::OldNode(_) => (promotion, Vec::new()),
    };
    let mut events = driver.seat_round(view, grant, &agents).await?;
    // Removed nodes heard claiming a server role are told (they rejoin, see `rejoin`).
    let agents: Vec<NodeId> = lan_view(driver, config)
        .agents
        .iter()
        .map(|a| a.rank.node)
        .collect();
    let removed: Vec<(NodeId, i64)> = book
        .removed
        .iter()
        .filter(|r| !book.holds(r.node) && !agents.contains(&r.node))
        .map(|r| (r.node, r.at))
        .collect();
    if !removed.is_empty() {
        events.extend(driver.tell_removed(&removed).await?);
    }
    Ok(events)
}

/// Starts this server's healer thread (SPEC 4.4; with `replace_after = "off"` it replaces no
/// server but still handles re-flashed cards); the LAN view it reads, which the loop refreshes
/// every seat round.
fn start_healer(
    kubectl: Arc<dyn Run>,
    id: NodeId,
    config: &ClusterConfig,
) -> Option<Arc<Mutex<LanView>>> {
    match config.replace_after {
        Some(after) => tracing::info!(replace_after_secs = after.as_secs(), "healer starting"),
        // Re-flashed cards are still handled (their old Node deleted, never a Ready one).
        None => tracing::info!("healer starting with replace_after = \"off\": gone servers are never replaced; re-flashed cards are handled"),
    }
    let healer = Healer::new(kubectl, id, config.servers.into(), config.replace_after);
    let view = Arc::new(Mutex::new(LanView::default()));
    match crate::healer::round::spawn(healer, view.clone()) {
        Ok(_) => {
            tracing::info!("healer started");
            Some(view)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not start the healer thread; gone servers are not replaced");
            None
        }
    }
}

/// Starts this server's holder of the fixed registration address (SPEC 4.5) when `api_address`
/// is set, on the interface holding `node_ip`.
fn start_api_address(
    kubectl: Arc<dyn Run>,
    id: NodeId,
    config: &ClusterConfig,
    node_ip: Option<std::net::IpAddr>,
) -> Option<Arc<Mutex<crate::api_address::Shared>>> {
    let Some(address) = config.api_address else {
        // No fixed address: the Lease still picks the one server that publishes the name.
        return match crate::api_address::spawn(
            kubectl,
            id.to_string(),
            crate::api_address::iface::NameOnly,
        ) {
            Ok(shared) => {
                tracing::info!(name = %format!("{}.local", config.name), "no api_address: this server competes to publish the cluster's name for its own address");
                Some(shared)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start the cluster name's publisher");
                None
            }
        };
    };
    let iface = node_ip.and_then(|ip| crate::k3s::node_ip::interface_holding(ip).ok().flatten());
    let Some(name) = iface else {
        tracing::error!(%address, ?node_ip, "no interface holds node-ip: this server cannot hold the fixed address");
        return None;
    };
    let ops = crate::api_address::iface::Interface {
        name: name.clone(),
        address,
    };
    match crate::api_address::spawn(kubectl, id.to_string(), ops) {
        Ok(shared) => {
            tracing::info!(%address, interface = %name, "fixed registration address: this server competes for it");
            Some(shared)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not start the fixed address holder");
            None
        }
    }
}

/// A node's record says its role word once it has one (`Role::word`); an agent being promoted
/// says [`PROMOTING`] until K3s serves as a server there.
const AGENT: &str = "agent";
/// The record state of a promoted agent until K3s serves as a server on it (SPEC 4.4).
const PROMOTING: &str = "promoting";

/// The state word this node's record carries for `role`: a promoted node (`promoted_unix`)
/// says [`PROMOTING`] until its K3s serves as a server (`serving`).
fn record_state(role: Role, promoted_unix: Option<u64>, serving: bool) -> &'static str {
    match role {
        Role::Server { .. } if promoted_unix.is_some() && !serving => PROMOTING,
        r => r.word(),
    }
}

/// The verified peers whose record's state is one of `words`.
fn records_saying(driver: &ElectionDriver, words: &[&str]) -> Vec<NodeId> {
    driver
        .peers()
        .verified
        .into_iter()
        .filter(|p| words.contains(&p.advert.state.as_str()))
        .map(|p| p.advert.node)
        .collect()
}

/// What the election and discovery see now, for the healer: nodes heard serving (and agents
/// being promoted, whose K3s is down meanwhile but whose record is heard), new cards asking for
/// a seat, agents with their ranks (from their signed records).
fn lan_view(driver: &ElectionDriver, config: &ClusterConfig) -> LanView {
    let verified = driver.peers().verified;
    let new_cards: Vec<NodeId> = driver.seat_askers().into_iter().map(|r| r.node).collect();
    let card_names = new_cards
        .iter()
        .map(|card| {
            let name = verified
                .iter()
                .find(|p| p.advert.node == *card)
                .map(|p| p.service.clone())
                .unwrap_or_else(|| hostname_for(&config.name, *card, None));
            (*card, name)
        })
        .collect();
    let agents = verified
        .into_iter()
        .filter(|p| p.advert.state == AGENT)
        .map(|p| AgentView {
            rank: Rank {
                pin: p.advert.role,
                storage: p.advert.storage,
                ram_mib: p.advert.ram_mib,
                node: p.advert.node,
            },
            name: p.service,
        })
        .collect();
    let mut heard = driver.serving_peers();
    heard.extend(records_saying(driver, &[PROMOTING]));
    LanView {
        heard,
        new_cards,
        card_names,
        agents,
    }
}

/// The storage step's settings from `[storage]`.
fn storage_setup(paths: &Paths, config: &ClusterConfig) -> StorageSetup {
    StorageSetup {
        root: paths.root().to_path_buf(),
        profile: config.storage.profile,
        data_device: config.storage.data_device.clone(),
        data_device_force: config.storage.data_device_force,
    }
}

/// The one-line JSON `--until role` prints: role, this node, its hostname, the cluster's init
/// node (`join`) and the live node it got the role from (`via`: the init or a serving server).
fn role_json(role: Role, id: NodeId, hostname: &str, via: Option<NodeId>) -> serde_json::Value {
    let join = match role {
        Role::ClusterInit => None,
        Role::Server { join } | Role::Agent { join } => Some(join.to_string()),
    };
    serde_json::json!({
        "role": role.word(),
        "node": id.to_string(),
        "hostname": hostname,
        "join": join,
        "via": via.map(|v| v.to_string()),
    })
}

/// Total RAM in MiB from `/proc/meminfo` (a rank input); 0 when unreadable.
fn ram_mib() -> u32 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            u32::try_from(kib / 1024).ok()
        })
        .unwrap_or(0)
}

/// Timer-jitter seed: random per boot, mixed with the node id so two nodes never share one.
fn seed(node: u64) -> u64 {
    let random = crate::host::random::bytes::<8>().ok();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let base = random.map_or(nanos, u64::from_le_bytes);
    base ^ node.rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promoted_node_says_promoting_until_its_k3s_serves_as_a_server() {
        let server = Role::Server { join: NodeId(7) };
        let agent = Role::Agent { join: NodeId(7) };
        assert_eq!(record_state(agent, None, true), AGENT);
        assert_eq!(record_state(server, None, false), "server");
        // Promoted: `promoting` (neither an agent to promote nor a server whose join ended)
        // until K3s serves, also after a restart.
        assert_eq!(record_state(server, Some(1_000), false), PROMOTING);
        assert_eq!(record_state(server, Some(1_000), true), "server");
        assert_eq!(record_state(Role::ClusterInit, None, false), "cluster-init");
    }
}
