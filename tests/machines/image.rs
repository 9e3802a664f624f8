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
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The K3s version the generated release claims to be.
pub const K3S_VERSION: &str = "v1.31.10+k3s1";
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
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
        // What cargo set for THIS program (`cargo run`/`cargo test` of systests) describes the
        // systests package, not the one built here: inherited, it changes the environment the
        // build's rustc invocations see and cargo recompiles crates and so rebuilds the node image
        // on every run (issue 20).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "OUT_DIR"
                || name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || name.starts_with("CARGO_CRATE_")
                || name.starts_with("CARGO_PRIMARY_")
                || name.starts_with("CARGO_TARGET_TMPDIR")
                || name.starts_with("CARGO_RUSTC_CURRENT_DIR")
            {
                cmd.env_remove(name.as_ref());
            }
        }
        if profile.ends_with("release") {
            cmd.arg("--release");
        }
        if let Some(target_dir) = profile.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let status = cmd
            .current_dir(crate::repo_root())
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

fn hash_tree(h: &mut Sha256, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        h.update(e.file_name().as_encoded_bytes());
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            hash_tree(h, &p)?;
        } else if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else {
            h.update(std::fs::read(&p)?);
            h.update(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()).to_le_bytes());
        }
    }
    Ok(())
}

/// Writes a K3s release for amd64 into `dir` whose `k3s` is the test double.
fn write_release(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let binary = std::fs::read(k3s_double_bin()?).context("reading k3s-double")?;
    std::fs::write(dir.join("k3s"), &binary)?;
    let sums = format!("{}  k3s\n", hex::encode(Sha256::digest(&binary)));
    std::fs::write(dir.join("sha256sum-amd64.txt"), sums)?;
    Ok(())
}

/// Writes the data directory: test board, shipped bases catalog, repository overlays.
fn write_data_dir(dir: &Path) -> Result<()> {
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
    Ok(())
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
    let key = hex::encode(h.finalize())[..16].to_string();

    let dir = base::cache_dir();
    let prefix = format!("node-{}-", release.suite());
    let path = dir.join(format!("{prefix}{key}.img"));
    let lock_file = std::fs::File::create(dir.join("node.lock")).context("creating the lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the node image cache")?;
    if path.exists() {
        return Ok(path);
    }
    // Older node images of this base are of no further use.
    for e in std::fs::read_dir(&dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".img") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    eprintln!("machines: building the node image {}", path.display());
    let work = tempfile::Builder::new()
        .prefix("node-build-")
        .tempdir_in(&dir)
        .context("creating the node work dir")?;
    let release = work.path().join("release");
    write_release(&release)?;
    let data = work.path().join("data");
    write_data_dir(&data)?;
    let recipe = work.path().join("image.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nboard = \"{BOARD}\"\nmedia = \"sd\"\nbase = \"{base}\"\noutput = \"node.img\"\n\
             free_space = \"256MiB\"\n\n[k3s]\nversion = \"{K3S_VERSION}\"\nmirror = \"{release}\"\n\
             airgap = false\n\n[os]\nuser = \"pi\"\noverlays = [\"{overlay}\"]\n",
            base = base.display(),
            release = release.display(),
            overlay = machines_dir().join("overlay").display(),
        ),
    )?;
    // The imagebuild program, as a user runs it (in-process, its SIGINT/SIGTERM handler would
    // outlive the build and keep a stopped test run from exiting).
    let output = work.path().join("node.img");
    let run = Command::new(&imagebuild)
        .arg("--data-dir")
        .arg(&data)
        .arg("build")
        .arg(&recipe)
        .arg("-o")
        .arg(&output)
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .arg("--firstboot-bin")
        .arg(&firstboot)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running imagebuild build")?;
    if !run.status.success() {
        bail!(
            "imagebuild build failed: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    std::fs::rename(&output, &path).context("moving the node image into the cache")?;
    Ok(path)
}
