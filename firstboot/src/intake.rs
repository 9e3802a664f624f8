//! Config intake: move `cluster.toml` (and its token) to root-only storage, then scrub the boot partition.
//!
//! Lifecycle step 1. The boot partition is FAT, readable by anyone who holds the card, so the
//! token must not stay there. The order of operations makes every step resumable:
//!
//! 1. copy the token file (if `token_file` is used) and then `cluster.toml` to
//!    `<root>/etc/firstboot/` (0600, atomic): once the root copy exists the node never needs the
//!    boot copy again;
//! 2. scrub the boot copy *in place*: overwrite every byte of the old file with zeros, fsync, then
//!    write the scrubbed text into the same clusters and truncate, fsync. Writing a new file and
//!    renaming would leave the token readable in freed FAT clusters.
//!
//! Later boots resume from the root copy. A boot copy that again holds a valid config with a token
//! is a **re-stamp** (`imagebuild stamp` on a used card): it is taken only if this node has not
//! yet joined a cluster; after joining it is moved to `<root>/etc/firstboot/cluster.toml.restamp`
//! (and its token file to `<name>.restamp`, both 0600, for a human to inspect) and the boot copy
//! is scrubbed anyway, because a token must never stay on the boot partition. The caller resets
//! its election/discovery state after [`IntakeOutcome::Restamped`], and passes `joined` from the
//! state file ([`crate::status::Phase::has_joined`]).

use crate::config::{ClusterConfig, ConfigError, TokenSource, FILE_NAME};
use crate::durable::{fsync_dir, write_atomic};
use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where the root-only copies live, relative to the root prefix.
pub const ROOT_CONFIG_DIR: &str = crate::paths::CONFIG_DIR;
/// File name of a refused re-stamp kept for inspection.
pub const RESTAMP_FILE_NAME: &str = "cluster.toml.restamp";
/// First line of a scrubbed boot copy.
pub const SCRUB_MARKER: &str = "# firstboot: the cluster token moved to root-only storage";

/// What intake did this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// First boot: the boot copy was taken and scrubbed.
    Taken,
    /// A later boot: the root copy was used.
    Resumed,
    /// A new config with a token was stamped before this node joined: it replaced the old one.
    Restamped,
    /// A new config was stamped after this node joined: it was set aside, not used.
    RestampRefused {
        /// Where the refused config was moved (root-only).
        kept_at: PathBuf,
    },
}

/// The result of intake: the config to run with and what happened.
#[derive(Debug, Clone)]
pub struct Intake {
    /// The validated config (from the root copy).
    pub config: ClusterConfig,
    /// What intake did.
    pub outcome: IntakeOutcome,
    /// Things a human should know (for status and the journal; never contain the token).
    pub notes: Vec<String>,
}

/// Why intake failed.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The config (boot copy on first boot, else root copy) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither the boot partition nor root storage holds a config.
    #[error("no {FILE_NAME} on the boot partition ({0}) and no root copy yet: stamp the card with `imagebuild stamp`")]
    Missing(PathBuf),
    /// A filesystem operation failed.
    #[error("{doing}")]
    Io {
        /// What was being done (names the path, never the token).
        doing: String,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(doing: impl Into<String>) -> impl FnOnce(io::Error) -> IntakeError {
    let doing = doing.into();
    move |source| IntakeError::Io { doing, source }
}

/// Path of the root-only config copy under `root`.
pub fn root_config_path(root: &Path) -> PathBuf {
    root.join(ROOT_CONFIG_DIR).join(FILE_NAME)
}

/// Runs intake. `boot_dir` is the mounted boot partition, `root` the root prefix (`/` on a node),
/// `joined` whether this node has already started K3s (from the state file).
pub fn intake(boot_dir: &Path, root: &Path, joined: bool) -> Result<Intake, IntakeError> {
    let boot_file = boot_dir.join(FILE_NAME);
    let root_file = root_config_path(root);
    let mut notes = Vec::new();

    let root_config = if root_file.exists() {
        Some(ClusterConfig::load(&root_file)?)
    } else {
        None
    };
    let boot_text = match fs::read(&boot_file) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(format!("reading {}", boot_file.display()))(e)),
    };
    // A boot copy counts as a stamped config only if it validates (so it carries a token).
    let boot_config = match &boot_text {
        Some(bytes) if !bytes.contains(&0) => match ClusterConfig::load(&boot_file) {
            Ok(c) => Some(c),
            Err(e) if root_config.is_none() => return Err(e.into()),
            Err(_) => None,
        },
        _ => None,
    };

    let outcome = match (boot_config, &root_config) {
        (None, None) => return Err(IntakeError::Missing(boot_file)),
        (None, Some(_)) => IntakeOutcome::Resumed,
        (Some(boot), None) => {
            take(&boot, &boot_file, root)?;
            IntakeOutcome::Taken
        }
        (Some(boot), Some(current)) => {
            let same = fs::read(&root_file).ok() == boot_text;
            if same {
                // Taken before, crashed before the scrub finished.
                IntakeOutcome::Resumed
            } else if !joined {
                take(&boot, &boot_file, root)?;
                notes.push(format!(
                    "a new {FILE_NAME} was stamped on the boot partition before this node joined a cluster: using it (cluster \"{}\")",
                    boot.name
                ));
                IntakeOutcome::Restamped
            } else {
                let kept_at = root.join(ROOT_CONFIG_DIR).join(RESTAMP_FILE_NAME);
                let bytes = boot_text.clone().unwrap_or_default();
                write_atomic(&kept_at, &bytes, 0o600).map_err(io_err(format!(
                    "keeping the re-stamped config at {}",
                    kept_at.display()
                )))?;
                notes.push(format!(
                    "a new {FILE_NAME} was stamped on the boot partition after this node joined cluster \"{}\": ignored and kept at {}; to move the node, uninstall K3s and clear /etc/firstboot first",
                    current.name,
                    kept_at.display()
                ));
                IntakeOutcome::RestampRefused { kept_at }
            }
        }
    };

    let config = ClusterConfig::load(&root_file)?;
    scrub_boot_partition(boot_dir, &boot_file, &root_file, &config, &mut notes)?;
    if let Some(restamp) = restamp_secret(&outcome, boot_dir)? {
        // Keep the refused token beside the refused config (root-only) before scrubbing it;
        // an already scrubbed file (a repeated run) is not copied over the kept one.
        let bytes = fs::read(&restamp).map_err(io_err(format!("reading {}", restamp.display())))?;
        if !bytes.starts_with(SCRUB_MARKER.as_bytes()) {
            let name = restamp
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cluster-token".into());
            let kept = root.join(ROOT_CONFIG_DIR).join(format!("{name}.restamp"));
            write_atomic(&kept, &bytes, 0o600).map_err(io_err(format!(
                "keeping the re-stamped token at {}",
                kept.display()
            )))?;
        }
        scrub_token_file(&restamp)?;
    }
    Ok(Intake {
        config,
        outcome,
        notes,
    })
}

/// Copies the stamped config (token file first) to root-only storage.
fn take(boot: &ClusterConfig, boot_file: &Path, root: &Path) -> Result<(), IntakeError> {
    let dir = root.join(ROOT_CONFIG_DIR);
    if let TokenSource::File(token_path) = &boot.token_source {
        let rel = boot_file
            .parent()
            .and_then(|d| token_path.strip_prefix(d).ok())
            .unwrap_or(Path::new("cluster-token"));
        let bytes = fs::read(token_path).map_err(io_err(format!(
            "reading the token file {}",
            token_path.display()
        )))?;
        let dest = dir.join(rel);
        write_atomic(&dest, &bytes, 0o600).map_err(io_err(format!(
            "copying the token file to {}",
            dest.display()
        )))?;
    }
    let bytes = fs::read(boot_file).map_err(io_err(format!("reading {}", boot_file.display())))?;
    let dest = dir.join(FILE_NAME);
    write_atomic(&dest, &bytes, 0o600).map_err(io_err(format!(
        "copying {} to {}",
        FILE_NAME,
        dest.display()
    )))?;
    // The directory holds the secret too: keep it root-only.
    set_mode(&dir, 0o700).map_err(io_err(format!("restricting {}", dir.display())))
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// The token file a refused re-stamp referenced, which must be scrubbed too.
fn restamp_secret(
    outcome: &IntakeOutcome,
    boot_dir: &Path,
) -> Result<Option<PathBuf>, IntakeError> {
    let IntakeOutcome::RestampRefused { kept_at } = outcome else {
        return Ok(None);
    };
    let text = fs::read_to_string(kept_at).unwrap_or_default();
    let doc: toml_edit::DocumentMut = match text.parse() {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    Ok(doc
        .get("cluster")
        .and_then(|c| c.get("token_file"))
        .and_then(|f| f.as_str())
        .map(|f| boot_dir.join(f))
        .filter(|p| p.exists()))
}

/// Scrubs the boot copy (and the config's own token file on the boot partition) when it still
/// holds the token or is left half-written by an interrupted scrub; leaves a clean file alone so
/// that a human's later edits are not overwritten.
fn scrub_boot_partition(
    boot_dir: &Path,
    boot_file: &Path,
    root_file: &Path,
    config: &ClusterConfig,
    notes: &mut Vec<String>,
) -> Result<(), IntakeError> {
    let secret = config.token.expose().as_bytes();
    if let Ok(bytes) = fs::read(boot_file) {
        let holds_secret = contains(&bytes, secret) || has_token_key(&bytes);
        if holds_secret || bytes.contains(&0) {
            // An interrupted scrub left zeros: rebuild from the root copy, which holds the
            // same text, so the result matches an uninterrupted run byte for byte.
            let original = if bytes.contains(&0) {
                fs::read_to_string(root_file).unwrap_or_default()
            } else {
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let scrubbed = scrubbed_text(&original, secret);
            overwrite_in_place(boot_file, scrubbed.as_bytes())
                .map_err(io_err(format!("scrubbing {}", boot_file.display())))?;
        } else if !bytes.starts_with(SCRUB_MARKER.as_bytes()) {
            notes.push(format!(
                "{} was edited after intake; edits there are not used (the config in use is {}/{})",
                boot_file.display(),
                ROOT_CONFIG_DIR,
                FILE_NAME
            ));
        }
    }
    // The token file named by the config, on the boot partition (the root copy resolves it
    // under /etc/firstboot, so derive the boot path from the relative name).
    let root_dir_token = match &config.token_source {
        TokenSource::File(p) => p.file_name().map(|n| boot_dir.join(n)),
        TokenSource::Inline => None,
    };
    if let Some(boot_token) = root_dir_token {
        if boot_token.exists() {
            scrub_token_file(&boot_token)?;
        }
    }
    Ok(())
}

fn scrub_token_file(path: &Path) -> Result<(), IntakeError> {
    let bytes = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    if bytes.starts_with(SCRUB_MARKER.as_bytes()) {
        return Ok(());
    }
    let text = format!("{SCRUB_MARKER} (/{ROOT_CONFIG_DIR}, mode 0600).\n");
    overwrite_in_place(path, text.as_bytes()).map_err(io_err(format!(
        "scrubbing the token file {}",
        path.display()
    )))
}

fn has_token_key(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.parse::<toml_edit::DocumentMut>()
        .map(|d| {
            d.get("cluster")
                .map(|c| c.get("token").is_some() || c.get("token_file").is_some())
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The boot copy without the secret: `token`/`token_file` removed, a header saying where the
/// token went. If the secret still appears anywhere (say, pasted in a comment), only the header
/// is kept.
pub fn scrubbed_text(original: &str, secret: &[u8]) -> String {
    let header = format!(
        "{SCRUB_MARKER} (/{ROOT_CONFIG_DIR}/{FILE_NAME}, mode 0600)\n\
         # and was removed from this file. Edits here are not used any more; to re-stamp this card,\n\
         # write a complete cluster.toml with a token (imagebuild stamp).\n"
    );
    let body = match original.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            if let Some(cluster) = doc.get_mut("cluster").and_then(|c| c.as_table_like_mut()) {
                cluster.remove("token");
                cluster.remove("token_file");
            }
            doc.to_string()
        }
        Err(_) => String::new(),
    };
    if contains(body.as_bytes(), secret) {
        header
    } else {
        format!("{header}\n{body}")
    }
}

/// Replaces the contents of `path` without giving its data blocks back to the filesystem
/// first: zero every old byte in place, fsync, write the new text, truncate, fsync.
fn overwrite_in_place(path: &Path, new: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    let old_len = file.metadata()?.len();
    let zeros = vec![0u8; 64 * 1024];
    let mut left = old_len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(new)?;
    file.set_len(new.len() as u64)?;
    file.sync_all()?;
    drop(file);
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_prints_its_cause_once() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let e = anyhow::Error::new(io_err("writing /etc/firstboot/cluster.toml")(denied))
            .context("reading cluster.toml");
        let text = format!("{e:#}");
        assert_eq!(text.matches("permission denied").count(), 1, "{text}");
        assert!(
            text.starts_with("reading cluster.toml: writing /etc/"),
            "{text}"
        );
    }
    use std::os::unix::fs::MetadataExt;

    const SECRET: &str = "intake-secret-Qm7Zt4Vb9x";
    const CONFIG: &str = "[cluster]\nname = \"lab\"\ntoken = \"intake-secret-Qm7Zt4Vb9x\" # the secret\nservers = 3\n\n[k3s]\ndisable = [\"traefik\"]\n";

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("boot");
        let root = t.path().join("root");
        fs::create_dir_all(&boot).unwrap();
        fs::create_dir_all(&root).unwrap();
        (t, boot, root)
    }

    fn dir_bytes_contain(dir: &Path, needle: &str) -> bool {
        fs::read_dir(dir).unwrap().any(|e| {
            let p = e.unwrap().path();
            contains(&fs::read(&p).unwrap(), needle.as_bytes())
        })
    }

    #[test]
    fn first_boot_takes_and_scrubs() {
        let (_t, boot, root) = dirs();
        fs::write(boot.join(FILE_NAME), CONFIG).unwrap();
        let got = intake(&boot, &root, false).unwrap();
        assert_eq!(got.outcome, IntakeOutcome::Taken);
        assert_eq!(got.config.token.expose(), SECRET);
        assert_eq!(got.config.servers, 3);
        let root_file = root_config_path(&root);
        assert_eq!(fs::read_to_string(&root_file).unwrap(), CONFIG);
        assert_eq!(fs::metadata(&root_file).unwrap().mode() & 0o777, 0o600);
        assert!(!dir_bytes_contain(&boot, SECRET));
        let scrubbed = fs::read_to_string(boot.join(FILE_NAME)).unwrap();
        assert!(scrubbed.starts_with(SCRUB_MARKER), "{scrubbed}");
        assert!(scrubbed.contains("servers = 3"), "{scrubbed}");
        assert!(!scrubbed.contains("token ="), "{scrubbed}");
    }

    #[test]
    fn later_boots_resume_from_the_root_copy_and_keep_the_scrubbed_file() {
        let (_t, boot, root) = dirs();
        fs::write(boot.join(FILE_NAME), CONFIG).unwrap();
        intake(&boot, &root, false).unwrap();
        let scrubbed = fs::read(boot.join(FILE_NAME)).unwrap();
        let again = intake(&boot, &root, true).unwrap();
        assert_eq!(again.outcome, IntakeOutcome::Resumed);
        assert_eq!(again.config.token.expose(), SECRET);
        assert_eq!(fs::read(boot.join(FILE_NAME)).unwrap(), scrubbed);
        assert!(again.notes.is_empty(), "{:?}", again.notes);
    }

    #[test]
    fn crash_between_copy_and_scrub_resumes_and_scrubs() {
        let (_t, boot, root) = dirs();
        fs::write(boot.join(FILE_NAME), CONFIG).unwrap();
        write_atomic(&root_config_path(&root), CONFIG.as_bytes(), 0o600).unwrap();
        let got = intake(&boot, &root, false).unwrap();
        assert_eq!(got.outcome, IntakeOutcome::Resumed);
        assert!(!dir_bytes_contain(&boot, SECRET));
    }

    #[test]
    fn crash_in_the_middle_of_the_scrub_is_finished() {
        let (_t, boot, root) = dirs();
        write_atomic(&root_config_path(&root), CONFIG.as_bytes(), 0o600).unwrap();
        // What the first half of overwrite_in_place leaves behind.
        fs::write(boot.join(FILE_NAME), vec![0u8; CONFIG.len()]).unwrap();
        let got = intake(&boot, &root, false).unwrap();
        assert_eq!(got.outcome, IntakeOutcome::Resumed);
        let text = fs::read_to_string(boot.join(FILE_NAME)).unwrap();
        assert!(text.starts_with(SCRUB_MARKER));
        assert!(!text.contains('\0'));
        assert_eq!(text, scrubbed_text(CONFIG, SECRET.as_bytes()));
    }

    #[test]
    fn token_file_is_copied_and_scrubbed() {
        let (_t, boot, root) = dirs();
        let cfg = "[cluster]\nname = \"lab\"\ntoken_file = \"cluster-token\"\n";
        fs::write(boot.join(FILE_NAME), cfg).unwrap();
        fs::write(boot.join("cluster-token"), format!("{SECRET}\n")).unwrap();
        let got = intake(&boot, &root, false).unwrap();
        assert_eq!(got.config.token.expose(), SECRET);
        let root_token = root.join(ROOT_CONFIG_DIR).join("cluster-token");
        assert_eq!(fs::metadata(&root_token).unwrap().mode() & 0o777, 0o600);
        assert!(!dir_bytes_contain(&boot, SECRET));
        let again = intake(&boot, &root, true).unwrap();
        assert_eq!(again.config.token.expose(), SECRET);
    }

    #[test]
    fn restamp_before_joining_is_taken() {
        let (_t, boot, root) = dirs();
        fs::write(boot.join(FILE_NAME), CONFIG).unwrap();
        intake(&boot, &root, false).unwrap();
        let new = CONFIG
            .replace(SECRET, "second-secret-8Hq2Lp5Wz")
            .replace("lab", "kit-02");
        fs::write(boot.join(FILE_NAME), &new).unwrap();
        let got = intake(&boot, &root, false).unwrap();
        assert_eq!(got.outcome, IntakeOutcome::Restamped);
        assert_eq!(got.config.name, "kit-02");
        assert_eq!(got.config.token.expose(), "second-secret-8Hq2Lp5Wz");
        assert!(!dir_bytes_contain(&boot, "second-secret-8Hq2Lp5Wz"));
    }

    #[test]
    fn restamp_after_joining_is_set_aside_and_still_scrubbed() {
        let (_t, boot, root) = dirs();
        fs::write(boot.join(FILE_NAME), CONFIG).unwrap();
        intake(&boot, &root, false).unwrap();
        let new = CONFIG
            .replace(SECRET, "second-secret-8Hq2Lp5Wz")
            .replace("lab", "kit-02");
        fs::write(boot.join(FILE_NAME), &new).unwrap();
        let got = intake(&boot, &root, true).unwrap();
        let kept = root.join(ROOT_CONFIG_DIR).join(RESTAMP_FILE_NAME);
        assert_eq!(
            got.outcome,
            IntakeOutcome::RestampRefused {
                kept_at: kept.clone()
            }
        );
        assert_eq!(got.config.name, "lab");
        assert_eq!(got.config.token.expose(), SECRET);
        assert_eq!(fs::read_to_string(&kept).unwrap(), new);
        assert!(!dir_bytes_contain(&boot, "second-secret-8Hq2Lp5Wz"));
        assert!(got.notes.iter().all(|n| !n.contains("second-secret")));
        assert_eq!(got.notes.len(), 1);
    }

    #[test]
    fn restamp_with_a_token_file_after_joining_keeps_both_root_only() {
        let (_t, boot, root) = dirs();
        fs::write(boot.join(FILE_NAME), CONFIG).unwrap();
        intake(&boot, &root, false).unwrap();
        let new = "[cluster]\nname = \"kit-02\"\ntoken_file = \"new-token\"\n";
        fs::write(boot.join(FILE_NAME), new).unwrap();
        fs::write(boot.join("new-token"), "second-secret-8Hq2Lp5Wz\n").unwrap();
        let got = intake(&boot, &root, true).unwrap();
        assert!(matches!(got.outcome, IntakeOutcome::RestampRefused { .. }));
        let kept = root.join(ROOT_CONFIG_DIR).join("new-token.restamp");
        assert_eq!(
            fs::read_to_string(&kept).unwrap(),
            "second-secret-8Hq2Lp5Wz\n"
        );
        assert_eq!(fs::metadata(&kept).unwrap().mode() & 0o777, 0o600);
        assert!(!dir_bytes_contain(&boot, "second-secret-8Hq2Lp5Wz"));
        // A repeated run keeps what it kept.
        intake(&boot, &root, true).unwrap();
        assert_eq!(
            fs::read_to_string(&kept).unwrap(),
            "second-secret-8Hq2Lp5Wz\n"
        );
    }

    #[test]
    fn nothing_anywhere_is_a_clear_error() {
        let (_t, boot, root) = dirs();
        let e = intake(&boot, &root, false).unwrap_err();
        assert!(matches!(e, IntakeError::Missing(_)));
    }

    #[test]
    fn an_invalid_first_config_is_reported_without_the_token() {
        let (_t, boot, root) = dirs();
        fs::write(
            boot.join(FILE_NAME),
            CONFIG.replace("servers = 3", "servers = 4"),
        )
        .unwrap();
        let e = intake(&boot, &root, false).unwrap_err();
        assert!(matches!(e, IntakeError::Config(_)));
        assert!(!e.to_string().contains(SECRET));
        assert!(!root_config_path(&root).exists());
    }

    #[test]
    fn scrub_falls_back_to_header_when_secret_is_elsewhere() {
        let text = format!("# pasted {SECRET}\n[cluster]\nname = \"x\"\ntoken = \"{SECRET}\"\n");
        let out = scrubbed_text(&text, SECRET.as_bytes());
        assert!(!out.contains(SECRET));
        assert!(out.starts_with(SCRUB_MARKER));
    }
}
