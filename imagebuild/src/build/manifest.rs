//! The image manifest the build writes into the root filesystem: firstboot's
//! [`ImageManifest`], with every declared file's sha256.

use crate::epoch;
use crate::io::{sha256_bytes, sha256_file_quiet};
use crate::payload::Versions;
use crate::recipe::Recipe;
use crate::rootfs::payload::{EntryKind, Payload};
use anyhow::{Context, Result};
use firstboot::manifest::{self, ImageManifest, ManifestFile};

/// The image manifest: build time (the clock floor for first boot) and every file's sha256.
pub(super) fn image_manifest(
    recipe: &Recipe,
    base_sha: &str,
    epoch: i64,
    versions: &Versions,
    payload: &Payload,
) -> Result<ImageManifest> {
    // A later entry for the same path replaces an earlier one, as in the image itself.
    let mut files = std::collections::BTreeMap::new();
    for e in &payload.entries {
        if !matches!(e.kind, EntryKind::File(_) | EntryKind::Bytes(_)) {
            files.remove(&e.dest);
        }
        let sha = match &e.kind {
            EntryKind::File(p) => Some(sha256_file_quiet(p)?),
            EntryKind::Bytes(b) => Some(sha256_bytes(b)),
            _ => None,
        };
        if let Some(sha) = sha {
            // The Wi-Fi keyfile holds the passphrase: its hash would let anyone test guesses.
            let secret = e
                .dest
                .starts_with("/etc/NetworkManager/system-connections/");
            files.insert(
                e.dest.clone(),
                ManifestFile {
                    path: e.dest.clone(),
                    sha256: (!secret).then_some(sha),
                    mode: format!("{:04o}", e.mode),
                    uid: e.uid,
                    gid: e.gid,
                },
            );
        }
    }
    Ok(ImageManifest {
        schema: manifest::SCHEMA,
        // build_time is the clock floor firstboot reads: integer unix seconds, nothing else.
        build_time: u64::try_from(epoch).context("the build time is before 1970")?,
        build_time_rfc3339: epoch::rfc3339(epoch),
        board: recipe.image.board.clone(),
        media: recipe.image.media,
        base_sha256: base_sha.to_string(),
        versions: versions.clone(),
        files: files.into_values().collect(),
    })
}
