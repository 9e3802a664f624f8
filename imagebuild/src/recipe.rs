//! The build recipe `image.toml` (SPEC 3.1): strict parsing with line, column and "did you mean".

use crate::size::ByteSize;
use crate::suggest::did_you_mean;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Boot media the image is for: selects config.txt lines and tuning defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    /// SD card or eMMC.
    #[default]
    Sd,
    /// NVMe or USB SSD.
    Ssd,
}

/// Compression of an extra copy of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Only the raw image.
    #[default]
    None,
    /// Also `OUT.zst`.
    Zstd,
    /// Also `OUT.xz`.
    Xz,
}

/// `[image]`: what to build from and where to write it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Board profile name.
    pub board: String,
    /// Boot media.
    #[serde(default)]
    pub media: Media,
    /// Catalog name, path or URL of the base image.
    pub base: String,
    /// sha256 of the base; required for a URL outside the catalog.
    #[serde(default)]
    pub base_sha256: String,
    /// Output image path (relative to the recipe's directory).
    pub output: String,
    /// Extra compressed copy.
    #[serde(default)]
    pub compress: Compression,
    /// Free space guaranteed in the root filesystem after the payload.
    #[serde(default = "default_free_space")]
    pub free_space: ByteSize,
}

fn default_free_space() -> ByteSize {
    ByteSize(1 << 30)
}

/// `[k3s]`: read here so typos fail early; the payload step uses it.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct K3sSection {
    /// K3s release, e.g. "v1.31.10+k3s1".
    #[serde(default)]
    pub version: String,
    /// Release mirror URL or local directory; empty = GitHub releases.
    #[serde(default)]
    pub mirror: String,
    /// Include the air-gap images archive.
    #[serde(default = "yes")]
    pub airgap: bool,
}

fn yes() -> bool {
    true
}

/// `[os.wifi]`: an optional NetworkManager Wi-Fi profile.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// Two-letter regulatory country code, e.g. "DE".
    #[serde(default)]
    pub country: String,
    /// Network name; empty = no Wi-Fi profile.
    #[serde(default)]
    pub ssid: String,
    /// WPA passphrase.
    #[serde(default)]
    pub psk: String,
}

/// `[os]`: first user, keys, timezone, Wi-Fi and extra overlays.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsSection {
    /// First user name.
    #[serde(default = "default_user")]
    pub user: String,
    /// crypt(3) hash; empty = locked password (key-only login).
    #[serde(default)]
    pub password_hash: String,
    /// Lines for the user's `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// IANA timezone name.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Optional Wi-Fi profile.
    #[serde(default)]
    pub wifi: Wifi,
    /// Overlay directories applied after the built-in ones, in order.
    #[serde(default)]
    pub overlays: Vec<String>,
}

impl Default for OsSection {
    fn default() -> Self {
        OsSection {
            user: default_user(),
            password_hash: String::new(),
            ssh_authorized_keys: Vec::new(),
            timezone: default_timezone(),
            wifi: Wifi::default(),
            overlays: Vec::new(),
        }
    }
}

fn default_user() -> String {
    "pi".into()
}

fn default_timezone() -> String {
    "Etc/UTC".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    #[serde(default)]
    overlays: Vec<String>,
    image: ImageSection,
    #[serde(default)]
    k3s: K3sSection,
    #[serde(default)]
    os: OsSection,
    #[serde(default)]
    cluster: Option<toml::Table>,
}

/// Where the recipe's cluster.toml comes from.
#[derive(Debug, Clone)]
pub enum ClusterSource {
    /// `[cluster] file = "path"`: a cluster.toml file (relative to the recipe).
    File(PathBuf),
    /// `[cluster.cluster]`, `[cluster.node]`, ...: cluster.toml written inline.
    Inline(toml::Table),
}

/// A parsed, checked recipe with paths resolved against its directory.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe file.
    pub path: PathBuf,
    /// `[image]`.
    pub image: ImageSection,
    /// `[k3s]`.
    pub k3s: K3sSection,
    /// `[os]`.
    pub os: OsSection,
    /// Extra overlays in order (top-level `overlays` then `os.overlays`).
    pub overlays: Vec<String>,
    /// The optional cluster.toml to stamp.
    pub cluster: Option<ClusterSource>,
}

const RECIPE_KEYS: &[&str] = &[
    "image",
    "k3s",
    "os",
    "cluster",
    "overlays",
    "board",
    "media",
    "base",
    "base_sha256",
    "output",
    "compress",
    "free_space",
    "version",
    "mirror",
    "airgap",
    "user",
    "password_hash",
    "ssh_authorized_keys",
    "timezone",
    "wifi",
    "country",
    "ssid",
    "psk",
];

impl Recipe {
    /// Read and check a recipe file.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        Recipe::parse(&text, path)
    }

    /// Parse recipe text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe> {
        let raw: RawRecipe = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!(toml_error(path, text, &e, RECIPE_KEYS)))?;
        let cluster = match raw.cluster {
            None => None,
            Some(t) if t.contains_key("file") => {
                if t.len() != 1 {
                    bail!(
                        "{}: [cluster] has `file` and other keys; write either `file = \"cluster.toml\"` \
                         or the cluster.toml tables inline as [cluster.cluster], [cluster.node], ... but not both",
                        path.display()
                    );
                }
                match t.get("file").and_then(|v| v.as_str()) {
                    Some(f) => Some(ClusterSource::File(PathBuf::from(f))),
                    None => bail!(
                        "{}: [cluster] file must be a string path, like file = \"cluster.toml\"",
                        path.display()
                    ),
                }
            }
            Some(t) => Some(ClusterSource::Inline(t)),
        };
        if raw.os.wifi.ssid.is_empty() && !raw.os.wifi.psk.is_empty() {
            bail!(
                "{}: [os] wifi has a psk but no ssid; set wifi.ssid to the network name",
                path.display()
            );
        }
        if !raw.os.wifi.ssid.is_empty() && raw.os.wifi.country.len() != 2 {
            bail!("{}: [os] wifi.country must be a two-letter code such as \"DE\" or \"US\" (Wi-Fi stays off without it)", path.display());
        }
        if !valid_user_name(&raw.os.user) {
            bail!(
                "{}: [os] user = {:?} is not a valid Linux user name (lowercase letters, digits, '-', '_'; starts with a letter)",
                path.display(),
                raw.os.user
            );
        }
        let mut overlays = raw.overlays;
        overlays.extend(raw.os.overlays.iter().cloned());
        Ok(Recipe {
            path: path.into(),
            image: raw.image,
            k3s: raw.k3s,
            os: raw.os,
            overlays,
            cluster,
        })
    }

    /// The recipe's directory: relative paths in it are resolved here.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.into(),
            _ => PathBuf::from("."),
        }
    }

    /// A path from the recipe, resolved against the recipe's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.into()
        } else {
            self.dir().join(p)
        }
    }
}

fn valid_user_name(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && u.len() <= 32
}

/// One line and column (1-based) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A one-paragraph message for a TOML error: file, line, column, key, and a suggestion.
pub fn toml_error(path: &Path, text: &str, err: &toml::de::Error, keys: &[&str]) -> String {
    let place = match err.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            format!("{}:{l}:{c}", path.display())
        }
        None => path.display().to_string(),
    };
    let msg = err.message().trim();
    let mut out = format!("{place}: {msg}");
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or("");
        // The expected keys come between backticks after "expected".
        let expected: Vec<&str> = msg
            .split_once("expected")
            .map(|(_, e)| e.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let pool: Vec<&str> = if expected.is_empty() {
            keys.to_vec()
        } else {
            expected
        };
        let hint = did_you_mean(key, pool.iter().copied());
        out = format!(
            "{place}: unknown key `{key}`.{hint} Allowed here: {}.",
            pool.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[image]
board = "rpi5"
media = "ssd"
base = "raspios-lite-arm64"
output = "out/homelab.img"
compress = "zstd"
free_space = "1GiB"

[k3s]
version = "v1.31.10+k3s1"

[os]
user = "pi"
ssh_authorized_keys = ["ssh-ed25519 AAAA test"]
wifi = { country = "DE", ssid = "home", psk = "secret-psk" }
overlays = ["overlays/sd-tuning"]

[cluster.cluster]
name = "homelab"
token = "0123456789abcdef0123"
"#;

    #[test]
    fn parses_the_spec_example() {
        let r = Recipe::parse(GOOD, Path::new("/r/image.toml")).unwrap();
        assert_eq!(r.image.board, "rpi5");
        assert_eq!(r.image.media, Media::Ssd);
        assert_eq!(r.image.compress, Compression::Zstd);
        assert_eq!(r.overlays, vec!["overlays/sd-tuning".to_string()]);
        assert!(matches!(r.cluster, Some(ClusterSource::Inline(_))));
        assert_eq!(r.resolve("out/x.img"), PathBuf::from("/r/out/x.img"));
    }

    #[test]
    fn typo_names_line_column_and_suggestion() {
        let bad = GOOD.replace("free_space", "free_spcae");
        let err = Recipe::parse(&bad, Path::new("image.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("image.toml:8:1"), "{err}");
        assert!(err.contains("unknown key `free_spcae`"), "{err}");
        assert!(err.contains("Did you mean `free_space`?"), "{err}");
    }

    #[test]
    fn cluster_file_and_inline_do_not_mix() {
        let bad = GOOD.replace(
            "[cluster.cluster]",
            "[cluster]\nfile = \"c.toml\"\n[cluster.cluster]",
        );
        assert!(Recipe::parse(&bad, Path::new("image.toml")).is_err());
    }
}
