//! Building a node image for the machine and VM tests: `imagebuild build` run as a user runs it,
//! on a test base, with a K3s release whose binary is the K3s test double, cached by the sha256
//! of every input. [`crate::machines::image`] and [`crate::vm::image`] say which base, board,
//! firstboot and overlay; this module does the rest once.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The K3s version the generated releases claim to be.
pub const K3S_VERSION: &str = "v1.31.10+k3s1";

/// `cargo <args>` for the workspace without the environment cargo set for THIS program.
///
/// What cargo set for `cargo run`/`cargo test` of systests describes the systests package, not
/// the one built here: inherited, it changes the environment the build's rustc invocations see,
/// and cargo recompiles crates and so rebuilds the node image on every run (issue 20).
pub fn cargo(args: &[&str]) -> Command {
    let bin = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(bin);
    cmd.args(args);
    without_caller_env(cmd)
}

/// [`cargo`] under `nice` (the VM tier's cross builds yield to the test machine's other work).
pub fn nice_cargo(args: &[&str]) -> Command {
    let bin = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new("nice");
    cmd.arg(bin).args(args);
    without_caller_env(cmd)
}

fn without_caller_env(mut cmd: Command) -> Command {
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

/// Hashes the names, contents, modes and link targets of everything below `dir`, in name order.
pub fn hash_tree(h: &mut Sha256, dir: &Path) -> Result<()> {
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

/// One node image: what the caller chose; [`NodeImage::build_cached`] builds it.
pub struct NodeImage<'a> {
    /// Prefix of the progress line ("machines", "vm").
    pub what: &'a str,
    /// The cache directory (beside the base).
    pub cache_dir: PathBuf,
    /// The cached file's name before its key, e.g. `node-trixie-`; older images of it are removed.
    pub prefix: String,
    /// The lock file's name in the cache directory.
    pub lock: &'a str,
    /// The base image.
    pub base: PathBuf,
    /// The board profile.
    pub board: &'a str,
    /// The overlay directory of the test.
    pub overlay: PathBuf,
    /// The imagebuild program.
    pub imagebuild: PathBuf,
    /// The K3s test double, the release's binary.
    pub k3s_double: PathBuf,
    /// The release's binary name and checksum file name (`k3s`, `sha256sum-amd64.txt`).
    pub release_names: (&'a str, &'a str),
    /// `--firstboot-bin`, if the image takes a given firstboot.
    pub firstboot_bin: Option<PathBuf>,
    /// The cache key (hex), over every input.
    pub key: String,
}

impl NodeImage<'_> {
    /// The node image, built by imagebuild into the cache when it is not there (under the lock).
    /// `data_dir` writes imagebuild's `--data-dir` into the directory it is given, or returns
    /// the one to use.
    pub fn build_cached(&self, data_dir: impl FnOnce(&Path) -> Result<PathBuf>) -> Result<PathBuf> {
        let dir = &self.cache_dir;
        let path = dir.join(format!("{}{}.img", self.prefix, self.key));
        let lock_file = std::fs::File::create(dir.join(self.lock)).context("creating the lock")?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("locking the node image cache")?;
        if path.exists() {
            return Ok(path);
        }
        // Older node images of this base are of no further use.
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.prefix) && name.ends_with(".img") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        eprintln!("{}: building the node image {}", self.what, path.display());
        let work = tempfile::Builder::new()
            .prefix(&format!("{}build-", self.prefix))
            .tempdir_in(dir)
            .context("creating the node work dir")?;
        let release = work.path().join("release");
        std::fs::create_dir_all(&release)?;
        let binary = std::fs::read(&self.k3s_double).context("reading k3s-double")?;
        let (bin_name, sums_name) = self.release_names;
        std::fs::write(release.join(bin_name), &binary)?;
        let sums = format!("{}  {bin_name}\n", hex::encode(Sha256::digest(&binary)));
        std::fs::write(release.join(sums_name), sums)?;
        let data = data_dir(&work.path().join("data"))?;
        let recipe = work.path().join("image.toml");
        std::fs::write(
            &recipe,
            format!(
                "[image]\nboard = \"{board}\"\nmedia = \"sd\"\nbase = \"{base}\"\noutput = \"node.img\"\n\
                 free_space = \"256MiB\"\n\n[k3s]\nversion = \"{K3S_VERSION}\"\nmirror = \"{release}\"\n\
                 airgap = false\n\n[os]\nuser = \"pi\"\noverlays = [\"{overlay}\"]\n",
                board = self.board,
                base = self.base.display(),
                release = release.display(),
                overlay = self.overlay.display(),
            ),
        )?;
        // The imagebuild program, as a user runs it (in-process, its SIGINT/SIGTERM handler would
        // outlive the build and keep a stopped test run from exiting).
        let output = work.path().join("node.img");
        let mut cmd = Command::new(&self.imagebuild);
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("build")
            .arg(&recipe)
            .arg("-o")
            .arg(&output)
            .arg("--cache-dir")
            .arg(work.path().join("cache"));
        if let Some(firstboot) = &self.firstboot_bin {
            cmd.arg("--firstboot-bin").arg(firstboot);
        }
        let run = cmd
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
}
