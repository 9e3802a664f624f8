//! Base image sources: catalog name, local path or URL; sha256 checked; a content-addressed cache.
//!
//! Cache layout (XDG cache dir, `imagebuild/`): `downloads/<sha256>` holds files as published,
//! `raw/<sha256>.img` the decompressed, sparse raw image of the source whose sha256 names it. A
//! rebuild from the same source finds the raw image and neither downloads nor decompresses.
//! `identity/` remembers the sha256 of local bases by file identity ([`identity`]), so an
//! unchanged local base is not hashed again.

pub mod identity;
pub mod xz;

use crate::boards::{BaseImage, Catalog, OsFamily};
use crate::io::sha256_file;
use crate::progress::{say, Meter, MeteredReader};
use anyhow::{anyhow, bail, Context, Result};
use identity::HashMemo;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where a base image comes from.
#[derive(Debug, Clone)]
pub enum BaseSource {
    /// An entry of boards/bases.toml.
    Catalog(BaseImage),
    /// A file on this machine, with an optional expected sha256.
    Path {
        /// The file.
        path: PathBuf,
        /// Expected sha256, when given.
        sha256: Option<String>,
    },
    /// An http(s) URL with its required sha256.
    Url {
        /// The URL.
        url: String,
        /// Expected sha256.
        sha256: String,
    },
}

impl BaseSource {
    /// Decide what `base` in a recipe (or `--base`) means: catalog name, URL, or path.
    pub fn resolve(
        base: &str,
        sha256: &str,
        catalog: &Catalog,
        relative_to: &Path,
    ) -> Result<BaseSource> {
        let sha = (!sha256.trim().is_empty()).then(|| sha256.trim().to_ascii_lowercase());
        if let Some(s) = &sha {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("base_sha256 {s:?} is not a sha256 (64 hex digits)");
            }
        }
        if base.starts_with("http://") || base.starts_with("https://") {
            if let Some(entry) = catalog.bases.values().find(|b| b.url == base) {
                return Ok(BaseSource::Catalog(entry.clone()));
            }
            let Some(sha256) = sha else {
                bail!("base {base} is a URL outside the catalog, so base_sha256 is required: add base_sha256 = \"<64 hex digits>\" (the publisher's checksum) to [image]");
            };
            return Ok(BaseSource::Url {
                url: base.into(),
                sha256,
            });
        }
        if let Some(entry) = catalog.bases.get(base) {
            let mut entry = entry.clone();
            if let Some(s) = sha {
                entry.sha256 = s;
            }
            return Ok(BaseSource::Catalog(entry));
        }
        let path = if Path::new(base).is_absolute() {
            PathBuf::from(base)
        } else {
            relative_to.join(base)
        };
        if path.exists() {
            return Ok(BaseSource::Path { path, sha256: sha });
        }
        Err(catalog.base(base).err().map_or_else(
            || anyhow!("base {base} not found"),
            |e| anyhow!("{e} Paths are relative to the recipe's directory."),
        ))
    }

    /// The OS family and labels the catalog promises, if any.
    pub fn catalog_entry(&self) -> Option<&BaseImage> {
        match self {
            BaseSource::Catalog(b) => Some(b),
            _ => None,
        }
    }
}

/// The content-addressed download and raw-image cache.
#[derive(Debug, Clone)]
pub struct Cache {
    /// The cache root.
    pub root: PathBuf,
}

impl Cache {
    /// `explicit`, else `$XDG_CACHE_HOME/imagebuild`, else `~/.cache/imagebuild`.
    pub fn locate(explicit: Option<&Path>) -> Result<Cache> {
        let root = match explicit {
            Some(p) => p.into(),
            None => match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
                Some(x) => PathBuf::from(x).join("imagebuild"),
                None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                    Some(h) => PathBuf::from(h).join(".cache/imagebuild"),
                    None => {
                        bail!("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir")
                    }
                },
            },
        };
        for sub in ["downloads", "raw"] {
            std::fs::create_dir_all(root.join(sub)).with_context(|| {
                format!("creating cache directory {}", root.join(sub).display())
            })?;
        }
        Ok(Cache { root })
    }

    /// Where a download whose sha256 is `sha` is kept.
    pub fn download_path(&self, sha: &str) -> PathBuf {
        self.root.join("downloads").join(sha)
    }

    fn raw_path(&self, sha: &str) -> PathBuf {
        self.root.join("raw").join(format!("{sha}.img"))
    }

    fn partial(&self, sub: &str) -> PathBuf {
        self.root
            .join(sub)
            .join(format!(".partial-{}", std::process::id()))
    }
}

/// A decompressed base image ready to copy.
#[derive(Debug, Clone)]
pub struct RawBase {
    /// The raw image in the cache.
    pub path: PathBuf,
    /// sha256 of the source as published (compressed or not).
    pub source_sha256: String,
    /// True when neither download nor decompression was needed.
    pub from_cache: bool,
    /// Catalog entry, when the base came from the catalog.
    pub catalog: Option<BaseImage>,
}

impl RawBase {
    /// The OS family promised by the catalog, if known.
    pub fn family(&self) -> Option<OsFamily> {
        self.catalog.as_ref().map(|c| c.os_family)
    }
}

/// Make the raw base available in the cache: verify, download and decompress only what is missing.
pub fn obtain(source: &BaseSource, cache: &Cache, offline: bool) -> Result<RawBase> {
    let (expected, catalog) = match source {
        BaseSource::Catalog(b) => (Some(b.sha256.clone()), Some(b.clone())),
        BaseSource::Url { sha256, .. } => (Some(sha256.clone()), None),
        BaseSource::Path { sha256, .. } => (sha256.clone(), None),
    };
    if let Some(sha) = &expected {
        let raw = cache.raw_path(sha);
        if raw.is_file() {
            say(&format!("base: using cached raw image {}", raw.display()));
            return Ok(RawBase {
                path: raw,
                source_sha256: sha.clone(),
                from_cache: true,
                catalog,
            });
        }
    }
    // Not cached yet: get the published file and check it before anything reads it.
    let (file, sha) = match source {
        BaseSource::Path { path, sha256 } => {
            let memo = HashMemo::new(&cache.root);
            let actual = match memo.recall(path) {
                Some(sha) => {
                    say(&format!(
                        "base: {} unchanged since it was hashed (same inode, size, mtime and ctime): sha256 {sha}",
                        path.display()
                    ));
                    sha
                }
                None => memo.hash(path, sha256_file)?,
            };
            if let Some(want) = sha256 {
                check_sha(path.display().to_string(), want, &actual)?;
            }
            let raw = cache.raw_path(&actual);
            if raw.is_file() {
                say(&format!("base: using cached raw image {}", raw.display()));
                return Ok(RawBase {
                    path: raw,
                    source_sha256: actual,
                    from_cache: true,
                    catalog,
                });
            }
            if detect_packing(path)? == Packing::Raw {
                // A local raw image needs no decompression: read it in place, never copy it.
                return Ok(RawBase {
                    path: path.clone(),
                    source_sha256: actual,
                    from_cache: false,
                    catalog,
                });
            }
            (path.clone(), actual)
        }
        BaseSource::Catalog(BaseImage { url, sha256, .. }) | BaseSource::Url { url, sha256 } => {
            let dl = cache.download_path(sha256);
            if !dl.is_file() {
                if offline {
                    bail!("base {url} is not in the cache and --offline forbids downloading it; build once online or pass --base PATH");
                }
                download(url, sha256, &dl, cache)?;
            }
            (dl, sha256.clone())
        }
    };
    crate::interrupt::check()?;
    let raw = cache.raw_path(&sha);
    decompress_into(&file, &raw, cache)?;
    Ok(RawBase {
        path: raw,
        source_sha256: sha,
        from_cache: false,
        catalog,
    })
}

fn check_sha(what: String, want: &str, actual: &str) -> Result<()> {
    if !want.eq_ignore_ascii_case(actual) {
        bail!("sha256 mismatch for {what}: expected {want}, got {actual}. The file is corrupt, truncated or a different release: download it again, or fix base_sha256 (catalog entries pin it in boards/bases.toml)");
    }
    Ok(())
}

fn short(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

struct PartialFile(PathBuf);

impl Drop for PartialFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn download(url: &str, sha256: &str, dest: &Path, cache: &Cache) -> Result<()> {
    let partial = cache
        .root
        .join("downloads")
        .join(format!(".partial-{sha256}"));
    crate::fetch::download(url, Some(sha256), &partial, dest).map_err(|e| {
        match e.downcast_ref::<crate::fetch::FetchError>() {
            Some(crate::fetch::FetchError::Mismatch { expected, actual, .. }) => {
                anyhow!("sha256 mismatch for {url}: expected {expected}, got {actual}. The file is corrupt, truncated or a different release: download it again, or fix base_sha256 (catalog entries pin it in boards/bases.toml)")
            }
            _ => {
                let name = url.rsplit('/').next().unwrap_or(url);
                e.context(format!(
                    "the base image could not be downloaded. To build without the internet: download {name} on another machine and pass `--base PATH/{name}` (its sha256 is still checked against {sha256}), or set the recipe's base to that path; after one successful build `--offline` uses the cache ({})",
                    cache.root.display()
                ))
            }
        }
    })?;
    Ok(())
}

/// The compression of a file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// gzip.
    Gzip,
    /// Not compressed.
    Raw,
}

/// Recognize xz, zstd and gzip by magic number.
pub fn detect_packing(path: &Path) -> Result<Packing> {
    let mut magic = [0u8; 6];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut magic)?;
    let m = &magic[..n];
    Ok(if m.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        Packing::Xz
    } else if m.starts_with(&[0x28, 0xB5, 0x2F, 0xFD])
        // A zstd skippable frame (magic 0x184D2A5?) first: the image identity `build` writes.
        || (m.len() >= 4 && m[0] & 0xF0 == 0x50 && m[1..4] == [0x2A, 0x4D, 0x18])
    {
        Packing::Zstd
    } else if m.starts_with(&[0x1F, 0x8B]) {
        Packing::Gzip
    } else {
        Packing::Raw
    })
}

impl Packing {
    /// The compression's usual name, as its command is called.
    pub fn name(self) -> &'static str {
        match self {
            Packing::Xz => "xz",
            Packing::Zstd => "zstd",
            Packing::Gzip => "gzip",
            Packing::Raw => "none",
        }
    }

    /// The command that unpacks a file of this kind and keeps the compressed one.
    pub fn unpack_command(self) -> &'static str {
        match self {
            Packing::Xz => "xz -dk",
            Packing::Zstd => "zstd -d",
            Packing::Gzip => "gunzip -k",
            Packing::Raw => "cp",
        }
    }
}

/// Refuse a compressed file where `command` needs the raw image: one line saying it is
/// compressed and what to run instead.
pub fn require_raw(path: &Path, command: &str) -> Result<()> {
    let packing = detect_packing(path)?;
    if packing == Packing::Raw {
        return Ok(());
    }
    let raw = match path.extension().and_then(|e| e.to_str()) {
        Some("zst" | "xz" | "gz") => path.with_extension(""),
        _ => PathBuf::from("IMAGE.img"),
    };
    bail!(
        "{} is compressed ({}): `{command}` reads the raw image; run `{} {}` and then `{command} {}`",
        path.display(),
        packing.name(),
        packing.unpack_command(),
        path.display(),
        raw.display()
    )
}

/// Magic number of the zstd skippable frame that carries the raw image's sha256 (skippable
/// frames 0x184D2A50-5F are skipped by every zstd decoder, so the file stays a plain .zst).
const IMAGE_ID_FRAME_MAGIC: u32 = 0x184D_2A5E;

/// The words before the raw image's sha256 in that frame.
const IMAGE_ID_PREFIX: &str = "imagebuild image sha256 ";

/// The zstd skippable frame that records `image_sha256` at the start of a .zst `build` writes.
pub fn image_id_frame(image_sha256: &str) -> Vec<u8> {
    let body = format!("{IMAGE_ID_PREFIX}{image_sha256}\n");
    let mut f = IMAGE_ID_FRAME_MAGIC.to_le_bytes().to_vec();
    f.extend((body.len() as u32).to_le_bytes());
    f.extend(body.as_bytes());
    f
}

/// The sha256 of the raw image a compressed file holds, when the file says (a .zst written by
/// `imagebuild build` does); None for anything else.
pub fn packed_image_sha256(path: &Path) -> Option<String> {
    let mut head = [0u8; 8 + IMAGE_ID_PREFIX.len() + 64];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    if u32::from_le_bytes(head[..4].try_into().ok()?) != IMAGE_ID_FRAME_MAGIC {
        return None;
    }
    let body = std::str::from_utf8(&head[8..]).ok()?;
    let h = body.strip_prefix(IMAGE_ID_PREFIX)?;
    h.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| h.to_ascii_lowercase())
}

/// A streaming reader of the decompressed bytes of `input`.
pub fn unpacked<'a>(packing: Packing, input: impl BufRead + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match packing {
        Packing::Xz => xz::decoder(input),
        Packing::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).context("starting zstd")?)
        }
        Packing::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Packing::Raw => Box::new(input),
    })
}

fn decompress_into(src: &Path, raw: &Path, cache: &Cache) -> Result<()> {
    let packing = detect_packing(src)?;
    let f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = f.metadata().map(|m| m.len()).ok();
    let label = match packing {
        Packing::Raw => format!("copying {}", short(src)),
        p => format!("decompressing {} ({p:?})", short(src)),
    };
    let mut meter = Meter::new(&label, len);
    let input = BufReader::with_capacity(1 << 20, MeteredReader::new(f, &mut meter));
    let mut reader = unpacked(packing, input)?;
    let partial = PartialFile(cache.partial("raw"));
    let out =
        File::create(&partial.0).with_context(|| format!("creating {}", partial.0.display()))?;
    let total = copy_sparse(&mut reader, &out).map_err(|e| {
        if crate::interrupt::requested() {
            anyhow!("interrupted: the build was stopped by a signal; nothing was written to the output path")
        } else if packing == Packing::Raw {
            anyhow!("reading {}: {e}", src.display())
        } else {
            anyhow!("the {packing:?} archive {} is truncated or corrupt ({e}); download it again", src.display())
        }
    })?;
    drop(reader);
    meter.finish();
    if total == 0 {
        bail!(
            "{} is empty after decompression; it is not a disk image",
            src.display()
        );
    }
    out.sync_all().context("flushing the raw image")?;
    std::fs::rename(&partial.0, raw).context("storing the raw image in the cache")?;
    Ok(())
}

/// Copy a stream into `out`, leaving all-zero 64 KiB blocks as holes. Returns the bytes copied.
pub fn copy_sparse(reader: &mut dyn Read, mut out: &File) -> std::io::Result<u64> {
    const BLOCK: usize = 64 << 10;
    let mut buf = vec![0u8; BLOCK];
    let mut total: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(filled as i64))?;
        } else {
            out.write_all(&buf[..filled])?;
        }
        total += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    out.set_len(total)?;
    Ok(total)
}
