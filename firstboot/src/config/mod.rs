//! The `cluster.toml` contract (schema version 1): raw serde structs validated into [`ClusterConfig`].
//!
//! Reading goes in three steps: a schema walk over the TOML document (unknown keys, value kinds,
//! "did you mean"), serde into the span-carrying `raw` structs, then `validate` into the
//! typed [`ClusterConfig`] that the rest of the program uses. Every error names the file, line,
//! column and key, and none ever contains the token.

pub mod cron;
pub mod diagnostic;
pub mod duration;
mod raw;
mod schema;
pub mod token;
mod validate;

pub use diagnostic::{ConfigError, Diagnostic};
pub use schema::{key_kind, Kind};
pub use token::Token;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this build understands.
pub const SCHEMA_VERSION: i64 = 1;
/// Tokens used in the shipped examples; a cluster using one is warned about.
pub const PLACEHOLDER_TOKENS: &[&str] = &["example-token-replace-me"];
/// The file name on the boot partition.
pub const FILE_NAME: &str = "cluster.toml";

/// A validated `cluster.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Cluster name: a DNS label, also the hostname prefix.
    pub name: String,
    /// The shared secret.
    pub token: Token,
    /// Where the token came from (inline or a file beside cluster.toml).
    pub token_source: TokenSource,
    /// Desired number of K3s servers (etcd members): 1, 3, 5 or 7.
    pub servers: u8,
    /// Bootstrap electorate: how many nodes share this token at first boot.
    pub nodes: u8,
    /// How long a server must be gone (not Ready in K3s, not seen on the LAN) before it is
    /// removed and its seat refilled (SPEC 4.4); `None` when `replace_after = "off"`.
    pub replace_after: Option<Duration>,
    /// The fixed registration address (SPEC 4.5): one serving server holds it at a time; `None`
    /// when `api_address` is not set.
    pub api_address: Option<std::net::Ipv4Addr>,
    /// Per-card overrides.
    pub node: NodeSettings,
    /// Settings passed into K3s's config.yaml.
    pub k3s: K3sSettings,
    /// Storage profile and data device.
    pub storage: StorageSettings,
    /// etcd snapshot settings.
    pub snapshots: SnapshotSettings,
    /// How long to wait for things.
    pub timeouts: Timeouts,
    /// Status LED.
    pub status: StatusSettings,
}

/// Where the token was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `token = "..."` in cluster.toml.
    Inline,
    /// `token_file = "..."`, resolved beside cluster.toml.
    File(PathBuf),
}

/// The role this card asks for (`node.role`).
pub use crate::model::RolePin;

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// Requested role.
    pub role: RolePin,
    /// Explicit hostname; `None` means `<name>-<last 6 hex of the serial>`.
    pub hostname: Option<String>,
}

/// `[k3s]`
#[derive(Debug, Clone, PartialEq)]
pub struct K3sSettings {
    /// Components to disable (`disable` in config.yaml).
    pub disable: Vec<String>,
    /// Extra subject alternative names for the API server certificate.
    pub tls_san: Vec<String>,
    /// Taints for this node, `key[=value]:Effect`.
    pub node_taints: Vec<String>,
    /// Any other K3s config keys, verbatim.
    pub extra: BTreeMap<String, toml::Value>,
}

/// `[storage] profile`: measure, or force the SD or SSD tuning (the storage step uses it as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageProfile {
    /// Measure the device and decide.
    #[default]
    Auto,
    /// Treat the device as an SD card whatever the probe says.
    Sd,
    /// Treat the device as an SSD whatever the probe says.
    Ssd,
}

/// `[storage] data_device` (the storage step uses it as is).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataDevice {
    /// Keep `/var/lib/rancher` on the root filesystem.
    #[default]
    None,
    /// Use the one empty non-boot disk if there is exactly one.
    Auto,
    /// Use this block device.
    Path(PathBuf),
}

impl std::str::FromStr for StorageProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(StorageProfile::Auto),
            "sd" => Ok(StorageProfile::Sd),
            "ssd" => Ok(StorageProfile::Ssd),
            other => Err(format!(
                "unknown storage profile {other:?}: expected auto, sd or ssd"
            )),
        }
    }
}

impl std::str::FromStr for DataDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Ok(DataDevice::None),
            "auto" => Ok(DataDevice::Auto),
            p if p.starts_with("/dev/") => Ok(DataDevice::Path(PathBuf::from(p))),
            other => Err(format!(
                "data_device {other:?} must be \"\", \"auto\" or a device path under /dev/"
            )),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// Storage profile.
    pub profile: StorageProfile,
    /// Where `/var/lib/rancher` should live.
    pub data_device: DataDevice,
    /// Allow formatting a disk that already has a partition table or filesystem.
    pub data_device_force: bool,
}

/// `[snapshots]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// Cron schedule (validated).
    pub schedule: String,
    /// Snapshots kept.
    pub retention: u32,
    /// Snapshot directory; `None` lets firstboot pick (a non-SD disk when there is one).
    pub dir: Option<PathBuf>,
}

/// `[timeouts]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Give up waiting for a majority after this long (status "blocked").
    pub bootstrap: Duration,
    /// Wait this long for NTP before creating certificates.
    pub time_sync: Duration,
}

/// `[status]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSettings {
    /// BCM pin of the status LED, if any.
    pub led_gpio: Option<u8>,
}

impl ClusterConfig {
    /// Reads and validates a `cluster.toml` file (and its `token_file`, if any).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::whole_file(
                path,
                format!("cannot read the file: {e}"),
                "check the path; on a node the file is /boot/firmware/cluster.toml",
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ConfigError::whole_file(
                path,
                "the file is not UTF-8 text",
                "save it as plain UTF-8 text (not a word-processor document)",
            )
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Validates `text` as the contents of the file at `origin`; `token_file` is resolved in
    /// `origin`'s directory.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        validate::parse(text, origin)
    }

    /// Things that are valid but probably not what the user wants (never mentions the token's value).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if PLACEHOLDER_TOKENS.contains(&self.token.expose()) {
            out.push(
                "the token is the placeholder from the examples: anyone who has read them can join this cluster; run `imagebuild token` and use its output".to_string(),
            );
        }
        out.extend(self.k3s_extra_warnings());
        if self.servers == 1 && self.nodes > 1 {
            out.push(format!(
                "servers = 1: the cluster has no HA control plane; with {} nodes consider servers = 3",
                self.nodes
            ));
        }
        out
    }

    /// `[k3s] extra` keys K3s would not take: a key no subcommand of the pinned K3s defines,
    /// and a value K3s's flag parsing would refuse (the K3s unit would then never start).
    fn k3s_extra_warnings(&self) -> Vec<String> {
        use crate::k3s::flags::{self, Reach, Subcommand};
        let mut out = Vec::new();
        for (key, value) in &self.k3s.extra {
            let name = key.strip_suffix('+').unwrap_or(key);
            match flags::reach(name) {
                Reach::Neither => {
                    let all = Subcommand::Server
                        .flags()
                        .iter()
                        .chain(Subcommand::Agent.flags())
                        .map(|f| f.name);
                    let hint = match schema::did_you_mean(name, all) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => "check the spelling against `k3s server --help`".to_string(),
                    };
                    out.push(format!(
                        "k3s.extra.{key}: no subcommand of K3s {} defines \"{name}\": servers skip it with a warning (\"Unknown flag\"), agents are not given it; {hint}",
                        flags::K3S_VERSION
                    ));
                }
                reach => {
                    let sub = if reach == Reach::AgentOnly {
                        Subcommand::Agent
                    } else {
                        Subcommand::Server
                    };
                    let Some(flag) = sub.flag(name) else { continue };
                    let values: Vec<String> = match value {
                        toml::Value::Array(items) => items.iter().map(toml_as_flag_value).collect(),
                        other => vec![toml_as_flag_value(other)],
                    };
                    for v in values {
                        if let Err(e) = flag.check_value(&v) {
                            out.push(format!(
                                "k3s.extra.{key}: K3s would refuse to start: {e}; write a value of the flag's type"
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// One line for humans: everything that matters, with the token redacted.
    pub fn summary(&self) -> String {
        let role = self.node.role.as_str();
        let token = match &self.token_source {
            TokenSource::Inline => "inline".to_string(),
            TokenSource::File(p) => format!("from {}", p.display()),
        };
        let led = match self.status.led_gpio {
            Some(pin) => format!("GPIO {pin}"),
            None => "none".to_string(),
        };
        format!(
            "cluster \"{}\": {} server(s) among {} bootstrap node(s), role {}, storage {}, snapshots \"{}\" keep {}, bootstrap timeout {}, LED {}, token {} ({})",
            self.name,
            self.servers,
            self.nodes,
            role,
            match self.storage.profile {
                StorageProfile::Auto => "auto",
                StorageProfile::Sd => "sd",
                StorageProfile::Ssd => "ssd",
            },
            self.snapshots.schedule,
            self.snapshots.retention,
            duration::format_duration(self.timeouts.bootstrap),
            led,
            self.token,
            token,
        )
    }
}

/// A TOML value as the text K3s's flag parser sees for it.
fn toml_as_flag_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_about_extra_keys_k3s_would_not_take() {
        let c = ClusterConfig::from_toml_str(
            "[cluster]\nname = \"lab\"\ntoken = \"unit-secret-abcdefgh\"\nservers = 3\n[k3s]\nextra = { \"write-kubeconfig-mod\" = \"0644\", \"kubelet-arg\" = [\"max-pods=60\"], \"lb-server-port\" = \"six\" }\n",
            Path::new("/nonexistent/cluster.toml"),
        )
        .unwrap();
        let w = c.warnings().join("\n");
        assert!(
            w.contains("k3s.extra.write-kubeconfig-mod: no subcommand of K3s"),
            "{w}"
        );
        assert!(w.contains("did you mean \"write-kubeconfig-mode\"?"), "{w}");
        assert!(
            w.contains("k3s.extra.lb-server-port: K3s would refuse to start"),
            "{w}"
        );
        assert!(!w.contains("kubelet-arg"), "{w}");
    }
}
