//! k3s-double: a TEST DOUBLE for K3s (never shipped in an image) that mimics what firstboot relies on.
//!
//! Invoked like K3s as `k3s-double server` or `k3s-double agent`. It reads
//! `/etc/rancher/k3s/config.yaml` (under `$K3S_DOUBLE_ROOT` when set) and then:
//! - server with no `server:` (cluster-init): creates the cluster CA (kept across restarts),
//!   writes `<data>/server/tls/server-ca.crt` and `<data>/server/token` =
//!   `K10<sha256 of server-ca.crt>::server:<token>`, serves HTTPS with `/ping` ("pong"),
//!   `/cacerts`, and the authenticated `/v1-k3s/server-bootstrap` and `/v1-k3s/config`;
//! - server or agent with `server:`: fetches `/cacerts` without TLS verification, and with a
//!   secure token refuses (exit 1) when its sha256 differs from the token's CA hash; then proves
//!   the password over TLS verified by that CA; a joining server takes the CA and serves too;
//! - sends READY=1 to `$NOTIFY_SOCKET` once up, then stays up until killed.
//!
//! As strict as K3s (each rule cites its source in `config.rs` and `flannel.rs`): config.yaml and
//! `config.yaml.d/*.yaml` are merged and read once, at start; `agent` exits on any key outside the
//! agent flag table ("flag provided but not defined"), `server` skips unknown keys with K3s's
//! warning; bad values for known flags fail; flannel exits when its interface has no IPv4.
//!
//! Still MORE LENIENT than K3s v1.31 (issue 14, not done; see k3s-fidelity audit section 10):
//! READY comes at once (K3s: after learner promotion and apiserver readyz); an agent with a wrong
//! CA hash exits 1 (K3s retries every 2 s forever, pkg/agent/run.go:349-361); certificates are
//! valid 1975-4096 (K3s: NotBefore = CA creation time, dynamiclistener cert/cert.go:75-100);
//! duplicate node names and critical-argument mismatches are not refused (etcd.go:613,
//! bootstrap.go:429-472). Tests must not rely on these leniencies.
//!
//! Test knobs: `K3S_DOUBLE_ROOT` (root prefix), `K3S_DOUBLE_PORT` (listen port, default 6443).
//! The token is never printed.

mod config;
mod flannel;
mod pki;
mod wire;

use anyhow::{bail, Context, Result};
use firstboot::k3s::flags::Subcommand;
use firstboot::k3s::CaHash;
use pki::{write_mode, ClusterCa};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wire::{Request, Response, Trust};

/// What config.yaml says, as far as the double cares.
struct DoubleConfig {
    /// The password part of the token; `None` when no token was given.
    password: Option<String>,
    ca_hash: Option<CaHash>,
    server: Option<String>,
    /// Kept for the log: with `server` set, K3s joins and ignores it (managed.go:125).
    cluster_init: bool,
    node_name: String,
    /// `flannel-iface`, if set.
    flannel_iface: Option<String>,
    node_ip: Option<IpAddr>,
    tls_san: Vec<String>,
}

fn log(msg: &str) {
    eprintln!("k3s-double: {msg}");
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(&mode)));
    match result {
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

async fn run(mode: &str) -> Result<()> {
    let sub = match mode {
        "server" => Subcommand::Server,
        "agent" => Subcommand::Agent,
        _ => bail!("usage: k3s-double server|agent (a test double of K3s)"),
    };
    // One crypto provider for the process; a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Read once: a running K3s never looks at config.yaml again.
    let mut config = read_config(sub)?;
    // The wall clock as this process sees it: machine tests check that a joiner's clock was
    // agreed with the init node's before K3s started.
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    log(&format!(
        "starting {mode} as node {} with the clock at unix {clock}",
        config.node_name
    ));
    let data = root().join("var/lib/rancher/k3s");
    let notifier = firstboot::status::Notifier::from_env();

    if mode == "agent" {
        // pkg/cli/agent/agent.go Run: both are required.
        let server = config.server.clone().context("--server is required")?;
        let password = config.password.clone().context("--token is required")?;
        let ca = trusted_ca(&server, &config).await?;
        let (status, _) = wire::get(
            &server,
            "/v1-k3s/config",
            Trust::Ca(ca),
            Some(("node", &password)),
        )
        .await
        .context("authenticating to the server")?;
        if status != 200 {
            bail!("the server rejected the token (HTTP {status})");
        }
        start_flannel(&config)?;
        write_mode(&data.join("agent/server-url"), server.as_bytes(), 0o600)?;
        log(&format!("agent joined {server}"));
        notifier.ready("k3s-double agent running");
        std::future::pending::<()>().await;
        return Ok(());
    }

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
    let ca = match &config.server {
        Some(server) => {
            let ca_pem = trusted_ca(server, &config).await?;
            let (status, body) = wire::get(
                server,
                "/v1-k3s/server-bootstrap",
                Trust::Ca(ca_pem),
                Some(("server", &password)),
            )
            .await
            .context("fetching bootstrap data")?;
            if status != 200 {
                bail!("the server rejected the token (HTTP {status})");
            }
            let v: serde_json::Value =
                serde_json::from_slice(&body).context("parsing bootstrap data")?;
            let ca = ClusterCa {
                cert_pem: v["ca_cert"].as_str().unwrap_or_default().to_string(),
                key_pem: v["ca_key"].as_str().unwrap_or_default().to_string(),
            };
            ca.store(&tls_dir)?;
            log(&format!("joined cluster through {server}"));
            ca
        }
        None => match ClusterCa::load(&tls_dir)? {
            Some(ca) => ca,
            None => {
                let ca = ClusterCa::generate()?;
                ca.store(&tls_dir)?;
                log("cluster-init: created the cluster CA");
                ca
            }
        },
    };
    let hash = CaHash::of_bundle(ca.cert_pem.as_bytes());
    let token_text = format!("K10{}::server:{}", hash.to_hex(), password);
    write_mode(
        &data.join("server/token"),
        format!("{token_text}\n").as_bytes(),
        0o600,
    )?;

    let listen_ip = config.node_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
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
    let ca_cert = ca.cert_pem.clone();
    let ca_key = ca.key_pem.clone();
    let route = Arc::new(move |req: &Request| -> Response {
        let authed = req.password.as_deref() == Some(password.as_str());
        let ok = |body: Vec<u8>| Response { status: 200, body };
        match req.path.as_str() {
            "/ping" => ok(b"pong".to_vec()),
            "/cacerts" => ok(ca_cert.clone().into_bytes()),
            "/v1-k3s/server-bootstrap" if authed => ok(serde_json::json!({
                "ca_cert": ca_cert,
                "ca_key": ca_key,
            })
            .to_string()
            .into_bytes()),
            "/v1-k3s/config" if authed => ok(b"{}".to_vec()),
            "/v1-k3s/server-bootstrap" | "/v1-k3s/config" => Response {
                status: 401,
                body: b"Unauthorized".to_vec(),
            },
            _ => Response {
                status: 404,
                body: b"not found".to_vec(),
            },
        }
    });
    let server = tokio::spawn(wire::serve(listener, chain, key, route));
    // The server's embedded agent runs flannel too. K3s may send READY before flannel exits the
    // process (setup.go:106-110 runs in a goroutine); the double fails before READY so a test
    // cannot miss it.
    start_flannel(&config)?;
    notifier.ready("k3s-double server running");
    server.await.context("server task")?
}

/// flannel's interface choice; fatal as in K3s when it has no IPv4 address.
fn start_flannel(config: &DoubleConfig) -> Result<()> {
    let (iface, ip) = flannel::external_interface(config.flannel_iface.as_deref())?;
    log(&format!(
        "level=info msg=\"The interface {iface} with ipv4 address {ip} will be used by flannel\""
    ));
    Ok(())
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
    Ok(DoubleConfig {
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
    })
}
