//! The agent's client-side load balancer, as K3s v1.31 runs it (pkg/agent/loadbalancer): the
//! agent starts with the configured `server:` as its default, learns the addresses of the live
//! apiservers from the supervisor (`/v1-k3s/apiservers`, pkg/agent/config/config.go:95-123
//! WaitForAPIServers; then tunnel.go:136-160 and its endpoint watch call `Update`), keeps them
//! in `<data>/agent/etc/k3s-agent-load-balancer.json` (`ServerURL`, `ServerAddresses`,
//! loadbalancer/config.go), reloads them at the next start only when `ServerURL` still matches
//! the configured server (config.go `updateConfig`), and fails over to another server when a
//! connection to the current one fails (loadbalancer/servers.go:280-313 `recordFailure`).
//!
//! The double keeps the behaviour firstboot relies on (an agent keeps working when the server it
//! joined dies, and a restarted agent finds a live server), not the TCP proxy itself: its agent
//! sends each request to the current server and moves on when one fails.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The file K3s keeps the supervisor load balancer's state in (service name
/// `k3s-agent-load-balancer`, loadbalancer.go:32-36, :79).
pub const STATE_FILE: &str = "agent/etc/k3s-agent-load-balancer.json";

/// The agent's servers: the configured default and the apiserver addresses learned since.
pub struct AgentLb {
    file: PathBuf,
    /// The configured `server:` URL.
    default: String,
    /// Learned `host:port` addresses, sorted.
    addresses: Vec<String>,
    /// The URL requests go to now.
    current: String,
}

impl AgentLb {
    /// The balancer for `default`, with the addresses saved by an earlier run whose default was
    /// the same server.
    pub fn load(data: &Path, default: &str) -> AgentLb {
        let file = data.join(STATE_FILE);
        // K3s's `lbConfig` (loadbalancer/config.go), field names as K3s writes them.
        let addresses = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .filter(|c| c["ServerURL"] == default)
            .and_then(|c| serde_json::from_value(c["ServerAddresses"].clone()).ok())
            .unwrap_or_default();
        AgentLb {
            file,
            default: default.to_string(),
            addresses,
            current: default.to_string(),
        }
    }

    /// Where requests go now.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Every server URL to try, the current one first, then the default, then the learned ones.
    pub fn candidates(&self) -> Vec<String> {
        let mut out = vec![self.current.clone(), self.default.clone()];
        out.extend(self.addresses.iter().map(|a| format!("https://{a}")));
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|u| seen.insert(u.clone()));
        out
    }

    /// Requests go to `url` from now on.
    pub fn use_server(&mut self, url: &str) {
        if self.current != url {
            crate::log(&format!(
                "level=info msg=\"Server {} -> {url}: the load balancer moved\"",
                self.current
            ));
            self.current = url.to_string();
        }
    }

    /// The live apiservers as the supervisor listed them now; saved when they changed
    /// (loadbalancer.go:127-138 `Update`). An empty list changes nothing.
    pub fn update(&mut self, mut addresses: Vec<String>) -> Result<()> {
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() || addresses == self.addresses {
            return Ok(());
        }
        crate::log(&format!(
            "level=info msg=\"Updated load balancer k3s-agent-load-balancer server addresses -> {addresses:?} [default: {}]\"",
            self.default
        ));
        self.addresses = addresses;
        let config = json!({"ServerURL": self.default, "ServerAddresses": self.addresses});
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&self.file, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", self.file.display()))
    }
}
