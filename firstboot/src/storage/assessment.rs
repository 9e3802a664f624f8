//! StorageAssessment: probe, classify, score and plan for one data directory, in one call.

use super::class::{detect_kind, Speed, StorageClass};
use super::etcd::EtcdTuning;
use super::plan::{find_snapshot_candidates, TuningPlan};
use super::probe::{ProbeResult, StorageProbe};
use super::score::storage_score;
use crate::config::StorageProfile;
use crate::host::mountinfo;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Everything the daemon reports in status and feeds into the rank, the plan and etcd's timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageAssessment {
    /// The directory that was measured (the data directory or its nearest existing ancestor).
    pub dir: PathBuf,
    /// Kernel name of the disk holding it, when it is a disk.
    pub disk: Option<String>,
    /// The measured class (before any profile override).
    pub measured: StorageClass,
    /// The class used for tuning (after `[storage] profile`).
    pub class: StorageClass,
    /// The probe's figures.
    pub probe: ProbeResult,
    /// Election-rank score of `class`.
    pub score: u8,
    /// This node's etcd timing proposal (the init node decides for the cluster).
    pub etcd: EtcdTuning,
    /// The OS tuning for this node.
    pub plan: TuningPlan,
}

/// `dir`, or its nearest existing ancestor (the data directory may not exist before K3s runs).
pub fn existing_dir(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Measure `dir` with `probe`'s budgets, classify through `sysfs_root`, and plan.
pub fn assess(
    probe: &StorageProbe,
    sysfs_root: &Path,
    profile: StorageProfile,
) -> anyhow::Result<StorageAssessment> {
    let dir = existing_dir(&probe.dir);
    let mounts = mountinfo::mounts().context("reading the mount table")?;
    let (kind, disk) = detect_kind(sysfs_root, &dir, &mounts)
        .with_context(|| format!("finding the device of {}", dir.display()))?;
    let result = StorageProbe {
        dir: dir.clone(),
        ..probe.clone()
    }
    .run()
    .context("probing fdatasync latency")?;
    let measured = StorageClass {
        kind,
        speed: Speed::from_p99_us(result.p99_us),
    };
    let class = profile.resolve(measured);
    let disk_name = disk.as_ref().map(|d| d.name.clone());
    let candidates = find_snapshot_candidates(sysfs_root, &mounts, disk_name.as_deref());
    // A forced profile may name a kind the disk is not; the scheduler rule still needs the disk.
    let plan = TuningPlan::for_class(class, disk_name.as_deref(), &candidates);
    Ok(StorageAssessment {
        dir,
        disk: disk_name,
        measured,
        class,
        probe: result,
        score: storage_score(class),
        etcd: EtcdTuning::for_class(class),
        plan,
    })
}

impl StorageAssessment {
    /// One status line, e.g. `storage: sd (slow) on mmcblk0, fdatasync p50 3.1 ms p99 48.0 ms`.
    pub fn status_line(&self) -> String {
        let on = self
            .disk
            .as_ref()
            .map_or(String::new(), |d| format!(" on {d}"));
        format!(
            "storage: {}{on}, fdatasync p50 {:.1} ms p99 {:.1} ms",
            self.class,
            self.probe.p50_us as f64 / 1000.0,
            self.probe.p99_us as f64 / 1000.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_data_dir_falls_back_to_an_existing_ancestor() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(existing_dir(&t.path().join("a/b/c")), t.path());
    }

    #[test]
    fn assesses_a_real_directory() {
        let t = tempfile::tempdir().unwrap();
        let probe = StorageProbe {
            max_bytes: 100 * 2300,
            ..StorageProbe::new(t.path())
        };
        let a = assess(&probe, Path::new("/sys"), StorageProfile::Sd).unwrap();
        assert_eq!(a.probe.writes, 100);
        assert_eq!(a.class.kind, crate::storage::class::DeviceKind::Sd);
        assert_eq!(a.score, storage_score(a.class));
        assert!(a.status_line().starts_with("storage: sd (slow)"));
    }
}
