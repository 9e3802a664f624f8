//! Can K3s run here? The kernel's memory cgroup controller must be on before K3s starts.
//!
//! Raspberry Pi firmware passes `cgroup_disable=memory` ahead of cmdline.txt, so the controller is
//! off unless cmdline.txt says `cgroup_enable=memory`. K3s v1.31.4 refuses to start without it
//! (k3s-io/k3s a562d090b `pkg/cgroups/cgroups_linux.go`: `validateCgroupsV2` lines 56-75 reads the
//! root controllers of `/sys/fs/cgroup` and fails with "failed to find memory cgroup (v2)";
//! `validateCgroupsV1` lines 32-53 the v1 hierarchies of `/proc/self/cgroup`), restarting every
//! 5 s with the reason buried in its journal. firstboot checks first and says what to do.
//!
//! Unified hierarchy (every current Raspberry Pi OS and Ubuntu): `memory` must be listed in
//! `/sys/fs/cgroup/cgroup.controllers`. Legacy or hybrid hierarchy (no `cgroup.controllers`
//! at the top, as on an older host): a `memory` hierarchy in `/proc/self/cgroup`. Never
//! `/proc/cgroups`: kernel 6.12 no longer fills it for the unified hierarchy.

use std::path::{Path, PathBuf};

/// What to do when the memory controller is missing.
pub const FIX: &str = "add `cgroup_enable=memory` to the one line of cmdline.txt on the boot partition (keep it one line), then reboot";

/// Why K3s cannot run on this kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    /// The unified hierarchy lacks the memory controller.
    #[error("the kernel's memory cgroup controller is off ({path} lists {listed:?}, no `memory`); K3s cannot start without it: {FIX}")]
    NoMemoryV2 {
        /// The `cgroup.controllers` file read.
        path: PathBuf,
        /// What it lists.
        listed: String,
    },
    /// The legacy hierarchies lack the memory controller.
    #[error("the kernel's memory cgroup controller is off ({path} has no `memory` hierarchy); K3s cannot start without it: {FIX}")]
    NoMemoryV1 {
        /// The `/proc/self/cgroup` file read.
        path: PathBuf,
    },
    /// Neither file could be read.
    #[error("cannot tell whether the memory cgroup controller is on: neither {v2} nor {v1} is readable ({why}); is /sys/fs/cgroup mounted?")]
    Unreadable {
        /// The unified hierarchy's file.
        v2: PathBuf,
        /// The process's cgroup file.
        v1: PathBuf,
        /// The read error.
        why: String,
    },
}

/// Checks that the memory cgroup controller is on, reading `<root>/sys/fs/cgroup/cgroup.controllers`
/// (unified) or else `<root>/proc/self/cgroup` (legacy or hybrid).
pub fn check_memory_controller(root: &Path) -> Result<(), CgroupError> {
    let v2 = root.join("sys/fs/cgroup/cgroup.controllers");
    match std::fs::read_to_string(&v2) {
        Ok(text) => {
            if text.split_whitespace().any(|c| c == "memory") {
                return Ok(());
            }
            return Err(CgroupError::NoMemoryV2 {
                path: v2,
                listed: text.trim().to_string(),
            });
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CgroupError::Unreadable {
                v1: root.join("proc/self/cgroup"),
                v2,
                why: e.to_string(),
            })
        }
        Err(_) => {}
    }
    let v1 = root.join("proc/self/cgroup");
    let text = std::fs::read_to_string(&v1).map_err(|e| CgroupError::Unreadable {
        v2: v2.clone(),
        v1: v1.clone(),
        why: e.to_string(),
    })?;
    // "hierarchy-id:controller,controller:/path"; the unified line has an empty controller list.
    let has_memory = text.lines().any(|line| {
        line.split(':')
            .nth(1)
            .is_some_and(|list| list.split(',').any(|c| c == "memory"))
    });
    if has_memory {
        Ok(())
    } else {
        Err(CgroupError::NoMemoryV1 { path: v1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        dir
    }

    #[test]
    fn unified_with_memory_is_fine() {
        let root = root_with(&[(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        )]);
        assert_eq!(check_memory_controller(root.path()), Ok(()));
    }

    #[test]
    fn unified_without_memory_says_what_to_do() {
        // The Pi firmware's cgroup_disable=memory without cgroup_enable=memory on cmdline.txt.
        let root = root_with(&[
            ("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io pids\n"),
            // A legacy memory line must not rescue a unified system.
            ("proc/self/cgroup", "0::/system.slice/firstboot.service\n"),
        ]);
        let err = check_memory_controller(root.path()).expect_err("no memory controller");
        let text = err.to_string();
        assert!(text.contains("cgroup_enable=memory"), "{text}");
        assert!(text.contains("cmdline.txt"), "{text}");
        assert!(text.contains("cpuset cpu io pids"), "{text}");
        assert!(!text.contains("/proc/cgroups"), "{text}");
    }

    #[test]
    fn empty_unified_list_is_no_memory() {
        let root = root_with(&[("sys/fs/cgroup/cgroup.controllers", "")]);
        assert!(matches!(
            check_memory_controller(root.path()),
            Err(CgroupError::NoMemoryV2 { .. })
        ));
    }

    #[test]
    fn hybrid_reads_the_process_hierarchies() {
        let with = root_with(&[(
            "proc/self/cgroup",
            "12:pids:/\n5:memory:/system.slice/firstboot.service\n4:cpu,cpuacct:/\n1:name=systemd:/x\n0::/x\n",
        )]);
        assert_eq!(check_memory_controller(with.path()), Ok(()));
        let without = root_with(&[(
            "proc/self/cgroup",
            "12:pids:/\n4:cpu,cpuacct:/\n1:name=systemd:/x\n0::/x\n",
        )]);
        let err = check_memory_controller(without.path()).expect_err("no memory hierarchy");
        assert!(matches!(err, CgroupError::NoMemoryV1 { .. }), "{err}");
        assert!(err.to_string().contains("cgroup_enable=memory"));
    }

    #[test]
    fn nothing_mounted_is_an_error_not_a_pass() {
        let root = root_with(&[]);
        let err = check_memory_controller(root.path()).expect_err("nothing readable");
        assert!(matches!(err, CgroupError::Unreadable { .. }), "{err}");
    }
}
