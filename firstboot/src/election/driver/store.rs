//! The election's durable state on disk: `<root>/var/lib/firstboot/election.json`, written atomically.

use crate::durable::JsonFile;
use crate::election::PersistedState;
use std::path::Path;

/// File name of the election state under the state directory.
pub const FILE_NAME: &str = crate::paths::ELECTION_JSON;

/// Where the acceptor's promises and the decision live across restarts.
#[derive(Debug, Clone)]
pub struct ElectionStore {
    file: JsonFile<PersistedState>,
}

impl ElectionStore {
    /// The store in `state_dir` (`<root>/var/lib/firstboot` on a node).
    pub fn new(state_dir: &Path) -> Self {
        ElectionStore {
            file: JsonFile::new(state_dir.join(FILE_NAME), 0o600),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The state of an earlier run, `None` on a first boot; older layouts are upconverted
    /// ([`crate::election::legacy`]).
    ///
    /// A file that exists but does not parse is an error, never a fresh start: starting over
    /// would forget promises this acceptor made, which is exactly what could split the brain.
    pub fn load(&self) -> anyhow::Result<Option<PersistedState>> {
        Ok(self.file.load_with(crate::election::legacy::read)?)
    }

    /// Writes `state` durably (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, state: &PersistedState) -> anyhow::Result<()> {
        Ok(self.file.save(state)?)
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
