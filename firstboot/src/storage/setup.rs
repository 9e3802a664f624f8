//! StorageSetup: the daemon's one call for lifecycle step 4 (move data, measure, tune).
//!
//! Order matters: the data directory moves to its disk first, so that the probe measures the
//! device etcd will really use, and the plan is made for that device.

use super::apply::{activate, activation_commands, apply, AppliedTuning};
use super::assessment::{assess, StorageAssessment};
use super::data_device::{self, DataDevice, Host};
use super::probe::StorageProbe;
use crate::config;
use crate::config::StorageProfile;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The `[storage]` settings and where to act.
#[derive(Debug, Clone)]
pub struct StorageSetup {
    /// Root prefix (`/` on a node; a tree in tests).
    pub root: PathBuf,
    /// `[storage] profile`.
    pub profile: StorageProfile,
    /// `[storage] data_device`.
    pub data_device: config::DataDevice,
    /// `[storage] data_device_force`.
    pub data_device_force: bool,
}

/// What step 4 did, for status and for the next steps (rank, K3s config).
#[derive(Debug, Clone, Serialize)]
pub struct StorageOutcome {
    /// The disk now holding `/var/lib/rancher`, when one was used.
    pub data_device: Option<DataDevice>,
    /// Measurement, class, score, etcd proposal and plan.
    pub assessment: StorageAssessment,
    /// Files the plan changed.
    pub applied: AppliedTuning,
    /// Activation steps that failed (the files still take effect at the next boot).
    pub warnings: Vec<String>,
}

impl StorageSetup {
    /// Move the data directory if asked, measure it, apply the plan; activate it on a real root.
    pub fn run(&self) -> anyhow::Result<StorageOutcome> {
        let host = Host::system(&self.root).context("reading the mount table")?;
        let data_device = match data_device::choose(&host, &self.data_device)? {
            Some(device) => Some(data_device::move_data_to(
                &host,
                &device,
                self.data_device_force,
            )?),
            None => None,
        };
        let data_dir = Path::new(data_device::DATA_DIR);
        let probe = StorageProbe::new(super::apply::under(&self.root, data_dir));
        let assessment = assess(&probe, Path::new("/sys"), self.profile)?;
        let applied =
            apply(&assessment.plan, &self.root, data_dir).context("applying the tuning plan")?;
        let warnings = if self.root == Path::new("/") {
            activate(&activation_commands(&assessment.plan, &applied))
        } else {
            Vec::new()
        };
        Ok(StorageOutcome {
            data_device,
            assessment,
            applied,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::class::DeviceKind;

    #[test]
    fn tunes_a_root_tree_once() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/fstab"),
            "/dev/root / ext4 defaults 0 1\n",
        )
        .unwrap();
        let setup = StorageSetup {
            root: t.path().into(),
            profile: StorageProfile::Sd,
            data_device: config::DataDevice::None,
            data_device_force: false,
        };
        let first = setup.run().unwrap();
        assert!(first.data_device.is_none());
        assert_eq!(first.assessment.class.kind, DeviceKind::Sd);
        assert!(first.applied.changed.contains(&PathBuf::from("etc/fstab")));
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/fstab")).unwrap(),
            "/dev/root / ext4 defaults,noatime,commit=60 0 1\n"
        );
        assert!(first.warnings.is_empty(), "nothing activated outside /");
        let second = setup.run().unwrap();
        // The snapshot directory follows the host's real mount table, which other processes may
        // change between the two runs; with the same plan nothing may change the second time.
        if second.assessment.plan == first.assessment.plan {
            assert!(second.applied.changed.is_empty(), "{:?}", second.applied);
        } else {
            assert_ne!(
                second.assessment.plan.snapshot_dir, first.assessment.plan.snapshot_dir,
                "only the host's mounts may change the plan"
            );
        }
        let again = apply(
            &second.assessment.plan,
            t.path(),
            Path::new("/var/lib/rancher"),
        );
        assert!(again.unwrap().changed.is_empty());
    }
}
