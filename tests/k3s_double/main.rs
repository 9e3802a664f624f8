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
//! Test knobs: `K3S_DOUBLE_ROOT` (root prefix), `K3S_DOUBLE_PORT` (listen port, default 6443).
//! The token is never printed.

mod pki;
mod wire;

use anyhow::{bail, Context, Result};
use firstboot::k3s::{CaHash, SecureToken};
use pki::{write_mode, ClusterCa};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wire::{Request, Response, Trust};

/// What config.yaml says, as far as the double cares.
struct DoubleConfig {
    password: String,
    ca_hash: Option<CaHash>,
    server: Option<String>,
    node_name: String,
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
    if mode != "server" && mode != "agent" {
        bail!("usage: k3s-double server|agent (a test double of K3s)");
    }
    // One crypto provider for the process; a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = read_config()?;
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
        let server = config
            .server
            .clone()
            .context("an agent needs server: in config.yaml")?;
        let ca = trusted_ca(&server, &config).await?;
        let (status, _) = wire::get(
            &server,
            "/v1-k3s/config",
            Trust::Ca(ca),
            Some(("node", &config.password)),
        )
        .await
        .context("authenticating to the server")?;
        if status != 200 {
            bail!("the server rejected the token (HTTP {status})");
        }
        write_mode(&data.join("agent/server-url"), server.as_bytes(), 0o600)?;
        log(&format!("agent joined {server}"));
        notifier.ready("k3s-double agent running");
        std::future::pending::<()>().await;
        return Ok(());
    }

    let tls_dir = data.join("server/tls");
    let ca = match &config.server {
        Some(server) => {
            let ca_pem = trusted_ca(server, &config).await?;
            let (status, body) = wire::get(
                server,
                "/v1-k3s/server-bootstrap",
                Trust::Ca(ca_pem),
                Some(("server", &config.password)),
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
    let token_text = format!("K10{}::server:{}", hash.to_hex(), config.password);
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
    let password = config.password.clone();
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
    notifier.ready("k3s-double server running");
    server.await.context("server task")?
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

fn read_config() -> Result<DoubleConfig> {
    let path = root().join(firstboot::k3s::CONFIG_YAML_PATH);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let s = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let token = s("token").context("config.yaml has no token")?;
    let (password, ca_hash) = match SecureToken::parse(&token) {
        Some(st) => (st.expose_password().to_string(), Some(st.ca_hash())),
        None if token.starts_with("K10") => bail!("config.yaml has a malformed secure token"),
        None => (token, None),
    };
    let node_ip = match s("node-ip") {
        Some(ip) => Some(ip.parse().context("node-ip is not an IP address")?),
        None => None,
    };
    let tls_san = doc
        .get("tls-san")
        .and_then(|v| v.as_sequence())
        .map(|seq| {
            seq.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let cluster_init = doc.get("cluster-init").and_then(|v| v.as_bool()) == Some(true);
    let server = s("server");
    if cluster_init && server.is_some() {
        bail!("config.yaml sets both cluster-init and server");
    }
    Ok(DoubleConfig {
        password,
        ca_hash,
        server,
        node_name: s("node-name").unwrap_or_else(|| "k3s-double".into()),
        node_ip,
        tls_san,
    })
}
