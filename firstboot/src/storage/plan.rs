//! TuningPlan: the OS tuning for one node, computed from its storage class; pure data.
//!
//! Each setting is chosen only for the classes it helps (docs/architecture.md, "Storage tuning"): SD-like media (SD, eMMC,
//! USB flash) get the full treatment, rotational disks most of it, fast SSD and NVMe only what is
//! harmless everywhere (noatime, a fitting I/O scheduler, K3s's I/O priority).

use super::class::{DeviceKind, Speed, StorageClass};
use super::score::storage_score;
use crate::host::mountinfo::Mount;
use crate::host::sysfs;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the snapshot directory created on a non-SD filesystem.
pub const SNAPSHOT_SUBDIR: &str = "k3s-etcd-snapshots";

/// Everything to change on one node, ready for [`super::apply::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningPlan {
    /// The class the plan was made for.
    pub class: StorageClass,
    /// Mount options for the filesystem holding the data directory.
    pub mount: MountTuning,
    /// journald storage, when it should change.
    pub journal: Option<JournalPolicy>,
    /// Turn disk swap off (dphys-swapfile, rpi-swap, fstab swap lines).
    pub swap_off: bool,
    /// Dirty-page writeback limits, when the defaults hurt.
    pub writeback: Option<Writeback>,
    /// I/O scheduler for the data disk.
    pub io_scheduler: Option<IoScheduler>,
    /// Give K3s best-effort priority 0 I/O (etcd's `ionice -c2 -n0`).
    pub k3s_io_priority: bool,
    /// Where etcd snapshots go when the data directory is on SD and a better disk is mounted.
    pub snapshot_dir: Option<PathBuf>,
}

/// fstab options for the data directory's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountTuning {
    /// Add `noatime` (and drop `relatime`/`strictatime`/`atime`).
    pub noatime: bool,
    /// ext4 `commit=N` seconds, when longer than the default 5 s helps.
    pub commit_secs: Option<u32>,
}

/// journald storage policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "storage")]
pub enum JournalPolicy {
    /// Keep the journal in RAM only (`Storage=volatile`), capped.
    Volatile {
        /// `RuntimeMaxUse` in MiB.
        runtime_max_mib: u32,
    },
    /// Keep a persistent journal, capped.
    Limited {
        /// `SystemMaxUse` in MiB.
        system_max_mib: u32,
        /// `SystemMaxFileSize` in MiB.
        max_file_mib: u32,
    },
}

impl std::fmt::Display for JournalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalPolicy::Volatile { runtime_max_mib } => {
                write!(f, "volatile (max {runtime_max_mib} MiB)")
            }
            JournalPolicy::Limited {
                system_max_mib,
                max_file_mib,
            } => write!(
                f,
                "persistent (max {system_max_mib} MiB, files {max_file_mib} MiB)"
            ),
        }
    }
}

/// `vm.dirty_*` sysctls: small, bounded writeback so an fdatasync never queues behind a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Writeback {
    /// `vm.dirty_background_bytes`.
    pub background_bytes: u64,
    /// `vm.dirty_bytes`.
    pub dirty_bytes: u64,
    /// `vm.dirty_expire_centisecs`.
    pub expire_centisecs: u32,
}

/// A udev-set I/O scheduler for one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoScheduler {
    /// Kernel disk name, e.g. `mmcblk0`.
    pub disk: String,
    /// Scheduler name: `bfq` (honours I/O priorities), `mq-deadline` or `none`.
    pub scheduler: String,
}

/// A mounted filesystem on another disk that could hold etcd snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCandidate {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Class of its disk (speed unmeasured: taken as fast).
    pub kind: DeviceKind,
}

const MIB: u64 = 1024 * 1024;

impl TuningPlan {
    /// The plan for `class`, with the data directory on disk `disk` (None when not a disk) and
    /// `candidates` for snapshots.
    pub fn for_class(
        class: StorageClass,
        disk: Option<&str>,
        candidates: &[SnapshotCandidate],
    ) -> TuningPlan {
        let sd_like = class.is_sd_like();
        let slow = class.speed == Speed::Slow;
        let hdd = class.kind == DeviceKind::Hdd;
        let journal = match (sd_like, slow) {
            (true, true) => Some(JournalPolicy::Volatile {
                runtime_max_mib: 32,
            }),
            (true, false) => Some(JournalPolicy::Limited {
                system_max_mib: 64,
                max_file_mib: 8,
            }),
            (false, _) if hdd || slow => Some(JournalPolicy::Limited {
                system_max_mib: 256,
                max_file_mib: 32,
            }),
            _ => None,
        };
        let writeback = (sd_like || hdd || slow).then_some(Writeback {
            background_bytes: 16 * MIB,
            dirty_bytes: 64 * MIB,
            expire_centisecs: 1500,
        });
        let scheduler = match class.kind {
            DeviceKind::Sd | DeviceKind::Emmc | DeviceKind::UsbFlash | DeviceKind::Hdd => {
                Some("bfq")
            }
            DeviceKind::UsbSsd | DeviceKind::Ssd => Some("mq-deadline"),
            DeviceKind::Nvme => Some("none"),
            DeviceKind::Other => None,
        };
        let io_scheduler = disk.zip(scheduler).map(|(d, s)| IoScheduler {
            disk: d.to_string(),
            scheduler: s.to_string(),
        });
        let snapshot_dir = if sd_like || slow {
            candidates
                .iter()
                .filter(|c| {
                    let cand = StorageClass {
                        kind: c.kind,
                        speed: Speed::Fast,
                    };
                    !cand.is_sd_like() && storage_score(cand) > storage_score(class)
                })
                .max_by_key(|c| {
                    storage_score(StorageClass {
                        kind: c.kind,
                        speed: Speed::Fast,
                    })
                })
                .map(|c| c.mount_point.join(SNAPSHOT_SUBDIR))
        } else {
            None
        };
        TuningPlan {
            class,
            mount: MountTuning {
                noatime: true,
                commit_secs: sd_like.then_some(60),
            },
            journal,
            swap_off: sd_like || hdd || slow,
            writeback,
            io_scheduler,
            k3s_io_priority: true,
            snapshot_dir,
        }
    }
}

/// Filesystems that can hold snapshots: writable local block-device mounts on another disk than
/// `data_disk`, outside `/boot`.
pub fn find_snapshot_candidates(
    sysfs_root: &Path,
    mounts: &[Mount],
    data_disk: Option<&str>,
) -> Vec<SnapshotCandidate> {
    const FS: [&str; 4] = ["ext4", "xfs", "btrfs", "f2fs"];
    mounts
        .iter()
        .filter(|m| FS.contains(&m.fs_type.as_str()) && m.source.starts_with("/dev/"))
        .filter(|m| m.options.split(',').any(|o| o == "rw"))
        .filter(|m| !m.mount_point.starts_with("/boot") && m.mount_point != Path::new("/"))
        .filter_map(|m| {
            let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&m.source).ok()?);
            let disk = sysfs::disk_of_dev(sysfs_root, sysfs::split_dev(rdev))?;
            if Some(disk.name.as_str()) == data_disk {
                return None;
            }
            Some(SnapshotCandidate {
                mount_point: m.mount_point.clone(),
                kind: super::class::kind_of_disk(&disk),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceKind::*;
    use Speed::*;

    fn plan(kind: DeviceKind, speed: Speed) -> TuningPlan {
        TuningPlan::for_class(StorageClass { kind, speed }, Some("disk0"), &[])
    }

    #[test]
    fn slow_sd_gets_everything() {
        let p = plan(Sd, Slow);
        assert_eq!(
            p.mount,
            MountTuning {
                noatime: true,
                commit_secs: Some(60)
            }
        );
        assert_eq!(
            p.journal,
            Some(JournalPolicy::Volatile {
                runtime_max_mib: 32
            })
        );
        assert!(p.swap_off && p.k3s_io_priority);
        assert_eq!(p.writeback.unwrap().dirty_bytes, 64 * MIB);
        assert_eq!(p.io_scheduler.unwrap().scheduler, "bfq");
    }

    #[test]
    fn fast_sd_keeps_a_capped_persistent_journal() {
        let p = plan(Sd, Fast);
        assert_eq!(
            p.journal,
            Some(JournalPolicy::Limited {
                system_max_mib: 64,
                max_file_mib: 8
            })
        );
        assert!(p.swap_off);
        assert_eq!(p.mount.commit_secs, Some(60));
    }

    #[test]
    fn emmc_and_usb_flash_are_treated_like_sd() {
        for kind in [Emmc, UsbFlash] {
            let p = plan(kind, Slow);
            assert_eq!(p.mount.commit_secs, Some(60), "{kind}");
            assert!(
                matches!(p.journal, Some(JournalPolicy::Volatile { .. })),
                "{kind}"
            );
            assert_eq!(p.io_scheduler.unwrap().scheduler, "bfq");
        }
    }

    #[test]
    fn nvme_gets_only_harmless_settings() {
        let p = plan(Nvme, Fast);
        assert_eq!(
            p.mount,
            MountTuning {
                noatime: true,
                commit_secs: None
            }
        );
        assert_eq!(p.journal, None);
        assert!(!p.swap_off);
        assert_eq!(p.writeback, None);
        assert_eq!(p.io_scheduler.unwrap().scheduler, "none");
        assert!(p.k3s_io_priority);
        assert_eq!(p.snapshot_dir, None);
    }

    #[test]
    fn ssds_use_mq_deadline() {
        for kind in [Ssd, UsbSsd] {
            let p = plan(kind, Fast);
            assert_eq!(p.io_scheduler.unwrap().scheduler, "mq-deadline");
            assert!(!p.swap_off && p.journal.is_none());
        }
    }

    #[test]
    fn hdd_bounds_writeback_and_turns_swap_off_without_commit_change() {
        let p = plan(Hdd, Fast);
        assert!(p.swap_off && p.writeback.is_some());
        assert_eq!(p.mount.commit_secs, None);
        assert_eq!(p.io_scheduler.unwrap().scheduler, "bfq");
    }

    #[test]
    fn slow_ssd_is_tuned_for_its_slowness() {
        let p = plan(Ssd, Slow);
        assert!(p.swap_off && p.writeback.is_some() && p.journal.is_some());
        assert_eq!(p.mount.commit_secs, None);
    }

    #[test]
    fn unknown_device_gets_no_scheduler_rule() {
        assert_eq!(plan(Other, Fast).io_scheduler, None);
        let p = TuningPlan::for_class(
            StorageClass {
                kind: Sd,
                speed: Slow,
            },
            None,
            &[],
        );
        assert_eq!(p.io_scheduler, None);
    }

    #[test]
    fn snapshots_go_to_the_best_non_sd_disk_only_from_sd() {
        let cands = [
            SnapshotCandidate {
                mount_point: "/mnt/stick".into(),
                kind: UsbFlash,
            },
            SnapshotCandidate {
                mount_point: "/mnt/hdd".into(),
                kind: Hdd,
            },
            SnapshotCandidate {
                mount_point: "/mnt/ssd".into(),
                kind: UsbSsd,
            },
        ];
        let sd = StorageClass {
            kind: Sd,
            speed: Slow,
        };
        let p = TuningPlan::for_class(sd, Some("mmcblk0"), &cands);
        assert_eq!(
            p.snapshot_dir,
            Some(PathBuf::from("/mnt/ssd/k3s-etcd-snapshots"))
        );
        let p = TuningPlan::for_class(sd, Some("mmcblk0"), &cands[..1]);
        assert_eq!(
            p.snapshot_dir, None,
            "a USB stick is no better than the SD card"
        );
        let nvme = StorageClass {
            kind: Nvme,
            speed: Fast,
        };
        assert_eq!(TuningPlan::for_class(nvme, None, &cands).snapshot_dir, None);
    }

    #[test]
    fn plan_is_serializable_for_status() {
        let p = plan(Sd, Slow);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<TuningPlan>(&json).unwrap(), p);
    }
}
