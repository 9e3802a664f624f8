//! A test host's view of who answers for an address on the machines' LAN: an ARP sampler on the
//! bridge (the LAN's gateway host) that asks "who has ADDRESS" every 100 ms and records every
//! ARP frame about it, so a test sees which MAC owns the address, when that changed, and whether
//! two MACs ever answered at once.

use nix::libc;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the sampler asks.
pub const PERIOD: Duration = Duration::from_millis(100);
const ETH_P_ARP: u16 = 0x0806;

/// A MAC address.
pub type Mac = [u8; 6];

/// `aa:bb:...` of a MAC.
pub fn mac_text(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the sampler saw.
#[derive(Clone, Debug, Default)]
pub struct ArpSeen {
    /// Requests sent.
    pub asked: u64,
    /// Periods in which at least one MAC answered or announced the address.
    pub answered: u64,
    /// Periods in which two or more MACs answered or announced it: when, and which.
    pub conflicts: Vec<(Duration, Vec<Mac>)>,
    /// Each change of the answering MAC (`None`: a period without any answer after answers).
    pub owners: Vec<(Duration, Option<Mac>)>,
    /// The MAC that answered in the last period, and when that was.
    pub last: Option<(Duration, Mac)>,
}

impl ArpSeen {
    /// The owner history as text for messages.
    pub fn history(&self) -> String {
        self.owners
            .iter()
            .map(|(at, mac)| {
                format!(
                    "  +{:.1}s {}",
                    at.as_secs_f64(),
                    mac.as_ref().map_or("(no answer)".into(), mac_text)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The running sampler.
pub struct ArpSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<ArpSeen>>,
    start: Instant,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ArpSampler {
    /// Starts sampling `address` from interface `iface` (with source address `from`) inside the
    /// network namespace of process `netns_pid`.
    pub fn start(netns_pid: u32, iface: &str, from: Ipv4Addr, address: Ipv4Addr) -> ArpSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(ArpSeen::default()));
        let start = Instant::now();
        let (s, v, iface) = (stop.clone(), seen.clone(), iface.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> std::io::Result<()> {
            let socket = (|| {
                let ns = std::fs::File::open(format!("/proc/{netns_pid}/ns/net"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Socket::open(&iface)
            })();
            let socket = match socket {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let request = socket.request(from, address);
            while !s.load(Ordering::Relaxed) {
                let period_start = Instant::now();
                socket.send(&request)?;
                let mut macs: Vec<Mac> = Vec::new();
                while let Some(left) = PERIOD.checked_sub(period_start.elapsed()) {
                    if let Some(mac) = socket.receive_about(address, left)? {
                        if !macs.contains(&mac) {
                            macs.push(mac);
                        }
                    }
                }
                let at = start.elapsed();
                let mut seen = v.lock().unwrap();
                seen.asked += 1;
                let owner = macs.first().copied();
                if let Some(mac) = owner {
                    seen.answered += 1;
                    seen.last = Some((at, mac));
                }
                if macs.len() > 1 {
                    seen.conflicts.push((at, macs.clone()));
                }
                let changed = seen.owners.last().map(|(_, m)| *m) != Some(owner);
                if changed && (owner.is_some() || !seen.owners.is_empty()) {
                    seen.owners.push((at, owner));
                }
            }
            Ok(())
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the ARP sampler could not start: {e}"),
            Err(_) => panic!("the ARP sampler thread died"),
        }
        ArpSampler {
            stop,
            seen,
            start,
            thread: Some(thread),
        }
    }

    /// What it saw so far.
    pub fn seen(&self) -> ArpSeen {
        self.seen.lock().unwrap().clone()
    }

    /// Time since the sampler started (the clock of [`ArpSeen`]'s times).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops sampling; what it saw.
    pub fn finish(mut self) -> ArpSeen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the ARP sampler failed: {e}"),
                Err(_) => panic!("the ARP sampler panicked"),
            }
        }
        self.seen()
    }
}

impl Drop for ArpSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A packet socket for ARP on one interface.
struct Socket {
    fd: OwnedFd,
    index: i32,
    mac: Mac,
}

impl Socket {
    fn open(iface: &str) -> std::io::Result<Socket> {
        // From netlink (this thread's namespace), not /sys (the mount namespace's).
        let mac = nix::ifaddrs::getifaddrs()
            .map_err(std::io::Error::from)?
            .filter(|a| a.interface_name == iface)
            .find_map(|a| a.address?.as_link_addr()?.addr())
            .ok_or_else(|| std::io::Error::other(format!("{iface} has no MAC address")))?;
        let index = nix::net::if_::if_nametoindex(iface).map_err(std::io::Error::from)? as i32;
        // SAFETY: socket() takes plain integers; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is valid for every field.
        let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        at.sll_family = libc::AF_PACKET as u16;
        at.sll_protocol = ETH_P_ARP.to_be();
        at.sll_ifindex = index;
        // SAFETY: the address is valid for the call; the length is its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(at).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Socket { fd, index, mac })
    }

    /// "Who has `address`, tell `from`", broadcast.
    fn request(&self, from: Ipv4Addr, address: Ipv4Addr) -> [u8; 42] {
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&self.mac);
        f[28..32].copy_from_slice(&from.octets());
        f[38..42].copy_from_slice(&address.octets());
        f
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zero is valid for every field.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = self.index;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: frame and address outlive the call; the lengths are theirs.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `wait` for one ARP frame; the sender's MAC when it is a reply from
    /// `address` or an announcement of it (sender address `address`), else `None`.
    fn receive_about(&self, address: Ipv4Addr, wait: Duration) -> std::io::Result<Option<Mac>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, 1000) as i32;
        // SAFETY: one pollfd, valid for the call.
        let r = unsafe { libc::poll(&mut poll, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; 128];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            return Ok(None);
        }
        let op = u16::from_be_bytes([buf[20], buf[21]]);
        let sender_ip = Ipv4Addr::new(buf[28], buf[29], buf[30], buf[31]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&buf[22..28]);
        // Our own request has our MAC as sender; replies and announcements name the address.
        Ok(((op == 1 || op == 2) && sender_ip == address && mac != self.mac).then_some(mac))
    }
}
