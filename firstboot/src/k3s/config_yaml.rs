//! `/etc/rancher/k3s/config.yaml` for each role, rendered by hand as plain YAML (keys are K3s flag names).
//!
//! Cluster-wide keys (disable, tls-san from the config, etcd args, snapshots, extra keys) come
//! only from the shared `cluster.toml` and the init node's decisions, so every server renders
//! them identically (the docs ask for identical `disable` values; K3s itself compares only the
//! CriticalControlArgs, pkg/daemons/config/types.go). Agents get only agent keys: `k3s agent`
//! does not skip keys it does not know, it exits with "flag provided but not defined"
//! (see [`super::flags`]), so `[k3s] extra` is routed by K3s's own flag tables.

use super::flags::{self, Reach, Subcommand};
use super::secure_token::{CaHash, SecureToken};
use crate::config::ClusterConfig;
use crate::durable::write_atomic;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where K3s reads its config, relative to the root prefix.
pub const CONFIG_YAML_PATH: &str = crate::paths::K3S_CONFIG_YAML;

/// What this node runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum K3sRole {
    /// The one elected node: short token; `cluster-init` (embedded etcd) unless `servers = 1`.
    Init,
    /// A server joining the init node with the secure token.
    JoinServer {
        /// e.g. `https://198.18.0.10:6443`.
        server_url: String,
        /// The init node's CA hash from its signed announcement.
        ca_hash: CaHash,
    },
    /// An agent joining with the secure token.
    Agent {
        /// e.g. `https://198.18.0.10:6443`.
        server_url: String,
        /// The init node's CA hash from its signed announcement.
        ca_hash: CaHash,
    },
}

/// Facts about this node and decisions made at runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Unique K3s node name (normally the hostname).
    pub node_name: String,
    /// Address on the LAN interface.
    pub node_ip: IpAddr,
    /// Hostname, announced as `<hostname>.local` over mDNS.
    pub hostname: String,
    /// etcd arguments (`key=value`) decided once by the init node for the whole cluster.
    pub etcd_args: Vec<String>,
    /// Snapshot directory chosen by storage; `None` falls back to `[snapshots] dir`, then to K3s's default.
    pub snapshot_dir: Option<PathBuf>,
    /// The interface holding `node_ip`, written as `flannel-iface`: without it flannel takes the
    /// default-route interface (pkg/agent/flannel/flannel.go:134-153), which on a multi-homed
    /// node is not the cluster LAN and on a LAN without a router is firstboot's dummy.
    /// `None` only where no live interface is known (a test root).
    pub flannel_iface: Option<String>,
}

/// The datastore the servers of a cluster run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    /// K3s's default for a server started without `cluster-init` or `server`: SQLite through
    /// kine (pkg/cluster/managed.go:125 picks embedded etcd only for cluster-init or a join).
    /// For `servers = 1`: no etcd writing to an SD card, as the K3s docs advise.
    Sqlite,
    /// Embedded etcd: the init node runs `cluster-init`, the other servers join it.
    Etcd,
}

impl Datastore {
    /// `servers = 1` runs SQLite; more servers need etcd.
    pub fn for_servers(servers: u8) -> Self {
        if servers <= 1 {
            Datastore::Sqlite
        } else {
            Datastore::Etcd
        }
    }

    /// The word status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Datastore::Sqlite => "sqlite",
            Datastore::Etcd => "etcd",
        }
    }
}

/// Default kubeconfig mode: root-only, as the kubeconfig is a cluster-admin credential.
const DEFAULT_KUBECONFIG_MODE: &str = "0600";

/// Renders config.yaml. The result contains the token: write it only with [`write_config_yaml`].
pub fn render(config: &ClusterConfig, role: &K3sRole, facts: &NodeFacts) -> String {
    let mut y = Yaml::default();
    y.comment("Written by firstboot from cluster.toml; firstboot rewrites it, do not edit.");
    match role {
        K3sRole::Init => {
            y.scalar("token", &quote(config.token.expose()));
            if Datastore::for_servers(config.servers) == Datastore::Etcd {
                y.scalar("cluster-init", "true");
            }
        }
        K3sRole::JoinServer {
            server_url,
            ca_hash,
        }
        | K3sRole::Agent {
            server_url,
            ca_hash,
        } => {
            let secure = SecureToken::new(*ca_hash, &config.token);
            y.scalar("token", &quote(&secure.expose()));
            y.scalar("server", &quote(server_url));
        }
    }
    y.scalar("node-name", &quote(&facts.node_name));
    y.scalar("node-ip", &quote(&facts.node_ip.to_string()));
    if let Some(iface) = &facts.flannel_iface {
        if !config.k3s.extra.contains_key("flannel-iface") {
            y.scalar("flannel-iface", &quote(iface));
        }
    }
    let is_server = !matches!(role, K3sRole::Agent { .. });
    if is_server {
        // The node's own names, then the cluster's fixed registration address and name (SPEC
        // 4.5: the server holding them serves the API there), then the user's.
        let mut sans = vec![
            facts.node_ip.to_string(),
            format!("{}.local", facts.hostname),
        ];
        sans.extend(config.api_address.map(|a| a.to_string()));
        sans.push(format!("{}.local", config.name));
        for s in &config.k3s.tls_san {
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        y.list("tls-san", &sans);
        y.list("disable", &config.k3s.disable);
    }
    y.list("node-taint", &config.k3s.node_taints);
    if is_server {
        if !config.k3s.extra.contains_key("write-kubeconfig-mode") {
            y.scalar("write-kubeconfig-mode", &quote(DEFAULT_KUBECONFIG_MODE));
        }
        // Written for SQLite too (K3s takes and ignores them without etcd): a server converted
        // to etcd later (cluster-init in a drop-in) gets the tuned timings and its snapshots.
        y.list("etcd-arg", &facts.etcd_args);
        y.scalar(
            "etcd-snapshot-schedule-cron",
            &quote(&config.snapshots.schedule),
        );
        y.scalar(
            "etcd-snapshot-retention",
            &config.snapshots.retention.to_string(),
        );
        if let Some(dir) = facts
            .snapshot_dir
            .as_ref()
            .or(config.snapshots.dir.as_ref())
        {
            y.scalar("etcd-snapshot-dir", &quote(&dir.to_string_lossy()));
        }
    }
    for (key, value) in &config.k3s.extra {
        if extra_reaches(key, is_server) {
            y.value(key, value);
        }
    }
    y.out
}

/// Whether an `[k3s] extra` key goes into this node's config.yaml: by K3s's flag tables; a key
/// no subcommand of the pinned K3s defines goes to servers only, which skip it with a warning
/// if it is a typo (check-config warns about it) and honour it if the image runs a newer K3s.
fn extra_reaches(key: &str, is_server: bool) -> bool {
    let sub = if is_server {
        Subcommand::Server
    } else {
        Subcommand::Agent
    };
    flags::reaches(key, sub) || (is_server && flags::reach(key) == Reach::Neither)
}

/// Writes config.yaml under `root` atomically with mode 0600 (it holds the token).
pub fn write_config_yaml(root: &Path, text: &str) -> std::io::Result<PathBuf> {
    let path = root.join(CONFIG_YAML_PATH);
    write_atomic(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}

#[derive(Default)]
struct Yaml {
    out: String,
}

impl Yaml {
    fn comment(&mut self, text: &str) {
        let _ = writeln!(self.out, "# {text}");
    }

    fn scalar(&mut self, key: &str, rendered: &str) {
        let _ = writeln!(self.out, "{}: {rendered}", quote_key(key));
    }

    /// Repeatable flags are YAML lists; an empty list is left out (K3s's default applies).
    fn list(&mut self, key: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "{}:", quote_key(key));
        for i in items {
            let _ = writeln!(self.out, "  - {}", quote(i));
        }
    }

    fn value(&mut self, key: &str, v: &toml::Value) {
        match v {
            toml::Value::Array(items) => {
                if items.is_empty() {
                    let _ = writeln!(self.out, "{}: []", quote_key(key));
                    return;
                }
                let _ = writeln!(self.out, "{}:", quote_key(key));
                for i in items {
                    let _ = writeln!(self.out, "  - {}", inline(i));
                }
            }
            other => self.scalar(key, &inline(other)),
        }
    }
}

/// A TOML value as a YAML flow value.
fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => quote(s),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => quote(&d.to_string()),
        toml::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", parts.join(", "))
        }
        toml::Value::Table(t) => {
            let parts: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{}: {}", quote(k), inline(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Keys are K3s flag names (`[a-z0-9-]`); anything else is quoted so it cannot break the document.
fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        key.to_string()
    } else {
        quote(key)
    }
}

/// A YAML double-quoted scalar: always a string, whatever it looks like (`0644`, `true`, `:`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn config() -> ClusterConfig {
        ClusterConfig::from_toml_str(
            "[cluster]\nname = \"lab\"\ntoken = \"unit-secret-abcdefgh\"\nservers = 3\n[k3s]\ndisable = [\"traefik\"]\nextra = { \"kubelet-arg\" = [\"max-pods=60\"], \"kube-apiserver-arg\" = [\"audit-log-maxage=30\"], \"write-kubeconfig-mode\" = \"0644\", \"not-a-k3s-flag\" = \"x\" }\n",
            Path::new("/nonexistent/cluster.toml"),
        )
        .unwrap()
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "lab-a1b2c3".into(),
            node_ip: "198.18.0.11".parse().unwrap(),
            hostname: "lab-a1b2c3".into(),
            etcd_args: vec!["heartbeat-interval=500".into()],
            snapshot_dir: None,
            flannel_iface: Some("eth0".into()),
        }
    }

    #[test]
    fn quoting_keeps_strings_strings() {
        assert_eq!(quote("0644"), "\"0644\"");
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(quote("\u{1}"), "\"\\x01\"");
        assert_eq!(quote_key("kubelet-arg"), "kubelet-arg");
        assert_eq!(quote_key("a: b"), "\"a: b\"");
    }

    #[test]
    fn agent_gets_no_server_keys() {
        let role = K3sRole::Agent {
            server_url: "https://198.18.0.10:6443".into(),
            ca_hash: CaHash::of_bundle(b"ca"),
        };
        let y = render(&config(), &role, &facts());
        for k in [
            "cluster-init",
            "tls-san",
            "disable",
            "etcd-",
            "write-kubeconfig",
            "kube-apiserver-arg",
            "not-a-k3s-flag",
        ] {
            assert!(!y.contains(k), "{k} in {y}");
        }
        assert!(y.contains("kubelet-arg:\n  - \"max-pods=60\"\n"), "{y}");
        assert!(y.contains("flannel-iface: \"eth0\"\n"), "{y}");
        assert!(y.contains(&format!(
            "token: \"K10{}::server:unit-secret-abcdefgh\"",
            CaHash::of_bundle(b"ca")
        )));
    }

    #[test]
    fn servers_get_every_extra_key() {
        let y = render(&config(), &K3sRole::Init, &facts());
        for k in [
            "kubelet-arg:",
            "kube-apiserver-arg:",
            "write-kubeconfig-mode: \"0644\"",
            "not-a-k3s-flag:",
        ] {
            assert!(y.contains(k), "{k} in {y}");
        }
    }

    #[test]
    fn servers_share_the_cluster_wide_keys() {
        let a = render(&config(), &K3sRole::Init, &facts());
        let mut other = facts();
        other.node_name = "lab-ffffff".into();
        other.hostname = "lab-ffffff".into();
        other.node_ip = "198.18.0.12".parse().unwrap();
        let b = render(
            &config(),
            &K3sRole::JoinServer {
                server_url: "https://198.18.0.11:6443".into(),
                ca_hash: CaHash::of_bundle(b"ca"),
            },
            &other,
        );
        let wide = |y: &str| -> Vec<String> {
            y.lines()
                .skip_while(|l| !l.starts_with("disable:"))
                .map(String::from)
                .collect()
        };
        assert_eq!(wide(&a), wide(&b));
        assert!(!wide(&a).is_empty());
    }

    #[test]
    fn one_server_runs_sqlite_more_run_etcd() {
        let one = ClusterConfig::from_toml_str(
            "[cluster]\nname = \"lab\"\ntoken = \"unit-secret-abcdefgh\"\nservers = 1\nnodes = 3\n",
            Path::new("/nonexistent/cluster.toml"),
        )
        .unwrap();
        let y = render(&one, &K3sRole::Init, &facts());
        assert!(!y.contains("cluster-init"), "{y}");
        assert!(y.contains("token: \"unit-secret-abcdefgh\"\n"), "{y}");
        let y = render(&config(), &K3sRole::Init, &facts());
        assert!(y.contains("cluster-init: true\n"), "{y}");
        assert_eq!(Datastore::for_servers(1), Datastore::Sqlite);
        assert_eq!(Datastore::for_servers(3), Datastore::Etcd);
    }

    #[test]
    fn written_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_config_yaml(dir.path(), "token: x\n").unwrap();
        assert_eq!(std::fs::metadata(p).unwrap().mode() & 0o777, 0o600);
    }
}
