//! The current view of the LAN: every resolved instance by service name, and a summary of it.

use super::browse::PeerEvent;
use super::record::{Advert, Peer, PeerClass};
use crate::identity::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Resolved instances keyed by service name, kept current from [`PeerEvent`]s.
#[derive(Debug, Default, Clone)]
pub struct PeerTable {
    /// Each instance with the sequence number of its latest resolve.
    peers: BTreeMap<String, (u64, Peer)>,
    /// Counts resolves, so the newest of two records of one node wins.
    resolves: u64,
    /// Listed instances whose records have not resolved yet.
    resolving: BTreeSet<String>,
}

/// A verified peer of our cluster as shown by `firstboot peers`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifiedPeer {
    /// mDNS service instance name.
    pub service: String,
    /// Where its frame transport listens.
    pub addr: SocketAddr,
    /// Its signed record.
    #[serde(flatten)]
    pub advert: Advert,
}

/// Counts by class plus the verified peers themselves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerSummary {
    /// Peers of our cluster with a valid record MAC, one per node (its newest record, e.g. after a
    /// re-registration under another instance name), ordered by service name.
    pub verified: Vec<VerifiedPeer>,
    /// Instances that advertise another cluster id.
    pub foreign: usize,
    /// Instances with our cluster id but a bad or missing MAC, or a malformed record.
    pub unverified: usize,
    /// Instances listed but not resolved yet.
    pub resolving: usize,
}

impl PeerTable {
    /// Applies one browser event.
    pub fn apply(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Appeared { service } => {
                if !self.peers.contains_key(&service) {
                    self.resolving.insert(service);
                }
            }
            PeerEvent::Resolved(peer) => {
                self.resolving.remove(&peer.service);
                self.resolves += 1;
                self.peers
                    .insert(peer.service.clone(), (self.resolves, peer));
            }
            PeerEvent::Removed { service } => {
                self.resolving.remove(&service);
                self.peers.remove(&service);
            }
            PeerEvent::Restarted => {
                self.peers.clear();
                self.resolving.clear();
            }
        }
    }

    /// True while some listed instance has not resolved yet.
    pub fn is_resolving(&self) -> bool {
        !self.resolving.is_empty()
    }

    /// The verified peer whose record carries `node`, if any.
    pub fn verified_node(&self, node: NodeId) -> Option<VerifiedPeer> {
        self.summary()
            .verified
            .into_iter()
            .find(|p| p.advert.node == node)
    }

    /// Verified peers and counts of the others.
    pub fn summary(&self) -> PeerSummary {
        let mut summary = PeerSummary {
            verified: Vec::new(),
            foreign: 0,
            unverified: 0,
            resolving: self.resolving.len(),
        };
        // A node seen under two instance names (a re-registration after a collision or an
        // avahi-daemon restart, before the old name expires) is one peer: its newest record.
        let mut newest: BTreeMap<NodeId, (u64, &Peer, &Advert)> = BTreeMap::new();
        for (seq, peer) in self.peers.values() {
            match &peer.class {
                PeerClass::Verified(advert) => {
                    let slot = newest.entry(advert.node).or_insert((*seq, peer, advert));
                    if *seq > slot.0 {
                        *slot = (*seq, peer, advert);
                    }
                }
                PeerClass::Foreign(_) => summary.foreign += 1,
                PeerClass::Unverified(_) => summary.unverified += 1,
            }
        }
        summary.verified = newest
            .into_values()
            .map(|(_, peer, advert)| VerifiedPeer {
                service: peer.service.clone(),
                addr: peer.addr,
                advert: advert.clone(),
            })
            .collect();
        summary.verified.sort_by(|a, b| a.service.cmp(&b.service));
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::record::{ClusterId, RecordError, RolePin};

    fn peer(service: &str, class: PeerClass) -> Peer {
        Peer {
            service: service.into(),
            addr: "198.18.0.2:7439".parse().expect("literal address"),
            class,
        }
    }

    fn verified(node: u64) -> PeerClass {
        PeerClass::Verified(Advert {
            cluster: ClusterId::derive(b"token-token-token", 3, 3),
            node: NodeId::parse(&format!("{node:016x}")).expect("nonzero id"),
            state: "discovering".into(),
            role: RolePin::Auto,
            storage: 1,
            ram_mib: 1024,
            port: 7439,
        })
    }

    #[test]
    fn summary_counts_each_class_and_follows_removals() {
        let mut table = PeerTable::default();
        table.apply(PeerEvent::Appeared {
            service: "a".into(),
        });
        assert!(table.is_resolving());
        table.apply(PeerEvent::Resolved(peer("a", verified(0xaa))));
        assert!(!table.is_resolving());
        table.apply(PeerEvent::Resolved(peer("b", verified(0xbb))));
        let foreign = ClusterId::derive(b"other-other-other", 3, 3);
        table.apply(PeerEvent::Resolved(peer("c", PeerClass::Foreign(foreign))));
        let bad = PeerClass::Unverified(RecordError::BadMac);
        table.apply(PeerEvent::Resolved(peer("d", bad)));
        let s = table.summary();
        assert_eq!(s.verified.len(), 2);
        assert_eq!((s.foreign, s.unverified), (1, 1));
        table.apply(PeerEvent::Removed {
            service: "a".into(),
        });
        let id = |v: u64| NodeId::parse(&format!("{v:016x}")).expect("nonzero id");
        assert!(table.verified_node(id(0xaa)).is_none());
        assert!(table.verified_node(id(0xbb)).is_some());
        table.apply(PeerEvent::Restarted);
        assert!(table.summary().verified.is_empty());
    }

    #[test]
    fn one_node_under_two_instance_names_is_one_peer_with_its_newest_record() {
        let mut table = PeerTable::default();
        table.apply(PeerEvent::Resolved(peer("n-1", verified(0xaa))));
        let mut newer = peer("n-1 #2", verified(0xaa));
        newer.addr = "198.18.0.9:7439".parse().expect("literal address");
        table.apply(PeerEvent::Resolved(newer));
        table.apply(PeerEvent::Resolved(peer("m", verified(0xbb))));
        let s = table.summary();
        assert_eq!(s.verified.len(), 2, "{s:?}");
        let aa = s.verified.iter().find(|p| p.service.starts_with("n-1"));
        assert_eq!(aa.map(|p| p.service.as_str()), Some("n-1 #2"));
        // The older name resolving again makes it the newest.
        table.apply(PeerEvent::Resolved(peer("n-1", verified(0xaa))));
        let s = table.summary();
        let aa = s.verified.iter().find(|p| p.service.starts_with("n-1"));
        assert_eq!(aa.map(|p| p.service.as_str()), Some("n-1"));
    }
}
