//! etcd timing for the whole cluster: chosen once by the init node, identical on every server.
//!
//! K3s runs etcd with heartbeat 500 ms and election timeout 5000 ms (pkg/etcd/etcd.go:1042-1043 at
//! v1.31.10). K3s does not compare `etcd-arg` between servers: the values go into each member's
//! own etcd config file (pkg/daemons/executor/executor.go `ToConfigFile`), and etcd does not
//! compare members' timings either. They should still agree: etcd's tuning guide (tuning.md) says
//! the values "should be the same for all members in one cluster", as different values "may
//! disrupt cluster stability". Slow SD cards stall
//! fdatasync for tens or hundreds of milliseconds, which makes a leader miss heartbeats and
//! triggers needless elections, so the init node picks longer timings when the slowest planned
//! server is slow, and carries the choice in its announcement so that joiners render exactly the
//! same `etcd-arg` values.

use super::class::{Speed, StorageClass};
use serde::{Deserialize, Serialize};

/// Heartbeat and election timeout of the cluster's etcd, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTuning {
    /// `--heartbeat-interval` in milliseconds.
    pub heartbeat_ms: u32,
    /// `--election-timeout` in milliseconds.
    pub election_timeout_ms: u32,
}

/// Why an announced etcd timing was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdTuningError {
    /// Not `<heartbeat>/<election>` in milliseconds.
    #[error("etcd timing {0:?} is not <heartbeat ms>/<election timeout ms>")]
    Malformed(String),
    /// Outside what etcd accepts or what keeps a cluster stable.
    #[error("etcd timing {heartbeat_ms}/{election_timeout_ms} ms is out of range: heartbeat 50..=5000, election timeout 5..=50 heartbeats and at most 50000")]
    OutOfRange {
        /// Heartbeat in milliseconds.
        heartbeat_ms: u32,
        /// Election timeout in milliseconds.
        election_timeout_ms: u32,
    },
}

impl EtcdTuning {
    /// K3s's own defaults.
    pub const K3S_DEFAULT: EtcdTuning = EtcdTuning {
        heartbeat_ms: 500,
        election_timeout_ms: 5000,
    };
    /// For a cluster with a server on slow storage: tolerate fsync stalls of about a second.
    pub const SLOW_STORAGE: EtcdTuning = EtcdTuning {
        heartbeat_ms: 1000,
        election_timeout_ms: 10000,
    };

    /// The timing for one class.
    pub fn for_class(class: StorageClass) -> EtcdTuning {
        match class.speed {
            Speed::Slow => EtcdTuning::SLOW_STORAGE,
            Speed::Fast => EtcdTuning::K3S_DEFAULT,
        }
    }

    /// The init node's choice for the whole cluster: the timing of its slowest planned server.
    pub fn for_servers(classes: impl IntoIterator<Item = StorageClass>) -> EtcdTuning {
        classes
            .into_iter()
            .map(EtcdTuning::for_class)
            .max_by_key(|t| t.election_timeout_ms)
            .unwrap_or(EtcdTuning::K3S_DEFAULT)
    }

    /// Check that the values are ones etcd accepts and that keep elections sane.
    pub fn validate(self) -> Result<EtcdTuning, EtcdTuningError> {
        let ok = (50..=5000).contains(&self.heartbeat_ms)
            && self.election_timeout_ms >= 5 * self.heartbeat_ms
            && self.election_timeout_ms <= 50 * self.heartbeat_ms
            && self.election_timeout_ms <= 50_000;
        if ok {
            Ok(self)
        } else {
            Err(EtcdTuningError::OutOfRange {
                heartbeat_ms: self.heartbeat_ms,
                election_timeout_ms: self.election_timeout_ms,
            })
        }
    }

    /// The K3s `etcd-arg` list (one `key=value` per entry) for `config.yaml`.
    pub fn etcd_args(self) -> Vec<String> {
        vec![
            format!("heartbeat-interval={}", self.heartbeat_ms),
            format!("election-timeout={}", self.election_timeout_ms),
        ]
    }
}

/// Compact wire form `<heartbeat>/<election>`, e.g. `1000/10000`, for announcements.
impl std::fmt::Display for EtcdTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.heartbeat_ms, self.election_timeout_ms)
    }
}

impl std::str::FromStr for EtcdTuning {
    type Err = EtcdTuningError;
    fn from_str(s: &str) -> Result<Self, EtcdTuningError> {
        let malformed = || EtcdTuningError::Malformed(s.to_string());
        let (h, e) = s.split_once('/').ok_or_else(malformed)?;
        EtcdTuning {
            heartbeat_ms: h.parse().map_err(|_| malformed())?,
            election_timeout_ms: e.parse().map_err(|_| malformed())?,
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::class::DeviceKind;

    fn c(kind: DeviceKind, speed: Speed) -> StorageClass {
        StorageClass { kind, speed }
    }

    #[test]
    fn slowest_server_decides() {
        let fast = c(DeviceKind::Nvme, Speed::Fast);
        let slow = c(DeviceKind::Sd, Speed::Slow);
        assert_eq!(
            EtcdTuning::for_servers([fast, fast]),
            EtcdTuning::K3S_DEFAULT
        );
        assert_eq!(
            EtcdTuning::for_servers([fast, slow]),
            EtcdTuning::SLOW_STORAGE
        );
        assert_eq!(EtcdTuning::for_servers([]), EtcdTuning::K3S_DEFAULT);
    }

    #[test]
    fn renders_k3s_etcd_args() {
        assert_eq!(
            EtcdTuning::SLOW_STORAGE.etcd_args(),
            ["heartbeat-interval=1000", "election-timeout=10000"]
        );
    }

    #[test]
    fn wire_form_round_trips_and_rejects_nonsense() {
        for t in [EtcdTuning::K3S_DEFAULT, EtcdTuning::SLOW_STORAGE] {
            assert_eq!(t.to_string().parse::<EtcdTuning>().unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<EtcdTuning>(&json).unwrap(), t);
        }
        assert!(matches!(
            "1000".parse::<EtcdTuning>(),
            Err(EtcdTuningError::Malformed(_))
        ));
        assert!(matches!(
            "1000/1500".parse::<EtcdTuning>(),
            Err(EtcdTuningError::OutOfRange { .. })
        ));
        assert!(matches!(
            "10/100".parse::<EtcdTuning>(),
            Err(EtcdTuningError::OutOfRange { .. })
        ));
    }
}
