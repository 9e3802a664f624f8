//! Crash-safe file writes: write a temp file, fsync it, rename it over the target, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` with permission bits `mode` so that after a crash the file holds
/// either the old or the new contents, never a mix. Parent directories are created (0755).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir)?;
    let tmp = temp_name(path);
    // A temp file left by a crash is garbage; start from nothing so the mode below applies.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    // The umask may have cleared bits of `mode`; set them exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    fsync_dir(&dir)
}

/// fsyncs a directory so that a rename or create inside it survives power loss.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!temp_name(&p).exists());
    }

    #[test]
    fn a_stale_temp_file_does_not_block_or_leak_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        fs::write(temp_name(&p), b"junk").unwrap();
        fs::set_permissions(temp_name(&p), fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"{}", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
    }
}
