//! Lifecycle step 7: write config.yaml, make sure there is a default route, start K3s and follow it.

use super::config_yaml::{render, write_config_yaml, CONFIG_YAML_PATH};
use super::stale_data;
use super::started_config::{self, decide, must_stop, ConfigDigest, UnitAction};
use super::{local_ca_hash, other_unit, unit_for, CaHash, K3sRole, NodeFacts};
use crate::config::ClusterConfig;
use crate::default_route::{ensure_default_route, DefaultRoute};
use crate::systemd::{ActiveState, Systemd};
use std::path::Path;
use std::time::Duration;

/// What bringing K3s up ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroughtUp {
    /// The unit's state when following stopped.
    pub state: ActiveState,
    /// What was done about the default route (`None`: not managed, e.g. under a test root).
    pub route: Option<DefaultRoute>,
    /// On a server once active: the CA hash to announce to joiners.
    pub ca_hash: Option<CaHash>,
    /// Where a server data directory that firstboot's K3s did not create was moved this round.
    pub set_aside: Option<std::path::PathBuf>,
}

/// Why K3s could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum BringUpError {
    /// Writing config.yaml failed.
    #[error("writing {CONFIG_YAML_PATH}: {0}")]
    Config(std::io::Error),
    /// Adding the dummy default route failed.
    #[error("adding a default route: {0}")]
    Route(std::io::Error),
    /// systemd refused or could not be reached.
    #[error("starting, restarting or stopping K3s through systemd")]
    Systemd(#[from] zbus::Error),
    /// K3s is active but its CA file is unreadable.
    #[error("reading the cluster CA: {0}")]
    Ca(std::io::Error),
    /// Listing the network interfaces failed.
    #[error("listing network interfaces: {0}")]
    Interfaces(std::io::Error),
    /// Hashing the K3s configuration or recording it failed.
    #[error("recording which configuration K3s started with ({path}): {0}", path = started_config::STARTED_CONFIG_PATH)]
    StartedConfig(std::io::Error),
    /// Checking for, or setting aside, a stale K3s server data directory failed.
    #[error("setting aside a K3s server data directory that firstboot's K3s did not create ({path}): {0}", path = super::stale_data::SERVER_DATA_MARKER)]
    StaleData(std::io::Error),
    /// The node-ip fixed at first boot is on no interface any more.
    #[error("node-ip {0} (fixed in k3s-plan.json when the node joined) is on no interface any more, probably because DHCP gave this node another address; K3s's etcd cannot move to a new address, so K3s is not started. Fix: give this node its old address back (a DHCP reservation or a static address for its MAC), then reboot")]
    NodeIpGone(std::net::IpAddr),
}

/// The facts config.yaml is rendered from on the live system: flannel-iface is the interface
/// holding node-ip (K3s never derives it from node-ip); node-ip is frozen in the plan, and an
/// address that moved is refused, not followed.
fn live_facts(facts: &NodeFacts, live: bool) -> Result<NodeFacts, BringUpError> {
    let mut facts = facts.clone();
    if live {
        match super::node_ip::interface_holding(facts.node_ip).map_err(BringUpError::Interfaces)? {
            Some(iface) => facts.flannel_iface = Some(iface),
            None => return Err(BringUpError::NodeIpGone(facts.node_ip)),
        }
    }
    Ok(facts)
}

/// Rewrites config.yaml of a node that has joined for a new `server:` (`role` names it), without
/// restarting K3s: K3s reads `server:` only to join. A server whose etcd data exists starts as
/// the existing member and asks nobody (pkg/etcd/etcd.go:455-476, pkg/cluster/bootstrap.go
/// shouldBootstrapLoad; brandond in k3s-io/k3s#11333: "Etcd nodes can always start up, as they
/// can reconcile against their local datastore"), and an agent's load balancer follows the
/// servers K3s itself lists, rewriting its cached list when the default server differs
/// (pkg/agent/loadbalancer/config.go:28-41). So when the unit runs with the configuration on
/// disk before the rewrite (the record of [`super::started_config`] matches it), the record
/// moves to the new configuration; otherwise it is left, and the next bring-up restarts K3s as
/// it would have anyway. A crash between the write and the record costs one needless restart.
pub fn retarget(
    root: &Path,
    config: &ClusterConfig,
    role: &K3sRole,
    facts: &NodeFacts,
    live: bool,
) -> Result<(), BringUpError> {
    let facts = live_facts(facts, live)?;
    let yaml = render(config, role, &facts);
    let before = ConfigDigest::of_root(root).map_err(BringUpError::StartedConfig)?;
    let started_with = started_config::load_started(root).map_err(BringUpError::StartedConfig)?;
    write_config_yaml(root, &yaml).map_err(BringUpError::Config)?;
    if started_with == Some(before) {
        let after = ConfigDigest::of_root(root).map_err(BringUpError::StartedConfig)?;
        started_config::save_started(root, after).map_err(BringUpError::StartedConfig)?;
    }
    Ok(())
}

/// Brings K3s up for `role`; safe to repeat after a crash at any point: config.yaml is
/// rewritten only when it differs, the route only added when missing, the other role's unit
/// stopped and disabled, and this role's unit started when stopped, restarted when it runs with
/// another configuration than the one on disk (see [`super::started_config`]), else followed;
/// on a server's first bring-up a stale server data directory is set aside first (see
/// [`super::stale_data`]). `live` is false when `root` is not the live system: then neither the
/// default route nor the interfaces (flannel-iface, node-ip still held) are looked at.
pub async fn bring_up(
    root: &Path,
    config: &ClusterConfig,
    role: &K3sRole,
    facts: &NodeFacts,
    systemd: &Systemd,
    live: bool,
    limit: Duration,
) -> Result<BroughtUp, BringUpError> {
    let facts = live_facts(facts, live)?;
    let yaml = render(config, role, &facts);
    let current = std::fs::read_to_string(root.join(CONFIG_YAML_PATH)).ok();
    if current.as_deref() != Some(yaml.as_str()) {
        write_config_yaml(root, &yaml).map_err(BringUpError::Config)?;
    }
    let route = if live {
        Some(ensure_default_route().map_err(BringUpError::Route)?)
    } else {
        None
    };
    let other = other_unit(role);
    if must_stop(&systemd.active_state(other).await?) {
        tracing::warn!(
            unit = other,
            "the other role's K3s unit is running: stopping it"
        );
        let state = systemd.stop(other, Duration::from_secs(90)).await?;
        tracing::info!(unit = other, ?state, "stopped");
    }
    for link in systemd.disable(other).await? {
        tracing::warn!(unit = other, link, "disabled the other role's K3s unit");
    }
    let unit = unit_for(role);
    let mut set_aside = None;
    if !matches!(role, K3sRole::Agent { .. }) {
        // K3s never starts over on data it finds (see super::stale_data): a server directory
        // from before firstboot's first server start is moved away with K3s stopped.
        if stale_data::is_stale(root).map_err(BringUpError::StaleData)? {
            if must_stop(&systemd.active_state(unit).await?) {
                tracing::warn!(
                    unit,
                    "K3s runs on a data directory firstboot did not create: stopping it"
                );
                systemd.stop(unit, Duration::from_secs(90)).await?;
            }
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let to = stale_data::set_aside(root, unix).map_err(BringUpError::StaleData)?;
            tracing::warn!(to = %to.display(), "moved a stale K3s server data directory aside");
            set_aside = Some(to);
        }
        stale_data::claim(root).map_err(BringUpError::StaleData)?;
    }
    let on_disk = ConfigDigest::of_root(root).map_err(BringUpError::StartedConfig)?;
    let started_with = started_config::load_started(root).map_err(BringUpError::StartedConfig)?;
    let current = systemd.active_state(unit).await?;
    let action = decide(&current, started_with, on_disk);
    match action {
        UnitAction::Restart => {
            tracing::warn!(unit, state = ?current, "K3s runs with another configuration than config.yaml: restarting it");
            systemd.restart(unit).await?;
        }
        UnitAction::Start => tracing::info!(unit, "starting K3s"),
        UnitAction::Follow => tracing::debug!(unit, "K3s runs with this configuration"),
    }
    if action != UnitAction::Follow {
        started_config::save_started(root, on_disk).map_err(BringUpError::StartedConfig)?;
    }
    // StartUnit after a restart or on a running unit is a no-op; it starts a stopped one.
    let state = systemd
        .start_and_follow(unit, limit, Duration::from_secs(1))
        .await?;
    let ca_hash = match (role, &state) {
        // Every server holds the cluster CA (K3s bootstraps it to joined servers), so every
        // serving server can announce it to joiners.
        (K3sRole::Init | K3sRole::JoinServer { .. }, ActiveState::Active) => {
            Some(local_ca_hash(root).map_err(BringUpError::Ca)?)
        }
        _ => None,
    };
    Ok(BroughtUp {
        state,
        route,
        ca_hash,
        set_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k3s::CaHash;

    fn config() -> ClusterConfig {
        ClusterConfig::from_toml_str(
            "[cluster]\nname = \"lab\"\ntoken = \"unit-secret-abcdefgh\"\nservers = 3\n",
            Path::new("/nonexistent/cluster.toml"),
        )
        .unwrap()
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "lab-a1b2c3".into(),
            node_ip: "198.18.0.11".parse().unwrap(),
            hostname: "lab-a1b2c3".into(),
            etcd_args: vec![],
            snapshot_dir: None,
            flannel_iface: Some("eth0".into()),
        }
    }

    fn agent(server: &str) -> K3sRole {
        K3sRole::Agent {
            server_url: format!("https://{server}:6443"),
            ca_hash: CaHash::of_bundle(b"ca"),
        }
    }

    #[test]
    fn retargeting_a_unit_started_with_the_old_config_moves_the_record_with_it() {
        let root = tempfile::tempdir().unwrap();
        let (config, facts) = (config(), facts());
        write_config_yaml(root.path(), &render(&config, &agent("198.18.0.10"), &facts)).unwrap();
        let old = ConfigDigest::of_root(root.path()).unwrap();
        started_config::save_started(root.path(), old).unwrap();

        retarget(root.path(), &config, &agent("198.18.0.12"), &facts, false).unwrap();

        let yaml = std::fs::read_to_string(root.path().join(CONFIG_YAML_PATH)).unwrap();
        assert!(yaml.contains("https://198.18.0.12:6443"), "{yaml}");
        assert!(!yaml.contains("198.18.0.10"), "{yaml}");
        let now = ConfigDigest::of_root(root.path()).unwrap();
        assert_ne!(now, old);
        // No restart: the running unit counts as started with what is on disk now.
        assert_eq!(
            started_config::load_started(root.path()).unwrap(),
            Some(now)
        );
    }

    #[test]
    fn retargeting_leaves_a_record_of_another_config_so_the_restart_still_comes() {
        let root = tempfile::tempdir().unwrap();
        let (config, facts) = (config(), facts());
        write_config_yaml(root.path(), &render(&config, &agent("198.18.0.10"), &facts)).unwrap();
        // The unit runs with something else than the file (e.g. a drop-in changed since).
        let other = ConfigDigest::of_root(Path::new("/nonexistent")).unwrap();
        started_config::save_started(root.path(), other).unwrap();

        retarget(root.path(), &config, &agent("198.18.0.12"), &facts, false).unwrap();

        assert_eq!(
            started_config::load_started(root.path()).unwrap(),
            Some(other),
            "the record of another configuration must stay, so bring-up still restarts K3s"
        );
    }
}
