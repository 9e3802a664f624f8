//! The signed announcement every serving server gives joiners (lifecycle step 7, see docs/architecture.md): CA hash, clock, etcd timing, the servers serving now.
//!
//! Carried on its own UDP port ([`ANNOUNCE_PORT`]) as request/response: a joiner sends a query
//! with a fresh nonce to a server it believes serves (the init node or any server relaying the
//! roster, SPEC 4.4); that server, once K3s is active on it, answers with the cluster's CA hash,
//! its wall clock and the K3s API addresses of the servers serving now, signed with a key derived
//! from the token. The round trip lets the joiner compensate the clock for network delay, and the
//! nonce keeps an old answer (and its old clock) from being replayed. Nothing here is secret (the
//! CA hash is public in K3s's own join token format), but all of it must be authentic: a forged
//! CA hash would make a joiner trust a rogue server, and a forged clock would step the joiner's
//! clock.

pub mod frame;
pub mod wait;

pub use frame::{
    AnnounceCodec, AnnounceError, Announcement, Body, Frame, Nonce, MAX_ANNOUNCED_SERVERS,
    MAX_ANNOUNCE_FRAME,
};
pub use wait::{AnnouncementWait, Heard, Ignored, MAX_RTT};

/// UDP port of the announcement exchange: the election's frame port plus one.
pub const ANNOUNCE_PORT: u16 = crate::discovery::FRAME_PORT + 1;

/// A fresh random nonce from the kernel's generator.
pub fn fresh_nonce() -> std::io::Result<Nonce> {
    Ok(Nonce(crate::host::random::bytes::<{ frame::NONCE_LEN }>()?))
}
