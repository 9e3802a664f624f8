//! The build recipe `image.toml` (SPEC 3.1): strict parsing with line, column and "did you mean".

use crate::size::ByteSize;
use crate::suggest::did_you_mean;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Boot media the image is for: selects config.txt lines and tuning defaults (the manifest's
/// type, so the recipe and `image.json` speak of media the same way).
pub use firstboot::manifest::Media;

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

/// Memory page size of the kernel the board boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PageSize {
    /// 4 KiB pages: what most arm64 container images are built and tested with.
    #[serde(rename = "4k")]
    K4,
    /// 16 KiB pages: the Pi 5 / CM5 default kernel (kernel_2712.img); faster, but some programs
    /// built for 4 KiB pages (jemalloc, some databases) crash on it.
    #[serde(rename = "16k")]
    K16,
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
    /// Level of the compressed copy (zstd 1-19, xz 0-9); absent = the default of `compress`.
    #[serde(default)]
    pub compress_level: Option<i32>,
    /// Free space guaranteed in the root filesystem after the payload.
    #[serde(default = "default_free_space")]
    pub free_space: ByteSize,
    /// Kernel page size; absent = the board's default kernel.
    #[serde(default)]
    pub kernel_page_size: Option<PageSize>,
}

impl ImageSection {
    /// The level of the compressed copy: the recipe's `compress_level`, else the default of
    /// its compression (zstd [`crate::output::DEFAULT_ZSTD_LEVEL`], xz 6).
    pub fn compress_level(&self) -> i32 {
        self.compress_level.unwrap_or(match self.compress {
            Compression::Xz => crate::output::DEFAULT_XZ_LEVEL,
            _ => crate::output::DEFAULT_ZSTD_LEVEL,
        })
    }
}

/// `compress_level` must fit `compress`: zstd 1-19, xz 0-9, nothing without compression.
fn check_compress_level(image: &ImageSection) -> Result<()> {
    let Some(level) = image.compress_level else {
        return Ok(());
    };
    let (name, range, default) = match image.compress {
        Compression::None => bail!(
            "[image] compress_level = {level} is set but compress is \"none\", so nothing is compressed: \
             set compress = \"zstd\" (levels 1-19) or compress = \"xz\" (levels 0-9), or remove compress_level"
        ),
        Compression::Zstd => ("zstd", 1..=19, crate::output::DEFAULT_ZSTD_LEVEL),
        Compression::Xz => ("xz", 0..=9, crate::output::DEFAULT_XZ_LEVEL),
    };
    if !range.contains(&level) {
        bail!(
            "[image] compress_level = {level} is out of range for {name}: use {} (fastest) to {} (smallest), \
             or remove it for the default {default}",
            range.start(),
            range.end()
        );
    }
    Ok(())
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

/// `[os.wifi]`: an optional Wi-Fi network (NetworkManager keyfile; netplan on Ubuntu).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// Two-letter regulatory country code, e.g. "DE".
    #[serde(default)]
    pub country: String,
    /// Network name; empty = no Wi-Fi profile.
    #[serde(default)]
    pub ssid: String,
    /// WPA passphrase (8-63 characters) or the 64-hex-digit raw key.
    #[serde(default)]
    pub psk: String,
}

impl Wifi {
    /// Whether the recipe asks for a Wi-Fi network.
    pub fn wanted(&self) -> bool {
        !self.ssid.is_empty()
    }

    /// The regulatory country in the form the kernel and NetworkManager use ("DE").
    pub fn country_code(&self) -> String {
        self.country.trim().to_ascii_uppercase()
    }
}

/// `[os]`: first user, keys, timezone, Wi-Fi and extra overlays.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsSection {
    /// First user name.
    #[serde(default = "default_user")]
    pub user: String,
    /// crypt(3) hash; empty = no password (key-only login).
    #[serde(default)]
    pub password_hash: String,
    /// Never accepted: read only to refuse a plain-text password with the command that hashes it.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
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
            password: None,
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
    "compress_level",
    "free_space",
    "kernel_page_size",
    "version",
    "mirror",
    "airgap",
    "user",
    "password_hash",
    "password",
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
        let where_ = path.display().to_string();
        check_compress_level(&raw.image).map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
        check_wifi(&raw.os.wifi).map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
        check_login(&raw.os).map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
        check_timezone_name(&raw.os.timezone).map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
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

    /// Warnings about a recipe that builds but gives a node nobody may be able to use.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.os.ssh_authorized_keys.is_empty() && self.os.password_hash.is_empty() {
            w.push(format!(
                "nobody could log in to this node: [os] has no ssh_authorized_keys and no password_hash for user `{}` \
                 (SSH is on, but the account has no password and no key). Add your public key (the line in \
                 ~/.ssh/id_ed25519.pub) as ssh_authorized_keys = [\"ssh-ed25519 AAAA... you@host\"], or a \
                 password_hash made with `openssl passwd -6`",
                self.os.user
            ));
        }
        w
    }
}

/// The longest user name userconf-pi accepts (it refuses 30 characters or more).
pub const MAX_USER_NAME: usize = 29;

/// userconf-pi's rule for the first user's name (userconf-service `validate_user`):
/// `^[a-z][a-z0-9-]*$`, shorter than 30 characters, not `root`. A name it refuses leaves the
/// account unrenamed and waits for someone at the console, so refuse it here instead.
pub fn valid_user_name(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && u.len() <= MAX_USER_NAME
        && u != "root"
}

/// ISO 3166-1 alpha-2 codes (from tzdata's `iso3166.tab`, the list raspi-config's
/// `do_wifi_country` checks against): the regulatory countries the kernel accepts.
const ISO3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ \
BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE \
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR \
HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS \
LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL \
NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI \
SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY \
UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Whether `code` (any case) is an ISO 3166-1 alpha-2 country code.
pub fn is_iso3166_alpha2(code: &str) -> bool {
    let c = code.trim().to_ascii_uppercase();
    c.len() == 2 && ISO3166_ALPHA2.split_whitespace().any(|k| k == c)
}

fn check_wifi(w: &Wifi) -> Result<()> {
    if !w.wanted() {
        if !w.psk.is_empty() || !w.country.is_empty() {
            bail!("[os] wifi has a psk or country but no ssid; set wifi.ssid to the network name (or remove wifi)");
        }
        return Ok(());
    }
    if w.ssid.len() > 32 || w.ssid.contains(['\n', '\r']) {
        bail!(
            "[os] wifi.ssid {:?} is not a Wi-Fi network name: at most 32 bytes on one line",
            w.ssid
        );
    }
    if !is_iso3166_alpha2(&w.country) {
        let hint = match w.country.trim().to_ascii_uppercase().as_str() {
            "UK" => " (the United Kingdom is \"GB\")",
            "" => " (it is missing; Wi-Fi stays blocked until a country is set)",
            _ => "",
        };
        bail!(
            "[os] wifi.country = {:?} is not an ISO 3166-1 alpha-2 country code{hint}; set the two-letter \
             code of the country the node is used in, such as \"DE\", \"GB\" or \"US\" (the radio may only use \
             that country's channels and power)",
            w.country
        );
    }
    let psk = &w.psk;
    let raw_key = psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit());
    if psk.is_empty() {
        // An open network: no [wifi-security] section.
    } else if !raw_key && !(8..=63).contains(&psk.len()) {
        bail!(
            "[os] wifi.psk has {} characters; a WPA passphrase has 8 to 63 (or is the 64-hex-digit key); \
             set the network's real passphrase",
            psk.chars().count()
        );
    } else if !psk.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        bail!("[os] wifi.psk may hold only printable ASCII characters (WPA passphrases do); check for a pasted newline or non-ASCII character");
    }
    Ok(())
}

fn check_login(os: &OsSection) -> Result<()> {
    if !valid_user_name(&os.user) {
        bail!(
            "[os] user = {:?} is not a name Raspberry Pi OS accepts for its first user: lowercase letters, \
             digits and '-', starting with a letter, at most {MAX_USER_NAME} characters, not root \
             (userconf-pi would refuse it and wait at the console); e.g. user = \"pi\"",
            os.user
        );
    }
    if os.password.is_some() {
        bail!(
            "[os] password: a plain-text password is not accepted (it would sit readable on the card); \
             write its hash instead: password_hash = \"<output of `openssl passwd -6`>\", or leave it out \
             and log in with ssh_authorized_keys"
        );
    }
    let h = &os.password_hash;
    if !h.is_empty() && (!h.starts_with('$') || h.contains([':', '\n', '\r', ' '])) {
        bail!(
            "[os] password_hash is not a crypt(3) hash (one like \"$6$...\" or \"$y$...\"); a plain-text \
             password is not accepted. Make the hash with `openssl passwd -6` (it asks for the password) and \
             paste its output"
        );
    }
    Ok(())
}

/// The shape of an IANA timezone name; whether the base knows it is checked against its zoneinfo.
pub fn check_timezone_name(tz: &str) -> Result<()> {
    if tz.is_empty()
        || tz.starts_with('/')
        || tz.contains("..")
        || !tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
    {
        bail!("[os] timezone {tz:?} is not an IANA timezone name like \"Europe/Berlin\" or \"Etc/UTC\" (list them with `timedatectl list-timezones`)");
    }
    Ok(())
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
    fn compress_level_is_checked_against_compress() {
        let r = Recipe::parse(GOOD, Path::new("image.toml")).unwrap();
        assert_eq!(r.image.compress_level(), crate::output::DEFAULT_ZSTD_LEVEL);
        let set = |c: &str, l: &str| {
            GOOD.replace(
                "compress = \"zstd\"",
                &format!("compress = \"{c}\"\ncompress_level = {l}"),
            )
        };
        let r = Recipe::parse(&set("zstd", "19"), Path::new("image.toml")).unwrap();
        assert_eq!(r.image.compress_level(), 19);
        let r = Recipe::parse(&set("xz", "0"), Path::new("image.toml")).unwrap();
        assert_eq!(r.image.compress_level(), 0);
        let e = err(&set("zstd", "20"));
        assert!(
            e.contains("compress_level = 20 is out of range for zstd: use 1 (fastest) to 19"),
            "{e}"
        );
        let e = err(&set("xz", "10"));
        assert!(
            e.contains("out of range for xz: use 0 (fastest) to 9"),
            "{e}"
        );
        let e = err(&set("none", "3"));
        assert!(
            e.contains("compress is \"none\", so nothing is compressed"),
            "{e}"
        );
        let e = err(&set("zstd", "\"high\""));
        assert!(
            e.contains("image.toml:8:") && e.contains("expected i32"),
            "{e}"
        );
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

    fn err(recipe: &str) -> String {
        Recipe::parse(recipe, Path::new("image.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn wifi_country_must_be_iso3166_alpha2() {
        let e = err(&GOOD.replace("country = \"DE\"", "country = \"XX\""));
        assert!(e.contains("not an ISO 3166-1 alpha-2"), "{e}");
        let e = err(&GOOD.replace("country = \"DE\"", "country = \"uk\""));
        assert!(e.contains("\"GB\""), "{e}");
        let e = err(&GOOD.replace("country = \"DE\", ", ""));
        assert!(e.contains("missing"), "{e}");
        let r = Recipe::parse(
            &GOOD.replace("country = \"DE\"", "country = \"nz\""),
            Path::new("i.toml"),
        )
        .unwrap();
        assert_eq!(r.os.wifi.country_code(), "NZ");
    }

    #[test]
    fn wifi_psk_length_is_checked() {
        let e = err(&GOOD.replace("secret-psk", "short"));
        assert!(e.contains("8 to 63"), "{e}");
        assert!(!e.contains("short"), "the passphrase is echoed: {e}");
        let e = err(&GOOD.replace("secret-psk", &"x".repeat(64)));
        assert!(e.contains("8 to 63"), "{e}");
        // The 64-hex-digit raw key and a 63-character passphrase are fine.
        for psk in ["ab".repeat(32), "y".repeat(63), "12345678".into()] {
            Recipe::parse(&GOOD.replace("secret-psk", &psk), Path::new("i.toml")).unwrap();
        }
    }

    #[test]
    fn user_names_follow_userconf_pi() {
        for bad in ["my_user", "Pi", "1pi", "root", &"a".repeat(30)] {
            let e = err(&GOOD.replace("user = \"pi\"", &format!("user = \"{bad}\"")));
            assert!(e.contains("userconf-pi would refuse it"), "{bad}: {e}");
        }
        let ok = GOOD.replace("user = \"pi\"", &format!("user = \"{}\"", "a".repeat(29)));
        Recipe::parse(&ok, Path::new("i.toml")).unwrap();
        Recipe::parse(
            &GOOD.replace("user = \"pi\"", "user = \"ops-2\""),
            Path::new("i.toml"),
        )
        .unwrap();
    }

    #[test]
    fn plain_text_password_is_refused_with_the_hash_command() {
        let e = err(&GOOD.replace("user = \"pi\"", "user = \"pi\"\npassword = \"hunter22\""));
        assert!(e.contains("openssl passwd -6"), "{e}");
        assert!(!e.contains("hunter22"), "{e}");
        let e = err(&GOOD.replace(
            "user = \"pi\"",
            "user = \"pi\"\npassword_hash = \"hunter22\"",
        ));
        assert!(
            e.contains("openssl passwd -6") && !e.contains("hunter22"),
            "{e}"
        );
        let hashed = GOOD.replace(
            "user = \"pi\"",
            "user = \"pi\"\npassword_hash = \"$6$salt$Qd0uW4bFh1VbQxk7W0Zc1\"",
        );
        Recipe::parse(&hashed, Path::new("i.toml")).unwrap();
    }

    #[test]
    fn timezone_shape_is_checked() {
        let e = err(&GOOD.replace(
            "user = \"pi\"",
            "user = \"pi\"\ntimezone = \"../etc/passwd\"",
        ));
        assert!(e.contains("not an IANA timezone name"), "{e}");
    }

    #[test]
    fn nobody_could_log_in_is_a_warning() {
        let r = Recipe::parse(GOOD, Path::new("i.toml")).unwrap();
        assert!(r.warnings().is_empty());
        let keyless = GOOD.replace("ssh_authorized_keys = [\"ssh-ed25519 AAAA test\"]\n", "");
        let r = Recipe::parse(&keyless, Path::new("i.toml")).unwrap();
        let w = r.warnings().join("\n");
        assert!(w.contains("nobody could log in"), "{w}");
    }

    #[test]
    fn kernel_page_size_parses() {
        let r = Recipe::parse(
            &GOOD.replace(
                "free_space = \"1GiB\"",
                "free_space = \"1GiB\"\nkernel_page_size = \"4k\"",
            ),
            Path::new("i.toml"),
        )
        .unwrap();
        assert_eq!(r.image.kernel_page_size, Some(PageSize::K4));
        let e = err(&GOOD.replace("free_space = \"1GiB\"", "kernel_page_size = \"8k\""));
        assert!(e.contains("kernel_page_size") || e.contains("4k"), "{e}");
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
