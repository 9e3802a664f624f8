//! Wire format of election frames: versioned, bound to one cluster id, HMAC-authenticated, size-bounded.
//!
//! Layout (big-endian): magic `FBEL`, version, cluster id (16), epoch (u32), sender (u64),
//! kind (u8), body length (u16), body, HMAC-SHA256 over everything before it (32). Paxos bodies
//! start with their instance (0 = the epoch's leader, 1 = its fate), so no frame of one instance can
//! be replayed into the other. Version 2 added the instance byte and the fate instance;
//! kind 9 (`SeatGranted`, seats after formation) came later within version 2: a node without it
//! drops the frame as malformed, and a joiner then waits for its seat as before. Kind 10
//! (`Removed`, a server removed while away) came after it, likewise.

use super::auth::{ClusterId, CLUSTER_ID_LEN, MAC_LEN};
use super::paxos::{Ballot, Value};
use super::NodeId;
use super::RolePin;
use crate::keys::MacKey;

/// Version of this wire format; frames of any other version are rejected.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest frame accepted or produced, in bytes.
pub const MAX_FRAME: usize = 512;
/// Most seat holders a roster can carry.
pub const MAX_ROSTER: usize = 16;

const MAGIC: [u8; 4] = *b"FBEL";
const HEADER_LEN: usize = 4 + 1 + CLUSTER_ID_LEN + 4 + 8 + 1 + 2;

/// One authenticated election message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The sender's bootstrap epoch.
    pub epoch: u32,
    /// Who sent it.
    pub sender: NodeId,
    /// What it says.
    pub body: Body,
}

/// The message kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Periodic presence: rank inputs, decision, seat state.
    Hello(Hello),
    /// Paxos phase 1a.
    Prepare {
        /// The consensus instance.
        instance: Instance,
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Paxos phase 1b.
    Promise {
        /// The consensus instance.
        instance: Instance,
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's highest accepted proposal.
        accepted: Option<(Ballot, Value)>,
    },
    /// Refusal of a prepare or accept.
    Nack {
        /// The consensus instance.
        instance: Instance,
        /// The refused ballot.
        ballot: Ballot,
        /// The higher ballot promised instead.
        promised: Ballot,
    },
    /// Paxos phase 2a.
    Accept {
        /// The consensus instance.
        instance: Instance,
        /// The proposer's ballot.
        ballot: Ballot,
        /// The proposed value.
        value: Value,
    },
    /// Paxos phase 2b.
    Accepted {
        /// The consensus instance.
        instance: Instance,
        /// The accepted ballot.
        ballot: Ballot,
        /// The accepted value.
        value: Value,
    },
    /// An instance's value is decided.
    Decided {
        /// The consensus instance.
        instance: Instance,
        /// The decided value.
        value: Value,
    },
    /// From the init node to a seat candidate: no seat will be left for you, join as an agent.
    JoinAsAgent {
        /// The candidate addressed (frames can be replayed to anyone, so the target is signed).
        node: NodeId,
    },
    /// From a serving server to a seat candidate, after formation: the cluster's seat book
    /// ([`crate::seat_book`]) holds a server seat for you, join as a server.
    SeatGranted {
        /// The candidate addressed (signed, like [`Body::JoinAsAgent`]).
        node: NodeId,
    },
    /// From a serving server to a node heard claiming a server role: the cluster's seat book
    /// records it as removed (its Node and etcd member were deleted while it was away, its seat
    /// released), so it must set its etcd data aside and ask for a seat again.
    Removed {
        /// The removed node addressed (signed, like [`Body::SeatGranted`]).
        node: NodeId,
        /// When the book recorded the removal, unix seconds (a replayed old frame names an
        /// older removal than the one a rejoined node already handled).
        at: i64,
    },
}

/// Which of an epoch's two consensus instances a Paxos message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instance {
    /// Decides `Init(x)` (x is elected) or `Abandon`.
    Leader,
    /// After `Init(x)`: decides `Init(x)` ("Go": x may run cluster-init) or `Abandon`.
    Fate,
}

impl Instance {
    fn to_wire(self) -> u8 {
        match self {
            Instance::Leader => 0,
            Instance::Fate => 1,
        }
    }
}

/// Presence announcement, sent periodically and on every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Role pin (rank input).
    pub pin: RolePin,
    /// Storage speed score (rank input).
    pub storage: u8,
    /// RAM in MiB (rank input).
    pub ram_mib: u32,
    /// The sender's final value for its epoch, if any: `Init(x)` only once x's fate is `Go`.
    pub decided: Option<Value>,
    /// The sender's K3s role is up.
    pub serving: bool,
    /// The sender waits for a server seat.
    pub wants_seat: bool,
    /// Seat holders in grant order (only the init node's roster is authoritative).
    pub roster: Vec<NodeId>,
}

/// Why a frame was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than header plus tag.
    #[error("frame of {0} bytes is too short")]
    TooShort(usize),
    /// Over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    /// Not an election frame at all.
    #[error("not an election frame")]
    BadMagic,
    /// Another protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Sent for another cluster id.
    #[error("frame belongs to another cluster")]
    ForeignCluster,
    /// The tag does not verify under our key.
    #[error("authentication failed")]
    BadMac,
    /// Authentic but not well formed.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const PREPARE: u8 = 2;
    pub const PROMISE: u8 = 3;
    pub const NACK: u8 = 4;
    pub const ACCEPT: u8 = 5;
    pub const ACCEPTED: u8 = 6;
    pub const DECIDED: u8 = 7;
    pub const JOIN_AS_AGENT: u8 = 8;
    pub const SEAT_GRANTED: u8 = 9;
    pub const REMOVED: u8 = 10;
}

const FLAG_SERVING: u8 = 1;
const FLAG_WANTS_SEAT: u8 = 2;

fn put_ballot(out: &mut Vec<u8>, ballot: Ballot) {
    out.extend_from_slice(&ballot.round.to_be_bytes());
    out.extend_from_slice(&ballot.node.0.to_be_bytes());
}

fn put_value(out: &mut Vec<u8>, value: Value) {
    match value {
        Value::Abandon => out.push(0),
        Value::Init(node) => {
            out.push(1);
            out.extend_from_slice(&node.0.to_be_bytes());
        }
    }
}

fn put_optional_value(out: &mut Vec<u8>, value: Option<Value>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put_value(out, value);
        }
    }
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Hello(_) => kind::HELLO,
            Body::Prepare { .. } => kind::PREPARE,
            Body::Promise { .. } => kind::PROMISE,
            Body::Nack { .. } => kind::NACK,
            Body::Accept { .. } => kind::ACCEPT,
            Body::Accepted { .. } => kind::ACCEPTED,
            Body::Decided { .. } => kind::DECIDED,
            Body::JoinAsAgent { .. } => kind::JOIN_AS_AGENT,
            Body::SeatGranted { .. } => kind::SEAT_GRANTED,
            Body::Removed { .. } => kind::REMOVED,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Body::Hello(hello) => {
                out.push(hello.pin.to_wire());
                out.push(hello.storage);
                out.extend_from_slice(&hello.ram_mib.to_be_bytes());
                put_optional_value(out, hello.decided);
                let mut flags = 0;
                if hello.serving {
                    flags |= FLAG_SERVING;
                }
                if hello.wants_seat {
                    flags |= FLAG_WANTS_SEAT;
                }
                out.push(flags);
                let roster = &hello.roster[..hello.roster.len().min(MAX_ROSTER)];
                // MAX_ROSTER is below 256, so the count fits a byte.
                out.push(roster.len() as u8);
                for node in roster {
                    out.extend_from_slice(&node.0.to_be_bytes());
                }
            }
            Body::Prepare { instance, ballot } => {
                out.push(instance.to_wire());
                put_ballot(out, *ballot);
            }
            Body::Promise {
                instance,
                ballot,
                accepted,
            } => {
                out.push(instance.to_wire());
                put_ballot(out, *ballot);
                match accepted {
                    None => out.push(0),
                    Some((accepted_ballot, value)) => {
                        out.push(1);
                        put_ballot(out, *accepted_ballot);
                        put_value(out, *value);
                    }
                }
            }
            Body::Nack {
                instance,
                ballot,
                promised,
            } => {
                out.push(instance.to_wire());
                put_ballot(out, *ballot);
                put_ballot(out, *promised);
            }
            Body::Accept {
                instance,
                ballot,
                value,
            }
            | Body::Accepted {
                instance,
                ballot,
                value,
            } => {
                out.push(instance.to_wire());
                put_ballot(out, *ballot);
                put_value(out, *value);
            }
            Body::Decided { instance, value } => {
                out.push(instance.to_wire());
                put_value(out, *value);
            }
            Body::JoinAsAgent { node } | Body::SeatGranted { node } => {
                out.extend_from_slice(&node.0.to_be_bytes())
            }
            Body::Removed { node, at } => {
                out.extend_from_slice(&node.0.to_be_bytes());
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
    }
}

/// Reads fields off a byte slice, failing (never panicking) when it runs short.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Malformed("truncated field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?
            .try_into()
            .map_err(|_| DecodeError::Malformed("truncated field"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn node(&mut self) -> Result<NodeId, DecodeError> {
        Ok(NodeId(u64::from_be_bytes(self.array()?)))
    }

    fn ballot(&mut self) -> Result<Ballot, DecodeError> {
        Ok(Ballot {
            round: self.u32()?,
            node: self.node()?,
        })
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        match self.u8()? {
            0 => Ok(Value::Abandon),
            1 => Ok(Value::Init(self.node()?)),
            _ => Err(DecodeError::Malformed("unknown value tag")),
        }
    }

    fn instance(&mut self) -> Result<Instance, DecodeError> {
        match self.u8()? {
            0 => Ok(Instance::Leader),
            1 => Ok(Instance::Fate),
            _ => Err(DecodeError::Malformed("unknown instance")),
        }
    }

    fn presence(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("bad option tag")),
        }
    }

    fn body(&mut self, kind: u8) -> Result<Body, DecodeError> {
        let body = match kind {
            kind::HELLO => {
                let pin = RolePin::from_wire(self.u8()?)
                    .ok_or(DecodeError::Malformed("unknown role pin"))?;
                let storage = self.u8()?;
                let ram_mib = self.u32()?;
                let decided = if self.presence()? {
                    Some(self.value()?)
                } else {
                    None
                };
                let flags = self.u8()?;
                if flags & !(FLAG_SERVING | FLAG_WANTS_SEAT) != 0 {
                    return Err(DecodeError::Malformed("unknown hello flags"));
                }
                let count = usize::from(self.u8()?);
                if count > MAX_ROSTER {
                    return Err(DecodeError::Malformed("roster too long"));
                }
                let roster = (0..count)
                    .map(|_| self.node())
                    .collect::<Result<Vec<_>, _>>()?;
                Body::Hello(Hello {
                    pin,
                    storage,
                    ram_mib,
                    decided,
                    serving: flags & FLAG_SERVING != 0,
                    wants_seat: flags & FLAG_WANTS_SEAT != 0,
                    roster,
                })
            }
            kind::PREPARE => Body::Prepare {
                instance: self.instance()?,
                ballot: self.ballot()?,
            },
            kind::PROMISE => {
                let instance = self.instance()?;
                let ballot = self.ballot()?;
                let accepted = if self.presence()? {
                    Some((self.ballot()?, self.value()?))
                } else {
                    None
                };
                Body::Promise {
                    instance,
                    ballot,
                    accepted,
                }
            }
            kind::NACK => Body::Nack {
                instance: self.instance()?,
                ballot: self.ballot()?,
                promised: self.ballot()?,
            },
            kind::ACCEPT => Body::Accept {
                instance: self.instance()?,
                ballot: self.ballot()?,
                value: self.value()?,
            },
            kind::ACCEPTED => Body::Accepted {
                instance: self.instance()?,
                ballot: self.ballot()?,
                value: self.value()?,
            },
            kind::DECIDED => Body::Decided {
                instance: self.instance()?,
                value: self.value()?,
            },
            kind::JOIN_AS_AGENT => Body::JoinAsAgent { node: self.node()? },
            kind::SEAT_GRANTED => Body::SeatGranted { node: self.node()? },
            kind::REMOVED => Body::Removed {
                node: self.node()?,
                at: i64::from_be_bytes(self.array()?),
            },
            _ => return Err(DecodeError::Malformed("unknown message kind")),
        };
        if !self.bytes.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes"));
        }
        Ok(body)
    }
}

impl Envelope {
    /// Serializes and signs this message for `cluster` (at most [`MAX_FRAME`] bytes).
    pub fn encode(&self, cluster: &ClusterId, key: &MacKey) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        self.body.encode_into(&mut body);
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len() + MAC_LEN);
        frame.extend_from_slice(&MAGIC);
        frame.push(PROTOCOL_VERSION);
        frame.extend_from_slice(&cluster.0);
        frame.extend_from_slice(&self.epoch.to_be_bytes());
        frame.extend_from_slice(&self.sender.0.to_be_bytes());
        frame.push(self.body.kind());
        // The largest body (a full roster) is under 160 bytes, so its length fits a u16.
        frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
        frame.extend_from_slice(&body);
        let tag = key.sign(&frame);
        frame.extend_from_slice(&tag);
        frame
    }

    /// Checks and parses a frame received from the network; rejects anything not ours.
    pub fn decode(
        frame: &[u8],
        cluster: &ClusterId,
        key: &MacKey,
    ) -> Result<Envelope, DecodeError> {
        if frame.len() > MAX_FRAME {
            return Err(DecodeError::TooLong(frame.len()));
        }
        if frame.len() < HEADER_LEN + MAC_LEN {
            return Err(DecodeError::TooShort(frame.len()));
        }
        let (signed, tag) = frame.split_at(frame.len() - MAC_LEN);
        let mut header = Reader { bytes: signed };
        if header.array::<4>()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = header.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::Version(version));
        }
        if header.array::<CLUSTER_ID_LEN>()? != cluster.0 {
            return Err(DecodeError::ForeignCluster);
        }
        if !key.verify(signed, tag) {
            return Err(DecodeError::BadMac);
        }
        let epoch = header.u32()?;
        let sender = header.node()?;
        let kind = header.u8()?;
        let body_len = usize::from(header.u16()?);
        if body_len != header.bytes.len() {
            return Err(DecodeError::Malformed("body length mismatch"));
        }
        let body = header.body(kind)?;
        Ok(Envelope {
            epoch,
            sender,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (ClusterId, MacKey) {
        (
            ClusterId::derive(b"0123456789abcdef", 3, 3),
            MacKey::election(b"0123456789abcdef"),
        )
    }

    fn samples() -> Vec<Body> {
        let b = Ballot {
            round: 7,
            node: NodeId(42),
        };
        vec![
            Body::Hello(Hello {
                pin: RolePin::Server,
                storage: 200,
                ram_mib: 8192,
                decided: Some(Value::Init(NodeId(3))),
                serving: true,
                wants_seat: false,
                roster: vec![NodeId(3), NodeId(5)],
            }),
            Body::Prepare {
                instance: Instance::Leader,
                ballot: b,
            },
            Body::Promise {
                instance: Instance::Fate,
                ballot: b,
                accepted: Some((b, Value::Abandon)),
            },
            Body::Promise {
                instance: Instance::Leader,
                ballot: b,
                accepted: None,
            },
            Body::Nack {
                instance: Instance::Fate,
                ballot: b,
                promised: b,
            },
            Body::Accept {
                instance: Instance::Fate,
                ballot: b,
                value: Value::Init(NodeId(1)),
            },
            Body::Accepted {
                instance: Instance::Leader,
                ballot: b,
                value: Value::Abandon,
            },
            Body::Decided {
                instance: Instance::Fate,
                value: Value::Init(NodeId(u64::MAX)),
            },
            Body::JoinAsAgent { node: NodeId(5) },
            Body::SeatGranted { node: NodeId(6) },
            Body::Removed {
                node: NodeId(7),
                at: 1_790_000_000,
            },
        ]
    }

    #[test]
    fn every_body_round_trips() {
        let (cluster, key) = keys();
        for body in samples() {
            let envelope = Envelope {
                epoch: 3,
                sender: NodeId(9),
                body,
            };
            let frame = envelope.encode(&cluster, &key);
            assert!(frame.len() <= MAX_FRAME);
            assert_eq!(Envelope::decode(&frame, &cluster, &key), Ok(envelope));
        }
    }

    #[test]
    fn foreign_cluster_wrong_key_and_tampering_are_rejected() {
        let (cluster, key) = keys();
        let envelope = Envelope {
            epoch: 0,
            sender: NodeId(1),
            body: Body::Decided {
                instance: Instance::Leader,
                value: Value::Init(NodeId(1)),
            },
        };
        let frame = envelope.encode(&cluster, &key);
        let other_cluster = ClusterId::derive(b"0123456789abcdef", 5, 3);
        assert_eq!(
            Envelope::decode(&frame, &other_cluster, &key),
            Err(DecodeError::ForeignCluster)
        );
        let other_key = MacKey::election(b"another token!!!!");
        assert_eq!(
            Envelope::decode(&frame, &cluster, &other_key),
            Err(DecodeError::BadMac)
        );
        let mut tampered = frame.clone();
        let last_body_byte = tampered.len() - MAC_LEN - 1;
        tampered[last_body_byte] ^= 1;
        assert_eq!(
            Envelope::decode(&tampered, &cluster, &key),
            Err(DecodeError::BadMac)
        );
        assert_eq!(
            Envelope::decode(&frame[..20], &cluster, &key),
            Err(DecodeError::TooShort(20))
        );
        assert_eq!(
            Envelope::decode(&vec![0; MAX_FRAME + 1], &cluster, &key),
            Err(DecodeError::TooLong(MAX_FRAME + 1))
        );
    }
}
