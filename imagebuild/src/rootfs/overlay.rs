//! Overlays: directory trees copied into the root filesystem, root-owned, in order.

use super::payload::Payload;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The entries of an overlay tree: files keep their exec bit (0755) or get 0644, symlinks are kept,
/// and everything is owned by root. Files named `.keep` only hold empty directories in git.
pub fn load(dir: &Path) -> Result<Payload> {
    if !dir.is_dir() {
        bail!("overlay {} is not a directory", dir.display());
    }
    let mut payload = Payload::new();
    walk(dir, "", &mut payload)?;
    Ok(payload)
}

fn walk(dir: &Path, prefix: &str, payload: &mut Payload) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading overlay directory {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading overlay directory {}", dir.display()))?;
    // Sorted, so the same tree always gives the same image.
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".keep" {
            continue;
        }
        let dest = format!("{prefix}/{name}");
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            payload.symlink(&dest, &target.to_string_lossy());
        } else if meta.is_dir() {
            walk(&path, &dest, payload)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            payload.file(&path, &dest, mode);
        } else {
            bail!(
                "overlay entry {} is neither file, directory nor symlink",
                path.display()
            );
        }
    }
    Ok(())
}
