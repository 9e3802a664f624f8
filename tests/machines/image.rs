//! The node image of the machine tests: `imagebuild build` on the test base with the test board.
//!
//! - Board: `tests/machines/board/test-amd64.toml`, put with the shipped `boards/bases.toml` and
//!   the repository's `overlays/` into a data directory of the test's own (imagebuild's
//!   `--data-dir`), so the product catalog never lists a test board.
//! - firstboot: the host build (`target/<profile>/firstboot`, glibc; the base is the host's
//!   Debian release) through `--firstboot-bin`.
//! - K3s: a release generated locally (a mirror directory, never the network) whose `k3s` binary
//!   IS the K3s test double (`k3s-double`), so the payload step installs the double at
//!   `/usr/local/bin/k3s` exactly as it installs the real K3s, with `k3s.service` and
//!   `k3s-agent.service`.
//! - Test overlay `tests/machines/overlay/`: debug logging for firstboot, persistent journal.
//!
//! The image is cached beside the base, keyed by the sha256 of every input.

use super::base;
use crate::node_image::{self, hash_tree, NodeImage};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::node_image::K3S_VERSION;
/// Name of the test board profile.
pub const BOARD: &str = "test-amd64";

fn machines_dir() -> PathBuf {
    crate::repo_root().join("tests/machines")
}

/// The K3s test double binary: cargo's own for tests of this package, else built like firstboot.
pub fn k3s_double_bin() -> Result<PathBuf> {
    // Cargo builds a package's binaries before its integration tests, which run from `deps/`.
    let exe = std::env::current_exe().context("locating the running executable")?;
    if exe.parent().is_some_and(|dir| dir.ends_with("deps")) {
        return Ok(crate::bin_path("k3s-double"));
    }
    workspace_bin("systests", "k3s-double")
}

/// The host `firstboot` binary next to this test's profile directory, built first if needed.
pub fn firstboot_bin() -> Result<PathBuf> {
    workspace_bin("firstboot", "firstboot")
}

/// A workspace binary in the running program's profile directory, built with cargo first (once
/// per process; a no-op when it is current).
fn workspace_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut profile = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile.ends_with("deps") {
        profile.pop();
    }
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        let mut cmd = node_image::cargo(&["build", "--quiet", "-p", package, "--bin", bin]);
        if profile.ends_with("release") {
            cmd.arg("--release");
        }
        if let Some(target_dir) = profile.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let status = cmd
            .status()
            .with_context(|| format!("running cargo build -p {package} --bin {bin}"))?;
        if !status.success() {
            bail!("cargo build -p {package} --bin {bin} failed: {status}");
        }
        built.push(bin.to_string());
    }
    let path = profile.join(bin);
    if !path.exists() {
        bail!("{} missing after cargo build", path.display());
    }
    Ok(path)
}

/// Writes the data directory: test board, shipped bases catalog, repository overlays.
fn write_data_dir(dir: &Path) -> Result<PathBuf> {
    let boards = dir.join("boards");
    std::fs::create_dir_all(&boards)?;
    std::fs::copy(
        machines_dir().join("board/test-amd64.toml"),
        boards.join(format!("{BOARD}.toml")),
    )?;
    std::fs::copy(
        crate::repo_root().join("boards/bases.toml"),
        boards.join("bases.toml"),
    )?;
    std::os::unix::fs::symlink(crate::repo_root().join("overlays"), dir.join("overlays"))?;
    Ok(dir.to_path_buf())
}

/// The node image on the base of `release` (built by imagebuild, cached by its inputs' hash).
pub fn node_image(release: base::Release) -> Result<PathBuf> {
    let base = base::image(release)?;
    let firstboot = firstboot_bin()?;
    let mut h = Sha256::new();
    h.update(base::key(release).as_bytes());
    let imagebuild = workspace_bin("imagebuild", "imagebuild")?;
    h.update(std::fs::read(&imagebuild).context("reading imagebuild")?);
    h.update(std::fs::read(&firstboot).context("reading firstboot")?);
    h.update(std::fs::read(k3s_double_bin()?).context("reading k3s-double")?);
    hash_tree(&mut h, &machines_dir().join("overlay"))?;
    hash_tree(&mut h, &machines_dir().join("board"))?;
    hash_tree(&mut h, &crate::repo_root().join("overlays"))?;
    h.update(include_str!("image.rs").as_bytes());
    h.update(include_str!("../node_image.rs").as_bytes());
    let key = hex::encode(h.finalize())[..16].to_string();
    NodeImage {
        what: "machines",
        cache_dir: base::cache_dir(),
        prefix: format!("node-{}-", release.suite()),
        lock: "node.lock",
        base,
        board: BOARD,
        overlay: machines_dir().join("overlay"),
        imagebuild,
        k3s_double: k3s_double_bin()?,
        release_names: ("k3s", "sha256sum-amd64.txt"),
        firstboot_bin: Some(firstboot),
        key,
    }
    .build_cached(write_data_dir)
}
