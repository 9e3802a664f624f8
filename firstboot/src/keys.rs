//! Everything derived from the cluster token, in one place: the public cluster id and the secret
//! keys that authenticate election frames, TXT records and K3s announcements.
//!
//! Each key is HMAC-SHA256 of the token under its own domain label, so the id shown on the LAN
//! and the three keys are unrelated and none reveals the token. The derivations (and so the wire)
//! are those the three modules used when each derived its own key.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::token::Token;
use crate::election::ClusterId;

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of a message authentication tag (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

const ELECTION_LABEL: &[u8] = b"firstboot/v1/protocol-key";
const RECORD_LABEL: &[u8] = b"firstboot/v1/mdns-record-key";
const ANNOUNCE_LABEL: &[u8] = b"firstboot/v1/announce-key";

/// HMAC-SHA256 keyed with `key`; HMAC hashes over-long keys and pads short ones.
pub(crate) fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// A secret key that signs and verifies one kind of message (HMAC-SHA256); prints `<redacted>`.
#[derive(Clone)]
pub struct MacKey {
    // Keyed once, so that each tag costs only the message's own compressions.
    mac: HmacSha256,
    name: &'static str,
}

impl MacKey {
    /// The key of election frames.
    pub fn election(secret: &[u8]) -> Self {
        Self::labelled(secret, ELECTION_LABEL, "ElectionKey")
    }

    /// The key of K3s announcement frames.
    pub fn announce(secret: &[u8]) -> Self {
        Self::labelled(secret, ANNOUNCE_LABEL, "AnnounceKey")
    }

    /// The key of TXT records; its label and messages are length-prefixed (record format v1).
    pub fn record(secret: &[u8]) -> Self {
        let mut mac = keyed(secret);
        mac.update(&(RECORD_LABEL.len() as u32).to_be_bytes());
        mac.update(RECORD_LABEL);
        let key = mac.finalize().into_bytes();
        MacKey {
            mac: keyed(&key),
            name: "RecordKey",
        }
    }

    fn labelled(secret: &[u8], label: &[u8], name: &'static str) -> Self {
        let mut mac = keyed(secret);
        mac.update(label);
        let key = mac.finalize().into_bytes();
        MacKey {
            mac: keyed(&key),
            name,
        }
    }

    /// HMAC-SHA256 tag over the concatenation of `parts`.
    pub fn sign_parts(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Checks `tag` against the concatenation of `parts` in constant time.
    pub fn verify_parts(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.verify_slice(tag).is_ok()
    }

    /// HMAC-SHA256 tag over `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        self.sign_parts(&[data])
    }

    /// Checks `tag` against `data` in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.verify_parts(&[data], tag)
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(<redacted>)", self.name)
    }
}

/// What a node derives from the token; the token itself is not kept.
#[derive(Clone, Debug)]
pub struct TokenKeys {
    /// The public cluster id (token, `nodes` and `servers`).
    pub cluster: ClusterId,
    /// Signs election frames.
    pub election: MacKey,
    /// Signs TXT records.
    pub record: MacKey,
    /// Signs K3s announcements.
    pub announce: MacKey,
}

impl TokenKeys {
    /// Derives the id and every key from cluster.toml's token and sizes.
    pub fn derive(token: &Token, nodes: u8, servers: u8) -> Self {
        Self::from_secret(token.expose().as_bytes(), nodes, servers)
    }

    /// [`TokenKeys::derive`] from the token's raw bytes (tests, and tools that read a token file).
    pub fn from_secret(secret: &[u8], nodes: u8, servers: u8) -> Self {
        TokenKeys {
            cluster: ClusterId::derive(secret, nodes, servers),
            election: MacKey::election(secret),
            record: MacKey::record(secret),
            announce: MacKey::announce(secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_and_reject_other_keys_and_labels() {
        let keys = TokenKeys::from_secret(b"0123456789abcdef", 3, 3);
        let other = TokenKeys::from_secret(b"fedcba9876543210", 3, 3);
        let tag = keys.election.sign(b"hello");
        assert!(keys.election.verify(b"hello", &tag));
        assert!(!keys.election.verify(b"hellO", &tag));
        assert!(!other.election.verify(b"hello", &tag));
        assert!(!keys.announce.verify(b"hello", &tag));
        assert!(!keys.record.verify(b"hello", &tag));
        assert!(keys
            .record
            .verify_parts(&[b"hel", b"lo"], &keys.record.sign(b"hello")));
        assert_eq!(format!("{:?}", keys.election), "ElectionKey(<redacted>)");
        assert!(!format!("{keys:?}").contains("0123456789abcdef"));
    }
}
