//! The vocabulary every module shares: a node's id, the role pin a card asks for, the role it takes.
//!
//! Config, discovery, the election, K3s and status all use these types as they are; only the
//! K3s step adds join facts (`k3s::K3sRole`) and the state file stores a role's word
//! ([`crate::status::NodeRole`]).

use serde::{Deserialize, Serialize};

/// A node's stable id: the board serial, else the primary MAC, else a persisted random id.
///
/// 64 bits, shown as 16 lowercase hex digits (the form of a Raspberry Pi serial). In the
/// election's state files it is a number; in discovery records and JSON reports, the hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// Parses hex (6 to 16 digits, any case, not all zeros); longer serials keep their last 16.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let valid = text.len() >= 6 && text.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return None;
        }
        let tail = &text[text.len().saturating_sub(16)..];
        let value = u64::from_str_radix(tail, 16).ok()?;
        (value != 0).then_some(Self(value))
    }

    /// The 64-bit value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The last 6 hex digits, used in the default hostname.
    pub fn suffix(self) -> String {
        format!("{:06x}", self.0 & 0xff_ffff)
    }

    /// Serializes as the 16 hex digits (for `#[serde(serialize_with)]` in JSON reports).
    pub fn serialize_hex<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for NodeId {
    /// Sixteen hex digits, the form of a Raspberry Pi board serial.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// The per-card `node.role` of cluster.toml: a rank input of the election, published in the TXT
/// record and carried in election hellos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolePin {
    /// Let the election decide.
    #[default]
    Auto,
    /// Prefer this node as a server (ranks above every `Auto` node).
    Server,
    /// Never a server unless no other node exists.
    Agent,
}

impl RolePin {
    /// Every pin, in the order cluster.toml's error messages list them.
    pub const ALL: [RolePin; 3] = [RolePin::Auto, RolePin::Server, RolePin::Agent];

    /// The spelling in cluster.toml and in the TXT record.
    pub fn as_str(self) -> &'static str {
        match self {
            RolePin::Auto => "auto",
            RolePin::Server => "server",
            RolePin::Agent => "agent",
        }
    }

    /// Parses the cluster.toml / TXT spelling.
    pub fn parse(text: &str) -> Option<Self> {
        RolePin::ALL.into_iter().find(|pin| pin.as_str() == text)
    }

    /// Election rank weight: server pins first, agent pins last.
    pub(crate) fn weight(self) -> u8 {
        match self {
            RolePin::Server => 2,
            RolePin::Auto => 1,
            RolePin::Agent => 0,
        }
    }

    /// The byte in an election hello.
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            RolePin::Auto => 0,
            RolePin::Server => 1,
            RolePin::Agent => 2,
        }
    }

    /// The pin of an election hello's byte.
    pub(crate) fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(RolePin::Auto),
            1 => Some(RolePin::Server),
            2 => Some(RolePin::Agent),
            _ => None,
        }
    }
}

/// What a node runs once the election is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Run `k3s server --cluster-init` (only the node whose `Init` was decided).
    ClusterInit,
    /// Join the init node as a K3s server (holds a seat granted by it).
    Server {
        /// The init node to join.
        join: NodeId,
    },
    /// Join the init node as a K3s agent.
    Agent {
        /// The init node to join.
        join: NodeId,
    },
}

impl Role {
    /// The role's name in the TXT record's state and in `--until role` output.
    pub fn word(self) -> &'static str {
        match self {
            Role::ClusterInit => "cluster-init",
            Role::Server { .. } => "server",
            Role::Agent { .. } => "agent",
        }
    }

    /// The cluster-init node this role belongs to (`me` when it is this node's own).
    pub fn init_node(self, me: NodeId) -> NodeId {
        match self {
            Role::ClusterInit => me,
            Role::Server { join } | Role::Agent { join } => join,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_parses_serials_and_macs() {
        assert_eq!(
            NodeId::parse("ABCDEF").map(|i| i.to_string()),
            Some("0000000000abcdef".into())
        );
        let long = NodeId::parse("ffff00000000000000000001").expect("long serial");
        assert_eq!((long.value(), long.suffix()), (1, "000001".to_string()));
        assert!(NodeId::parse("00000000").is_none());
        assert!(NodeId::parse("12345").is_none());
        assert!(NodeId::parse("12345g").is_none());
    }

    #[test]
    fn pin_spellings_and_wire_round_trip() {
        for pin in RolePin::ALL {
            assert_eq!(RolePin::parse(pin.as_str()), Some(pin));
            assert_eq!(RolePin::from_wire(pin.to_wire()), Some(pin));
            assert_eq!(
                serde_json::to_string(&pin).expect("serializable"),
                format!("\"{}\"", pin.as_str())
            );
        }
        assert_eq!(RolePin::from_wire(3), None);
        assert_eq!(RolePin::parse("Auto"), None);
    }
}
