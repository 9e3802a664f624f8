//! flannel's choice of its external interface, as K3s makes it, and its fatal failure when that
//! interface has no IPv4 address. Citations are to K3s v1.31.10 (c02ce139f) and flannel v0.25.
//!
//! K3s: `flannel-iface` is looked up by name (pkg/agent/config/config.go:452-456, "unable to find
//! interface"); without it `LookupExtInterface` takes the default-gateway interface
//! (pkg/agent/flannel/flannel.go:134-139, "failed to get default interface") and its first IPv4
//! address (flannel.go:148-153, "failed to find IPv4 address for interface"). A failing flannel
//! is `logrus.Errorf("flannel exited: %v")` then `os.Exit(1)` (pkg/agent/flannel/setup.go:106-110).

use anyhow::{bail, Result};
use std::net::Ipv4Addr;

/// The interface of the first IPv4 default route in this network namespace, as flannel's
/// `ip.GetDefaultGatewayInterface` finds it (the route table with destination 0.0.0.0/0).
fn default_gateway_interface() -> Result<String> {
    let table = std::fs::read_to_string(firstboot::default_route::PROC_NET_ROUTE)?;
    match firstboot::default_route::default_route_interface(&table) {
        Some(i) => Ok(i),
        None => bail!("failed to get default interface: Unable to find default route"),
    }
}

/// The first IPv4 address of `iface`, or flannel's error (an interface that does not exist is
/// K3s's "unable to find interface").
fn first_ipv4(iface: &str, named_by_config: bool) -> Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs()?;
    let mut exists = false;
    let mut found = None;
    for a in addrs.filter(|a| a.interface_name == iface) {
        exists = true;
        if let Some(v4) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            found.get_or_insert(v4.ip());
        }
    }
    if !exists && named_by_config {
        bail!("unable to find interface {iface}: route ip+net: no such network interface");
    }
    match found {
        Some(ip) => Ok(ip),
        None => bail!(
            "flannel exited: failed to find IPv4 address for interface {iface}: No IPv4 address found for given interface"
        ),
    }
}

/// The interface and address flannel would use as its VXLAN endpoint, or K3s's fatal error.
pub fn external_interface(flannel_iface: Option<&str>) -> Result<(String, Ipv4Addr)> {
    let (iface, named) = match flannel_iface {
        Some(i) if !i.is_empty() => (i.to_string(), true),
        _ => (
            default_gateway_interface().map_err(|e| anyhow::anyhow!("flannel exited: {e:#}"))?,
            false,
        ),
    };
    let ip = first_ipv4(&iface, named)?;
    Ok((iface, ip))
}
