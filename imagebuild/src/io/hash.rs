//! sha256 in one place: of files (sparse-aware) and of bytes.

use super::extents::stretches;
use crate::progress::Meter;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// sha256 of a file as hex, streamed with progress. Holes are hashed as zeros without reading them.
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut meter = Meter::new(&format!("checking sha256 of {}", short(path)), Some(len));
    let mut h = Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    for st in stretches(&f, 0, len) {
        crate::interrupt::check()?;
        let end = st.offset + st.len;
        let mut pos = st.offset;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let n = if st.data {
                let n = f
                    .read_at(&mut buf[..want], pos)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    bail!("{} shrank while being hashed", path.display());
                }
                h.update(&buf[..n]);
                n
            } else {
                h.update(&zeros[..want]);
                want
            };
            pos += n as u64;
            meter.add(n as u64);
        }
    }
    meter.finish();
    Ok(hex::encode(h.finalize()))
}

/// sha256 of a file as hex, without progress output (small files).
pub fn sha256_file_quiet(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// sha256 of bytes in memory as hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn short(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
