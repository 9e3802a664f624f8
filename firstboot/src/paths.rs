//! Every filesystem path firstboot touches, resolved under `--root` and `--boot-dir` prefixes.

use std::path::{Path, PathBuf};

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
        self.under_root("var/lib/firstboot")
    }

    /// The random node id persisted when the board has neither serial nor MAC.
    pub fn persisted_node_id(&self) -> PathBuf {
        self.state_dir().join("node-id")
    }

    /// firstboot's root-only configuration directory (the token lives here).
    pub fn config_dir(&self) -> PathBuf {
        self.under_root("etc/firstboot")
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
