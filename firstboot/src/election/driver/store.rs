//! The election's durable state on disk: `<root>/var/lib/firstboot/election.json`, written atomically.

use crate::durable::write_atomic;
use crate::election::PersistedState;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// File name of the election state under the state directory.
pub const FILE_NAME: &str = crate::paths::ELECTION_JSON;

/// Where the acceptor's promises and the decision live across restarts.
#[derive(Debug, Clone)]
pub struct ElectionStore {
    path: PathBuf,
}

impl ElectionStore {
    /// The store in `state_dir` (`<root>/var/lib/firstboot` on a node).
    pub fn new(state_dir: &Path) -> Self {
        ElectionStore {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state of an earlier run, `None` on a first boot.
    ///
    /// A file that exists but does not parse is an error, never a fresh start: starting over
    /// would forget promises this acceptor made, which is exactly what could split the brain.
    pub fn load(&self) -> anyhow::Result<Option<PersistedState>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.path.display()));
            }
        };
        let state = crate::election::legacy::read(&bytes)
            .with_context(|| format!("parsing {}", self.path.display()))?;
        Ok(Some(state))
    }

    /// Writes `state` durably (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, state: &PersistedState) -> anyhow::Result<()> {
        // Plain data with string keys: serializing cannot fail.
        let mut json = serde_json::to_vec_pretty(state).unwrap_or_default();
        json.push(b'\n');
        write_atomic(&self.path, &json, 0o600)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{EpochState, NodeId, Role};

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = ElectionStore::new(&dir.path().join("var/lib/firstboot"));
        assert!(store.load().unwrap().is_none());
        let state = PersistedState {
            epoch: 2,
            epoch_state: EpochState::Go(NodeId(7)),
            role: Some(Role::Server { join: NodeId(7) }),
            ..PersistedState::default()
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        std::fs::write(store.path(), b"{ not json").unwrap();
        assert!(store.load().is_err());
    }
}
