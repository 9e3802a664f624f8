//! The double's etcd: Debian's real etcd (package etcd-server, `/usr/bin/etcd`, 3.4) run as a
//! child of the double the way K3s embeds it, and a small client of etcd's JSON gateway
//! (`/v3/...` on the client port, enabled by default in etcd 3.4).
//!
//! Citations are to K3s at the pinned release (vitorsavian/k3s c02ce139f, v1.31.10), pkg/etcd/etcd.go:
//! - data under `<data-dir>/server/db/etcd` (dbDir), the member name in its `name` file, made of
//!   the node name and 8 hex digits (setName, :694-712); "initialized" = the WAL dir exists;
//! - client port 2379, peer port 2380 on the node's address (peerURL :960, clientURL :976);
//! - heartbeat 500 ms, election timeout 5000 ms, snapshot count 10000, `etcd-arg` overriding them
//!   (cluster(), :1018-1053);
//! - a joiner reads the member list from a server (`/db/info`, :714-757), refuses a duplicate node
//!   name (:606-617), adds itself with MemberAddAsLearner (:622) and retries every second while
//!   etcd answers "too many learner members" or "unhealthy" (:498-520); any other error is fatal;
//! - the leader tries MemberPromote on every learner each 15 s (manageLearners :1177-1199,
//!   trackLearnerProgress :1288-1296);
//! - the server is ready only when its member is a voter and there is a leader (Test, :210-223).
//!
//! Differences from K3s, none of which firstboot depends on: plain HTTP between members and
//! clients (K3s uses mutual TLS with its own etcd CAs); a learner that never catches up is not
//! evicted after 5 min; etcd runs as a child process (killed with the double: PR_SET_PDEATHSIG)
//! rather than in-process, with GOMAXPROCS=1 and a 64 MiB backend quota to stay small.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// etcd's client port (K3s: 2379).
pub fn client_port() -> u16 {
    env_port("K3S_DOUBLE_ETCD_CLIENT_PORT", 2379)
}

/// etcd's peer port (K3s: 2380).
pub fn peer_port() -> u16 {
    env_port("K3S_DOUBLE_ETCD_PEER_PORT", 2380)
}

fn env_port(name: &str, default: u16) -> u16 {
    std::env::var(name)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

/// The etcd program: `$K3S_DOUBLE_ETCD` or Debian's `/usr/bin/etcd`.
pub fn program() -> PathBuf {
    std::env::var_os("K3S_DOUBLE_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// `<data-dir>/server/db/etcd` (K3s dbDir).
pub fn db_dir(data: &Path) -> PathBuf {
    data.join("server/db/etcd")
}

/// The line etcd 3.4 logs when its peers refuse it as a removed member (rafthttp's
/// `errMemberRemoved`, answered with 410 Gone, reported as a "server error"); K3s receives
/// the same error typed (`rafthttp.ErrMemberRemoved`) from its embedded etcd.
pub const MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";

/// K3s's tombstone: written in the etcd data dir when etcd reports this member removed
/// (pkg/daemons/executor/etcd.go:36-45).
pub fn tombstone(data: &Path) -> PathBuf {
    db_dir(data).join("tombstone")
}

/// K3s's start with a tombstone (pkg/etcd/etcd.go:656-664 Register): the etcd data dir is moved
/// to `etcd-backup-<unix>` beside it, keeping the 5 newest such backups (backupDirWithRetention,
/// :1573-1612; maxBackupRetention :81), so the server joins again as a new member. Returns
/// where the data went, `None` without a tombstone.
pub fn clear_tombstoned(data: &Path, unix: u64) -> Result<Option<PathBuf>> {
    if !tombstone(data).exists() {
        return Ok(None);
    }
    let dir = db_dir(data);
    let parent = dir.parent().context("the etcd dir has a parent")?;
    let mut backups: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(parent)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("etcd-backup"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    // Newest first; the 6th and older go (counted before this backup is made, as K3s does).
    backups.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (_, old) in backups.iter().skip(5) {
        std::fs::remove_dir_all(old)?;
    }
    let to = parent.join(format!("etcd-backup-{unix}"));
    std::fs::rename(&dir, &to)?;
    Ok(Some(to))
}

/// K3s IsInitialized: the member's WAL directory exists.
pub fn is_initialized(data: &Path) -> bool {
    db_dir(data).join("member/wal").is_dir()
}

/// The member name: read from `server/db/etcd/name`, or `<node-name>-<8 hex>` written there
/// (setName). `force` makes a new one.
pub fn member_name(data: &Path, node_name: &str, force: bool) -> Result<String> {
    let file = db_dir(data).join("name");
    if !force {
        if let Ok(n) = std::fs::read_to_string(&file) {
            if !n.trim().is_empty() {
                return Ok(n.trim().to_string());
            }
        }
    }
    use sha2::Digest;
    let seed = format!(
        "{:?}{}{node_name}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    let name = format!(
        "{node_name}-{}",
        &hex::encode(sha2::Sha256::digest(seed.as_bytes()))[..8]
    );
    std::fs::create_dir_all(db_dir(data)).context("creating server/db/etcd")?;
    // K3s keeps the etcd dir 0700 (etcd.go Start: chmod 0700).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(db_dir(data), std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(&file, &name).context("writing server/db/etcd/name")?;
    Ok(name)
}

/// The node name a member name belongs to (etcd.go:604-607: up to the last hyphen).
pub fn node_of_member(member: &str) -> &str {
    match member.rfind('-') {
        Some(i) if i > 1 => &member[..i],
        _ => member,
    }
}

/// How to start etcd.
#[derive(Clone)]
pub struct Launch {
    pub name: String,
    pub data: PathBuf,
    /// Address etcd listens on and advertises (node-ip).
    pub address: String,
    /// `--initial-cluster` (name=peerURL,...), for a member that is not yet initialized.
    pub initial_cluster: Option<String>,
    /// "new" or "existing".
    pub state: &'static str,
    /// `etcd-arg` values (`key=value`), passed as `--key=value` after K3s's defaults.
    pub extra_args: Vec<String>,
}

/// http://address:port
pub fn url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("http://[{address}]:{port}")
    } else {
        format!("http://{address}:{port}")
    }
}

/// Starts etcd as a child that dies with this process. Call from the thread that lives as long
/// as the process (PR_SET_PDEATHSIG fires when the spawning thread exits).
pub fn spawn(l: &Launch) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let peer = url(&l.address, peer_port());
    let client = url(&l.address, client_port());
    let mut listen_client = vec![client.clone()];
    if l.address != "127.0.0.1" {
        listen_client.insert(0, url("127.0.0.1", client_port()));
    }
    let mut cmd = std::process::Command::new(program());
    cmd.arg(format!("--name={}", l.name))
        .arg(format!("--data-dir={}", db_dir(&l.data).display()))
        .arg(format!("--listen-client-urls={}", listen_client.join(",")))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster-state={}", l.state))
        .arg(format!(
            "--initial-cluster={}",
            l.initial_cluster
                .clone()
                .unwrap_or_else(|| format!("{}={peer}", l.name))
        ))
        // K3s's defaults (etcd.go:1040-1042), then etcd-arg.
        .arg("--snapshot-count=10000")
        .arg("--election-timeout=5000")
        .arg("--heartbeat-interval=500")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .arg("--log-level=warn")
        .arg("--quota-backend-bytes=67108864")
        .env("GOMAXPROCS", "1")
        // etcd notifies systemd itself when it is up: that READY=1 is not K3s's.
        .env_remove("NOTIFY_SOCKET");
    for a in &l.extra_args {
        cmd.arg(format!("--{}", a.trim_start_matches('-')));
    }
    cmd.stdin(std::process::Stdio::null());
    // The caller reads etcd's log (and passes it on): K3s learns a removal from etcd itself.
    cmd.stderr(std::process::Stdio::piped());
    // SAFETY: only prctl between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", program().display()))
}

/// An error etcd's gateway returned (`{"error": ..., "code": ...}`).
#[derive(Debug)]
pub struct EtcdError {
    pub message: String,
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for EtcdError {}

/// POSTs JSON to etcd's gateway at `endpoint` (`http://host:port`) and returns the answer, or
/// fails after 20 s: K3s gives its etcd join (member list and MemberAddAsLearner) a 20 s context
/// (pkg/etcd/etcd.go:558) and exits fatally when it runs out (:515-517).
pub async fn call(endpoint: &str, path: &str, body: &Value) -> Result<Value> {
    let hostport = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("etcd endpoint {endpoint} is not http://"))?
        .trim_end_matches('/');
    let body = body.to_string();
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(hostport)
            .await
            .with_context(|| format!("connecting to etcd at {hostport}"))?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, anyhow::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .map_err(|_| anyhow!("etcd at {hostport} did not answer {path} within 20 s"))??;
    let body = http_body(&raw)?;
    let v: Value = serde_json::from_slice(&body)
        .with_context(|| format!("etcd {path}: {}", String::from_utf8_lossy(&body)))?;
    if let Some(e) = v.get("error") {
        let message = v["message"].as_str().or(e.as_str()).unwrap_or("etcd error");
        return Err(EtcdError {
            message: message.to_string(),
        }
        .into());
    }
    Ok(v)
}

/// A snapshot of the member's whole keyspace (`etcdctl snapshot save`, the Maintenance
/// Snapshot stream K3s's snapshotv3.Save reads), through the gateway: newline-separated
/// `{"result":{"blob":...}}` objects whose blobs, concatenated, are the snapshot file.
pub async fn snapshot(endpoint: &str) -> Result<Vec<u8>> {
    let hostport = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("etcd endpoint {endpoint} is not http://"))?
        .trim_end_matches('/')
        .to_string();
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(&hostport)
            .await
            .with_context(|| format!("connecting to etcd at {hostport}"))?;
        let req = format!(
            "POST /v3/maintenance/snapshot HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, anyhow::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .map_err(|_| anyhow!("etcd at {hostport} did not stream its snapshot within 60 s"))??;
    let body = http_body(&raw)?;
    let mut out = Vec::new();
    for line in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let v = line.context("a snapshot stream object")?;
        if let Some(e) = v.get("error") {
            bail!("etcd snapshot: {e}");
        }
        if let Some(blob) = v["result"]["blob"].as_str() {
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .context("a snapshot blob")?,
            );
        }
    }
    if out.is_empty() {
        bail!("etcd streamed an empty snapshot");
    }
    Ok(out)
}

/// The body of a raw HTTP/1.1 response (chunked transfer decoded).
fn http_body(raw: &[u8]) -> Result<Vec<u8>> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header from etcd"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok(body)
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
        rest = &rest[(nl + 4 + size).min(rest.len())..];
    }
    out
}

/// A member as etcd lists it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Members from a member-list answer (also the `/db/info` body).
pub fn members_of(v: &Value) -> Vec<Member> {
    v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| Member {
                    id: m["ID"].as_str().unwrap_or_default().to_string(),
                    name: m["name"].as_str().unwrap_or_default().to_string(),
                    peer_urls: strings(&m["peerURLs"]),
                    client_urls: strings(&m["clientURLs"]),
                    is_learner: m["isLearner"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// MemberList.
pub async fn member_list(endpoint: &str) -> Result<Vec<Member>> {
    Ok(members_of(
        &call(endpoint, "/v3/cluster/member/list", &json!({})).await?,
    ))
}

/// The local member's status: (its id, leader id, is learner).
pub async fn status(endpoint: &str) -> Result<(String, String, bool)> {
    let v = call(endpoint, "/v3/maintenance/status", &json!({})).await?;
    Ok((
        v["header"]["member_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["leader"].as_str().unwrap_or("0").to_string(),
        v["isLearner"].as_bool().unwrap_or(false),
    ))
}

/// K3s Test (etcd.go:210-223): an error until this member is a voter and there is a leader.
pub async fn test(endpoint: &str) -> Result<()> {
    let (_, leader, learner) = status(endpoint).await?;
    if learner {
        bail!("this server has not yet been promoted from learner to voting member");
    }
    if leader == "0" || leader.is_empty() {
        bail!("etcdserver: no leader");
    }
    Ok(())
}

/// MemberAddAsLearner.
pub async fn add_learner(endpoint: &str, peer_url: &str) -> Result<Vec<Member>> {
    let v = call(
        endpoint,
        "/v3/cluster/member/add",
        &json!({"peerURLs": [peer_url], "isLearner": true}),
    )
    .await?;
    Ok(members_of(&v))
}

/// MemberPromote.
pub async fn promote(endpoint: &str, id: &str) -> Result<()> {
    call(endpoint, "/v3/cluster/member/promote", &json!({"ID": id})).await?;
    Ok(())
}

/// MemberRemove.
pub async fn remove(endpoint: &str, id: &str) -> Result<()> {
    call(endpoint, "/v3/cluster/member/remove", &json!({"ID": id})).await?;
    Ok(())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// A key's value and its mod revision (the Kubernetes resourceVersion of an object).
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

fn kvs_of(v: &Value) -> Vec<Kv> {
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| Kv {
                    key: String::from_utf8_lossy(&unb64(&kv["key"])).into_owned(),
                    value: unb64(&kv["value"]),
                    mod_revision: kv["mod_revision"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Range over one key.
pub async fn get(endpoint: &str, key: &str) -> Result<Option<Kv>> {
    let v = call(endpoint, "/v3/kv/range", &json!({"key": b64(key)})).await?;
    Ok(kvs_of(&v).into_iter().next())
}

/// Every key with `prefix`.
pub async fn list(endpoint: &str, prefix: &str) -> Result<Vec<Kv>> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let v = call(
        endpoint,
        "/v3/kv/range",
        &json!({"key": b64(prefix), "range_end": base64::engine::general_purpose::STANDARD.encode(&end)}),
    )
    .await?;
    Ok(kvs_of(&v))
}

/// Puts `value` at `key` only if its mod revision is `expected` (0: the key must not exist),
/// as the apiserver's GuaranteedUpdate does. Returns the new revision, or None on a conflict.
pub async fn put_if(endpoint: &str, key: &str, value: &[u8], expected: i64) -> Result<Option<i64>> {
    let compare = if expected == 0 {
        json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
    } else {
        json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()})
    };
    let v = call(
        endpoint,
        "/v3/kv/txn",
        &json!({
            "compare": [compare],
            "success": [{"request_put": {"key": b64(key), "value": base64::engine::general_purpose::STANDARD.encode(value)}}],
        }),
    )
    .await?;
    if v["succeeded"].as_bool() != Some(true) {
        return Ok(None);
    }
    Ok(v["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok()))
}

/// Deletes `key` only if its mod revision is `expected`; false on a conflict.
pub async fn delete_if(endpoint: &str, key: &str, expected: i64) -> Result<bool> {
    let v = call(
        endpoint,
        "/v3/kv/txn",
        &json!({
            "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()}],
            "success": [{"request_delete_range": {"key": b64(key)}}],
        }),
    )
    .await?;
    Ok(v["succeeded"].as_bool() == Some(true))
}
