//! The node's hostname: `<cluster name>-<last 6 hex of the node id>`, set through systemd-hostnamed.

use super::node_id::NodeId;
use zbus::proxy;
use zbus::proxy::CacheProperties;

/// The hostname this node should carry; a non-empty `pinned` (cluster.toml `node.hostname`) wins.
pub fn hostname_for(cluster_name: &str, id: NodeId, pinned: Option<&str>) -> String {
    match pinned.map(str::trim).filter(|p| !p.is_empty()) {
        Some(pinned) => pinned.to_ascii_lowercase(),
        None => format!("{}-{}", cluster_name.to_ascii_lowercase(), id.suffix()),
    }
}

/// `org.freedesktop.hostname1` (systemd-hostnamed).
#[proxy(
    interface = "org.freedesktop.hostname1",
    default_service = "org.freedesktop.hostname1",
    default_path = "/org/freedesktop/hostname1",
    gen_blocking = false
)]
pub trait Hostname1 {
    /// Sets the static hostname (written to `/etc/hostname`).
    fn set_static_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
    /// Sets the transient (kernel) hostname.
    fn set_hostname(&self, hostname: &str, interactive: bool) -> zbus::Result<()>;
    /// The static hostname.
    #[zbus(property)]
    fn static_hostname(&self) -> zbus::Result<String>;
    /// The kernel hostname.
    #[zbus(property)]
    fn hostname(&self) -> zbus::Result<String>;
}

/// Sets static and transient hostname to `name` unless both already are; returns true if it changed.
pub async fn set_hostname(conn: &zbus::Connection, name: &str) -> zbus::Result<bool> {
    let hostnamed = Hostname1Proxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut changed = false;
    if hostnamed.static_hostname().await? != name {
        hostnamed.set_static_hostname(name, false).await?;
        changed = true;
    }
    if hostnamed.hostname().await? != name {
        hostnamed.set_hostname(name, false).await?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_pinned_hostnames() {
        let id = NodeId::parse("10000000ABCDEF12").expect("hex id");
        assert_eq!(hostname_for("homelab", id, None), "homelab-cdef12");
        assert_eq!(hostname_for("homelab", id, Some("")), "homelab-cdef12");
        assert_eq!(hostname_for("homelab", id, Some("Gateway")), "gateway");
    }
}
