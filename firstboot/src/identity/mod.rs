//! Who this node is (SPEC 4.1 step 2): a stable node id and the hostname derived from it.

pub mod hostname;
pub mod node_id;

pub use hostname::{hostname_for, set_hostname};
pub use node_id::{node_id, IdSource, NodeId};
