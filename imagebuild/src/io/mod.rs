//! The file and device primitives the build, bmap, flash and stamp code share: byte-range copies
//! ([`copy`]), data and hole extents ([`extents`]), sha256 of files and bytes ([`hash`]), the one
//! read of a finished image that yields its sha256, block map and compressed copy ([`digest`]),
//! and synced writes.

pub mod aligned;
pub mod copy;
pub mod digest;
pub mod extents;
pub mod hash;

pub use copy::copy_range;
pub use extents::{stretches, Stretch};
pub use hash::{sha256_bytes, sha256_file, sha256_file_quiet};

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Write `contents` to `path` and flush it to disk.
pub fn write_synced(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}
