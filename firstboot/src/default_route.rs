//! A dummy default route for air-gapped LANs: K3s needs one to start, and some sites have none.
//!
//! The route goes through a dummy interface with a high metric, so packets to unknown
//! destinations are dropped locally and a real default route (DHCP, later) always wins.
//! The dummy gets an address, as in K3s's air-gap docs ("Default Network Route",
//! docs/installation/airgap.md: `ip addr add 203.0.113.254/31 dev dummy0; ip route add default
//! via 203.0.113.255 dev dummy0 metric 1000`): a component that looks up the default-route
//! interface's IPv4 (flannel without `flannel-iface`, pkg/agent/flannel/flannel.go:134-153)
//! must not find it address-less. firstboot also writes `flannel-iface`, so flannel never
//! advertises this TEST-NET-3 address.
//! Kernels without the `dummy` driver get a bridge with no ports instead, which drops
//! the same way (a switch with no cables).

use std::io;
use std::process::Command;

/// Name of the dummy interface firstboot creates.
pub const DUMMY_INTERFACE: &str = "fb-dummy0";
/// Metric of the dummy route: above any real one.
pub const DUMMY_METRIC: u32 = 10_000;
/// The current thread's network namespace's IPv4 routes (thread-self: a test may have entered another namespace).
pub const PROC_NET_ROUTE: &str = "/proc/thread-self/net/route";

/// The dummy interface's address and prefix (TEST-NET-3, RFC 5737; the K3s docs' choice).
pub const DUMMY_ADDRESS: &str = "203.0.113.254/31";
/// The other address of the /31: the default route's gateway.
pub const DUMMY_GATEWAY: &str = "203.0.113.255";

/// RTF_UP in /proc/net/route flags.
const RTF_UP: u32 = 0x1;

/// What [`ensure_default_route`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultRoute {
    /// A default route existed already (through this interface).
    Present(String),
    /// None existed: one was added through [`DUMMY_INTERFACE`].
    AddedDummy,
}

/// The interface of the first IPv4 default route in `/proc/net/route` text, if any.
pub fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f.len() < 8 {
            return None;
        }
        let flags = u32::from_str_radix(f[3], 16).ok()?;
        (f[1] == "00000000" && f[7] == "00000000" && flags & RTF_UP != 0).then(|| f[0].to_string())
    })
}

/// Adds a default route through a dummy interface if the namespace has none. Idempotent:
/// an existing dummy interface is reused, an existing default route is left alone.
pub fn ensure_default_route() -> io::Result<DefaultRoute> {
    let table = std::fs::read_to_string(PROC_NET_ROUTE)?;
    if let Some(iface) = default_route_interface(&table) {
        return Ok(DefaultRoute::Present(iface));
    }
    let exists = Command::new("ip")
        .args(["link", "show", "dev", DUMMY_INTERFACE])
        .output()?
        .status
        .success();
    if !exists {
        if let Err(dummy) = ip(&["link", "add", DUMMY_INTERFACE, "type", "dummy"]) {
            tracing::info!(error = %dummy, "no dummy driver; using an empty bridge");
            ip(&["link", "add", DUMMY_INTERFACE, "type", "bridge"])?;
        }
    }
    ip(&["addr", "replace", DUMMY_ADDRESS, "dev", DUMMY_INTERFACE])?;
    ip(&["link", "set", "dev", DUMMY_INTERFACE, "up"])?;
    let metric = DUMMY_METRIC.to_string();
    ip(&[
        "route",
        "replace",
        "default",
        "via",
        DUMMY_GATEWAY,
        "dev",
        DUMMY_INTERFACE,
        "metric",
        &metric,
    ])?;
    Ok(DefaultRoute::AddedDummy)
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    #[test]
    fn finds_the_default_route() {
        let with = format!("{HEADER}eth0\t00000000\t010012C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\neth0\t000012C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n");
        assert_eq!(default_route_interface(&with).as_deref(), Some("eth0"));
        let without =
            format!("{HEADER}eth0\t000012C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n");
        assert_eq!(default_route_interface(&without), None);
        let down =
            format!("{HEADER}eth0\t00000000\t010012C6\t0002\t0\t0\t100\t00000000\t0\t0\t0\n");
        assert_eq!(default_route_interface(&down), None);
        assert_eq!(default_route_interface(HEADER), None);
    }
}
