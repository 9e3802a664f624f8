//! Crash-safe file writes: write a temp file, fsync it, rename it over the target, fsync the directory.
//!
//! [`JsonFile`] is the one typed store for firstboot's JSON state files (`state.json`,
//! `election.json`, `k3s-plan.json`): load, or save through [`write_atomic`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A JSON state file holding one `T`, written atomically.
#[derive(Debug, Clone)]
pub struct JsonFile<T> {
    path: PathBuf,
    mode: u32,
    kind: PhantomData<fn() -> T>,
}

/// Why a JSON state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// Reading or writing failed.
    #[error("{doing} {path}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file does not hold what this build expects.
    #[error("parsing {path}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

impl<T: Serialize + DeserializeOwned> JsonFile<T> {
    /// The file at `path`, written with permission bits `mode`.
    pub fn new(path: PathBuf, mode: u32) -> Self {
        JsonFile {
            path,
            mode,
            kind: PhantomData,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of an earlier run, `None` when the file does not exist.
    pub fn load(&self) -> Result<Option<T>, JsonFileError> {
        self.load_with(|bytes| serde_json::from_slice(bytes))
    }

    /// [`JsonFile::load`] with its own parser (e.g. one that upconverts older layouts).
    pub fn load_with(
        &self,
        parse: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<Option<T>, JsonFileError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JsonFileError::Io {
                    doing: "reading",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        parse(&bytes)
            .map(Some)
            .map_err(|source| JsonFileError::Format {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes `value` as pretty JSON plus a newline, durably (temp file, fsync, rename, fsync
    /// of the directory).
    pub fn save(&self, value: &T) -> Result<(), JsonFileError> {
        // Plain data with string keys: serializing cannot fail.
        let mut json = serde_json::to_vec_pretty(value).unwrap_or_default();
        json.push(b'\n');
        write_atomic(&self.path, &json, self.mode).map_err(|source| JsonFileError::Io {
            doing: "writing",
            path: self.path.clone(),
            source,
        })
    }
}

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
    fn a_json_file_round_trips_and_names_itself_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file: JsonFile<Vec<u32>> = JsonFile::new(dir.path().join("d/list.json"), 0o644);
        assert!(file.load().unwrap().is_none());
        file.save(&vec![1, 2]).unwrap();
        assert_eq!(
            fs::read_to_string(file.path()).unwrap(),
            "[\n  1,\n  2\n]\n"
        );
        assert_eq!(fs::metadata(file.path()).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(file.load().unwrap(), Some(vec![1, 2]));
        fs::write(file.path(), b"{").unwrap();
        let error = file.load().unwrap_err();
        assert!(matches!(error, JsonFileError::Format { .. }));
        assert_eq!(
            error.to_string(),
            format!("parsing {}", file.path().display())
        );
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
