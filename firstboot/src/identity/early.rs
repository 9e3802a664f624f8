//! `firstboot identity`: the node's hostname, set early in boot by `firstboot-identity.service`
//! (ordered before `avahi-daemon.service` and `firstboot.service`), so avahi-daemon's first
//! announcement already carries the node's own name. Cards flashed from one image all boot as
//! `raspberrypi`; announced at the same instant, their avahi-daemons collide and rename in
//! lockstep (`raspberrypi-2`, `-3`, ...) until avahi's conflict rate limit, which held up
//! formation by up to two minutes.
//!
//! Read-only towards the config: it takes the cluster name and pinned hostname from the config
//! `firstboot run`'s intake will use (a stamped boot copy unless the node already joined with
//! its root copy; else the root copy) and moves nothing; intake stays `firstboot run`'s step.
//! The hostname is the one `firstboot run` sets ([`hostname_for`] of the same node id), so the
//! run's own identity step then finds it already set.

use super::{hostname_for, node_id, set_hostname_and_hosts};
use crate::config::ClusterConfig;
use crate::intake::root_config_path;
use crate::paths::Paths;
use crate::status::state::NodeState;
use anyhow::Context;

/// The config `firstboot run`'s intake will run with, read without moving or scrubbing anything.
pub fn config_for_identity(paths: &Paths) -> anyhow::Result<ClusterConfig> {
    let root_file = root_config_path(paths.root());
    let joined = NodeState::load(paths.root())
        .ok()
        .flatten()
        .is_some_and(|s| s.phase.has_joined());
    let boot_file = paths.boot_cluster_toml();
    // A scrubbed boot copy no longer validates (its token moved): the root copy is then used.
    let boot = ClusterConfig::load(&boot_file);
    if root_file.exists() && (joined || boot.is_err()) {
        return ClusterConfig::load(&root_file)
            .with_context(|| format!("reading {}", root_file.display()));
    }
    boot.with_context(|| format!("reading {}", boot_file.display()))
}

/// Sets the hostname (static and transient, through systemd-hostnamed) and the `127.0.1.1` line
/// of `/etc/hosts`; returns the hostname.
pub fn run(paths: &Paths) -> anyhow::Result<String> {
    let config = config_for_identity(paths)?;
    let (id, source) = node_id(paths).context("finding the node id")?;
    let hostname = hostname_for(&config.name, id, config.node.hostname.as_deref());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let conn = zbus::Connection::system()
                .await
                .context("connecting to the system bus")?;
            set_hostname_and_hosts(&conn, paths.root(), &hostname).await
        })?;
    tracing::info!(node = %id, ?source, %hostname, "identity set before mDNS starts");
    Ok(hostname)
}
