//! K3s secure tokens: `K10<sha256 of the CA bundle>::server:<token>`, and the CA hash itself.

use crate::config::Token;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// The SHA-256 of the server CA bundle exactly as `/cacerts` serves it (the PEM file on disk).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaHash([u8; 32]);

impl CaHash {
    /// Hashes CA bundle bytes.
    pub fn of_bundle(bytes: &[u8]) -> Self {
        CaHash(Sha256::digest(bytes).into())
    }

    /// Hashes the CA bundle file, e.g. `<data>/server/tls/server-ca.crt` on the init node.
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::of_bundle(&std::fs::read(path)?))
    }

    /// A digest received from the init node's announcement.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        CaHash(bytes)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(CaHash(out))
    }

    /// Lowercase hex, as K3s writes it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaHash({})", self.to_hex())
    }
}

/// A full secure token. It contains the cluster secret, so `Debug`/`Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecureToken {
    ca: CaHash,
    password: String,
}

impl SecureToken {
    /// The token a joiner uses: the init node's CA hash and the shared cluster token.
    pub fn new(ca: CaHash, token: &Token) -> Self {
        SecureToken {
            ca,
            password: token.expose().to_string(),
        }
    }

    /// Parses `K10<64 hex>::<user>:<password>`; `None` for short tokens or malformed ones.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.trim_end().strip_prefix("K10")?;
        let (hash, creds) = rest.split_once("::")?;
        let ca = CaHash::from_hex(hash)?;
        let password = creds.strip_prefix("server:")?;
        if password.is_empty() {
            return None;
        }
        Some(SecureToken {
            ca,
            password: password.to_string(),
        })
    }

    /// The CA hash inside the token (not secret).
    pub fn ca_hash(&self) -> CaHash {
        self.ca
    }

    /// The password part (secret).
    pub fn expose_password(&self) -> &str {
        &self.password
    }

    /// The whole token text (secret): only for the 0600 config.yaml.
    pub fn expose(&self) -> String {
        format!("K10{}::server:{}", self.ca.to_hex(), self.password)
    }
}

impl fmt::Debug for SecureToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecureToken(K10{}::server:<redacted>)", self.ca.to_hex())
    }
}

impl fmt::Display for SecureToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K10{}::server:<redacted>", self.ca.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_redacts() {
        let ca = CaHash::of_bundle(b"-----BEGIN CERTIFICATE-----\n");
        let token = Token::new("roundtrip-secret-123".into()).unwrap();
        let st = SecureToken::new(ca, &token);
        let text = st.expose();
        assert!(text.starts_with("K10"));
        assert!(text.ends_with("::server:roundtrip-secret-123"));
        assert_eq!(text.len(), 3 + 64 + 2 + 7 + 20);
        let back = SecureToken::parse(&text).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.ca_hash(), ca);
        assert!(!format!("{st} {st:?}").contains("roundtrip-secret"));
    }

    #[test]
    fn hash_matches_sha256sum_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server-ca.crt");
        std::fs::write(&p, b"abc").unwrap();
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            CaHash::of_file(&p).unwrap().to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rejects_short_and_malformed_tokens() {
        assert!(SecureToken::parse("just-a-password").is_none());
        assert!(SecureToken::parse("K10abc::server:x").is_none());
        let h = "0".repeat(64);
        assert!(SecureToken::parse(&format!("K10{h}::node:x")).is_none());
        assert!(SecureToken::parse(&format!("K10{h}::server:")).is_none());
        assert!(SecureToken::parse(&format!("K10{h}::server:pw\n")).is_some());
    }
}
