//! The node image of the VM tier: `imagebuild build` on the arm64 test base with a real board
//! profile (`rpi4`, media `sd`), exactly as a user builds one:
//!
//! - firstboot: the default payload path (no `--firstboot-bin`): imagebuild builds the static
//!   aarch64 musl firstboot itself;
//! - K3s: a release generated locally (a mirror directory, never the network) whose `k3s-arm64`
//!   IS the K3s test double cross-built for `aarch64-unknown-linux-musl` (its C dependencies with
//!   Debian's cross compiler `aarch64-linux-gnu-gcc`, package gcc-aarch64-linux-gnu);
//! - test overlay `tests/vm/overlay/`: firstboot debug logs, a persistent journal copied to the
//!   console (the serial port the harness captures).
//!
//! Cached beside the base, keyed by the sha256 of every input.

use super::base;
use crate::node_image::{hash_tree, nice_cargo, NodeImage};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::node_image::K3S_VERSION;
/// The board profile (shipped catalog).
pub const BOARD: &str = "rpi4";
/// The Rust target of the Pi payload.
pub const TARGET: &str = "aarch64-unknown-linux-musl";

fn vm_dir() -> PathBuf {
    crate::repo_root().join("tests/vm")
}

/// `<target>/<profile>` of the running program.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut profile = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile.ends_with("deps") {
        profile.pop();
    }
    Ok(profile)
}

/// The K3s test double built for the Pi (`<target>/vm-k3s-double/<TARGET>/release/k3s-double`).
pub fn k3s_double_aarch64() -> Result<PathBuf> {
    let target_dir = profile_dir()?
        .parent()
        .context("no target directory")?
        .join("vm-k3s-double");
    let cc_var = format!("CC_{}", TARGET.replace('-', "_"));
    let ar_var = format!("AR_{}", TARGET.replace('-', "_"));
    let mut cmd = nice_cargo(&[
        "build",
        "--quiet",
        "--release",
        "-p",
        "systests",
        "--bin",
        "k3s-double",
        "--target",
        TARGET,
    ]);
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    if std::env::var_os(&cc_var).is_none() {
        cmd.env(&cc_var, "aarch64-linux-gnu-gcc");
    }
    if std::env::var_os(&ar_var).is_none() {
        cmd.env(&ar_var, "aarch64-linux-gnu-ar");
    }
    let status = cmd
        .status()
        .context("running cargo build of the aarch64 K3s double")?;
    if !status.success() {
        bail!(
            "cargo build --target {TARGET} -p systests --bin k3s-double failed ({status}); it needs \
             Debian's cross compiler (apt-get install gcc-aarch64-linux-gnu)"
        );
    }
    let path = target_dir.join(TARGET).join("release/k3s-double");
    if !path.exists() {
        bail!("{} missing after cargo build", path.display());
    }
    Ok(path)
}

/// The imagebuild program of this workspace (built first when needed).
pub fn imagebuild_bin() -> Result<PathBuf> {
    let profile = profile_dir()?;
    let mut cmd = nice_cargo(&[
        "build",
        "--quiet",
        "-p",
        "imagebuild",
        "--bin",
        "imagebuild",
    ]);
    if profile.ends_with("release") {
        cmd.arg("--release");
    }
    if let Some(t) = profile.parent() {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    let status = cmd.status().context("running cargo build -p imagebuild")?;
    if !status.success() {
        bail!("cargo build -p imagebuild failed: {status}");
    }
    Ok(profile.join("imagebuild"))
}

/// The node image (built by imagebuild, cached by its inputs' hash).
pub fn node_image() -> Result<PathBuf> {
    let base = base::image()?;
    let double = k3s_double_aarch64()?;
    let imagebuild = imagebuild_bin()?;
    // The firstboot imagebuild will install (built here so its bytes key the cache; imagebuild
    // finds the same build in the same target directory).
    let firstboot = crate::shipped_aarch64_firstboot();
    let mut h = Sha256::new();
    h.update(base::key().as_bytes());
    for bin in [&imagebuild, &firstboot, &double] {
        h.update(std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?);
    }
    hash_tree(&mut h, &vm_dir().join("overlay"))?;
    hash_tree(&mut h, &crate::repo_root().join("boards"))?;
    hash_tree(&mut h, &crate::repo_root().join("overlays"))?;
    h.update(include_str!("image.rs").as_bytes());
    h.update(include_str!("../node_image.rs").as_bytes());
    let key = hex::encode(h.finalize())[..16].to_string();
    NodeImage {
        what: "vm",
        cache_dir: base::cache_dir(),
        prefix: "vm-node-arm64-".into(),
        lock: "vm-node.lock",
        base,
        board: BOARD,
        overlay: vm_dir().join("overlay"),
        imagebuild,
        k3s_double: double,
        release_names: ("k3s-arm64", "sha256sum-arm64.txt"),
        firstboot_bin: None,
        key,
    }
    .build_cached(|_| Ok(crate::repo_root()))
}
