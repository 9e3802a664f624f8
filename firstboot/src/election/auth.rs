//! Token-derived identities: the public cluster id and the secret key that authenticates messages.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of a message authentication tag (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Length in bytes of a cluster id.
pub const CLUSTER_ID_LEN: usize = 16;

// Distinct labels keep the public id and the secret key independent although both come from the token.
const CLUSTER_ID_LABEL: &[u8] = b"firstboot/v1/cluster-id";
const PROTOCOL_KEY_LABEL: &[u8] = b"firstboot/v1/protocol-key";

fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC hashes over-long keys and pads short ones: every key length is valid.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

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

/// Secret key that signs and verifies election frames (HMAC-SHA256); prints as `<redacted>`.
#[derive(Clone)]
pub struct ProtocolKey {
    // Keyed once so that each tag costs only the message's own compressions.
    mac: HmacSha256,
}

impl ProtocolKey {
    /// Derives the protocol key from the raw token bytes.
    pub fn derive(token: &[u8]) -> Self {
        let mut mac = keyed(token);
        mac.update(PROTOCOL_KEY_LABEL);
        let key = mac.finalize().into_bytes();
        ProtocolKey { mac: keyed(&key) }
    }

    /// HMAC-SHA256 tag over `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Checks `tag` against `data` in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for ProtocolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProtocolKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_depends_on_every_input() {
        let base = ClusterId::derive(b"0123456789abcdef", 5, 3);
        assert_eq!(base, ClusterId::derive(b"0123456789abcdef", 5, 3));
        assert_ne!(base, ClusterId::derive(b"0123456789abcdeF", 5, 3));
        assert_ne!(base, ClusterId::derive(b"0123456789abcdef", 4, 3));
        assert_ne!(base, ClusterId::derive(b"0123456789abcdef", 5, 1));
    }

    #[test]
    fn key_signs_and_rejects_other_keys() {
        let key = ProtocolKey::derive(b"0123456789abcdef");
        let other = ProtocolKey::derive(b"fedcba9876543210");
        let tag = key.sign(b"hello");
        assert!(key.verify(b"hello", &tag));
        assert!(!key.verify(b"hellO", &tag));
        assert!(!other.verify(b"hello", &tag));
        assert_eq!(format!("{key:?}"), "ProtocolKey(<redacted>)");
    }

    #[test]
    fn key_and_cluster_id_are_domain_separated() {
        let token = b"0123456789abcdef";
        let key = ProtocolKey::derive(token);
        let id = ClusterId::derive(token, 0, 0);
        // The id must not be a prefix of anything the key would produce for the same label.
        assert_ne!(&key.sign(CLUSTER_ID_LABEL)[..CLUSTER_ID_LEN], &id.0[..]);
    }
}
