//! Wire format of announcement frames: versioned, bound to one cluster id, HMAC-authenticated, size-bounded.
//!
//! Layout (big-endian): magic `FBAN`, version, kind (u8), cluster id (16), sender (u64), nonce
//! (16), body, HMAC-SHA256 over everything before it (32), under a key derived from the token with
//! its own label (so no election frame can pass for an announcement, nor the other way round).
//!
//! - Query (joiner -> server): body = the server addressed (u64).
//! - Announcement (serving server -> joiner): echoes the query's nonce; body = CA hash (32), the
//!   server's wall clock in unix µs when it answered (i64), the cluster's etcd timing (heartbeat
//!   ms u32, election timeout ms u32), then the K3s API addresses of the servers serving now:
//!   a count (u8, 1 to [`MAX_ANNOUNCED_SERVERS`]) and each address (family 4|6, address, port
//!   u16), the answering server's own first.
//!
//! Version 1 (up to issue 18's first step) had only the init node's address; a node of that
//! release and one of this one ignore each other's frames (the version byte), so a cluster is
//! upgraded whole (an image is built for all its cards).

use crate::election::{ClusterId, NodeId, CLUSTER_ID_LEN};
use crate::k3s::CaHash;
use crate::keys::{MacKey, TokenKeys, MAC_LEN};
use crate::storage::etcd::EtcdTuning;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version of this wire format; frames of any other version are rejected.
pub const ANNOUNCE_VERSION: u8 = 2;
/// Largest frame accepted or produced, in bytes (the largest real one, seven IPv6 servers, is 260).
pub const MAX_ANNOUNCE_FRAME: usize = 320;
/// Most server addresses an announcement carries: the largest `servers` cluster.toml allows.
pub const MAX_ANNOUNCED_SERVERS: usize = 7;
/// Length of a query nonce in bytes.
pub const NONCE_LEN: usize = 16;

const MAGIC: [u8; 4] = *b"FBAN";
const HEADER_LEN: usize = 4 + 1 + 1 + CLUSTER_ID_LEN + 8 + NONCE_LEN;
const KIND_QUERY: u8 = 1;
const KIND_ANNOUNCEMENT: u8 = 2;

/// A query's random nonce; the announcement answering it echoes it (no replay of old answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

/// What a serving server tells joiners once K3s is active on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// SHA-256 of the cluster CA bundle as `/cacerts` serves it.
    pub ca_hash: CaHash,
    /// The answering server's wall clock when it answered, unix µs.
    pub clock_usec: i64,
    /// The cluster's etcd timing, decided once by the init node.
    pub etcd: EtcdTuning,
    /// The K3s API addresses (`https://<api>`) of the servers serving now, the answering
    /// server's own first; never empty, at most [`MAX_ANNOUNCED_SERVERS`] are sent.
    pub servers: Vec<SocketAddr>,
}

/// The two frame kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A joiner asks the server `to` for its announcement.
    Query {
        /// The server addressed (signed, so a query cannot be redirected).
        to: NodeId,
    },
    /// A serving server's answer.
    Announcement(Announcement),
}

/// One authenticated frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Who sent it.
    pub sender: NodeId,
    /// The query's nonce (echoed by the announcement).
    pub nonce: Nonce,
    /// What it says.
    pub body: Body,
}

/// Why a frame was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Shorter than header plus tag, or longer than [`MAX_ANNOUNCE_FRAME`].
    #[error("announcement frame of {0} bytes has an impossible size")]
    Size(usize),
    /// Not an announcement frame at all.
    #[error("not an announcement frame")]
    BadMagic,
    /// Another format version.
    #[error("unsupported announcement version {0}")]
    Version(u8),
    /// Sent for another cluster id.
    #[error("announcement frame belongs to another cluster")]
    ForeignCluster,
    /// The tag does not verify under our key.
    #[error("announcement frame failed authentication")]
    BadMac,
    /// Authentic but not well formed.
    #[error("malformed announcement frame: {0}")]
    Malformed(&'static str),
}

/// Encodes and checks frames of one cluster.
#[derive(Clone, Debug)]
pub struct AnnounceCodec {
    cluster: ClusterId,
    key: MacKey,
}

impl AnnounceCodec {
    /// The codec for the cluster of `token` (with its `nodes` and `servers`).
    pub fn new(token: &[u8], nodes: u8, servers: u8) -> Self {
        Self::from_keys(&TokenKeys::from_secret(token, nodes, servers))
    }

    /// The codec of the cluster whose keys are `keys`.
    pub fn from_keys(keys: &TokenKeys) -> Self {
        AnnounceCodec {
            cluster: keys.cluster,
            key: keys.announce.clone(),
        }
    }

    /// Serializes and signs `frame` (at most [`MAX_ANNOUNCE_FRAME`] bytes).
    pub fn encode(&self, frame: &Frame) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_ANNOUNCE_FRAME);
        out.extend_from_slice(&MAGIC);
        out.push(ANNOUNCE_VERSION);
        out.push(match frame.body {
            Body::Query { .. } => KIND_QUERY,
            Body::Announcement(_) => KIND_ANNOUNCEMENT,
        });
        out.extend_from_slice(&self.cluster.0);
        out.extend_from_slice(&frame.sender.0.to_be_bytes());
        out.extend_from_slice(&frame.nonce.0);
        match &frame.body {
            Body::Query { to } => out.extend_from_slice(&to.0.to_be_bytes()),
            Body::Announcement(a) => {
                out.extend_from_slice(a.ca_hash.as_bytes());
                out.extend_from_slice(&a.clock_usec.to_be_bytes());
                out.extend_from_slice(&a.etcd.heartbeat_ms.to_be_bytes());
                out.extend_from_slice(&a.etcd.election_timeout_ms.to_be_bytes());
                let servers = &a.servers[..a.servers.len().min(MAX_ANNOUNCED_SERVERS)];
                // MAX_ANNOUNCED_SERVERS is below 256, so the count fits a byte.
                out.push(servers.len() as u8);
                for api in servers {
                    match api.ip() {
                        IpAddr::V4(ip) => {
                            out.push(4);
                            out.extend_from_slice(&ip.octets());
                        }
                        IpAddr::V6(ip) => {
                            out.push(6);
                            out.extend_from_slice(&ip.octets());
                        }
                    }
                    out.extend_from_slice(&api.port().to_be_bytes());
                }
            }
        }
        let tag = self.key.sign(&out);
        out.extend_from_slice(&tag);
        out
    }

    /// Checks and parses a received frame; rejects anything not ours before reading its body.
    pub fn decode(&self, bytes: &[u8]) -> Result<Frame, AnnounceError> {
        if bytes.len() < HEADER_LEN + MAC_LEN || bytes.len() > MAX_ANNOUNCE_FRAME {
            return Err(AnnounceError::Size(bytes.len()));
        }
        if bytes[..4] != MAGIC {
            return Err(AnnounceError::BadMagic);
        }
        if bytes[4] != ANNOUNCE_VERSION {
            return Err(AnnounceError::Version(bytes[4]));
        }
        if bytes[6..6 + CLUSTER_ID_LEN] != self.cluster.0 {
            return Err(AnnounceError::ForeignCluster);
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        if !self.key.verify(signed, tag) {
            return Err(AnnounceError::BadMac);
        }
        let kind = signed[5];
        let mut r = Reader {
            bytes: &signed[6 + CLUSTER_ID_LEN..],
        };
        let sender = NodeId(u64::from_be_bytes(r.array()?));
        let nonce = Nonce(r.array()?);
        let body = match kind {
            KIND_QUERY => Body::Query {
                to: NodeId(u64::from_be_bytes(r.array()?)),
            },
            KIND_ANNOUNCEMENT => {
                let ca_hash = CaHash::from_bytes(r.array()?);
                let clock_usec = i64::from_be_bytes(r.array()?);
                let etcd = EtcdTuning {
                    heartbeat_ms: u32::from_be_bytes(r.array()?),
                    election_timeout_ms: u32::from_be_bytes(r.array()?),
                }
                .validate()
                .map_err(|_| AnnounceError::Malformed("etcd timing out of range"))?;
                let count = usize::from(r.array::<1>()?[0]);
                if count == 0 || count > MAX_ANNOUNCED_SERVERS {
                    return Err(AnnounceError::Malformed("server count out of range"));
                }
                let mut servers = Vec::with_capacity(count);
                for _ in 0..count {
                    let ip = match r.array::<1>()?[0] {
                        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                        _ => return Err(AnnounceError::Malformed("unknown address family")),
                    };
                    servers.push(SocketAddr::new(ip, u16::from_be_bytes(r.array()?)));
                }
                Body::Announcement(Announcement {
                    ca_hash,
                    clock_usec,
                    etcd,
                    servers,
                })
            }
            _ => return Err(AnnounceError::Malformed("unknown kind")),
        };
        if !r.bytes.is_empty() {
            return Err(AnnounceError::Malformed("trailing bytes"));
        }
        Ok(Frame {
            sender,
            nonce,
            body,
        })
    }
}

/// Reads fixed-size fields, failing (never panicking) when the frame runs short.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], AnnounceError> {
        if self.bytes.len() < N {
            return Err(AnnounceError::Malformed("truncated field"));
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        head.try_into()
            .map_err(|_| AnnounceError::Malformed("truncated field"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"announce-test-token-0123";

    fn codec() -> AnnounceCodec {
        AnnounceCodec::new(TOKEN, 3, 3)
    }

    fn announcement(api: &str) -> Frame {
        announcing(&[api])
    }

    fn announcing(servers: &[&str]) -> Frame {
        Frame {
            sender: NodeId(0x10),
            nonce: Nonce([7; NONCE_LEN]),
            body: Body::Announcement(Announcement {
                ca_hash: CaHash::of_bundle(b"cluster CA"),
                clock_usec: 1_780_000_000_000_000,
                etcd: EtcdTuning::SLOW_STORAGE,
                servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            }),
        }
    }

    #[test]
    fn frames_round_trip_within_the_bound() {
        let c = codec();
        let query = Frame {
            sender: NodeId(0x20),
            nonce: Nonce([1; NONCE_LEN]),
            body: Body::Query { to: NodeId(0x10) },
        };
        for frame in [
            query,
            announcement("198.18.0.10:6443"),
            announcement("[2001:db8::1]:6443"),
            announcing(&["198.18.0.11:6443", "[2001:db8::2]:6443", "198.18.0.12:6443"]),
        ] {
            let bytes = c.encode(&frame);
            assert!(bytes.len() <= MAX_ANNOUNCE_FRAME, "{}", bytes.len());
            assert_eq!(c.decode(&bytes), Ok(frame));
        }
    }

    #[test]
    fn the_largest_server_list_fits_and_longer_lists_are_cut_to_it() {
        let c = codec();
        let v6: Vec<String> = (1..=9).map(|i| format!("[2001:db8::{i}]:6443")).collect();
        let all: Vec<&str> = v6.iter().map(String::as_str).collect();
        let largest = announcing(&all[..MAX_ANNOUNCED_SERVERS]);
        let bytes = c.encode(&largest);
        assert_eq!(bytes.len(), 260);
        assert!(bytes.len() <= MAX_ANNOUNCE_FRAME);
        assert_eq!(c.decode(&bytes), Ok(largest.clone()));
        // A sender with more servers than any cluster has sends the first seven.
        assert_eq!(c.decode(&c.encode(&announcing(&all))), Ok(largest));
    }

    #[test]
    fn a_server_count_out_of_range_is_refused_even_when_signed() {
        let c = codec();
        let bytes = c.encode(&announcement("198.18.0.10:6443"));
        // The count byte follows header, CA hash, clock and etcd timing.
        let count_at = HEADER_LEN + 32 + 8 + 8;
        for count in [0u8, 8, 255] {
            let mut forged = bytes[..bytes.len() - MAC_LEN].to_vec();
            forged[count_at] = count;
            let tag = c.key.sign(&forged);
            forged.extend_from_slice(&tag);
            assert_eq!(
                c.decode(&forged),
                Err(AnnounceError::Malformed("server count out of range")),
                "count {count}"
            );
        }
        // A count promising more addresses than the frame holds.
        let mut short = bytes[..bytes.len() - MAC_LEN].to_vec();
        short[count_at] = 2;
        let tag = c.key.sign(&short);
        short.extend_from_slice(&tag);
        assert_eq!(
            c.decode(&short),
            Err(AnnounceError::Malformed("truncated field"))
        );
    }

    #[test]
    fn forged_foreign_and_tampered_frames_are_rejected() {
        let c = codec();
        let bytes = c.encode(&announcement("198.18.0.10:6443"));
        // Another cluster (same token, other electorate) and another token.
        let other_cluster = AnnounceCodec::new(TOKEN, 5, 3);
        assert_eq!(
            other_cluster.decode(&bytes),
            Err(AnnounceError::ForeignCluster)
        );
        // A forger who knows the public cluster id but not the token.
        let forger = AnnounceCodec {
            cluster: c.cluster,
            key: MacKey::announce(b"a-guessed-token-000000"),
        };
        let forged = forger.encode(&announcement("198.18.0.66:6443"));
        assert_eq!(c.decode(&forged), Err(AnnounceError::BadMac));
        // Any flipped bit of the CA hash breaks the tag.
        let mut tampered = bytes.clone();
        tampered[HEADER_LEN] ^= 1;
        assert_eq!(c.decode(&tampered), Err(AnnounceError::BadMac));
        // Unsigned: the tag stripped off.
        assert!(c.decode(&bytes[..bytes.len() - MAC_LEN]).is_err());
        assert_eq!(
            c.decode(&[0; MAX_ANNOUNCE_FRAME + 1]),
            Err(AnnounceError::Size(MAX_ANNOUNCE_FRAME + 1))
        );
        let mut election = bytes.clone();
        election[..4].copy_from_slice(b"FBEL");
        assert_eq!(c.decode(&election), Err(AnnounceError::BadMagic));
        let mut version = bytes;
        version[4] = 9;
        assert_eq!(c.decode(&version), Err(AnnounceError::Version(9)));
    }

    #[test]
    fn signed_nonsense_is_still_refused() {
        let c = codec();
        // A key holder with a bug: an etcd timing etcd would refuse.
        let mut frame = announcement("198.18.0.10:6443");
        if let Body::Announcement(a) = &mut frame.body {
            a.etcd = EtcdTuning {
                heartbeat_ms: 10,
                election_timeout_ms: 20,
            };
        }
        assert_eq!(
            c.decode(&c.encode(&frame)),
            Err(AnnounceError::Malformed("etcd timing out of range"))
        );
    }
}
