//! The signed `_k3s-firstboot._tcp` TXT record: cluster id, token-derived keys, encode and verify.
//!
//! The cluster id and the record key come from [`crate::keys::TokenKeys`]; the MAC covers the
//! record's canonical bytes, length-prefixed.

use crate::identity::NodeId;
use crate::keys::{MacKey, TokenKeys};
use std::net::SocketAddr;

/// Protocol version carried in every record; peers with another version are not verified.
pub const PROTOCOL_VERSION: u8 = 1;

/// The public cluster id: one type, shared with the election core (same token derivation).
pub use crate::election::ClusterId;
/// Bytes in a cluster id (one definition, the election core's).
pub use crate::election::CLUSTER_ID_LEN;
/// Parses the 32 hex digits of a TXT record's `c=` value into a cluster id.
pub fn cluster_id_from_hex(text: &str) -> Option<ClusterId> {
    let bytes = hex::decode(text).ok()?;
    Some(ClusterId(bytes.try_into().ok()?))
}

/// The token-derived values discovery uses (the id and the record key are two of them).
pub type ClusterKeys = TokenKeys;

/// A node's role pin from `cluster.toml` (`node.role`), one of the rank inputs.
pub use crate::model::RolePin;

/// What one node announces about itself on the LAN.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Advert {
    /// Cluster the node belongs to.
    #[serde(serialize_with = "serialize_cluster")]
    pub cluster: ClusterId,
    /// Stable node id.
    #[serde(serialize_with = "NodeId::serialize_hex")]
    pub node: NodeId,
    /// Lifecycle state name (free text set by the daemon, e.g. `discovering`, `electing`, `server`).
    pub state: String,
    /// Role pin rank input.
    pub role: RolePin,
    /// Storage score rank input (higher is faster).
    pub storage: u8,
    /// RAM in MiB rank input.
    pub ram_mib: u32,
    /// UDP port of the node's frame transport.
    pub port: u16,
}

fn serialize_cluster<S: serde::Serializer>(id: &ClusterId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// Why a TXT record failed to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A required key is absent.
    #[error("missing TXT key {0}")]
    Missing(&'static str),
    /// A key has a value that does not parse.
    #[error("malformed TXT key {0}")]
    Malformed(&'static str),
    /// A protocol version this build does not speak.
    #[error("protocol version {0} is not {PROTOCOL_VERSION}")]
    Version(String),
    /// The HMAC does not match the record.
    #[error("bad record MAC")]
    BadMac,
}

/// How a resolved record relates to this node's cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerClass {
    /// Same cluster id and a valid MAC under our record key.
    Verified(Advert),
    /// A well-formed record of another cluster (another kit on the same LAN).
    Foreign(ClusterId),
    /// Anything else: missing or bad MAC, malformed, other protocol version.
    Unverified(RecordError),
}

/// Canonical signed bytes: fixed key order, `key=value` lines.
fn canonical(fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

impl Advert {
    /// The signed fields in canonical order.
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("v", PROTOCOL_VERSION.to_string()),
            ("c", self.cluster.to_hex()),
            ("n", self.node.to_string()),
            ("s", self.state.clone()),
            ("r", self.role.as_str().to_string()),
            ("st", self.storage.to_string()),
            ("m", self.ram_mib.to_string()),
            ("p", self.port.to_string()),
        ]
    }

    /// The TXT record strings (`key=value`), the last one the MAC `h=`.
    pub fn to_txt(&self, key: &MacKey) -> Vec<Vec<u8>> {
        let fields = self.fields();
        let canonical = canonical(&fields);
        let tag = key.sign_parts(&[&(canonical.len() as u32).to_be_bytes(), &canonical]);
        let mut txt: Vec<Vec<u8>> = fields
            .into_iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect();
        txt.push(format!("h={}", hex::encode(tag)).into_bytes());
        txt
    }
}

/// Looks up `key` in TXT strings (`key=value`); the first occurrence wins, as in RFC 6763.
fn lookup<'a>(txt: &'a [Vec<u8>], key: &str) -> Option<&'a str> {
    txt.iter().find_map(|item| {
        let text = std::str::from_utf8(item).ok()?;
        let (k, v) = text.split_once('=')?;
        (k.eq_ignore_ascii_case(key)).then_some(v)
    })
}

/// Parses and checks a TXT record against our cluster id and record key.
pub fn classify(txt: &[Vec<u8>], ours: &ClusterId, key: &MacKey) -> PeerClass {
    match parse_verified(txt, ours, key) {
        Ok(advert) if advert.cluster == *ours => PeerClass::Verified(advert),
        Ok(advert) => PeerClass::Foreign(advert.cluster),
        Err(Classified::Foreign(id)) => PeerClass::Foreign(id),
        Err(Classified::Unverified(e)) => PeerClass::Unverified(e),
    }
}

/// Internal outcome of parsing before the MAC decides.
enum Classified {
    Foreign(ClusterId),
    Unverified(RecordError),
}

fn parse_verified(txt: &[Vec<u8>], ours: &ClusterId, key: &MacKey) -> Result<Advert, Classified> {
    let bad = Classified::Unverified;
    let get = |k: &'static str| lookup(txt, k).ok_or(bad(RecordError::Missing(k)));
    let cluster = cluster_id_from_hex(get("c")?).ok_or(bad(RecordError::Malformed("c")))?;
    if cluster != *ours {
        // Another kit's record: we cannot check its MAC and have no business doing so.
        return Err(Classified::Foreign(cluster));
    }
    let version = get("v")?;
    if version != PROTOCOL_VERSION.to_string() {
        return Err(bad(RecordError::Version(version.to_string())));
    }
    let advert = Advert {
        cluster,
        node: NodeId::parse(get("n")?).ok_or(bad(RecordError::Malformed("n")))?,
        state: get("s")?.to_string(),
        role: RolePin::parse(get("r")?).ok_or(bad(RecordError::Malformed("r")))?,
        storage: get("st")?
            .parse()
            .map_err(|_| bad(RecordError::Malformed("st")))?,
        ram_mib: get("m")?
            .parse()
            .map_err(|_| bad(RecordError::Malformed("m")))?,
        port: get("p")?
            .parse()
            .map_err(|_| bad(RecordError::Malformed("p")))?,
    };
    let tag = hex::decode(get("h")?).map_err(|_| bad(RecordError::Malformed("h")))?;
    let canonical = canonical(&advert.fields());
    if !key.verify_parts(&[&(canonical.len() as u32).to_be_bytes(), &canonical], &tag) {
        return Err(bad(RecordError::BadMac));
    }
    Ok(advert)
}

/// A resolved service instance of `_k3s-firstboot._tcp` and what we make of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// mDNS service instance name.
    pub service: String,
    /// Address and port from the SRV/A records.
    pub addr: SocketAddr,
    /// Verification outcome.
    pub class: PeerClass,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"correct-horse-battery-staple";

    fn advert() -> Advert {
        Advert {
            cluster: ClusterId::derive(TOKEN, 3, 3),
            node: NodeId::parse("10000000abcdef12").expect("hex id"),
            state: "discovering".into(),
            role: RolePin::Auto,
            storage: 42,
            ram_mib: 8064,
            port: 7439,
        }
    }

    #[test]
    fn cluster_id_is_hmac_of_label_and_sizes() {
        // Independent recomputation of the documented derivation (shared with the election core).
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(TOKEN).expect("any key length");
        mac.update(b"firstboot/v1/cluster-id");
        mac.update(&[5, 3]);
        let expected = hex::encode(&mac.finalize().into_bytes()[..16]);
        assert_eq!(ClusterId::derive(TOKEN, 5, 3).to_hex(), expected);
    }

    #[test]
    fn cluster_id_depends_on_token_nodes_and_servers() {
        let base = ClusterId::derive(TOKEN, 5, 3);
        assert_eq!(base, ClusterId::derive(TOKEN, 5, 3));
        assert_ne!(base, ClusterId::derive(TOKEN, 3, 3));
        assert_ne!(base, ClusterId::derive(TOKEN, 5, 1));
        assert_ne!(base, ClusterId::derive(b"another-token-entirely", 5, 3));
        assert_eq!(cluster_id_from_hex(&base.to_hex()), Some(base));
    }

    #[test]
    fn record_round_trips_as_verified() {
        let key = MacKey::record(TOKEN);
        let ad = advert();
        let txt = ad.to_txt(&key);
        assert_eq!(classify(&txt, &ad.cluster, &key), PeerClass::Verified(ad));
    }

    #[test]
    fn record_never_contains_the_token() {
        let key = MacKey::record(TOKEN);
        let joined: Vec<u8> = advert().to_txt(&key).concat();
        assert!(!joined.windows(TOKEN.len()).any(|w| w == TOKEN));
        assert!(!format!("{key:?}").contains("horse"));
    }

    #[test]
    fn tampered_field_or_wrong_key_is_unverified() {
        let key = MacKey::record(TOKEN);
        let ad = advert();
        let mut txt = ad.to_txt(&key);
        txt[3] = b"s=server".to_vec();
        assert_eq!(
            classify(&txt, &ad.cluster, &key),
            PeerClass::Unverified(RecordError::BadMac)
        );
        // A rogue who copies our public cluster id but not the token.
        let rogue = ad.to_txt(&MacKey::record(b"wrong-token-wrong-token"));
        assert_eq!(
            classify(&rogue, &ad.cluster, &key),
            PeerClass::Unverified(RecordError::BadMac)
        );
        let mut unsigned = ad.to_txt(&key);
        unsigned.pop();
        assert_eq!(
            classify(&unsigned, &ad.cluster, &key),
            PeerClass::Unverified(RecordError::Missing("h"))
        );
    }

    #[test]
    fn other_cluster_is_foreign() {
        let other_token = b"another-kit-another-token";
        let mut ad = advert();
        ad.cluster = ClusterId::derive(other_token, 3, 3);
        let txt = ad.to_txt(&MacKey::record(other_token));
        let ours = ClusterId::derive(TOKEN, 3, 3);
        assert_eq!(
            classify(&txt, &ours, &MacKey::record(TOKEN)),
            PeerClass::Foreign(ad.cluster)
        );
    }

    #[test]
    fn other_protocol_version_is_unverified() {
        let key = MacKey::record(TOKEN);
        let ad = advert();
        let mut txt = ad.to_txt(&key);
        txt[0] = b"v=9".to_vec();
        assert_eq!(
            classify(&txt, &ad.cluster, &key),
            PeerClass::Unverified(RecordError::Version("9".into()))
        );
    }
}
