//! The election's status snapshot and the one line `firstboot status` and sd_notify show.

use super::paxos::Value;
use super::{NodeId, Role};

/// A snapshot for status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionStatus {
    /// Current epoch.
    pub epoch: u32,
    /// Undecided voters in view, this node included.
    pub visible: usize,
    /// Votes needed to decide.
    pub quorum: usize,
    /// Final value of the current epoch (`Init(x)` only once x's fate is Go).
    pub decided: Option<Value>,
    /// The node elected in the current epoch while its fate (Go or Abandon) is still open.
    pub elected: Option<NodeId>,
    /// This node's role.
    pub role: Option<Role>,
    /// More voters than `nodes` were seen: the contract's assumption is broken.
    pub overcrowded: bool,
    /// The configured electorate (`nodes`).
    pub nodes: usize,
    /// Distinct voters seen, this node included.
    pub voters_seen: usize,
}

impl std::fmt::Display for ElectionStatus {
    /// One status line, e.g. "waiting for 1 more node: 1/3 visible".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.overcrowded {
            write!(
                f,
                "WARNING: {} voters seen for nodes = {}, quorum raised to {}; ",
                self.voters_seen, self.nodes, self.quorum
            )?;
        }
        match (self.decided, self.role) {
            (_, Some(Role::ClusterInit)) => f.write_str("elected: running cluster-init"),
            (_, Some(Role::Server { join })) => write!(f, "server seat granted: joining {join}"),
            (_, Some(Role::Agent { join })) => write!(f, "agent: joining {join}"),
            (Some(Value::Init(init)), None) => {
                write!(f, "{init} runs cluster-init; waiting for a server seat")
            }
            (None, None) if self.elected.is_some() => {
                let elected = self.elected.unwrap_or_default();
                write!(
                    f,
                    "{elected} elected (epoch {}); waiting for it to confirm",
                    self.epoch
                )
            }
            (_, None) if self.visible < self.quorum => {
                let missing = self.quorum - self.visible;
                let plural = if missing == 1 { "" } else { "s" };
                write!(
                    f,
                    "waiting for {missing} more node{plural}: {}/{} visible",
                    self.visible, self.nodes
                )
            }
            (_, None) => write!(
                f,
                "electing (epoch {}): {}/{} visible",
                self.epoch, self.visible, self.nodes
            ),
        }
    }
}
