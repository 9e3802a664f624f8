//! Stage 1, the plan: recipe, board, cluster file, output paths and the root filesystem's
//! declared files, all checked before anything is fetched or written.

use super::BuildOptions;
use crate::boards::{Board, Catalog, DataDir};
use crate::cluster::{self, ClusterFile};
use crate::progress::say;
use crate::recipe::Recipe;
use crate::rootfs::overlay;
use crate::rootfs::payload::Payload;
use crate::source::BaseSource;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Everything a build decided before it fetched anything.
pub struct BuildPlan {
    /// The build's one clock (SOURCE_DATE_EPOCH when set).
    pub epoch: i64,
    /// Where boards/ and overlays/ come from.
    pub data: DataDir,
    /// The board profile.
    pub board: Board,
    /// cluster.toml to stamp, if the recipe has one.
    pub cluster_file: Option<ClusterFile>,
    /// Warnings so far (already printed).
    pub warnings: Vec<String>,
    /// The image to write.
    pub output_path: PathBuf,
    /// Its directory (created if missing, checked writable).
    pub out_dir: PathBuf,
    /// The base as the user named it (catalog name, path or URL).
    pub base_text: String,
    /// The base resolved.
    pub source: BaseSource,
    /// Overlays applied in order.
    pub overlays: Vec<PathBuf>,
    /// The overlays' files (user setup, node payload and extra files are added later).
    pub payload: Payload,
}

impl BuildPlan {
    /// Plan a build of `recipe` with the command line's `options`.
    pub fn new(recipe: &Recipe, options: &BuildOptions) -> Result<Self> {
        let epoch = crate::epoch::build_epoch()?;
        let data = DataDir::locate(options.data_dir.as_deref());
        let catalog = Catalog::load(&data)?;
        let board = catalog.board(&recipe.image.board)?.clone();
        let cluster_file = cluster::from_recipe(recipe)?;
        let mut warnings = recipe.warnings();
        if let Some(c) = &cluster_file {
            warnings.extend(c.warnings());
        }
        for w in &warnings {
            say(&format!("warning: {w}"));
        }
        let output_path = options
            .output
            .clone()
            .unwrap_or_else(|| recipe.resolve(&recipe.image.output));
        if output_path.is_dir() {
            bail!(
                "output {} is a directory; give a file name such as homelab.img",
                output_path.display()
            );
        }
        let out_dir = match output_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        check_output_path(&output_path)?;
        if !out_dir.is_dir() {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating the output directory {}", out_dir.display()))?;
        }
        check_writable(&out_dir)?;
        let base_text = options
            .base
            .clone()
            .unwrap_or_else(|| recipe.image.base.clone());
        let base_sha = if options.base.is_some() {
            String::new()
        } else {
            recipe.image.base_sha256.clone()
        };
        let source = BaseSource::resolve(&base_text, &base_sha, &catalog, &recipe.dir())?;

        // Everything the root filesystem gets, in order: built-in overlays, recipe overlays, user.
        let mut payload = Payload::new();
        let mut overlays = Vec::new();
        let common = data.overlays().join("common");
        if common.is_dir() {
            overlays.push(common);
        }
        for o in &recipe.overlays {
            let here = recipe.resolve(o);
            let builtin = data.root.join(o);
            overlays.push(if here.is_dir() || !builtin.is_dir() {
                here
            } else {
                builtin
            });
        }
        for o in &overlays {
            payload.extend(
                overlay::load(o).with_context(|| format!("reading overlay {}", o.display()))?,
            );
        }
        payload.check()?;
        options.payload.check()?;
        Ok(BuildPlan {
            epoch,
            data,
            board,
            cluster_file,
            warnings,
            output_path,
            out_dir,
            base_text,
            source,
            overlays,
            payload,
        })
    }
}

/// An image is written to a regular file only: never over a device node or anything under /dev
/// (a mistyped card name would otherwise replace the device node with a file).
fn check_output_path(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let ft = m.file_type();
        if ft.is_block_device() || ft.is_char_device() {
            bail!(
                "output {} is a device: build writes an image file; write it to a card afterwards with imagebuild flash IMAGE {}",
                path.display(),
                path.display()
            );
        }
        if !ft.is_file() && !ft.is_symlink() {
            bail!("output {} exists and is not a regular file", path.display());
        }
    }
    if std::path::absolute(path)
        .map(|p| p.starts_with("/dev"))
        .unwrap_or(false)
    {
        bail!(
            "output {} is under /dev: build writes an image file; choose a path such as out/homelab.img and flash it with imagebuild flash",
            path.display()
        );
    }
    Ok(())
}

/// A read-only or unwritable output directory is named as such (not as "no room").
fn check_writable(dir: &Path) -> Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("output directory name contains a NUL byte")?;
    // SAFETY: access() only reads the valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        let why = if e.raw_os_error() == Some(libc::EROFS) {
            "it is on a read-only filesystem"
        } else {
            "this user may not write there"
        };
        bail!(
            "cannot write to the output directory {}: {why} ({e}); choose another output with -o",
            dir.display()
        );
    }
    Ok(())
}

pub(super) fn check_room(raw: &Path, out_dir: &Path, payload: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(raw)?.blocks() * 512;
    // The root filesystem exists twice for a moment (scratch file and image), payload included.
    let need = 2 * (allocated + payload);
    let c = std::ffi::CString::new(out_dir.as_os_str().as_encoded_bytes())
        .context("output directory name contains a NUL byte")?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc == 0 {
        let avail = st.f_bavail as u64 * st.f_frsize as u64;
        if avail < need {
            bail!(
                "no room to write the output: {} has {} free but the image needs about {}; free some space or choose another output directory",
                out_dir.display(),
                crate::size::ByteSize(avail),
                crate::size::ByteSize(need)
            );
        }
    }
    Ok(())
}
