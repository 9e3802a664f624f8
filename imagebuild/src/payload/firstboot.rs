//! The `firstboot` binary for the board: built from this workspace as a static musl binary, or given.

use crate::progress::say;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of a static firstboot binary for a Debian architecture.
pub fn musl_target(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "arm64" => "aarch64-unknown-linux-musl",
        "amd64" => "x86_64-unknown-linux-musl",
        other => {
            bail!("no firstboot build target for architecture {other:?}; pass --firstboot-bin")
        }
    })
}

/// The workspace this imagebuild was built from, when it is still there.
pub fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    (root.join("Cargo.toml").is_file() && root.join("firstboot/Cargo.toml").is_file())
        .then_some(root)
}

/// Build firstboot for `arch` with cargo into `target_dir` (its own, so a cargo already running
/// on the workspace's target dir cannot hold the build lock) and return the binary.
pub fn build(arch: &str, target_dir: Option<&Path>) -> Result<PathBuf> {
    let target = musl_target(arch)?;
    let Some(root) = workspace_root() else {
        bail!("the firstboot sources are not at {} any more; pass --firstboot-bin PATH (a static {target} build of firstboot)", env!("CARGO_MANIFEST_DIR"));
    };
    let target_dir = match target_dir {
        Some(d) => d.to_path_buf(),
        None => root.join("target").join("imagebuild-firstboot"),
    };
    say(&format!(
        "firstboot: cargo build -p firstboot --release --target {target} (into {})",
        target_dir.display()
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "firstboot", "--release", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags of an outer cargo (running imagebuild or its tests) must not leak into this build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .context(
            "running cargo to build firstboot (is cargo installed? else pass --firstboot-bin)",
        )?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        bail!(
            "building firstboot for {target} failed ({}); pass --firstboot-bin PATH to use a prebuilt binary:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let bin = target_dir.join(target).join("release").join("firstboot");
    if !bin.is_file() {
        bail!("cargo built firstboot but {} is missing", bin.display());
    }
    Ok(bin)
}

/// The version of the firstboot in this workspace.
pub fn workspace_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
