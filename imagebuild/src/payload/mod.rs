//! The node payload: K3s (binary, links, scripts, units, air-gap images) and firstboot (binary, unit).
//!
//! Unit files and scripts live as plain files under `overlays/k3s` and `overlays/firstboot` in the
//! data directory; this step adds the release and firstboot binaries and enables firstboot only:
//! firstboot decides at first boot whether the node starts `k3s.service` or `k3s-agent.service`.

pub mod firstboot;
pub mod release;

use crate::boards::DataDir;
use crate::recipe::K3sSection;
use crate::rootfs::{overlay, payload::Payload};
use crate::source::Cache;
use anyhow::{bail, Context, Result};
use release::{K3sRelease, Mirror};
use std::path::{Path, PathBuf};

/// Where the K3s binary goes.
pub const K3S_BIN: &str = "/usr/local/bin/k3s";
/// Commands K3s answers to through a symlink to itself.
pub const K3S_LINKS: [&str; 3] = ["kubectl", "crictl", "ctr"];
/// Where K3s imports air-gap image archives from at start.
pub const AIRGAP_DIR: &str = "/var/lib/rancher/k3s/agent/images";
/// The file that makes K3s (>= v1.31.9) import an air-gap archive only when it changed.
///
/// K3s imports every archive in [`AIRGAP_DIR`] at every start (the 133 MB arm64 archive delays
/// containerd, and with it an etcd join, by a minute on an SD card) unless this file exists: it
/// then records each archive's size and mtime and skips unchanged ones. K3s never creates it
/// (pkg/agent/containerd/watcher.go `syncCache` opens it without O_CREATE; `loadCache` accepts an
/// empty file), so the image ships it empty. Older K3s releases ignore it.
pub const AIRGAP_CACHE: &str = "/var/lib/rancher/k3s/agent/images/.cache.json";
/// Where the firstboot binary goes.
pub const FIRSTBOOT_BIN: &str = "/usr/local/bin/firstboot";
/// The firstboot unit.
pub const FIRSTBOOT_UNIT: &str = "/etc/systemd/system/firstboot.service";
/// The link that enables it.
pub const FIRSTBOOT_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/firstboot.service";
/// The K3s units, installed but never enabled at build time.
pub const K3S_UNITS: [&str; 2] = [
    "/etc/systemd/system/k3s.service",
    "/etc/systemd/system/k3s-agent.service",
];
/// The K3s helper scripts.
pub const K3S_SCRIPTS: [&str; 2] = [
    "/usr/local/bin/k3s-killall.sh",
    "/usr/local/bin/k3s-uninstall.sh",
];

/// How to get the node payload; `imagebuild build` always installs it.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// A prebuilt static firstboot binary instead of building it from the workspace.
    pub firstboot_bin: Option<PathBuf>,
    /// Cargo target directory for building firstboot (default: `<workspace>/target/imagebuild-firstboot`).
    pub firstboot_target_dir: Option<PathBuf>,
}

/// Versions of what the image carries: the manifest's type.
pub use ::firstboot::manifest::Versions;

/// The assembled node payload and what it holds.
#[derive(Debug, Clone)]
pub struct NodePayload {
    /// The entries to write.
    pub payload: Payload,
    /// Versions for the manifest.
    pub versions: Versions,
}

/// Fetch, verify and lay out K3s and firstboot for a board of `arch`.
pub fn assemble(
    k3s: &K3sSection,
    board: &crate::boards::Board,
    recipe_dir: &Path,
    data: &DataDir,
    cache: &Cache,
    offline: bool,
    options: &NodeOptions,
) -> Result<NodePayload> {
    let arch = board.arch.as_str();
    // A given firstboot is checked first: a wrong one fails before anything is downloaded.
    let given = match &options.firstboot_bin {
        Some(p) => Some((
            p.clone(),
            firstboot::check_given(p, arch, board.firstboot_may_be_dynamic)?,
        )),
        None => None,
    };
    let mirror = Mirror::parse(&k3s.mirror, recipe_dir);
    let rel = release::obtain(&k3s.version, arch, &mirror, k3s.airgap, cache, offline)
        .with_context(|| format!("getting K3s {} for {arch}", k3s.version))?;
    let (firstboot_bin, firstboot_version) = match given {
        Some(g) => g,
        None => (
            firstboot::build(arch, options.firstboot_target_dir.as_deref())?,
            firstboot::workspace_version().to_string(),
        ),
    };
    let mut payload = Payload::new();
    k3s_layout(&mut payload, &rel, data)?;
    firstboot_layout(&mut payload, &firstboot_bin, data)?;
    Ok(NodePayload {
        payload,
        versions: Versions {
            k3s: rel.version.clone(),
            firstboot: firstboot_version,
            base: String::new(),
            airgap: rel.airgap.is_some(),
        },
    })
}

fn overlay_dir(data: &DataDir, name: &str) -> Result<PathBuf> {
    let dir = data.overlays().join(name);
    if !dir.is_dir() {
        bail!(
            "{} is missing: the data directory {} is incomplete (set --data-dir)",
            dir.display(),
            data.root.display()
        );
    }
    Ok(dir)
}

fn k3s_layout(p: &mut Payload, rel: &K3sRelease, data: &DataDir) -> Result<()> {
    // Units and scripts, as kept in the tree; nothing here enables a unit.
    p.extend(overlay::load(&overlay_dir(data, "k3s")?)?);
    p.file(&rel.binary, K3S_BIN, 0o755);
    for l in K3S_LINKS {
        p.symlink(&format!("/usr/local/bin/{l}"), "k3s");
    }
    if let Some((archive, name)) = &rel.airgap {
        p.dir(AIRGAP_DIR, 0o755);
        p.file(archive, &format!("{AIRGAP_DIR}/{name}"), 0o644);
        p.bytes(AIRGAP_CACHE, Vec::new(), 0o644);
    }
    Ok(())
}

fn firstboot_layout(p: &mut Payload, bin: &Path, data: &DataDir) -> Result<()> {
    p.extend(overlay::load(&overlay_dir(data, "firstboot")?)?);
    p.file(bin, FIRSTBOOT_BIN, 0o755);
    p.symlink(FIRSTBOOT_WANTS, FIRSTBOOT_UNIT);
    Ok(())
}
