//! Every filesystem path firstboot touches, resolved under `--root` and `--boot-dir` prefixes.

use std::path::{Path, PathBuf};

// Root-relative locations (joined onto `--root`). Modules that are handed a root directory
// rather than a `Paths` use these; nothing else spells a path out.

/// firstboot's root-only configuration directory (the token lives here).
pub const CONFIG_DIR: &str = "etc/firstboot";
/// The image manifest imagebuild writes (build time, versions, files).
pub const IMAGE_MANIFEST: &str = "etc/firstboot/image.json";
/// firstboot's persistent state directory.
pub const STATE_DIR: &str = "var/lib/firstboot";
/// The lifecycle state `firstboot status` reads.
pub const STATE_JSON: &str = "var/lib/firstboot/state.json";
/// The election's durable state (inside [`STATE_DIR`]).
pub const ELECTION_JSON: &str = "election.json";
/// The K3s plan (role, server, CA hash) fixed once the role is known.
pub const K3S_PLAN_JSON: &str = "var/lib/firstboot/k3s-plan.json";
/// The K3s configuration firstboot renders.
pub const K3S_CONFIG_YAML: &str = "etc/rancher/k3s/config.yaml";
/// K3s's data directory (server TLS, etcd).
pub const K3S_DATA_DIR: &str = "var/lib/rancher/k3s";
/// The mount point of a separate data device: everything K3s and containerd keep.
pub const RANCHER_DIR: &str = "/var/lib/rancher";
/// journald drop-in of the storage tuning.
pub const JOURNALD_DROPIN: &str = "etc/systemd/journald.conf.d/60-firstboot-storage.conf";
/// sysctl drop-in of the storage tuning (writeback).
pub const SYSCTL_DROPIN: &str = "etc/sysctl.d/60-firstboot-writeback.conf";
/// udev rule of the storage tuning (I/O scheduler).
pub const UDEV_RULE: &str = "etc/udev/rules.d/60-firstboot-io-scheduler.rules";
/// K3s unit drop-ins of the storage tuning (I/O priority), server and agent.
pub const K3S_IO_DROPINS: [&str; 2] = [
    "etc/systemd/system/k3s.service.d/60-firstboot-io.conf",
    "etc/systemd/system/k3s-agent.service.d/60-firstboot-io.conf",
];
/// K3s unit drop-ins that keep K3s off the SD card when the data disk is missing.
pub const K3S_DATA_DEVICE_DROPINS: [&str; 2] = [
    "etc/systemd/system/k3s.service.d/60-firstboot-data-device.conf",
    "etc/systemd/system/k3s-agent.service.d/60-firstboot-data-device.conf",
];
/// The record of the K3s configuration firstboot last started the unit with.
pub const K3S_STARTED_CONFIG: &str = "var/lib/firstboot/k3s-started-config";
/// The static table of hostnames (`127.0.1.1` names this node).
pub const HOSTS: &str = "etc/hosts";
/// The filesystem table (mount options, the data device).
pub const FSTAB: &str = "etc/fstab";
/// Raspberry Pi OS bookworm's swap file configuration.
pub const DPHYS_SWAPFILE: &str = "etc/dphys-swapfile";

/// The root prefix and the boot partition directory, and every path derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
    boot_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self::new(Path::new("/"), None)
    }
}

impl Paths {
    /// Paths under `root`; the boot partition defaults to `<root>/boot/firmware`.
    pub fn new(root: &Path, boot_dir: Option<&Path>) -> Self {
        let root = root.to_path_buf();
        let boot_dir = boot_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.join("boot/firmware"));
        Self { root, boot_dir }
    }

    /// `relative` under the root prefix.
    fn under_root(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// The root prefix.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The boot partition directory.
    pub fn boot_dir(&self) -> &Path {
        &self.boot_dir
    }

    /// `cluster.toml` on the boot partition.
    pub fn boot_cluster_toml(&self) -> PathBuf {
        self.boot_dir.join("cluster.toml")
    }

    /// Board serial as exposed by the device tree (Raspberry Pi).
    pub fn device_tree_serial(&self) -> PathBuf {
        self.under_root("proc/device-tree/serial-number")
    }

    /// `/proc/cpuinfo` (older Pi kernels print `Serial`).
    pub fn cpuinfo(&self) -> PathBuf {
        self.under_root("proc/cpuinfo")
    }

    /// The kernel's IPv4 routing table, to find the interface of the default route.
    pub fn ipv4_routes(&self) -> PathBuf {
        self.under_root("proc/net/route")
    }

    /// `/sys/class/net`, one directory per network interface.
    pub fn net_interfaces(&self) -> PathBuf {
        self.under_root("sys/class/net")
    }

    /// firstboot's persistent state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.under_root(STATE_DIR)
    }

    /// The lifecycle state file.
    pub fn state_json(&self) -> PathBuf {
        self.under_root(STATE_JSON)
    }

    /// The election's durable state.
    pub fn election_json(&self) -> PathBuf {
        self.state_dir().join(ELECTION_JSON)
    }

    /// The K3s plan.
    pub fn k3s_plan(&self) -> PathBuf {
        self.under_root(K3S_PLAN_JSON)
    }

    /// K3s's config.yaml.
    pub fn k3s_config_yaml(&self) -> PathBuf {
        self.under_root(K3S_CONFIG_YAML)
    }

    /// The image manifest.
    pub fn image_manifest(&self) -> PathBuf {
        self.under_root(IMAGE_MANIFEST)
    }

    /// The random node id persisted when the board has neither serial nor MAC.
    pub fn persisted_node_id(&self) -> PathBuf {
        self.state_dir().join("node-id")
    }

    /// firstboot's root-only configuration directory (the token lives here).
    pub fn config_dir(&self) -> PathBuf {
        self.under_root(CONFIG_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_hangs_off_the_prefixes() {
        let paths = Paths::new(Path::new("/tmp/node1"), None);
        assert_eq!(
            paths.persisted_node_id(),
            Path::new("/tmp/node1/var/lib/firstboot/node-id")
        );
        assert_eq!(
            paths.boot_cluster_toml(),
            Path::new("/tmp/node1/boot/firmware/cluster.toml")
        );
        let paths = Paths::new(Path::new("/"), Some(Path::new("/mnt/boot")));
        assert_eq!(
            paths.boot_cluster_toml(),
            Path::new("/mnt/boot/cluster.toml")
        );
        assert_eq!(paths.cpuinfo(), Path::new("/proc/cpuinfo"));
    }
}
