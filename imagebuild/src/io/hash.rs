//! sha256 in one place: of files (sparse-aware), of bytes, and of image bytes while they are
//! written, so an image is never read back just to checksum it.

use super::extents::{stretches, Stretch};
use crate::progress::Meter;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Write `src[0..len)` into `out` at `at`, hashing the whole of `out[0..at+len)` on the way: the
/// head already in `out` is hashed first, then every piece of `src` as it is written, so the
/// image is never read back just to checksum it. A second thread hashes while this one copies.
pub fn append_and_hash(out: &File, at: u64, src: &File, len: u64, label: &str) -> Result<String> {
    const CHUNK: u64 = 4 << 20;
    if out.metadata()?.len() < at + len {
        out.set_len(at + len).context("sizing the output image")?;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(8);
    let hasher = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let zeros = vec![0u8; CHUNK as usize];
        for piece in rx {
            match piece {
                Piece::Data(b) => h.update(&b),
                Piece::Zeros(mut n) => {
                    while n > 0 {
                        let k = n.min(CHUNK) as usize;
                        h.update(&zeros[..k]);
                        n -= k as u64;
                    }
                }
            }
        }
        hex::encode(h.finalize())
    });
    let mut meter = Meter::new(label, Some(at + len));
    let send = |p: Piece| {
        tx.send(p)
            .map_err(|_| anyhow::anyhow!("the checksum thread stopped"))
    };
    let mut pump = |file: &File, stretches: Vec<Stretch>, write_at: Option<u64>| -> Result<()> {
        for st in stretches {
            crate::interrupt::check()?;
            if !st.data {
                send(Piece::Zeros(st.len))?;
                meter.add(st.len);
                continue;
            }
            let mut off = st.offset;
            while off < st.offset + st.len {
                crate::interrupt::check()?;
                let n = (st.offset + st.len - off).min(CHUNK) as usize;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, off)
                    .context("reading image data")?;
                if let Some(base) = write_at {
                    out.write_all_at(&buf, base + off)
                        .context("writing the image")?;
                }
                meter.add(n as u64);
                send(Piece::Data(buf))?;
                off += n as u64;
            }
        }
        Ok(())
    };
    let result = pump(out, stretches(out, 0, at), None)
        .and_then(|_| pump(src, stretches(src, 0, len), Some(at)));
    drop(tx);
    let hash = hasher
        .join()
        .map_err(|_| anyhow::anyhow!("the checksum thread panicked"))?;
    result?;
    meter.finish();
    Ok(hash)
}

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
