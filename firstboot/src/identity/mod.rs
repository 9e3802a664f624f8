//! Who this node is (lifecycle step 2, see docs/architecture.md): a stable node id and the hostname derived from it.

pub mod hostname;
pub mod node_id;

pub use hostname::{hostname_for, set_hostname};
pub use node_id::{node_id, IdSource, NodeId};
