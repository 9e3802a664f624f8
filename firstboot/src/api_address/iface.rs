//! The fixed registration address on this node's LAN interface: added with a lifetime (so the
//! kernel drops it by itself if firstboot dies holding it), removed, and announced with
//! gratuitous ARP so the LAN's caches move to this node's MAC at once.

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

/// What the holder does to the interface (a trait, so the holding rules are tested without one).
pub trait AddressOps: Send + std::fmt::Debug {
    /// Adds the address (or refreshes it) so that the kernel drops it after `lifetime_secs`
    /// unless refreshed again.
    fn hold(&mut self, lifetime_secs: u32) -> io::Result<()>;
    /// Removes the address (absent is fine).
    fn release(&mut self) -> io::Result<()>;
    /// Sends gratuitous ARP for the address from this node's MAC.
    fn announce(&mut self) -> io::Result<()>;
}

/// No address to hold (`api_address` unset): the Lease then only decides which one serving
/// server publishes `<cluster name>.local` over mDNS, pointing at its own node-ip.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameOnly;

impl AddressOps for NameOnly {
    fn hold(&mut self, _lifetime_secs: u32) -> io::Result<()> {
        Ok(())
    }
    fn release(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn announce(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The real interface, through `ip` (iproute2, in every Raspberry Pi OS image) and a packet
/// socket for the ARP frames.
#[derive(Debug, Clone)]
pub struct Interface {
    /// The interface holding node-ip (the cluster LAN).
    pub name: String,
    /// The fixed address.
    pub address: Ipv4Addr,
}

impl Interface {
    fn ip(&self, args: &[&str]) -> io::Result<std::process::Output> {
        Command::new("ip").args(args).output()
    }

    fn cidr(&self) -> String {
        format!("{}/32", self.address)
    }
}

impl AddressOps for Interface {
    fn hold(&mut self, lifetime_secs: u32) -> io::Result<()> {
        let lft = lifetime_secs.max(1).to_string();
        // `replace` adds or refreshes; a /32 adds no route of its own.
        let out = self.ip(&[
            "-4",
            "addr",
            "replace",
            &self.cidr(),
            "dev",
            &self.name,
            "valid_lft",
            &lft,
            "preferred_lft",
            &lft,
        ])?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip addr replace {} dev {}: {}",
                self.cidr(),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn release(&mut self) -> io::Result<()> {
        let out = self.ip(&["-4", "addr", "del", &self.cidr(), "dev", &self.name])?;
        let err = String::from_utf8_lossy(&out.stderr);
        // "Cannot assign requested address": it was not there (expired or never added).
        if out.status.success() || err.contains("Cannot assign requested address") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ip addr del {} dev {}: {}",
                self.cidr(),
                self.name,
                err.trim()
            )))
        }
    }

    fn announce(&mut self) -> io::Result<()> {
        let mac = mac_of(&self.name)?;
        let index = nix::net::if_::if_nametoindex(self.name.as_str()).map_err(io::Error::from)?;
        // A gratuitous request and a gratuitous reply: hosts differ in which one updates an
        // existing ARP cache entry, so both go out (as arping -U and -A do).
        send_arp(index, &arp_frame(mac, self.address, ArpOp::Request))?;
        send_arp(index, &arp_frame(mac, self.address, ArpOp::Reply))
    }
}

/// The interface's MAC address, from netlink (the network namespace firstboot runs in).
pub fn mac_of(iface: &str) -> io::Result<[u8; 6]> {
    nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .ok_or_else(|| io::Error::other(format!("{iface} has no Ethernet address")))
}

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has (1).
    Request = 1,
    /// Is at (2).
    Reply = 2,
}

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// A gratuitous ARP Ethernet frame (RFC 5227 section 3: sender and target protocol address are
/// both the announced address), broadcast.
pub fn arp_frame(mac: [u8; 6], address: Ipv4Addr, op: ArpOp) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&(op as u16).to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&address.octets());
    // Target hardware address: zero in a request, broadcast in a reply (as arping -A sends).
    if op == ArpOp::Reply {
        f[32..38].copy_from_slice(&[0xff; 6]);
    }
    f[38..42].copy_from_slice(&address.octets());
    f
}

/// Sends one Ethernet frame on interface `index` through a packet socket.
fn send_arp(index: u32, frame: &[u8]) -> io::Result<()> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() takes plain integers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; zero is a valid value for every field.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and the address outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frames_carry_the_address_as_sender_and_target() {
        let mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
        let a: Ipv4Addr = "198.18.1.240".parse().unwrap();
        let req = arp_frame(mac, a, ArpOp::Request);
        assert_eq!(&req[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&req[6..12], &mac);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[22..28], &mac);
        assert_eq!(&req[28..32], &a.octets());
        assert_eq!(&req[32..38], &[0; 6]);
        assert_eq!(&req[38..42], &a.octets());
        let rep = arp_frame(mac, a, ArpOp::Reply);
        assert_eq!(&rep[20..22], &[0, 2]);
        assert_eq!(&rep[32..38], &[0xff; 6]);
    }
}
