//! The public cluster id (derived from the token with `nodes` and `servers`); the keys are in [`crate::keys`].

use std::fmt;

use hmac::Mac;
use serde::{Deserialize, Serialize};

use crate::keys::keyed;
pub use crate::keys::MAC_LEN;
/// Length in bytes of a cluster id.
pub const CLUSTER_ID_LEN: usize = 16;

// A label of its own keeps the public id independent of the secret keys from the same token.
const CLUSTER_ID_LABEL: &[u8] = b"firstboot/v1/cluster-id";

/// Public identifier of one cluster: derived from the token, `nodes` and `servers`, never revealing the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; CLUSTER_ID_LEN]);

impl ClusterId {
    /// Derives the cluster id from the raw token bytes and the electorate settings.
    pub fn derive(token: &[u8], nodes: u8, servers: u8) -> Self {
        let mut mac = keyed(token);
        mac.update(CLUSTER_ID_LABEL);
        mac.update(&[nodes, servers]);
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; CLUSTER_ID_LEN];
        id.copy_from_slice(&digest[..CLUSTER_ID_LEN]);
        ClusterId(id)
    }

    /// Lowercase hex form, as published in discovery records.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({})", self.to_hex())
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MacKey;

    #[test]
    fn cluster_id_depends_on_every_input() {
        let base = ClusterId::derive(b"0123456789abcdef", 5, 3);
        assert_eq!(base, ClusterId::derive(b"0123456789abcdef", 5, 3));
        assert_ne!(base, ClusterId::derive(b"0123456789abcdeF", 5, 3));
        assert_ne!(base, ClusterId::derive(b"0123456789abcdef", 4, 3));
        assert_ne!(base, ClusterId::derive(b"0123456789abcdef", 5, 1));
    }

    #[test]
    fn key_and_cluster_id_are_domain_separated() {
        let token = b"0123456789abcdef";
        let key = MacKey::election(token);
        let id = ClusterId::derive(token, 0, 0);
        // The id must not be a prefix of anything the key would produce for the same label.
        assert_ne!(&key.sign(CLUSTER_ID_LABEL)[..CLUSTER_ID_LEN], &id.0[..]);
    }
}
