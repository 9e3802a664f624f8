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
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The K3s version the generated release claims to be.
pub const K3S_VERSION: &str = "v1.31.10+k3s1";
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

/// Runs cargo for the workspace without the environment cargo set for THIS program (it
/// describes the systests package and would make cargo rebuild; see tests/machines/image.rs).
fn cargo(args: &[&str]) -> Command {
    let bin = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new("nice");
    cmd.arg(bin).args(args);
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
    cmd.current_dir(crate::repo_root());
    cmd
}

/// The K3s test double built for the Pi (`<target>/vm-k3s-double/<TARGET>/release/k3s-double`).
pub fn k3s_double_aarch64() -> Result<PathBuf> {
    let target_dir = profile_dir()?
        .parent()
        .context("no target directory")?
        .join("vm-k3s-double");
    let cc_var = format!("CC_{}", TARGET.replace('-', "_"));
    let ar_var = format!("AR_{}", TARGET.replace('-', "_"));
    let mut cmd = cargo(&[
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
    let mut cmd = cargo(&[
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
    let key = hex::encode(h.finalize())[..16].to_string();

    let dir = base::cache_dir();
    let prefix = "vm-node-arm64-";
    let path = dir.join(format!("{prefix}{key}.img"));
    let lock_file = std::fs::File::create(dir.join("vm-node.lock")).context("creating the lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the VM node image cache")?;
    if path.exists() {
        return Ok(path);
    }
    for e in std::fs::read_dir(&dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".img") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    eprintln!("vm: building the node image {}", path.display());
    let work = tempfile::Builder::new()
        .prefix("vm-node-build-")
        .tempdir_in(&dir)
        .context("creating the node work dir")?;
    let release = work.path().join("release");
    std::fs::create_dir_all(&release)?;
    let binary = std::fs::read(&double)?;
    std::fs::write(release.join("k3s-arm64"), &binary)?;
    std::fs::write(
        release.join("sha256sum-arm64.txt"),
        format!("{}  k3s-arm64\n", hex::encode(Sha256::digest(&binary))),
    )?;
    let recipe = work.path().join("image.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nboard = \"{BOARD}\"\nmedia = \"sd\"\nbase = \"{base}\"\noutput = \"node.img\"\n\
             free_space = \"256MiB\"\n\n[k3s]\nversion = \"{K3S_VERSION}\"\nmirror = \"{release}\"\n\
             airgap = false\n\n[os]\nuser = \"pi\"\noverlays = [\"{overlay}\"]\n",
            base = base.display(),
            release = release.display(),
            overlay = vm_dir().join("overlay").display(),
        ),
    )?;
    let output = work.path().join("node.img");
    let run = Command::new(&imagebuild)
        .arg("--data-dir")
        .arg(crate::repo_root())
        .arg("build")
        .arg(&recipe)
        .arg("-o")
        .arg(&output)
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
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
