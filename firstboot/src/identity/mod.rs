//! Who this node is (lifecycle step 2, see docs/architecture.md): a stable node id and the hostname derived from it.

pub mod early;
pub mod hostname;
pub mod hosts;
pub mod node_id;

pub use hostname::{hostname_for, set_hostname};
pub use node_id::{node_id, IdSource, NodeId};

use anyhow::Context;
use std::path::Path;

/// Sets static and transient hostname through systemd-hostnamed and names it on the `127.0.1.1`
/// line of `<root>/etc/hosts`.
pub async fn set_hostname_and_hosts(
    conn: &zbus::Connection,
    root: &Path,
    hostname: &str,
) -> anyhow::Result<()> {
    set_hostname(conn, hostname)
        .await
        .context("setting the hostname through systemd-hostnamed")?;
    hosts::update_hosts(root, hostname).with_context(|| {
        format!(
            "naming {hostname} in {}",
            root.join(crate::paths::HOSTS).display()
        )
    })?;
    Ok(())
}
