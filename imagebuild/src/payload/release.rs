//! K3s release assets: names per arch, mirror (GitHub, other URL, local directory), cache, sha256.
//!
//! The release's `sha256sum-<arch>.txt` is the trust anchor: every asset is checked against it
//! before use, and stored in the cache as `downloads/<sha256>`. The checksum file itself is kept as
//! `k3s/<version>/sha256sum-<arch>.txt`, so an `--offline` build finds everything by name.

use crate::fetch::{self, FetchError};
use crate::io::sha256_file;
use crate::progress::say;
use crate::source::Cache;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// The K3s GitHub releases, the default mirror.
pub const GITHUB_RELEASES: &str = "https://github.com/k3s-io/k3s/releases/download";

/// The file names of one release for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetNames {
    /// The k3s binary (`k3s-arm64`, or `k3s` on amd64).
    pub binary: String,
    /// The checksum file.
    pub sums: String,
    /// The air-gap images archive.
    pub airgap: String,
}

impl AssetNames {
    /// The asset names K3s publishes for a Debian architecture.
    pub fn for_arch(arch: &str) -> Result<AssetNames> {
        let binary = match arch {
            "arm64" => "k3s-arm64",
            "amd64" => "k3s",
            "armhf" => "k3s-armhf",
            other => {
                bail!("K3s publishes no release for architecture {other:?} (arm64, amd64, armhf)")
            }
        };
        Ok(AssetNames {
            binary: binary.into(),
            sums: format!("sha256sum-{arch}.txt"),
            airgap: format!("k3s-airgap-images-{arch}.tar.zst"),
        })
    }
}

/// Where release assets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// A base URL; assets are at `<base>/<version, + as %2B>/<asset>`.
    Url(String),
    /// A local directory holding the assets directly.
    Dir(PathBuf),
}

impl Mirror {
    /// `[k3s] mirror`: empty = GitHub, an http(s) URL, or a directory (relative to the recipe).
    pub fn parse(mirror: &str, relative_to: &Path) -> Mirror {
        let m = mirror.trim();
        if m.is_empty() {
            Mirror::Url(GITHUB_RELEASES.into())
        } else if m.starts_with("http://") || m.starts_with("https://") {
            Mirror::Url(m.trim_end_matches('/').into())
        } else {
            Mirror::Dir(relative_to.join(m))
        }
    }

    /// Where one asset of `version` is. A directory has the layout of a URL mirror, one folder
    /// per version (`v1.31.10+k3s1/k3s-arm64`; the folder may also be spelled with `%2B` as
    /// in a copied URL tree); a directory holding one release's assets directly is read too.
    pub fn locate(&self, version: &str, asset: &str) -> String {
        match self {
            Mirror::Url(base) => format!("{base}/{}/{asset}", version.replace('+', "%2B")),
            Mirror::Dir(d) => {
                let candidates = [
                    d.join(version).join(asset),
                    d.join(version.replace('+', "%2B")).join(asset),
                    d.join(asset),
                ];
                candidates
                    .iter()
                    .find(|p| p.is_file())
                    .unwrap_or(&candidates[0])
                    .display()
                    .to_string()
            }
        }
    }

    /// What a mirror must hold for `version`, said when something is missing.
    pub fn layout_hint(&self, version: &str, names: &[&str]) -> String {
        let (base, folder) = match self {
            Mirror::Url(b) => (b.clone(), version.replace('+', "%2B")),
            Mirror::Dir(d) => (d.display().to_string(), version.to_string()),
        };
        let files: Vec<String> = names
            .iter()
            .map(|n| format!("{base}/{folder}/{n}"))
            .collect();
        format!(
            "a K3s mirror (a URL or a local directory, the same layout) holds one folder per version, as GitHub's release downloads do: {}",
            files.join(", ")
        )
    }
}

/// The verified assets of a release, ready to install.
#[derive(Debug, Clone)]
pub struct K3sRelease {
    /// The release version.
    pub version: String,
    /// The k3s binary (in the cache or the local mirror).
    pub binary: PathBuf,
    /// Its sha256, as the release publishes it.
    pub binary_sha256: String,
    /// The air-gap images archive and its file name, when asked for.
    pub airgap: Option<(PathBuf, String)>,
}

/// Get the binary (and the air-gap archive when `airgap`) of `version` for `arch`, verified
/// against the release's checksum file; with `offline`, only from the cache.
pub fn obtain(
    version: &str,
    arch: &str,
    mirror: &Mirror,
    airgap: bool,
    cache: &Cache,
    offline: bool,
) -> Result<K3sRelease> {
    if version.trim().is_empty() {
        bail!("[k3s] version is empty: set it to a K3s release such as \"v1.31.10+k3s1\"");
    }
    let names = AssetNames::for_arch(arch)?;
    let sums_text = checksums(version, &names, mirror, cache, offline, airgap)?;
    let sums = parse_sums(&sums_text);
    let want = |asset: &str| -> Result<String> {
        sums.iter()
            .find(|(_, n)| n == asset)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| {
                anyhow!(
                    "{} lists no checksum for {asset}; the release or mirror is incomplete",
                    mirror.locate(version, &names.sums)
                )
            })
    };
    let binary_sha256 = want(&names.binary)?;
    let binary = asset(
        version,
        &names.binary,
        &binary_sha256,
        mirror,
        cache,
        offline,
    )?;
    let airgap = if airgap {
        let sha = want(&names.airgap)?;
        let path = asset(version, &names.airgap, &sha, mirror, cache, offline)?;
        Some((path, names.airgap.clone()))
    } else {
        None
    };
    Ok(K3sRelease {
        version: version.into(),
        binary,
        binary_sha256,
        airgap,
    })
}

/// `<sha256>  <name>` lines (the `*` binary marker of sha256sum tolerated).
pub fn parse_sums(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let sha = w.next()?;
            let name = w.next()?.trim_start_matches('*');
            (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (sha.to_ascii_lowercase(), name.to_string()))
        })
        .collect()
}

fn sums_cache_path(cache: &Cache, version: &str, names: &AssetNames) -> PathBuf {
    // '+' is fine in a file name; '/' would not be, and versions never hold one legitimately.
    cache
        .root
        .join("k3s")
        .join(version.replace('/', "_"))
        .join(&names.sums)
}

fn checksums(
    version: &str,
    names: &AssetNames,
    mirror: &Mirror,
    cache: &Cache,
    offline: bool,
    airgap: bool,
) -> Result<String> {
    let where_ = mirror.locate(version, &names.sums);
    let mut wanted = vec![names.sums.as_str(), names.binary.as_str()];
    if airgap {
        wanted.push(names.airgap.as_str());
    }
    if let Mirror::Dir(_) = mirror {
        if !Path::new(&where_).is_file() {
            bail!(
                "the K3s mirror directory has no {where_}; {}",
                mirror.layout_hint(version, &wanted)
            );
        }
        return std::fs::read_to_string(&where_)
            .with_context(|| format!("reading the K3s checksum file {where_}"));
    }
    let cached = sums_cache_path(cache, version, names);
    if cached.is_file() {
        return std::fs::read_to_string(&cached)
            .with_context(|| format!("reading {}", cached.display()));
    }
    if offline {
        bail!(
            "--offline: K3s {version} is not in the cache: {} are missing (no {}); build once online to fill the cache",
            wanted.join(", "),
            cached.display()
        );
    }
    let dir = cached
        .parent()
        .context("checksum cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!(".partial-{}", std::process::id()));
    fetch::download(&where_, None, &partial, &cached)
        .map_err(|e| explain(e, &where_, mirror.layout_hint(version, &wanted)))?;
    std::fs::read_to_string(&cached).with_context(|| format!("reading {}", cached.display()))
}

fn asset(
    version: &str,
    name: &str,
    sha: &str,
    mirror: &Mirror,
    cache: &Cache,
    offline: bool,
) -> Result<PathBuf> {
    let where_ = mirror.locate(version, name);
    if let Mirror::Dir(_) = mirror {
        let path = PathBuf::from(&where_);
        if !path.is_file() {
            bail!(
                "the K3s mirror directory has no {name}: {where_} is missing; {}",
                mirror.layout_hint(version, &[name])
            );
        }
        let actual = sha256_file(&path)?;
        mismatch(&where_, sha, &actual, name)?;
        return Ok(path);
    }
    let cached = cache.download_path(sha);
    if cached.is_file() {
        say(&format!("k3s: using cached {name} ({})", cached.display()));
        return Ok(cached);
    }
    if offline {
        bail!(
            "--offline: K3s {version} {name} is not in the cache (no {}); build once online to fill the cache",
            cached.display()
        );
    }
    let partial = cache.root.join("downloads").join(format!(".partial-{sha}"));
    fetch::download(&where_, Some(sha), &partial, &cached)
        .map_err(|e| explain(e, &where_, mirror.layout_hint(version, &[name])))?;
    Ok(cached)
}

fn mismatch(url: &str, want: &str, actual: &str, name: &str) -> Result<()> {
    if !want.eq_ignore_ascii_case(actual) {
        bail!(
            "sha256 mismatch for {url}: the release's checksum file says {want} for {name}, the file has {actual}; refusing to install it (corrupt download, tampered mirror or wrong version)"
        );
    }
    Ok(())
}

fn explain(e: anyhow::Error, url: &str, layout: String) -> anyhow::Error {
    match e.downcast_ref::<FetchError>() {
        Some(FetchError::Mismatch {
            expected, actual, ..
        }) => {
            let name = url.rsplit('/').next().unwrap_or(url);
            match mismatch(url, expected, actual, name) {
                Err(m) => m,
                Ok(()) => e,
            }
        }
        Some(FetchError::Status { status, .. }) => {
            anyhow!("K3s release asset {url} could not be downloaded: the server answered {status}; check [k3s] version and mirror: {layout}")
        }
        None => e.context(format!(
            "K3s could not be downloaded. To build without the internet, set [k3s] mirror to a local directory ({layout}), or build once online and then with --offline (from the cache)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        let n = AssetNames::for_arch("arm64").unwrap();
        assert_eq!(n.binary, "k3s-arm64");
        assert_eq!(n.sums, "sha256sum-arm64.txt");
        assert_eq!(n.airgap, "k3s-airgap-images-arm64.tar.zst");
        assert_eq!(AssetNames::for_arch("amd64").unwrap().binary, "k3s");
        assert!(AssetNames::for_arch("riscv64").is_err());
        let m = Mirror::parse("", Path::new("/r"));
        assert_eq!(
            m.locate("v1.31.10+k3s1", "k3s-arm64"),
            "https://github.com/k3s-io/k3s/releases/download/v1.31.10%2Bk3s1/k3s-arm64"
        );
        assert_eq!(
            Mirror::parse("http://127.0.0.1:8/rel/", Path::new("/r")).locate("v1+k3s1", "a"),
            "http://127.0.0.1:8/rel/v1%2Bk3s1/a"
        );
        assert_eq!(
            Mirror::parse("mirror", Path::new("/r")),
            Mirror::Dir(PathBuf::from("/r/mirror"))
        );
    }

    #[test]
    fn sums_lines() {
        let a = "a".repeat(64);
        let text = format!("{a}  k3s-arm64\n{a} *k3s-airgap-images-arm64.tar.zst\ngarbage\n");
        let s = parse_sums(&text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].1, "k3s-airgap-images-arm64.tar.zst");
    }
}
