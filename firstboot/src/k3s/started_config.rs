//! Which K3s configuration the running unit started with, and what to do about a difference.
//!
//! K3s reads `config.yaml` and its `config.yaml.d/*.yaml` drop-ins once, when the process starts
//! (`configfilearg.MustParse(os.Args)`, cmd/server/main.go:82; drop-ins: pkg/configfilearg/
//! parser.go:115-125 and `dotDFiles` :227-240), and systemd's StartUnit is a no-op on an active
//! unit. So a unit that was running before firstboot wrote its config (started by hand, by an old
//! image's `[Install]`, or by an earlier firstboot with other inputs) keeps its old configuration
//! unless it is restarted.
//!
//! How "what the unit started with" is known: firstboot records the SHA-256 of the configuration
//! on disk (config.yaml plus the drop-ins, in the order K3s reads them) each time it has made
//! systemd start or restart the unit with that configuration on disk, in
//! `/var/lib/firstboot/k3s-started-config`. A later round restarts a running unit when the
//! configuration now on disk differs from that record, or when there is no record (the unit was
//! not started by firstboot). Any start by someone else in between (K3s's own `Restart=always`,
//! a reboot) reads the configuration on disk, which is the recorded one unless it changed, and a
//! change is exactly what the comparison sees.
//!
//! Not chosen: comparing the files' mtime with the unit's `ExecMainStartTimestamp`. Both are
//! wall-clock times and firstboot's clock agreement steps a joiner's clock forward to the init
//! node's, which NTP may later step back: a config written after the start could then look older
//! than it, and the restart would be missed. A hash has no clock in it. The cost of the record is
//! at most one needless restart: when firstboot crashed between RestartUnit and writing the
//! record, or when someone else changed a drop-in and restarted K3s by hand.

use super::CONFIG_YAML_PATH;
use crate::durable::write_atomic;
use crate::systemd::ActiveState;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Where the record lives, relative to the root prefix.
pub const STARTED_CONFIG_PATH: &str = crate::paths::K3S_STARTED_CONFIG;

/// SHA-256 over the K3s configuration files as K3s reads them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ConfigDigest([u8; 32]);

impl fmt::Display for ConfigDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ConfigDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigDigest({self})")
    }
}

impl ConfigDigest {
    /// Hashes `<root>/etc/rancher/k3s/config.yaml` (when present) and every drop-in of
    /// `config.yaml.d` K3s would read: regular entries whose name ends in `.yaml` or `.yml`
    /// (any case), in name order (Go's `os.ReadDir` sorts by name), each with its name.
    pub fn of_root(root: &Path) -> io::Result<Self> {
        let main = root.join(CONFIG_YAML_PATH);
        let mut h = Sha256::new();
        match std::fs::read(&main) {
            Ok(bytes) => {
                h.update(b"config.yaml\0");
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => h.update(b"no config.yaml\0"),
            Err(e) => return Err(e),
        }
        for path in drop_ins(&main)? {
            let bytes = std::fs::read(&path)?;
            let name = path.file_name().unwrap_or_default().as_encoded_bytes();
            h.update(b"drop-in\0");
            h.update((name.len() as u64).to_le_bytes());
            h.update(name);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Ok(ConfigDigest(h.finalize().into()))
    }

    fn parse(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).ok()?;
        Some(ConfigDigest(out))
    }
}

/// The drop-ins K3s reads for `main` (`dotDFiles`, pkg/configfilearg/parser.go:227-240).
fn drop_ins(main: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dir = main.as_os_str().to_owned();
    dir.push(".d");
    let entries = match std::fs::read_dir(PathBuf::from(dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        // Go's DirEntry.IsDir does not follow symlinks; neither does file_type.
        if entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The configuration firstboot last (re)started the unit with, if it ever did.
pub fn load_started(root: &Path) -> io::Result<Option<ConfigDigest>> {
    match std::fs::read_to_string(root.join(STARTED_CONFIG_PATH)) {
        // An unreadable record is as good as none: the unit is restarted once.
        Ok(text) => Ok(ConfigDigest::parse(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records that the unit was (re)started with `digest` on disk. Call only after systemd took
/// the start or restart job: a crash before the record costs one more restart, never a missed one.
pub fn save_started(root: &Path, digest: ConfigDigest) -> io::Result<()> {
    write_atomic(
        &root.join(STARTED_CONFIG_PATH),
        format!("{digest}\n").as_bytes(),
        0o600,
    )
}

/// What to ask systemd for this node's own K3s unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    /// Not running: StartUnit; the new process reads the configuration on disk.
    Start,
    /// Running (or starting, or waiting to restart) with another configuration: RestartUnit.
    Restart,
    /// Running with the configuration on disk: StartUnit (a no-op) and follow it.
    Follow,
}

/// Decides from the unit's state, the recorded configuration and the one on disk.
pub fn decide(
    state: &ActiveState,
    started_with: Option<ConfigDigest>,
    on_disk: ConfigDigest,
) -> UnitAction {
    match state {
        // No process: whatever starts next reads the files as they are now.
        ActiveState::Inactive | ActiveState::Failed => UnitAction::Start,
        // A process exists, or systemd will start one by itself (auto-restart is "activating"),
        // possibly with what it read earlier: restart unless it is known to match.
        ActiveState::Active
        | ActiveState::Activating
        | ActiveState::Reloading
        | ActiveState::Deactivating
        | ActiveState::Other(_) => {
            if started_with == Some(on_disk) {
                UnitAction::Follow
            } else {
                UnitAction::Restart
            }
        }
    }
}

/// What to do about the other role's unit (`k3s-agent.service` on a server, `k3s.service` on an
/// agent): stop it when anything of it may run. Disabling is done every round regardless
/// (DisableUnitFiles removes any symlink to it and is a no-op when there is none).
pub fn must_stop(state: &ActiveState) -> bool {
    !matches!(state, ActiveState::Inactive | ActiveState::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(config: Option<&str>, drop_ins: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join(CONFIG_YAML_PATH);
        std::fs::create_dir_all(main.parent().unwrap()).unwrap();
        if let Some(c) = config {
            std::fs::write(&main, c).unwrap();
        }
        for (name, text) in drop_ins {
            let d = dir.path().join(format!("{CONFIG_YAML_PATH}.d"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), text).unwrap();
        }
        dir
    }

    fn digest(config: Option<&str>, drop_ins: &[(&str, &str)]) -> ConfigDigest {
        ConfigDigest::of_root(root_with(config, drop_ins).path()).unwrap()
    }

    #[test]
    fn digest_covers_config_and_the_drop_ins_k3s_reads() {
        let base = digest(Some("node-ip: \"198.18.0.1\"\n"), &[]);
        assert_eq!(base, digest(Some("node-ip: \"198.18.0.1\"\n"), &[]));
        assert_ne!(base, digest(Some("node-ip: \"198.18.0.2\"\n"), &[]));
        assert_ne!(base, digest(None, &[]));
        // Drop-ins K3s reads change it; files it skips do not.
        let c = Some("node-ip: \"198.18.0.1\"\n");
        assert_ne!(base, digest(c, &[("50-x.yaml", "cluster-init: true\n")]));
        assert_ne!(base, digest(c, &[("50-x.YML", "cluster-init: true\n")]));
        assert_eq!(
            base,
            digest(c, &[("50-x.yaml.bak", "cluster-init: true\n")])
        );
        assert_eq!(base, digest(c, &[("README", "x")]));
        // The name is part of it (K3s merges drop-ins in name order).
        assert_ne!(
            digest(c, &[("10-a.yaml", "a: 1\n"), ("20-b.yaml", "b: 1\n")]),
            digest(c, &[("10-a.yaml", "b: 1\n"), ("20-b.yaml", "a: 1\n")])
        );
    }

    #[test]
    fn a_directory_named_like_a_drop_in_is_skipped() {
        let root = root_with(Some("a: 1\n"), &[]);
        let before = ConfigDigest::of_root(root.path()).unwrap();
        std::fs::create_dir_all(root.path().join(format!("{CONFIG_YAML_PATH}.d/x.yaml"))).unwrap();
        assert_eq!(before, ConfigDigest::of_root(root.path()).unwrap());
    }

    #[test]
    fn record_round_trips_and_a_damaged_one_counts_as_none() {
        let root = root_with(Some("a: 1\n"), &[]);
        assert_eq!(load_started(root.path()).unwrap(), None);
        let d = ConfigDigest::of_root(root.path()).unwrap();
        save_started(root.path(), d).unwrap();
        assert_eq!(load_started(root.path()).unwrap(), Some(d));
        std::fs::write(root.path().join(STARTED_CONFIG_PATH), "garbage").unwrap();
        assert_eq!(load_started(root.path()).unwrap(), None);
    }

    #[test]
    fn a_stopped_unit_is_started() {
        let d = digest(Some("a: 1\n"), &[]);
        for state in [ActiveState::Inactive, ActiveState::Failed] {
            assert_eq!(decide(&state, None, d), UnitAction::Start);
            assert_eq!(decide(&state, Some(d), d), UnitAction::Start);
        }
    }

    #[test]
    fn a_running_unit_with_another_config_is_restarted() {
        let old = digest(Some("a: 1\n"), &[]);
        let new = digest(Some("a: 2\n"), &[]);
        for state in [
            ActiveState::Active,
            ActiveState::Activating,
            ActiveState::Reloading,
            ActiveState::Deactivating,
            ActiveState::Other("maintenance".into()),
        ] {
            assert_eq!(
                decide(&state, Some(old), new),
                UnitAction::Restart,
                "{state:?}"
            );
            // Started by someone else before firstboot ever did (no record): restarted too.
            assert_eq!(decide(&state, None, new), UnitAction::Restart, "{state:?}");
            assert_eq!(
                decide(&state, Some(new), new),
                UnitAction::Follow,
                "{state:?}"
            );
        }
    }

    #[test]
    fn the_other_roles_unit_is_stopped_unless_it_is_not_running() {
        assert!(must_stop(&ActiveState::Active));
        assert!(must_stop(&ActiveState::Activating));
        assert!(must_stop(&ActiveState::Deactivating));
        assert!(!must_stop(&ActiveState::Inactive));
        assert!(!must_stop(&ActiveState::Failed));
    }
}
