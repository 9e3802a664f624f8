//! A one-shot mDNS lookup from a test host that runs no avahi: a legacy unicast query (RFC 6762
//! section 6.7: sent from a port other than 5353, answered by unicast to it) for a name's IPv4
//! address, as a laptop's resolver would ask on the LAN.

use nix::libc;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The IPv4 addresses that answered for `name` (e.g. `machines.local`) within `wait`, asked from
/// `from` (an address of this namespace) to the mDNS group.
pub fn resolve_v4(name: &str, from: Ipv4Addr, wait: Duration) -> std::io::Result<Vec<Ipv4Addr>> {
    let socket = UdpSocket::bind(SocketAddrV4::new(from, 0))?;
    let iface = libc::in_addr {
        s_addr: u32::from_ne_bytes(from.octets()),
    };
    // SAFETY: the option value is a valid in_addr for the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            std::ptr::addr_of!(iface).cast(),
            std::mem::size_of::<libc::in_addr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let id: u16 = 0x4b33;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&q, SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353))?;
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        };
        for a in answers_v4(&buf[..n]) {
            if !found.contains(&a) {
                found.push(a);
            }
        }
    }
    Ok(found)
}

/// Skips a (possibly compressed) name at `at`; the offset after it.
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *p.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

/// The A records among a DNS message's answers.
fn answers_v4(p: &[u8]) -> Vec<Ipv4Addr> {
    let count = |i: usize| {
        p.get(i..i + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (questions, answers) = (count(4), count(6));
    let mut at = 12;
    let mut out = Vec::new();
    for _ in 0..questions {
        match skip_name(p, at) {
            Some(next) => at = next + 4,
            None => return out,
        }
    }
    for _ in 0..answers {
        let Some(next) = skip_name(p, at) else {
            return out;
        };
        let Some(h) = p.get(next..next + 10) else {
            return out;
        };
        let kind = u16::from_be_bytes([h[0], h[1]]);
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        if kind == 1 && len == 4 {
            if let Some(d) = p.get(next + 10..next + 14) {
                out.push(Ipv4Addr::new(d[0], d[1], d[2], d[3]));
            }
        }
        at = next + 10 + len;
    }
    out
}

/// [`resolve_v4`] from the test host on the machines' LAN: the bridge's network namespace
/// (`bridge_pid`, see `Lan::bridge_pid`), asking from the LAN's gateway address, 2 s.
pub fn resolve_on_lan(bridge_pid: u32, name: &str) -> Vec<Ipv4Addr> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let ns =
            std::fs::File::open(format!("/proc/{bridge_pid}/ns/net")).expect("the bridge's netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the bridge's netns");
        resolve_v4(
            &name,
            super::harness::GATEWAY.parse().unwrap(),
            Duration::from_secs(2),
        )
        .expect("an mDNS query")
    })
    .join()
    .expect("the mDNS thread")
}
