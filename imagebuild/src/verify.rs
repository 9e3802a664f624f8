//! `imagebuild verify`: fsck both filesystems and check the payload against the image manifest.

use crate::layout;
use crate::rootfs::Rootfs;
use anyhow::{bail, Context, Result};
use firstboot::manifest::{ImageManifest, ABSOLUTE_PATH as IMAGE_MANIFEST};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

/// What verify checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Files whose sha256 matched the manifest.
    pub files_checked: usize,
}

/// fsck.vfat -n on the boot partition (copied out: fsck.vfat takes no offset), e2fsck -fn on the
/// root, then every file listed in the image manifest is hashed and compared.
pub fn verify(image: &Path) -> Result<Verification> {
    crate::source::require_raw(image, "imagebuild verify")?;
    let l = layout::recognize(image, None)?;
    let tmp =
        tempfile::NamedTempFile::new().context("creating a scratch file for the boot partition")?;
    {
        let mut src = File::open(image)?;
        src.seek(SeekFrom::Start(l.boot.start))?;
        let mut dst = tmp.reopen()?;
        std::io::copy(&mut Read::by_ref(&mut src).take(l.boot.size), &mut dst)
            .context("copying the boot partition out")?;
        dst.flush()?;
    }
    let out = Command::new(crate::rootfs::system_tool("fsck.vfat"))
        .arg("-n")
        .arg(tmp.path())
        .output()
        .context("running fsck.vfat (install dosfstools)")?;
    if !out.status.success() {
        bail!(
            "fsck.vfat found problems on the boot partition:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let rootfs = Rootfs::new(image, l.root.start, 315_532_800);
    rootfs.fsck()?;
    let Some(manifest) = rootfs.read_file(IMAGE_MANIFEST)? else {
        bail!("{IMAGE_MANIFEST} is missing: this image was not built by imagebuild, so there is no payload to check");
    };
    let manifest = ImageManifest::from_slice(&manifest, std::path::Path::new(IMAGE_MANIFEST))?;
    let mut checked = 0;
    for f in &manifest.files {
        // Secrets are listed without a hash: nothing to compare.
        let (path, Some(want)) = (f.path.as_str(), f.sha256.as_deref()) else {
            continue;
        };
        let Some(data) = rootfs.read_file(path)? else {
            bail!("{path} is listed in the image manifest but missing from the image");
        };
        let got = hex::encode(Sha256::digest(&data));
        if got != want {
            bail!("{path} does not match the image manifest: sha256 {got}, expected {want}");
        }
        checked += 1;
    }
    Ok(Verification {
        files_checked: checked,
    })
}
