//! The node id: the board serial, else the primary interface's MAC, else a persisted random id.

use crate::paths::Paths;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

pub use crate::model::NodeId;

/// Where the node id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdSource {
    /// The board serial (device tree or `/proc/cpuinfo`).
    Serial,
    /// The MAC address of the primary interface.
    Mac,
    /// A random id generated once and persisted under the state directory.
    Persisted,
}

/// Finds (or creates and persists) this node's id.
pub fn node_id(paths: &Paths) -> io::Result<(NodeId, IdSource)> {
    if let Some(id) = board_serial(paths) {
        return Ok((id, IdSource::Serial));
    }
    if let Some(id) = primary_mac(paths) {
        return Ok((id, IdSource::Mac));
    }
    persisted_id(paths).map(|id| (id, IdSource::Persisted))
}

/// The serial from the device tree, else the `Serial` line of `/proc/cpuinfo`.
fn board_serial(paths: &Paths) -> Option<NodeId> {
    if let Ok(raw) = fs::read(paths.device_tree_serial()) {
        let text = String::from_utf8_lossy(&raw);
        if let Some(id) = NodeId::parse(text.trim_end_matches('\0')) {
            return Some(id);
        }
    }
    let cpuinfo = fs::read_to_string(paths.cpuinfo()).ok()?;
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "Serial").then(|| NodeId::parse(value))?
    })
}

/// The MAC of the default-route interface, else of the first interface with a real address.
fn primary_mac(paths: &Paths) -> Option<NodeId> {
    let net = paths.net_interfaces();
    let mac_of = |iface: &str| -> Option<NodeId> {
        let text = fs::read_to_string(net.join(iface).join("address")).ok()?;
        NodeId::parse(&text.trim().replace(':', ""))
    };
    if let Some(iface) = default_route_interface(&paths.ipv4_routes()) {
        if let Some(id) = mac_of(&iface) {
            return Some(id);
        }
    }
    let mut names: Vec<String> = fs::read_dir(&net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name != "lo")
        .collect();
    names.sort();
    names.iter().find_map(|name| mac_of(name))
}

/// The interface of the IPv4 default route in `/proc/net/route` format.
fn default_route_interface(routes: &Path) -> Option<String> {
    let table = fs::read_to_string(routes).ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        (cols.next()? == "00000000").then(|| iface.to_string())
    })
}

/// Reads the persisted random id, creating it (atomically, fsync'd) on first use.
fn persisted_id(paths: &Paths) -> io::Result<NodeId> {
    let path = paths.persisted_node_id();
    if let Ok(text) = fs::read_to_string(&path) {
        if let Some(id) = NodeId::parse(&text) {
            return Ok(id);
        }
    }
    let random = crate::host::random::bytes::<8>()?;
    // All-zero is not an id; eight random zero bytes are as good as impossible, but cheap to avoid.
    let id = NodeId(u64::from_be_bytes(random).max(1));
    let dir = paths.state_dir();
    fs::create_dir_all(&dir)?;
    let tmp = dir.join("node-id.tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(&dir)?.sync_all()?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
            fs::write(full, content).expect("write");
        }
        dir
    }

    #[test]
    fn device_tree_serial_wins() {
        let root = root_with(&[
            ("proc/device-tree/serial-number", "10000000ABCDEF12\0"),
            ("proc/cpuinfo", "Serial\t\t: 00000000deadbeef\n"),
            ("sys/class/net/eth0/address", "dc:a6:32:01:02:03\n"),
        ]);
        let (id, source) = node_id(&Paths::new(root.path(), None)).expect("id");
        assert_eq!(
            (id.to_string().as_str(), source),
            ("10000000abcdef12", IdSource::Serial)
        );
        assert_eq!(id.suffix(), "cdef12");
    }

    #[test]
    fn cpuinfo_serial_then_default_route_mac() {
        let root = root_with(&[(
            "proc/cpuinfo",
            "processor\t: 0\nSerial\t\t: 00000000deadbeef\n",
        )]);
        let (id, source) = node_id(&Paths::new(root.path(), None)).expect("id");
        assert_eq!(
            (id.to_string().as_str(), source),
            ("00000000deadbeef", IdSource::Serial)
        );

        let root = root_with(&[
            ("proc/cpuinfo", "processor\t: 0\n"),
            (
                "proc/net/route",
                "Iface\tDestination\tGateway\nwlan0\t0012A8C0\t00000000\neth1\t00000000\t0112A8C0\n",
            ),
            ("sys/class/net/eth0/address", "dc:a6:32:01:02:03\n"),
            ("sys/class/net/eth1/address", "dc:a6:32:0a:0b:0c\n"),
            ("sys/class/net/lo/address", "00:00:00:00:00:00\n"),
        ]);
        let (id, source) = node_id(&Paths::new(root.path(), None)).expect("id");
        assert_eq!(
            (id.to_string().as_str(), source),
            ("0000dca6320a0b0c", IdSource::Mac)
        );
        assert_eq!(id.suffix(), "0a0b0c");
    }

    #[test]
    fn random_id_is_persisted_and_reused() {
        let root = root_with(&[("sys/class/net/lo/address", "00:00:00:00:00:00\n")]);
        let paths = Paths::new(root.path(), None);
        let (first, source) = node_id(&paths).expect("id");
        assert_eq!(source, IdSource::Persisted);
        assert_eq!(first.to_string().len(), 16);
        let (again, _) = node_id(&paths).expect("id");
        assert_eq!(first, again);
        assert!(paths.persisted_node_id().exists());
    }
}
