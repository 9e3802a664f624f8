//! k3s-double: a TEST DOUBLE for K3s (never shipped in an image) that mimics what firstboot relies on.
//!
//! Invoked like K3s as `k3s-double server`, `k3s-double agent`, `k3s-double kubectl ...` or
//! `k3s-double etcd-snapshot save`. It
//! reads `/etc/rancher/k3s/config.yaml` (under `$K3S_DOUBLE_ROOT` when set) once, at start, and:
//! - server with no `server:`: creates the cluster CA (kept across restarts; NotBefore = this
//!   process's clock, `pki.rs`), writes `<data>/server/tls/server-ca.crt` and `<data>/server/token`
//!   = `K10<sha256 of server-ca.crt>::server:<token>`; with `cluster-init` it starts a one-member
//!   etcd (Debian's real etcd, `etcd.rs`), without it K3s's SQLite stands as a loopback-only store;
//! - server with `server:` (with or without `cluster-init`: K3s joins, managed.go:125): fetches
//!   `/cacerts` unverified, refuses (exit 1) a CA whose sha256 differs from the token's hash, takes
//!   the CA over TLS verified by it, refuses a CA pair already in `server/tls` that differs and is
//!   newer than the cluster's (K3s's bootstrap reconcile; an older one is replaced), refuses a
//!   mismatch of K3s v1.31's critical arguments
//!   (`critical_args`), refuses a node name already in etcd ("duplicate node name found"), adds
//!   itself as an etcd learner (retrying while another learner is pending) and waits until the
//!   leader promotes it; with etcd data on disk it starts as an existing member and asks nobody;
//! - agent: validates the token like a joiner but on failure (wrong CA hash, wrong password,
//!   server down, clock before the CA's NotBefore) logs and retries every 2 s forever, so the unit
//!   stays activating (pkg/agent/run.go:354-363); a node name registered with another node
//!   password is "Node password rejected", retried every 5 s (config.go:57-74, :180-182); its
//!   load balancer (`agent_lb.rs`) learns the live apiservers (`/v1-k3s/apiservers`), keeps them
//!   in `agent/etc/k3s-agent-load-balancer.json` and moves to another server when its own fails;
//! - every node registers a Node object and renews its heartbeat Lease every 10 s in etcd
//!   (agents through their server); the etcd leader promotes learners every 15 s and removes the
//!   etcd member of a deleted Node (the finalizer), `store.rs`;
//! - agents and servers hold the kubelet's port (10250) once their kubelet would start; a
//!   second K3s on the node (a server started while `k3s-agent` runs) exits "kubelet exited"
//!   as K3s does (pkg/daemons/executor/embed.go:95-98);
//! - READY=1 to `$NOTIFY_SOCKET` only once etcd has this member as a voter and a leader, the node
//!   is registered and flannel found its interface, plus `$K3S_DOUBLE_READY_DELAY` seconds
//!   (default 5); then it stays up until killed. If etcd exits, the double exits 1, as K3s
//!   does (pkg/daemons/executor/etcd.go:51-54), except when etcd said this member was removed
//!   (its peers refuse it: 410 Gone, "the member has been permanently removed from the
//!   cluster"): then, as K3s (:36-45), it writes `server/db/etcd/tombstone` and stays up
//!   without a datastore; at its next start it moves `server/db/etcd` to
//!   `server/db/etcd-backup-<unix>` (the 5 newest kept) and joins again as a new member through
//!   `server`, or starts a new cluster without it (pkg/etcd/etcd.go:656-664, :1573-1612).
//!
//! `k3s kubectl` subset (`kubectl.rs`), backed by the local server's etcd: `get nodes|node NAME
//! -o json` (Ready from the heartbeat: True, or Unknown after 40 s), `delete node NAME`
//! (non-forced: the finalizer removes the etcd member, kubectl waits), `get configmap|lease NAME
//! [-n NS] -o json`, `create|replace -f FILE -o json` of a ConfigMap or Lease, where a stale
//! `metadata.resourceVersion` is "Error from server (Conflict)". Nothing else.
//!
//! The admin kubeconfig `/etc/rancher/k3s/k3s.yaml` as K3s writes it (server
//! `https://127.0.0.1:<port>`, a `system:admin`/`system:masters` client certificate; the double
//! signs it with its one CA where K3s has a separate client CA), and on the API port `GET
//! /api/v1/nodes` and `/version` for that certificate (401 without one, 403 for another group).
//! `k3s etcd-snapshot save [--name N]` (`k3s-double etcd-snapshot save`): `POST /db/snapshot`
//! to the local server as `server`, which writes `<name>-<node>-<unix>` (mode 0600, etcd's own
//! snapshot stream) into `etcd-snapshot-dir` or `<data>/server/db/snapshots`. No scheduled
//! snapshots, no other `etcd-snapshot` subcommand, no restore.
//!
//! As strict as K3s (each rule cites its source in `config.rs`, `flannel.rs`, `etcd.rs`,
//! `store.rs`, `pki.rs` and below): config.yaml and `config.yaml.d/*.yaml` are merged and read
//! once; `agent` exits on any key outside the agent flag table ("flag provided but not
//! defined"), `server` skips unknown keys with K3s's warning; bad values for known flags fail;
//! flannel exits when its interface has no IPv4; `/v1-k3s/server-bootstrap` and `/db/info` want
//! the `server` user, `/v1-k3s/config` the `node` or `server` user.
//!
//! Still MORE LENIENT than K3s v1.31 (tests must not rely on these):
//! - the cluster CA lives on disk only: K3s also keeps it in the datastore (bootstrap data) and
//!   restores a deleted `server/tls` from there;
//! - etcd speaks plain HTTP (K3s: mutual TLS with its own etcd CAs); a learner that never catches
//!   up is not evicted after 5 min (etcd.go:1288-1340); a joiner does not wait for the container
//!   runtime (air-gap image import) before joining etcd;
//! - a SQLite server (no `cluster-init`) is not converted to etcd by a later `cluster-init`;
//! - a removal is recognized by etcd's log line, so the tombstone is also written for a member
//!   removed while connected (etcd stops itself with the same text, untyped; K3s may then exit
//!   "etcd stopped", executor/etcd.go:51-52, and write the tombstone only at its next start,
//!   when the peers refuse it): the double rejoins one restart earlier;
//! - no memory-cgroup check and no 1980 clock check; Ready=Unknown is computed by kubectl from the
//!   heartbeat's age (the apiserver's node controller writes it); the agent's load balancer is
//!   no TCP proxy (each request goes to the current server) and lists servers by their Nodes'
//!   heartbeats, not by the apiserver's master leases.
//!
//! Test knobs: `K3S_DOUBLE_ROOT` (root prefix), `K3S_DOUBLE_PORT` (listen port, default 6443),
//! `K3S_DOUBLE_ETCD_CLIENT_PORT`/`_PEER_PORT` (2379/2380), `K3S_DOUBLE_KUBELET_PORT` (10250;
//! 0: not bound), `K3S_DOUBLE_ETCD` (etcd program,
//! /usr/bin/etcd), `K3S_DOUBLE_READY_DELAY` (seconds, default 5), `K3S_DOUBLE_LEARNER_TICK`
//! (seconds, default 15 as K3s). The token is never printed.

mod agent_lb;
mod flannel;
mod kubectl;
mod pki;
mod store;

use systests::k3s_double::{config, etcd, wire};

use anyhow::{bail, Context, Result};
use firstboot::k3s::flags::Subcommand;
use firstboot::k3s::CaHash;
use pki::{unix_now, write_mode, ClusterCa};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use wire::{Request, Response, Trust};

/// What config.yaml says, as far as the double cares.
struct DoubleConfig {
    /// The password part of the token; `None` when no token was given.
    password: Option<String>,
    ca_hash: Option<CaHash>,
    server: Option<String>,
    /// With `server` set, K3s joins and ignores it (managed.go:125).
    cluster_init: bool,
    node_name: String,
    /// `flannel-iface`, if set.
    flannel_iface: Option<String>,
    node_ip: Option<IpAddr>,
    tls_san: Vec<String>,
    /// `bind-address`, if set (K3s's default: every address).
    bind_address: Option<IpAddr>,
    /// `write-kubeconfig-mode`, if set (octal text).
    kubeconfig_mode: Option<String>,
    /// `etcd-snapshot-dir`, if set.
    snapshot_dir: Option<PathBuf>,
    /// `etcd-arg` values.
    etcd_args: Vec<String>,
    /// K3s v1.31's critical control arguments, effective values (server only).
    critical: BTreeMap<&'static str, String>,
}

fn log(msg: &str) {
    eprintln!("k3s-double: {msg}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!("starting the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if mode == "etcd-snapshot" {
        return match rt.block_on(etcd_snapshot(&args[1..])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log(&format!("level=fatal msg=\"{e:#}\""));
                ExitCode::FAILURE
            }
        };
    }
    if mode == "kubectl" {
        return match rt.block_on(kubectl::run(&args[1..], unix_now)) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(kubectl::KubectlError(e)) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    match rt.block_on(run(&mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&format!("level=fatal msg=\"{e:#}\""));
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    std::env::var_os("K3S_DOUBLE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// How long after it is up the double sends READY=1: `$K3S_DOUBLE_READY_DELAY` seconds
/// (decimal), default 5. Real K3s sends READY after apiserver readyz and the startup hooks
/// (pkg/cli/server/server.go:499-524; agents after image import, kubelet and flannel,
/// pkg/agent/run.go:169-206): tens of seconds on a Pi. The default keeps machine tests short.
fn ready_delay() -> Duration {
    std::env::var("K3S_DOUBLE_READY_DELAY")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(5))
}

/// K3s's learner-management tick (pkg/etcd/etcd.go:68 manageTickerTime, 15 s);
/// `$K3S_DOUBLE_LEARNER_TICK` seconds for tests of the double.
fn learner_tick() -> Duration {
    std::env::var("K3S_DOUBLE_LEARNER_TICK")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(15))
}

async fn run(mode: &str) -> Result<()> {
    let sub = match mode {
        "server" => Subcommand::Server,
        "agent" => Subcommand::Agent,
        _ => bail!("usage: k3s-double server|agent|kubectl (a test double of K3s)"),
    };
    // One crypto provider for the process; a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Read once: a running K3s never looks at config.yaml again.
    let config = read_config(sub)?;
    // The wall clock as this process sees it: machine tests check that a joiner's clock was
    // agreed with the init node's before K3s started.
    log(&format!(
        "starting {mode} as node {} with the clock at unix {}",
        config.node_name,
        unix_now()
    ));
    let data = root().join("var/lib/rancher/k3s");
    if mode == "agent" {
        run_agent(config, &data).await
    } else {
        run_server(config, &data).await
    }
}

/// The node password kept in /etc/rancher/node/password (K3s ensureNodePassword,
/// pkg/agent/config/config.go: created once, random, 0600).
fn node_password() -> Result<String> {
    let path = root().join("etc/rancher/node/password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        if !p.trim().is_empty() {
            return Ok(p.trim().to_string());
        }
    }
    let p = random_password();
    write_mode(&path, format!("{p}\n").as_bytes(), 0o600)?;
    Ok(p)
}

/// The kubelet's port: K3s runs kubelet in-process on agents and servers alike (kubelet's
/// `--port` default 10250 on 0.0.0.0). A second K3s on the same node (a server started while
/// `k3s-agent` still runs, as when an agent is promoted) cannot bind it: kubelet fails, and K3s
/// exits when its embedded kubelet does (pkg/daemons/executor/embed.go:95-98 "kubelet exited",
/// os.Exit(1)). `$K3S_DOUBLE_KUBELET_PORT` (default 10250; 0 = not bound, for tests that run
/// several doubles in one network namespace). The listener is held for the process's life.
fn hold_kubelet_port() -> Result<Option<std::net::TcpListener>> {
    let port: u16 = match std::env::var("K3S_DOUBLE_KUBELET_PORT") {
        Ok(p) => p.parse().context("K3S_DOUBLE_KUBELET_PORT")?,
        Err(_) => 10250,
    };
    if port == 0 {
        return Ok(None);
    }
    match std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) => bail!("kubelet exited: failed to listen on 0.0.0.0:{port}: {e}"),
    }
}

/// kubelet's heartbeat client timeout: NodeStatusUpdateFrequency's default, 10 s (see the
/// heartbeat loop in `run_agent`).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// K3s's "Node password rejected" (pkg/agent/config/config.go:180-182).
const NODE_PASSWORD_REJECTED: &str = "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag";

async fn run_agent(config: DoubleConfig, data: &Path) -> Result<()> {
    let notifier = firstboot::status::Notifier::from_env();
    // pkg/cli/agent/agent.go Run: both are required.
    let server = config.server.clone().context("--server is required")?;
    let password = config.password.clone().context("--token is required")?;
    // Every request goes through the agent's load balancer (`agent_lb.rs`): the configured
    // server first, then the apiservers an earlier run of this agent learned.
    let mut lb = agent_lb::AgentLb::load(data, &server);
    // A wrong CA hash, a wrong password or a server that is not up: K3s logs and retries every
    // 2 s forever; the unit stays "activating" (pkg/agent/run.go:354-363
    // createProxyAndValidateToken).
    let ca = 'validated: loop {
        for url in lb.candidates() {
            match validate(&url, &config, &password).await {
                Ok(ca) => {
                    lb.use_server(&url);
                    break 'validated ca;
                }
                Err(e) => log(&format!(
                    "level=error msg=\"Failed to validate connection to cluster at {url}: {e:#}\""
                )),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // Agent configuration, retried every 5 s (pkg/agent/config/config.go:57-74 Get): the
    // kubelet serving certificate request carries the node name and password; a name already
    // registered with another password is refused (:180-182).
    let node_pw = node_password()?;
    loop {
        let server = lb.current().to_string();
        let (status, body) = wire::request(
            &server,
            "POST",
            "/v1-k3s/serving-kubelet.crt",
            Trust::Ca(ca.clone()),
            Some(("node", &password)),
            &[
                ("k3s-Node-Name", &config.node_name),
                ("k3s-Node-Password", &node_pw),
            ],
            b"",
        )
        .await
        .unwrap_or((0, b"no answer".to_vec()));
        let e = match status {
            200 => break,
            403 => NODE_PASSWORD_REJECTED.to_string(),
            s => format!(
                "{server}/v1-k3s/serving-kubelet.crt: {s} {}",
                String::from_utf8_lossy(&body)
            ),
        };
        log(&format!(
            "level=info msg=\"Waiting to retrieve agent configuration; server is not ready: {e}\""
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // The agent's kubelet starts once its configuration is retrieved.
    let _kubelet = hold_kubelet_port()?;
    start_flannel(&config)?;
    write_mode(&data.join("agent/server-url"), server.as_bytes(), 0o600)?;
    refresh_apiservers(&mut lb, &ca, &password).await;
    // kubelet's heartbeat through the load balancer (the double's own path: kubelet renews its
    // Lease through the apiserver); a server that fails is left for the next one, and each
    // round refreshes the list of live apiservers (K3s watches the endpoints).
    let name = config.node_name.clone();
    let address = config.node_ip.map(|i| i.to_string()).unwrap_or_default();
    tokio::spawn(async move {
        loop {
            for url in lb.candidates() {
                // kubelet's heartbeat client has a timeout: NodeStatusUpdateFrequency (10 s),
                // at most the lease duration (kubernetes cmd/kubelet/app/server.go, "make a
                // separate client for heartbeat with throttling disabled and a timeout
                // attached"), so a request in flight when its server lost power (no FIN, no
                // RST) fails after 10 s and the next server is tried.
                let beat = tokio::time::timeout(
                    HEARTBEAT_TIMEOUT,
                    wire::request(
                        &url,
                        "POST",
                        "/v1-k3s/double/heartbeat",
                        Trust::Ca(ca.clone()),
                        Some(("node", &password)),
                        &[("k3s-Node-Name", &name), ("k3s-Node-IP", &address)],
                        b"",
                    ),
                )
                .await;
                if matches!(beat, Ok(Ok((200, _)))) {
                    lb.use_server(&url);
                    refresh_apiservers(&mut lb, &ca, &password).await;
                    break;
                }
                log(&format!(
                    "level=info msg=\"Server {url}->failed from failed dial\""
                ));
            }
            tokio::time::sleep(Duration::from_secs(store::HEARTBEAT_SECS)).await;
        }
    });
    log(&format!("agent joined {server}"));
    tokio::time::sleep(ready_delay()).await;
    notifier.ready("k3s-double agent running");
    std::future::pending::<()>().await;
    Ok(())
}

/// Asks the current server for the live apiservers and gives them to the load balancer; a
/// failure keeps the list it has.
async fn refresh_apiservers(lb: &mut agent_lb::AgentLb, ca: &[u8], password: &str) {
    let answer = tokio::time::timeout(
        HEARTBEAT_TIMEOUT,
        wire::get(
            lb.current(),
            "/v1-k3s/apiservers",
            Trust::Ca(ca.to_vec()),
            Some(("node", password)),
        ),
    )
    .await;
    let list = match answer {
        Ok(Ok((200, body))) => serde_json::from_slice::<Vec<String>>(&body).unwrap_or_default(),
        _ => return,
    };
    if let Err(e) = lb.update(list) {
        log(&format!("level=warning msg=\"Error updating load balancer k3s-agent-load-balancer config: {e:#}\""));
    }
}

/// /cacerts checked against the token's hash, then the password proven over TLS verified by
/// that CA (as the node user); returns the CA bundle.
async fn validate(server: &str, config: &DoubleConfig, password: &str) -> Result<Vec<u8>> {
    let ca = trusted_ca(server, config).await?;
    let (status, _) = wire::get(
        server,
        "/v1-k3s/config",
        Trust::Ca(ca.clone()),
        Some(("node", password)),
    )
    .await
    .context("authenticating to the server")?;
    if status != 200 {
        bail!("the server rejected the token (HTTP {status})");
    }
    Ok(ca)
}

/// State the server's routes share.
struct Shared {
    password: String,
    ca_cert: String,
    ca_key: String,
    critical: BTreeMap<&'static str, String>,
    /// The local etcd's client endpoint.
    etcd: String,
    /// False in SQLite mode: no etcd cluster to join.
    etcd_cluster: bool,
    /// `<data>/server/tls`, whose files' mtimes are the bootstrap data's timestamps.
    tls_dir: PathBuf,
    /// Where snapshots go: `etcd-snapshot-dir`, else `<data>/server/db/snapshots`.
    snapshot_dir: PathBuf,
    /// This node's name (snapshot file names carry it).
    node_name: String,
}

async fn run_server(mut config: DoubleConfig, data: &Path) -> Result<()> {
    let notifier = firstboot::status::Notifier::from_env();
    let tls_dir = data.join("server/tls");
    if config.cluster_init && config.server.is_some() {
        // K3s joins when both are set: JoinURL wins (pkg/cluster/managed.go:125).
        log("cluster-init is set together with server: joining the server");
    }
    if config.password.is_none() {
        // No token: K3s reuses server/token or generates one (pkg/daemons/control/deps
        // readTokens / pkg/cli/server/server.go); a fresh, unrelated cluster results.
        let existing = std::fs::read_to_string(data.join("server/token")).ok();
        config.password = Some(match existing.as_deref().map(|t| parse_token(t.trim())) {
            Some(Ok((p, _))) => p,
            _ => random_password(),
        });
    }
    let password = config.password.clone().unwrap_or_default();
    // A tombstone (this member was removed, see the etcd watcher below): K3s moves the etcd
    // data aside and joins again as a new member through `server` (pkg/etcd/etcd.go:656-664;
    // without `server` it starts a new cluster: managed.go:91, etcd.go:490-491).
    if let Some(to) = etcd::clear_tombstoned(data, unix_now().max(0) as u64)? {
        log(&format!("level=info msg=\"tombstone file has been detected, removing data dir to rejoin the cluster\" (moved to {})", to.display()));
    }
    // Embedded etcd with cluster-init or server (pkg/cluster/managed.go:110-129); neither is
    // K3s's SQLite (kine). Once etcd data exists, both flags are ignored and the server starts
    // as an existing member without asking anyone (pkg/etcd/etcd.go:455-476,
    // pkg/cluster/bootstrap.go shouldBootstrapLoad).
    let initialized = etcd::is_initialized(data);
    let etcd_cluster = config.cluster_init || config.server.is_some() || initialized;
    let joining = config.server.is_some() && !initialized;
    let ca = match (&config.server, ClusterCa::load(&tls_dir)?) {
        (Some(server), _) if joining => {
            let ca_pem = trusted_ca(server, &config).await?;
            let (status, body) = wire::get(
                server,
                "/v1-k3s/server-bootstrap",
                Trust::Ca(ca_pem.clone()),
                Some(("server", &password)),
            )
            .await
            .context("fetching bootstrap data")?;
            if status != 200 {
                bail!("the server rejected the token (HTTP {status})");
            }
            let v: Value = serde_json::from_slice(&body).context("parsing bootstrap data")?;
            compare_config(server, &ca_pem, &password, &config.critical).await?;
            let ca = ClusterCa {
                cert_pem: v["ca_cert"].as_str().unwrap_or_default().to_string(),
                key_pem: v["ca_key"].as_str().unwrap_or_default().to_string(),
            };
            reconcile_bootstrap(&tls_dir, &ca, v["timestamp"].as_i64().unwrap_or_default())?;
            log(&format!("joined cluster through {server}"));
            ca
        }
        (_, Some(ca)) => ca,
        (_, None) => {
            let ca = ClusterCa::generate()?;
            ca.store(&tls_dir)?;
            log("cluster-init: created the cluster CA");
            ca
        }
    };
    let hash = CaHash::of_bundle(ca.cert_pem.as_bytes());
    let token_text = format!("K10{}::server:{}", hash.to_hex(), password);
    write_mode(
        &data.join("server/token"),
        format!("{token_text}\n").as_bytes(),
        0o600,
    )?;

    // The supervisor listens on `bind-address`, by default on every address
    // (pkg/cli/server/server.go:140 copies --bind-address, default "0.0.0.0" per
    // pkg/cli/cmds/agent.go:256; pkg/cluster/https.go:44 listens with util.ListenWithLoopback,
    // which returns the wildcard listener as is, pkg/util/net.go:354-357): a server answers on
    // any address its interfaces hold, such as a fixed registration address. node-ip is not
    // where it listens (etcd is: a node-ip gone from the interfaces fails there, etcd.rs).
    let listen_ip = config
        .bind_address
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let address = config
        .node_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = match std::env::var("K3S_DOUBLE_PORT") {
        Ok(p) => p.parse().context("K3S_DOUBLE_PORT")?,
        Err(_) => firstboot::k3s::API_PORT,
    };
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend(config.node_ip);
    let mut names = vec!["localhost".to_string()];
    for s in &config.tls_san {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(s.clone()),
        }
    }
    let (chain, key) = ca.serving_cert(&ips, &names)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(listen_ip, port))
        .await
        .with_context(|| format!("listening on {listen_ip}:{port}"))?;
    log(&format!(
        "serving https on {listen_ip}:{port}, CA sha256 {hash}"
    ));
    let ep = etcd::url("127.0.0.1", etcd::client_port());
    let shared = Arc::new(Shared {
        password: password.clone(),
        ca_cert: ca.cert_pem.clone(),
        ca_key: ca.key_pem.clone(),
        critical: config.critical.clone(),
        etcd: ep.clone(),
        etcd_cluster,
        tls_dir: tls_dir.clone(),
        // pkg/etcd/snapshot.go snapshotDir: etcd-snapshot-dir, else ${data-dir}/server/db/snapshots.
        snapshot_dir: config
            .snapshot_dir
            .clone()
            .map(|d| root().join(d.strip_prefix("/").unwrap_or(&d)))
            .unwrap_or_else(|| data.join("server/db/snapshots")),
        node_name: config.node_name.clone(),
    });
    let route = Arc::new(move |req: Request| -> wire::RouteFuture {
        let shared = shared.clone();
        Box::pin(async move { route(&shared, req).await })
    });
    let client_ca = ca.cert_pem.clone().into_bytes();
    let server_task =
        tokio::spawn(async move { wire::serve(listener, chain, key, &client_ca, route).await });
    write_kubeconfig(&ca, listen_ip, port, config.kubeconfig_mode.as_deref())?;

    // etcd, started from this (the main) thread so it dies with the process.
    let member = if etcd_cluster {
        let name = etcd::member_name(data, &config.node_name, false)?;
        let launch = if initialized {
            log("level=info msg=\"Starting etcd for existing cluster member\"");
            etcd::Launch {
                name: name.clone(),
                data: data.to_path_buf(),
                address: address.clone(),
                initial_cluster: None,
                state: "existing",
                extra_args: config.etcd_args.clone(),
            }
        } else if let Some(server) = &config.server {
            join_etcd(server, &ca, &password, &config, data, &name, &address).await?
        } else {
            log("level=info msg=\"Starting etcd for new cluster\"");
            etcd::Launch {
                name: name.clone(),
                data: data.to_path_buf(),
                address: address.clone(),
                initial_cluster: None,
                state: "new",
                extra_args: config.etcd_args.clone(),
            }
        };
        Some((name, launch))
    } else {
        None
    };
    let launch = match &member {
        Some((_, l)) => l.clone(),
        // SQLite mode: the double keeps its objects in a loopback-only, one-member etcd under
        // server/db/state.db.d (standing in for kine's SQLite; no member is ever added).
        None => {
            log("level=info msg=\"Configuring sqlite3 database connection pooling\" (the double: a loopback-only store, no etcd cluster)");
            etcd::Launch {
                name: format!("{}-sqlite", config.node_name),
                data: data.join("server/db/state.db.d"),
                address: "127.0.0.1".into(),
                initial_cluster: None,
                state: "new",
                extra_args: Vec::new(),
            }
        }
    };
    let mut child = etcd::spawn(&launch)?;
    // etcd's log passes through to the double's; a removal is noticed on the way.
    let removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = child.stderr.take().map(|stderr| {
        let removed = removed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains(etcd::MEMBER_REMOVED) {
                    removed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                eprintln!("{line}");
            }
        })
    });
    let tombstone = etcd::tombstone(&launch.data);
    std::thread::spawn(move || {
        let status = child.wait();
        if let Some(reader) = reader {
            let _ = reader.join();
        }
        if removed.load(std::sync::atomic::Ordering::SeqCst) {
            // K3s on etcd's ErrMemberRemoved (pkg/daemons/executor/etcd.go:36-45): writes the
            // tombstone, closes etcd and keeps running (no exit: the unit stays active, its
            // apiserver without a datastore) until someone restarts it.
            if let Err(e) = write_mode(&tombstone, b"", 0o600) {
                log(&format!(
                    "level=fatal msg=\"Failed to write tombstone file to {}: {e}\"",
                    tombstone.display()
                ));
                std::process::exit(1);
            }
            log("level=info msg=\"This node has been removed from the cluster - please restart k3s to rejoin the cluster\"");
            return;
        }
        // K3s runs etcd in-process: etcd stopping otherwise stops K3s (executor/etcd.go:51-54).
        log(&format!(
            "level=fatal msg=\"etcd exited: {}\"",
            status.map(|s| s.to_string()).unwrap_or_default()
        ));
        std::process::exit(1);
    });
    // ETCDReady: the member is a voter and there is a leader (etcd.go:210-223 Test), polled
    // every 5 s by K3s (pkg/cluster/managed.go:25-51); every second here.
    let mut last = String::new();
    loop {
        match etcd::test(&ep).await {
            Ok(()) => break,
            Err(e) => {
                let e = format!("{e:#}");
                if e != last {
                    log(&format!("level=info msg=\"Waiting for etcd: {e}\""));
                    last = e;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    log("level=info msg=\"etcd is ready: this member is a voter and there is a leader\"");
    if etcd_cluster {
        tokio::spawn(manage_learners(ep.clone()));
        tokio::spawn(member_removal_controller(ep.clone()));
    }
    // The server's embedded kubelet starts once the apiserver is ready (embed.go:92-93) and
    // registers the Node (and its node password) like an agent's. A former agent keeps
    // /etc/rancher/node/password: K3s checks its own node's password against that file
    // (pkg/server/router.go:401-403, 437-468 verifyLocalPassword) and the secret the agent
    // registered (router.go:421 nodepassword.Ensure), so a new password would be refused.
    let _kubelet = hold_kubelet_port()?;
    let node_pw = node_password()?;
    if !store::ensure_node_password(&ep, &config.node_name, &node_pw).await? {
        // Servers retry agent configuration like agents (config.go:57-74).
        loop {
            log(&format!("level=info msg=\"Waiting to retrieve agent configuration; server is not ready: {NODE_PASSWORD_REJECTED}\""));
            tokio::time::sleep(Duration::from_secs(5)).await;
            if store::ensure_node_password(&ep, &config.node_name, &node_pw).await? {
                break;
            }
        }
    }
    let member_name = member.as_ref().map(|(n, _)| n.clone());
    let supervisor = format!("{address}:{port}");
    store::register_node(
        &ep,
        &store::NodeInfo {
            name: &config.node_name,
            address: &address,
            etcd_member: member_name.as_deref(),
            server: true,
            supervisor: Some(&supervisor),
        },
        unix_now(),
    )
    .await?;
    let hb_ep = ep.clone();
    let hb_name = config.node_name.clone();
    tokio::spawn(async move {
        loop {
            let _ = store::heartbeat(&hb_ep, &hb_name, unix_now()).await;
            tokio::time::sleep(Duration::from_secs(store::HEARTBEAT_SECS)).await;
        }
    });
    // The server's embedded agent runs flannel too. K3s may send READY before flannel exits the
    // process (setup.go:106-110 runs in a goroutine); the double fails before READY so a test
    // cannot miss it.
    start_flannel(&config)?;
    tokio::time::sleep(ready_delay()).await;
    notifier.ready("k3s-double server running");
    server_task.await.context("server task")?
}

/// `k3s etcd-snapshot save [--name NAME]` (K3s v1.31.4 pkg/cli/etcdsnapshot/etcd_snapshot.go:
/// 106-140): asks the running server (`https://127.0.0.1:<https port>`, as user `server` with
/// the token from config.yaml or `server/token`) to save a snapshot (`POST /db/snapshot`,
/// operation "save", name default "on-demand") and logs each file it created. Other
/// `etcd-snapshot` subcommands are not implemented.
async fn etcd_snapshot(args: &[String]) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut name = "on-demand".to_string();
    let mut rest = args.iter();
    match rest.next().map(String::as_str) {
        Some("save") => {}
        other => bail!(
            "the K3s test double does not implement etcd-snapshot {}",
            other.unwrap_or_default()
        ),
    }
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--name" => name = rest.next().context("--name needs a value")?.clone(),
            s if s.starts_with("--name=") => name = s["--name=".len()..].to_string(),
            s => bail!("the K3s test double does not implement etcd-snapshot save {s}"),
        }
    }
    let config = read_config(Subcommand::Server)?;
    let data = root().join("var/lib/rancher/k3s");
    let password = match config.password {
        Some(p) => p,
        None => {
            let token = std::fs::read_to_string(data.join("server/token"))
                .context("reading the server token (is this a server?)")?;
            parse_token(token.trim())?.0
        }
    };
    let port: u16 = match std::env::var("K3S_DOUBLE_PORT") {
        Ok(p) => p.parse().context("K3S_DOUBLE_PORT")?,
        Err(_) => firstboot::k3s::API_PORT,
    };
    let ca = std::fs::read(data.join("server/tls/server-ca.crt"))
        .context("reading the server CA (is this a server?)")?;
    let body = json!({"operation": "save", "name": [name]}).to_string();
    let (status, answer) = wire::request(
        &format!("https://127.0.0.1:{port}"),
        "POST",
        "/db/snapshot",
        Trust::Ca(ca),
        Some(("server", &password)),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .context("asking the server for a snapshot")?;
    if status != 200 {
        bail!(
            "see server log for details: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let v: Value = serde_json::from_slice(&answer).context("the snapshot result")?;
    for created in v["created"].as_array().into_iter().flatten() {
        log(&format!(
            "level=info msg=\"Snapshot {} saved.\"",
            created.as_str().unwrap_or_default()
        ));
    }
    Ok(())
}

/// The server's side of `/db/snapshot` "save" (pkg/etcd/snapshot.go:193-300 Snapshot): none
/// on a learner; the file `<name>-<node name>-<unix seconds>` in the snapshot directory, mode
/// 0600, the keyspace as etcd's Maintenance Snapshot streams it.
async fn save_snapshot(s: &Shared, body: &[u8]) -> Response {
    let status = |status: u16, body: &str| Response {
        status,
        body: body.as_bytes().to_vec(),
    };
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return status(400, "bad snapshot request");
    };
    if req["operation"] != "save" {
        return status(
            400,
            &format!(
                "the K3s test double does not implement snapshot operation {}",
                req["operation"]
            ),
        );
    }
    if !s.etcd_cluster {
        return status(500, "etcd datastore disabled");
    }
    match etcd::call(&s.etcd, "/v3/maintenance/status", &json!({})).await {
        Ok(v) if v["isLearner"] == true => {
            log("level=warning msg=\"Unable to take snapshot: not supported for learner\"");
            return Response {
                status: 200,
                body: b"null".to_vec(),
            };
        }
        Ok(_) => {}
        Err(e) => {
            return status(
                500,
                &format!("failed to check etcd status for snapshot: {e:#}"),
            )
        }
    }
    let name = req["name"][0].as_str().unwrap_or("on-demand");
    let file = format!("{name}-{}-{}", s.node_name, unix_now());
    let path = s.snapshot_dir.join(&file);
    log(&format!(
        "level=info msg=\"Saving etcd snapshot to {}\"",
        path.display()
    ));
    let bytes = match etcd::snapshot(&s.etcd).await {
        Ok(b) => b,
        Err(e) => return status(500, &format!("failed to save snapshot: {e:#}")),
    };
    if let Err(e) = write_mode(&path, &bytes, 0o600) {
        return status(500, &format!("{e:#}"));
    }
    Response {
        status: 200,
        body: json!({"created": [file]}).to_string().into_bytes(),
    }
}

/// The admin kubeconfig, as K3s v1.31.4 writes it (pkg/server/server.go:401-444
/// writeKubeConfig): `/etc/rancher/k3s/k3s.yaml` for root (datadir.GlobalConfig), server
/// `https://<bind-address or 127.0.0.1>:<https port>`, the server CA and the `system:admin`
/// client certificate inline under the names `default` (pkg/clientaccess/kubeconfig.go:12-46
/// WriteClientKubeConfig, rendered by client-go's clientcmd.WriteToFile), then the mode of
/// `write-kubeconfig-mode`, else 0600.
fn write_kubeconfig(ca: &ClusterCa, bind: IpAddr, port: u16, mode: Option<&str>) -> Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let (cert, key) = ca.admin_client_cert()?;
    let host = if bind.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        bind.to_string()
    };
    let yaml = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{host}:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&ca.cert_pem),
        b64(&cert),
        b64(&key)
    );
    let mode = match mode {
        Some(m) => u32::from_str_radix(m, 8)
            .with_context(|| format!("write-kubeconfig-mode {m} is not octal"))?,
        None => 0o600,
    };
    let path = root().join("etc/rancher/k3s/k3s.yaml");
    write_mode(&path, yaml.as_bytes(), mode)?;
    log(&format!(
        "level=info msg=\"Wrote kubeconfig {}\"",
        path.display()
    ));
    Ok(())
}

/// K3s's systemTimeSkew (pkg/cluster/bootstrap.go:203): seconds a file on disk may be newer
/// than the datastore's copy before it counts as newer.
const SYSTEM_TIME_SKEW: i64 = 3;

/// A file's mtime in unix seconds.
fn mtime_unix(path: &Path) -> Option<i64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(match m.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// K3s ReconcileBootstrapData for a joiner (pkg/cluster/bootstrap.go:228-350): with no cert
/// directory on disk the bootstrap data is written (:231-245); otherwise each file that differs
/// is compared by time (isNewerFile :357-391): newer on disk by `SYSTEM_TIME_SKEW` or more is
/// fatal (:343-344), else it is updated from the datastore with its timestamp as mtime
/// (pkg/bootstrap/bootstrap.go:80-90 WriteToDiskFromStorage, os.Chtimes). The double's bootstrap
/// data is the CA pair only (K3s: every file of server/cred, server/tls and server/tls/etcd).
fn reconcile_bootstrap(tls_dir: &Path, ca: &ClusterCa, timestamp: i64) -> Result<()> {
    let files = [
        ("server-ca.crt", ca.cert_pem.as_bytes()),
        ("server-ca.key", ca.key_pem.as_bytes()),
    ];
    let dir_empty = std::fs::read_dir(tls_dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if !dir_empty {
        let mut newer = Vec::new();
        for (name, content) in files {
            let path = tls_dir.join(name);
            match std::fs::read(&path) {
                Ok(on_disk) if on_disk == content => {}
                Ok(_) => {
                    if mtime_unix(&path).unwrap_or_default() - timestamp >= SYSTEM_TIME_SKEW {
                        newer.push(path.display().to_string());
                    } else {
                        log(&format!(
                            "level=warning msg=\"{} will be updated from the datastore.\"",
                            path.display()
                        ));
                    }
                }
                Err(_) => log(&format!(
                    "level=warning msg=\"{} doesn't exist. continuing...\"",
                    path.display()
                )),
            }
        }
        if !newer.is_empty() {
            bail!(
                "{} newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore.",
                newer.join(", ")
            );
        }
    }
    ca.store(tls_dir)?;
    let t = std::time::UNIX_EPOCH + Duration::from_secs(timestamp.max(0) as u64);
    for (name, _) in files {
        std::fs::File::options()
            .write(true)
            .open(tls_dir.join(name))
            .and_then(|f| f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t)))
            .with_context(|| format!("setting the times of {name}"))?;
    }
    Ok(())
}

/// The route table of the supervisor port (pkg/server/handlers/router.go at the pinned
/// release): `/cacerts` and `/ping` open; `/v1-k3s/config` and `/v1-k3s/serving-kubelet.crt`
/// for nodes and servers (`authed`, :36-44); `/v1-k3s/server-bootstrap` for servers only
/// (`serverAuthed`, :54-58); `/db/info` for servers (pkg/etcd/etcd.go:718-720). The user is the
/// token's: "node" for agents, "server" for servers (pkg/agent/run.go:350 WithUser("node")).
async fn route(s: &Shared, req: Request) -> Response {
    let pw_ok = req.password.as_deref() == Some(s.password.as_str());
    let user = req.user.as_deref().unwrap_or_default();
    let node = pw_ok && (user == "node" || user == "server");
    let server = pw_ok && user == "server";
    let ok = |body: Vec<u8>| Response { status: 200, body };
    let status = |status: u16, body: &str| Response {
        status,
        body: body.as_bytes().to_vec(),
    };
    let path = req.path.split('?').next().unwrap_or_default();
    match path {
        "/ping" => ok(b"pong".to_vec()),
        "/cacerts" => ok(s.ca_cert.clone().into_bytes()),
        // Each bootstrap file carries its mtime on the serving server as its timestamp
        // (pkg/bootstrap/bootstrap.go:40-50 ReadFromDisk, `Timestamp: info.ModTime()`).
        "/v1-k3s/server-bootstrap" if server => ok(json!({
            "ca_cert": s.ca_cert,
            "ca_key": s.ca_key,
            "timestamp": mtime_unix(&s.tls_dir.join("server-ca.crt")).unwrap_or_default(),
        })
        .to_string()
        .into_bytes()),
        "/v1-k3s/config" if node => ok(json!({"CriticalControlArgs": s.critical})
            .to_string()
            .into_bytes()),
        "/db/info" if server => {
            if !s.etcd_cluster {
                return status(500, "failed to get etcd MemberList: etcd not started");
            }
            match etcd::call(&s.etcd, "/v3/cluster/member/list", &json!({})).await {
                Ok(v) => ok(json!({"members": v["members"]}).to_string().into_bytes()),
                Err(e) => status(500, &format!("failed to get etcd MemberList: {e:#}")),
            }
        }
        // The live apiservers' addresses, for the agent's load balancer (router.go:65, 310-324).
        "/v1-k3s/apiservers" if node => match store::apiservers(&s.etcd, unix_now()).await {
            Ok(list) => ok(json!(list).to_string().into_bytes()),
            Err(e) => status(500, &format!("{e:#}")),
        },
        "/v1-k3s/serving-kubelet.crt" | "/v1-k3s/double/heartbeat" if req.method != "POST" => {
            status(405, "method not allowed")
        }
        "/v1-k3s/serving-kubelet.crt" if node => {
            let (Some(name), Some(pw)) =
                (req.header("k3s-Node-Name"), req.header("k3s-Node-Password"))
            else {
                return status(400, "missing node name or password");
            };
            match store::ensure_node_password(&s.etcd, name, pw).await {
                Ok(true) => ok(b"serving certificate (the double issues none)".to_vec()),
                Ok(false) => status(403, "Forbidden"),
                Err(e) => status(500, &format!("{e:#}")),
            }
        }
        "/v1-k3s/double/heartbeat" if node => {
            let Some(name) = req.header("k3s-Node-Name") else {
                return status(400, "missing node name");
            };
            let address = req.header("k3s-Node-IP").unwrap_or_default();
            let info = store::NodeInfo {
                name,
                address,
                etcd_member: None,
                server: false,
                supervisor: None,
            };
            let now = unix_now();
            match store::register_node(&s.etcd, &info, now).await {
                Ok(()) => match store::heartbeat(&s.etcd, name, now).await {
                    Ok(()) => ok(b"ok".to_vec()),
                    Err(e) => status(500, &format!("{e:#}")),
                },
                Err(e) => status(500, &format!("{e:#}")),
            }
        }
        // kube-apiserver behind the same port (the double's subset: the Node list and the
        // version), for a client certificate of the group system:masters (the admin
        // kubeconfig's); anonymous requests are 401, other certificates 403, as RBAC says.
        "/api/v1/nodes" | "/version" if req.method == "GET" => match &req.client_cert {
            None => status(
                401,
                r#"{"kind":"Status","status":"Failure","reason":"Unauthorized","code":401}"#,
            ),
            Some(der) if !pki::is_system_master(der) => status(
                403,
                r#"{"kind":"Status","status":"Failure","reason":"Forbidden","code":403}"#,
            ),
            Some(_) if path == "/version" => ok(
                json!({"major": "1", "minor": "31", "gitVersion": "v1.31.4+k3s1"})
                    .to_string()
                    .into_bytes(),
            ),
            Some(_) => {
                let mut items = Vec::new();
                match store::read_all(&s.etcd, "/registry/minions/").await {
                    Ok(nodes) => {
                        for v in nodes {
                            match store::node_view(&s.etcd, v, unix_now()).await {
                                Ok(v) => items.push(v),
                                Err(e) => return status(500, &format!("{e:#}")),
                            }
                        }
                    }
                    Err(e) => return status(500, &format!("{e:#}")),
                }
                ok(
                    json!({"apiVersion": "v1", "kind": "NodeList", "items": items,
                          "metadata": {"resourceVersion": ""}})
                    .to_string()
                    .into_bytes(),
                )
            }
        },
        "/db/snapshot" if server && req.method == "POST" => save_snapshot(s, &req.body).await,
        "/v1-k3s/server-bootstrap"
        | "/v1-k3s/config"
        | "/db/snapshot"
        | "/v1-k3s/apiservers"
        | "/db/info"
        | "/v1-k3s/serving-kubelet.crt"
        | "/v1-k3s/double/heartbeat" => status(401, "Unauthorized"),
        _ => status(404, "not found"),
    }
}

/// K3s compareConfig (pkg/cluster/bootstrap.go:477-528): a joining server fetches the
/// cluster's `/v1-k3s/config` as a node and refuses to start when any critical control argument
/// differs, warning with each argument's flag name.
async fn compare_config(
    server: &str,
    ca: &[u8],
    password: &str,
    mine: &BTreeMap<&'static str, String>,
) -> Result<()> {
    let (status, body) = wire::get(
        server,
        "/v1-k3s/config",
        Trust::Ca(ca.to_vec()),
        Some(("node", password)),
    )
    .await?;
    if status != 200 {
        log(&format!(
            "level=warning msg=\"Skipping cluster configuration validation: HTTP {status}\""
        ));
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&body).context("parsing the cluster's config")?;
    let mut mismatch = false;
    for (flag, value) in mine {
        if v["CriticalControlArgs"][*flag].as_str() != Some(value.as_str()) {
            log(&format!(
                "level=warning msg=\"critical configuration mismatched: {flag}\""
            ));
            mismatch = true;
        }
    }
    if mismatch {
        bail!("critical configuration value mismatch between servers");
    }
    Ok(())
}

/// K3s join (pkg/etcd/etcd.go:559-640): the member list from the server's `/db/info`, the
/// duplicate-name check, MemberAddAsLearner through a member's client URL (retried every
/// second while etcd answers "too many learner members" or is unhealthy, :498-520), then etcd
/// started with the cluster it was added to.
async fn join_etcd(
    server: &str,
    ca: &ClusterCa,
    password: &str,
    config: &DoubleConfig,
    data: &Path,
    name: &str,
    address: &str,
) -> Result<etcd::Launch> {
    let peer_url = etcd::url(address, etcd::peer_port());
    loop {
        let (status, body) = wire::get(
            server,
            "/db/info",
            Trust::Ca(ca.cert_pem.clone().into_bytes()),
            Some(("server", password)),
        )
        .await
        .context("retrieving the etcd member list")?;
        if status != 200 {
            log(&format!("level=info msg=\"Waiting to retrieve etcd cluster member list: {server}/db/info: HTTP {status} {}\"", String::from_utf8_lossy(&body)));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let members = etcd::members_of(&serde_json::from_slice(&body)?);
        let mut cluster = Vec::new();
        let mut add = true;
        for m in &members {
            let member_name = if m.name.is_empty() && m.peer_urls.contains(&peer_url) {
                name.to_string()
            } else {
                m.name.clone()
            };
            if member_name == name && m.peer_urls.contains(&peer_url) {
                add = false;
            }
            if let Some(p) = m.peer_urls.first() {
                cluster.push(format!("{member_name}={p}"));
            }
            if member_name != name && etcd::node_of_member(&member_name) == config.node_name {
                // etcd.go:608-617: the name file goes, so a fixed node name gets a new member name.
                let _ = std::fs::remove_file(etcd::db_dir(data).join("name"));
                bail!("duplicate node name found, please use a unique name for this node");
            }
        }
        if add {
            let endpoints: Vec<String> = members
                .iter()
                .flat_map(|m| m.client_urls.first())
                .cloned()
                .collect();
            anyhow::ensure!(!endpoints.is_empty(), "no etcd member with a client URL");
            log(&format!(
                "level=info msg=\"Adding member {name}={peer_url} to etcd cluster {cluster:?}\""
            ));
            // K3s's join gives its etcd client every member's client URL (pkg/etcd/etcd.go
            // join, :566-571: ClientURLs, then getClient(clientCtx, e.config, clientURLs...)),
            // and the client's balancer skips a dead member: the double tries each in turn.
            let mut added = Err(anyhow::anyhow!("no etcd member reachable"));
            for endpoint in &endpoints {
                added = etcd::add_learner(endpoint, &peer_url).await;
                match &added {
                    Err(e) if format!("{e:#}").contains("connecting to etcd at") => continue,
                    _ => break,
                }
            }
            if let Err(e) = added {
                let msg = format!("{e:#}");
                if msg.contains("too many learner members") || msg.contains("unhealthy") {
                    log(&format!("level=info msg=\"Waiting for other members to finish joining etcd cluster: {msg}\""));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                bail!("etcd cluster join failed: {msg}");
            }
            cluster.push(format!("{name}={peer_url}"));
        }
        return Ok(etcd::Launch {
            name: name.to_string(),
            data: data.to_path_buf(),
            address: address.to_string(),
            initial_cluster: Some(cluster.join(",")),
            state: "existing",
            extra_args: config.etcd_args.clone(),
        });
    }
}

/// K3s manageLearners (pkg/etcd/etcd.go:1177-1199, 1288-1296): every tick, the leader tries to
/// promote each learner; etcd refuses one that has not caught up.
async fn manage_learners(ep: String) {
    let tick = learner_tick();
    loop {
        tokio::time::sleep(tick).await;
        let Ok((me, leader, _)) = etcd::status(&ep).await else {
            continue;
        };
        if me != leader {
            continue;
        }
        let Ok(members) = etcd::member_list(&ep).await else {
            continue;
        };
        for m in members.iter().filter(|m| m.is_learner) {
            match etcd::promote(&ep, &m.id).await {
                Ok(()) => log(&format!("level=info msg=\"Promoted learner {}\"", m.name)),
                Err(e) => log(&format!(
                    "level=debug msg=\"Unable to promote learner {}: {e:#}\"",
                    m.name
                )),
            }
        }
    }
}

/// K3s's managed etcd member removal controller, on the etcd leader (K3s runs it as a
/// leader-elected controller, etcd.go Register): deleted Nodes lose their etcd member, then
/// their finalizer.
async fn member_removal_controller(ep: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok((me, leader, _)) = etcd::status(&ep).await else {
            continue;
        };
        if me != leader {
            continue;
        }
        match store::finalize_deleted_nodes(&ep).await {
            Ok(done) => done.iter().for_each(|d| log(d)),
            Err(e) => log(&format!(
                "level=error msg=\"managed-etcd-controller: {e:#}\""
            )),
        }
    }
}

/// flannel's interface choice; fatal as in K3s when it has no IPv4 address.
fn start_flannel(config: &DoubleConfig) -> Result<()> {
    let (iface, ip) = flannel::external_interface(config.flannel_iface.as_deref())?;
    log(&format!(
        "level=info msg=\"The interface {iface} with ipv4 address {ip} will be used by flannel\""
    ));
    Ok(())
}

/// K3s v1.31's critical control arguments with their effective values (defaults filled in),
/// pkg/daemons/config/types.go:169-189 `CriticalControlArgs`; `disable: servicelb` sets
/// disable-service-lb (pkg/cli/server/server.go:425-427). Defaults from pkg/cli/cmds/server.go.
fn critical_args(p: &config::Parsed) -> BTreeMap<&'static str, String> {
    let slice = |name: &str, default: &str| {
        let v = p.slice(name);
        if v.is_empty() {
            default.to_string()
        } else {
            v.join(",")
        }
    };
    let string = |name: &str, default: &str| {
        p.string(name)
            .filter(|s| !s.is_empty())
            .unwrap_or(default)
            .to_string()
    };
    let boolean = |name: &str| p.bool(name).to_string();
    let mut m = BTreeMap::new();
    m.insert("cluster-cidr", slice("cluster-cidr", "10.42.0.0/16"));
    m.insert("service-cidr", slice("service-cidr", "10.43.0.0/16"));
    m.insert("cluster-dns", slice("cluster-dns", "10.43.0.10"));
    m.insert("cluster-domain", string("cluster-domain", "cluster.local"));
    m.insert(
        "disable-cloud-controller",
        boolean("disable-cloud-controller"),
    );
    m.insert(
        "disable-helm-controller",
        boolean("disable-helm-controller"),
    );
    m.insert("disable-network-policy", boolean("disable-network-policy"));
    let servicelb =
        p.bool("disable-service-lb") || p.slice("disable").iter().any(|d| d == "servicelb");
    m.insert("disable-service-lb", servicelb.to_string());
    m.insert("secrets-encryption", boolean("secrets-encryption"));
    m.insert(
        "secrets-encryption-provider",
        string("secrets-encryption-provider", "aescbc"),
    );
    m.insert("embedded-registry", boolean("embedded-registry"));
    m.insert("flannel-backend", string("flannel-backend", "vxlan"));
    m.insert("flannel-ipv6-masq", boolean("flannel-ipv6-masq"));
    m.insert("flannel-external-ip", boolean("flannel-external-ip"));
    m.insert(
        "egress-selector-mode",
        string("egress-selector-mode", "agent"),
    );
    m.insert("supervisor-metrics", boolean("supervisor-metrics"));
    m
}

/// Fetches `/cacerts` unverified and checks it against the token's CA hash, as K3s does.
async fn trusted_ca(server: &str, config: &DoubleConfig) -> Result<Vec<u8>> {
    let (status, ca) = wire::get(server, "/cacerts", Trust::Nothing, None)
        .await
        .with_context(|| format!("fetching {server}/cacerts"))?;
    if status != 200 {
        bail!("{server}/cacerts answered HTTP {status}");
    }
    let got = CaHash::of_bundle(&ca);
    match config.ca_hash {
        Some(want) if want != got => bail!(
            "token CA hash does not match the Cluster CA certificate hash: {got} != {want}; refusing to join {server}"
        ),
        Some(_) => log(&format!("cluster CA hash {got} matches the secure token")),
        None => log("warning: short token, the cluster CA is trusted without a hash check"),
    }
    Ok(ca)
}

/// K3s's token parsing (pkg/clientaccess/token.go:213-260 parseToken): a bare password or a
/// bootstrap token becomes `K10::...` with no CA hash; `K10<hash>::<user>:<password>` with any
/// user (the subcommand overrides it: `server` for servers, `node` for agents); a hash that is
/// not 64 characters is "invalid token CA hash length".
fn parse_token(token: &str) -> Result<(String, Option<CaHash>)> {
    if token.is_empty() {
        bail!("token must not be empty");
    }
    let Some(rest) = token.strip_prefix("K10") else {
        return Ok((token.to_string(), None));
    };
    let (hash, creds) = match rest.split_once("::") {
        Some((h, c)) => (h, c),
        None => ("", rest),
    };
    let ca_hash = match hash.len() {
        0 => None,
        64 => Some(CaHash::from_hex(hash).context("invalid token CA hash")?),
        _ => bail!("invalid token CA hash length"),
    };
    if is_bootstrap_token(creds) {
        return Ok((creds.to_string(), ca_hash));
    }
    match creds.split_once(':') {
        Some((_, password)) if !password.is_empty() => Ok((password.to_string(), ca_hash)),
        _ => bail!("invalid token format"),
    }
}

/// kubeadm's bootstrap token form `[a-z0-9]{6}.[a-z0-9]{16}`.
fn is_bootstrap_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((a, b)) if ok(a, 6) && ok(b, 16))
}

/// A random password like the one K3s generates when no token is given.
fn random_password() -> String {
    use sha2::Digest;
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..16])
}

fn read_config(mode: Subcommand) -> Result<DoubleConfig> {
    let root = root();
    let parsed = config::load(&root, mode, &|w| log(w))?;
    // --token wins over --token-file (pkg/cli/cmds: token-file is read when token is empty,
    // pkg/cli/server/server.go and pkg/agent/run.go).
    let token = match (parsed.string("token"), parsed.string("token-file")) {
        (Some(t), _) if !t.is_empty() => Some(t.to_string()),
        (_, Some(f)) if !f.is_empty() => {
            let path = root.join(f.trim_start_matches('/'));
            Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading token file {f}"))?
                    .trim()
                    .to_string(),
            )
        }
        _ => None,
    };
    let (password, ca_hash) = match token {
        Some(t) => {
            let (p, h) = parse_token(&t)?;
            (Some(p), h)
        }
        None => (None, None),
    };
    // node-ip is a string slice, each item possibly "ipv4,ipv6" (agent.go NodeIPFlag).
    let mut node_ips = Vec::new();
    for ip in parsed.slice("node-ip") {
        node_ips.push(
            ip.parse::<IpAddr>()
                .with_context(|| format!("invalid node-ip {ip}"))?,
        );
    }
    let server = parsed
        .string("server")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let critical = if mode == Subcommand::Server {
        critical_args(&parsed)
    } else {
        BTreeMap::new()
    };
    Ok(DoubleConfig {
        etcd_args: parsed.slice("etcd-arg"),
        critical,
        password,
        ca_hash,
        server,
        cluster_init: parsed.bool("cluster-init"),
        node_name: parsed
            .string("node-name")
            .map(str::to_string)
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "k3s-double".into())
            }),
        node_ip: node_ips.iter().copied().find(IpAddr::is_ipv4),
        flannel_iface: parsed
            .string("flannel-iface")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        tls_san: parsed.slice("tls-san"),
        bind_address: parsed.string("bind-address").and_then(|s| s.parse().ok()),
        snapshot_dir: parsed
            .string("etcd-snapshot-dir")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        kubeconfig_mode: parsed
            .string("write-kubeconfig-mode")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}
