//! Datagram transport between daemons: opaque frames over UDP, bounded in size and rate per source.
//!
//! Authentication belongs to the election's message format (HMAC); this layer only keeps a noisy
//! or hostile sender from costing more than a bounded amount of memory and CPU.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// UDP port of the frame transport on every node. Absent from Debian's `/etc/services` and clear
/// of K3s (6443, 6444, 2379-2380, 8472, 10250, 51820-51821, 5001) and of Serf/Swarm (7946); the
/// IANA registry was not checked offline, so confirm before a release.
pub const FRAME_PORT: u16 = 7439;

/// Largest frame accepted or sent: fits one Ethernet MTU with IP and UDP headers to spare.
pub const MAX_FRAME: usize = 1400;

/// Frames a single source may burst before being limited.
const BURST: f64 = 64.0;
/// Sustained frames per second per source.
const RATE_PER_SEC: f64 = 32.0;
/// Sources tracked at once; beyond this the stalest bucket is forgotten.
const MAX_SOURCES: usize = 256;

/// Sends and receives opaque frames; what the election driver needs from the network.
pub trait FrameTransport {
    /// Sends one frame to `to`; frames over [`MAX_FRAME`] are refused.
    fn send(&self, to: SocketAddr, frame: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Waits for the next frame that passed the size and rate bounds.
    fn recv(&mut self) -> impl Future<Output = io::Result<(SocketAddr, Vec<u8>)>> + Send;
}

/// Counters of what the bounds dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropCounts {
    /// Datagrams longer than [`MAX_FRAME`].
    pub oversize: u64,
    /// Datagrams over a source's rate.
    pub rate_limited: u64,
}

/// A token bucket: `BURST` frames at once, refilled at `RATE_PER_SEC`.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: BURST,
            last: now,
        }
    }

    /// Takes one token if there is one; time is passed in so tests control it.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE_PER_SEC).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-source token buckets with a bounded number of sources.
#[derive(Debug, Default)]
pub struct SourceLimiter {
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl SourceLimiter {
    /// True if a frame from `source` at `now` is within its rate.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            if let Some(stalest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(ip, _)| *ip)
            {
                self.buckets.remove(&stalest);
            }
        }
        self.buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::full(now))
            .take(now)
    }
}

/// The UDP implementation of [`FrameTransport`].
pub struct UdpTransport {
    socket: UdpSocket,
    limiter: SourceLimiter,
    dropped: DropCounts,
    buf: Vec<u8>,
}

impl UdpTransport {
    /// Binds `0.0.0.0:port` (use [`FRAME_PORT`] outside tests).
    pub async fn bind(port: u16) -> io::Result<Self> {
        Self::bind_addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await
    }

    /// Binds a specific address.
    pub async fn bind_addr(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            socket: UdpSocket::bind(addr).await?,
            limiter: SourceLimiter::default(),
            dropped: DropCounts::default(),
            // One byte more than allowed, so an oversize datagram is seen as such, not truncated.
            buf: vec![0; MAX_FRAME + 1],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// What the bounds dropped so far.
    pub fn dropped(&self) -> DropCounts {
        self.dropped
    }
}

impl FrameTransport for UdpTransport {
    async fn send(&self, to: SocketAddr, frame: &[u8]) -> io::Result<()> {
        if frame.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes exceeds {MAX_FRAME}", frame.len()),
            ));
        }
        self.socket.send_to(frame, to).await.map(|_| ())
    }

    async fn recv(&mut self) -> io::Result<(SocketAddr, Vec<u8>)> {
        loop {
            let (len, from) = self.socket.recv_from(&mut self.buf).await?;
            if len > MAX_FRAME {
                self.dropped.oversize += 1;
                continue;
            }
            if !self.limiter.admit(from.ip(), Instant::now()) {
                self.dropped.rate_limited += 1;
                continue;
            }
            return Ok((from, self.buf[..len].to_vec()));
        }
    }
}

/// Period after which an idle source's bucket is full again.
pub const REFILL_TIME: Duration = Duration::from_millis((BURST / RATE_PER_SEC * 1000.0) as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut limiter = SourceLimiter::default();
        let ip: IpAddr = "198.18.0.9".parse().expect("literal address");
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| limiter.admit(ip, t0)).count();
        assert_eq!(admitted, BURST as usize);
        // After one second, RATE_PER_SEC more.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..100).filter(|_| limiter.admit(ip, t1)).count();
        assert_eq!(admitted, RATE_PER_SEC as usize);
        // Another source has its own bucket.
        let other: IpAddr = "198.18.0.10".parse().expect("literal address");
        assert!(limiter.admit(other, t1));
        assert!(limiter.admit(ip, t1 + REFILL_TIME));
    }

    #[test]
    fn limiter_tracks_a_bounded_number_of_sources() {
        let mut limiter = SourceLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 50) {
            let ip = IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i));
            assert!(limiter.admit(ip, t0 + Duration::from_millis(i.into())));
        }
        assert_eq!(limiter.buckets.len(), MAX_SOURCES);
    }

    #[tokio::test]
    async fn frames_cross_loopback_and_oversize_ones_are_dropped() {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut receiver = UdpTransport::bind_addr(loopback).await.expect("bind");
        let sender = UdpTransport::bind_addr(loopback).await.expect("bind");
        let to = receiver.local_addr().expect("addr");
        assert!(sender.send(to, &[0u8; MAX_FRAME + 1]).await.is_err());
        // Bypass our own send bound to put an oversize datagram on the wire.
        sender
            .socket
            .send_to(&[7u8; 2000], to)
            .await
            .expect("raw send");
        sender.send(to, b"hello").await.expect("send");
        let (from, frame) = receiver.recv().await.expect("recv");
        assert_eq!(frame, b"hello");
        assert_eq!(from, sender.local_addr().expect("addr"));
        assert_eq!(receiver.dropped().oversize, 1);
    }

    #[tokio::test]
    async fn a_flooding_source_is_limited() {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut receiver = UdpTransport::bind_addr(loopback).await.expect("bind");
        let sender = UdpTransport::bind_addr(loopback).await.expect("bind");
        let to = receiver.local_addr().expect("addr");
        for i in 0..200u32 {
            sender.send(to, &i.to_be_bytes()).await.expect("send");
        }
        sender.send(to, b"end").await.expect("send");
        let mut received = 0;
        // Drain until the socket has been quiet briefly; loopback does not lose datagrams.
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), receiver.recv()).await
        {
            received += 1;
        }
        assert!(received < 201, "received {received}");
        assert!(receiver.dropped().rate_limited > 0);
        assert_eq!(received as u64 + receiver.dropped().rate_limited, 201);
    }
}
