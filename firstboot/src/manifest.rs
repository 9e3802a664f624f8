//! The image manifest `/etc/firstboot/image.json`: what imagebuild put into an image, read back
//! by firstboot (its clock floor) and by `imagebuild inspect` and `verify`.
//!
//! firstboot owns the format, as it owns `cluster.toml`: imagebuild builds an [`ImageManifest`]
//! and serializes it, every reader parses the same struct.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest's location relative to the root filesystem (see [`crate::paths::IMAGE_MANIFEST`]).
pub const PATH: &str = crate::paths::IMAGE_MANIFEST;
/// The same location as an absolute path inside an image (as debugfs and imagebuild name files).
pub const ABSOLUTE_PATH: &str = "/etc/firstboot/image.json";

/// The layout this crate writes and reads. Schema 1 (never shipped to a node) had the build time
/// as RFC 3339 text; schema 2 has integer unix seconds.
pub const SCHEMA: u32 = 2;

/// Boot media an image is built for: selects config.txt lines and tuning defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    /// SD card or eMMC.
    #[default]
    Sd,
    /// NVMe or USB SSD.
    Ssd,
}

/// What an image carries, as `image.json` states it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    /// Always [`SCHEMA`].
    pub schema: u32,
    /// Build time in unix seconds (SOURCE_DATE_EPOCH when set): the node's clock floor.
    pub build_time: u64,
    /// The same instant as RFC 3339 text, for people.
    pub build_time_rfc3339: String,
    /// Board profile the image was built for.
    pub board: String,
    /// Boot media the image was built for.
    pub media: Media,
    /// sha256 of the base image as published.
    pub base_sha256: String,
    /// Versions of what the image carries.
    pub versions: Versions,
    /// Every regular file the build declared, last writer per path, sorted by path.
    pub files: Vec<ManifestFile>,
}

/// Versions of what an image carries (K3s, firstboot, base).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// K3s release.
    pub k3s: String,
    /// firstboot version.
    pub firstboot: String,
    /// The base image (catalog name, path or URL).
    pub base: String,
    /// Whether the air-gap images archive is included.
    pub airgap: bool,
}

/// One file the build wrote into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Absolute path inside the image.
    pub path: String,
    /// sha256 of its content; `None` for secrets (a hash would let anyone test guesses).
    pub sha256: Option<String>,
    /// Permission bits as four octal digits ("0644").
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the file failed (other than its absence).
    #[error("reading the image manifest {}: {source}", path.display())]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a manifest of [`SCHEMA`].
    #[error("the image manifest {} is not valid: {reason}", path.display())]
    Invalid {
        /// The manifest path (as given to the reader).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Only the schema number, read first so an older or newer layout is named as such.
#[derive(Deserialize)]
struct SchemaOnly {
    schema: Option<u32>,
}

impl ImageManifest {
    /// Parses manifest bytes; `path` only names the file in errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, ManifestError> {
        let invalid = |reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let head: SchemaOnly = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        match head.schema {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "schema {other}, this version reads schema {SCHEMA}; rebuild the image with \
                     a matching imagebuild"
                )))
            }
            None => return Err(invalid("it has no schema field".into())),
        }
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
    }

    /// Reads the manifest under the root prefix `root`; `Ok(None)` when the image has none (not
    /// built by imagebuild).
    pub fn load(root: &Path) -> Result<Option<Self>, ManifestError> {
        let path = root.join(PATH);
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_slice(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManifestError::Read { path, source }),
        }
    }

    /// The manifest as written into the image: pretty JSON.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serializing plain strings, integers and enums into memory cannot fail.
        serde_json::to_vec_pretty(self).expect("an ImageManifest always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageManifest {
        ImageManifest {
            schema: SCHEMA,
            build_time: 1_780_000_000,
            build_time_rfc3339: "2026-05-28T20:26:40Z".into(),
            board: "rpi5".into(),
            media: Media::Ssd,
            base_sha256: "ab".repeat(32),
            versions: Versions {
                k3s: "v1.31.10+k3s1".into(),
                firstboot: "0.1.0".into(),
                base: "raspios-lite-arm64".into(),
                airgap: true,
            },
            files: vec![ManifestFile {
                path: "/usr/local/bin/k3s".into(),
                sha256: Some("cd".repeat(32)),
                mode: "0755".into(),
                uid: 0,
                gid: 0,
            }],
        }
    }

    #[test]
    fn both_spellings_name_one_file() {
        assert_eq!(&ABSOLUTE_PATH[1..], PATH);
    }

    #[test]
    fn round_trips_and_loads_from_a_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ImageManifest::load(dir.path()).unwrap(), None);
        let p = dir.path().join(PATH);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, sample().to_vec()).unwrap();
        assert_eq!(ImageManifest::load(dir.path()).unwrap(), Some(sample()));
        let text = String::from_utf8(sample().to_vec()).unwrap();
        assert!(text.contains("\"media\": \"ssd\""), "{text}");
        assert!(text.contains("\"build_time\": 1780000000"), "{text}");
    }

    #[test]
    fn other_schemas_and_strangers_are_refused_by_name() {
        let p = Path::new("/x/image.json");
        let e = ImageManifest::from_slice(br#"{"schema": 1, "build_time": "2026"}"#, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 1") && e.contains("/x/image.json"), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = serde_json::json!(1);
        let e = ImageManifest::from_slice(&serde_json::to_vec(&v).unwrap(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("surprise"), "{e}");
        v = serde_json::to_value(sample()).unwrap();
        v["build_time"] = serde_json::json!("yesterday");
        assert!(ImageManifest::from_slice(&serde_json::to_vec(&v).unwrap(), p).is_err());
        assert!(ImageManifest::from_slice(b"not json", p).is_err());
    }
}
