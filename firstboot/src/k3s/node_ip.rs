//! The node's LAN address for K3s `node-ip`: the local address that routes to the cluster's peers.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// The local address the kernel would send from to reach `peer` (no packet is sent: a UDP
/// `connect` only picks the route and the source address).
pub fn address_towards(peer: IpAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match peer {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = UdpSocket::bind(any)?;
    // The discard port: nothing is ever sent to it, connect only selects the route.
    socket.connect(SocketAddr::new(peer, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// The first IPv4 address of an interface that is up, not loopback and not firstboot's dummy
/// route interface: the LAN address of a node with no peer to route towards (a one-node cluster).
pub fn first_lan_address() -> io::Result<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    addrs
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
                && a.interface_name != crate::default_route::DUMMY_INTERFACE
        })
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no interface that is up has an IPv4 address",
            )
        })
}

/// The interface that holds `addr` (K3s's `flannel-iface` for a node whose node-ip is `addr`),
/// or `None` when no interface has it any more (e.g. DHCP gave the node another address).
pub fn interface_holding(addr: IpAddr) -> io::Result<Option<String>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| {
            let held = a.address.as_ref().and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            });
            held == Some(addr)
        })
        .map(|a| a.interface_name)
        .next())
}

/// The node's LAN address: towards `peer` when one is known, else the first LAN address.
pub fn node_ip(peer: Option<IpAddr>) -> io::Result<IpAddr> {
    match peer {
        Some(peer) => address_towards(peer),
        None => first_lan_address(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_from_loopback() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(address_towards(lo).unwrap(), lo);
    }

    #[test]
    fn loopback_address_is_held_by_lo() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(interface_holding(lo).unwrap().as_deref(), Some("lo"));
        let gone: IpAddr = "192.0.2.77".parse().unwrap();
        assert_eq!(interface_holding(gone).unwrap(), None);
    }
}
