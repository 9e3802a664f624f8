//! `imagebuild stamp`: write a cluster's settings (cluster.toml, and its token file) into the FAT
//! boot partition of an image or of an already-flashed card, after validating them.

use crate::boot::BootPartition;
use crate::cluster::{validate_cluster_toml, ClusterFile};
use crate::device::{Target, TargetKind};
use crate::disk::DiskLayout;
use anyhow::{bail, Context, Result};
use firstboot::config::Kind;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use toml_edit::{value, Array, DocumentMut, Item, Value};

/// The value of `--set cluster.token=-` that means "read the token from standard input".
pub const FROM_STDIN: &str = "-";

/// What to change in cluster.toml before stamping.
#[derive(Debug, Clone, Default)]
pub struct StampOptions {
    /// `section.key=value` overrides.
    pub sets: Vec<String>,
    /// Read the token from this file (`-` = standard input) instead of cluster.toml.
    pub token_file: Option<PathBuf>,
    /// The token itself (a kit's token when flashing several cards); wins over the others.
    pub token: Option<firstboot::config::Token>,
}

/// What a stamp wrote.
#[derive(Debug, Clone)]
pub struct StampReport {
    /// The boot partition's number.
    pub partition: u32,
    /// Files written on it.
    pub files: Vec<String>,
    /// One-line summary of the settings, the token redacted.
    pub summary: String,
}

/// Apply the overrides to cluster.toml `text`, returning the new text (not yet validated).
pub fn apply_overrides(
    text: &str,
    origin: &Path,
    options: &StampOptions,
    stdin: &mut dyn Read,
) -> Result<String> {
    let mut doc: DocumentMut = match text.parse() {
        Ok(d) => d,
        // firstboot's checker explains syntax errors without ever echoing the token.
        Err(_) => {
            validate_cluster_toml(text, origin)?;
            bail!("{} is not valid TOML", origin.display());
        }
    };
    let mut stdin_used = false;
    let mut read_stdin = |what: &str| -> Result<String> {
        if stdin_used {
            bail!("standard input can give only one value ({what})");
        }
        stdin_used = true;
        let mut s = String::new();
        stdin
            .read_to_string(&mut s)
            .with_context(|| format!("reading {what} from standard input"))?;
        Ok(s.trim_end_matches(['\n', '\r']).to_string())
    };
    for set in &options.sets {
        let (path, raw) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: write it as section.key=value"))?;
        let parts: Vec<&str> = path.trim().split('.').collect();
        let is_token = parts == ["cluster", "token"];
        // Never echo a value in errors: it may be the token.
        let (section, key) = match parts.as_slice() {
            [s, k] => (*s, *k),
            ["k3s", "extra", _] => ("k3s", "extra"),
            _ => bail!("--set {path}=...: the key must be section.key, e.g. node.role"),
        };
        if is_token && raw != FROM_STDIN {
            crate::progress::say("warning: a token given with --set is visible to other users of this machine (ps, /proc); use --token-file PATH or --set cluster.token=- (standard input) instead");
        }
        let raw = if is_token && raw == FROM_STDIN {
            read_stdin("the token")?
        } else {
            raw.to_string()
        };
        if is_token {
            remove(&mut doc, "cluster", "token_file");
        } else if parts == ["cluster", "token_file"] {
            remove(&mut doc, "cluster", "token");
        }
        if let ["k3s", "extra", name] = parts.as_slice() {
            let v = raw
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(raw.as_str()));
            table(&mut doc, "k3s")["extra"]
                .or_insert(toml_edit::table())
                .as_table_like_mut()
                .context("[k3s] extra is not a table")?
                .insert(name, Item::Value(v));
            continue;
        }
        let item = typed(&raw, firstboot::config::key_kind(section, key))
            .with_context(|| format!("--set {path}=..."))?;
        table(&mut doc, section)[key] = item;
    }
    if let Some(p) = &options.token_file {
        let token = if p.as_os_str() == FROM_STDIN {
            read_stdin("the token")?
        } else {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the token from {}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        };
        remove(&mut doc, "cluster", "token_file");
        table(&mut doc, "cluster")["token"] = value(token);
    }
    if let Some(token) = &options.token {
        remove(&mut doc, "cluster", "token_file");
        table(&mut doc, "cluster")["token"] = value(token.expose());
    }
    Ok(doc.to_string())
}

fn table<'a>(doc: &'a mut DocumentMut, section: &str) -> &'a mut Item {
    let item = doc
        .as_table_mut()
        .entry(section)
        .or_insert(toml_edit::table());
    if item.is_none() {
        *item = toml_edit::table();
    }
    item
}

fn remove(doc: &mut DocumentMut, section: &str, key: &str) {
    if let Some(t) = doc.get_mut(section).and_then(|i| i.as_table_like_mut()) {
        t.remove(key);
    }
}

/// A `--set` value as the schema types the key; unknown keys stay strings for the checker to name.
fn typed(raw: &str, kind: Option<Kind>) -> Result<Item> {
    Ok(match kind {
        Some(Kind::Int) => value(
            raw.trim()
                .parse::<i64>()
                .context("the value must be a whole number")?,
        ),
        Some(Kind::Bool) => value(
            raw.trim()
                .parse::<bool>()
                .context("the value must be true or false")?,
        ),
        Some(Kind::StrList) => {
            let t = raw.trim();
            if t.starts_with('[') {
                match t.parse::<Value>() {
                    Ok(v @ Value::Array(_)) => Item::Value(v),
                    _ => bail!("the value must be a list such as [\"a\", \"b\"] or a,b"),
                }
            } else {
                let mut a = Array::new();
                for part in t.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    a.push(part);
                }
                value(a)
            }
        }
        Some(Kind::Table) => match raw.trim().parse::<Value>() {
            Ok(v @ Value::InlineTable(_)) => Item::Value(v),
            _ => bail!("the value must be an inline table such as {{ \"key\" = \"value\" }}"),
        },
        Some(Kind::Str) | None => value(raw),
    })
}

/// Settings ready to stamp: validated cluster.toml (and token file), a redacted summary and
/// the schema's warnings (the example token, no HA).
#[derive(Debug, Clone)]
pub struct PreparedStamp {
    /// The validated file and its token file.
    pub cluster: ClusterFile,
    /// The cluster name (a kit's name when flashing several kits).
    pub name: String,
    /// One line, token redacted.
    pub summary: String,
    /// Valid but probably wrong; never mentions the token's value.
    pub warnings: Vec<String>,
    /// The token, to tell kits apart (prints as `<redacted>`).
    pub token: firstboot::config::Token,
}

/// Read `cluster_toml`, apply the overrides and validate the result with firstboot's schema.
pub fn prepare(
    cluster_toml: &Path,
    options: &StampOptions,
    stdin: &mut dyn Read,
) -> Result<PreparedStamp> {
    let text = std::fs::read_to_string(cluster_toml)
        .with_context(|| format!("reading {}", cluster_toml.display()))?;
    let text = apply_overrides(&text, cluster_toml, options, stdin)?;
    if let Err(e) = firstboot::config::ClusterConfig::from_toml_str(&text, cluster_toml) {
        if let Some(msg) = set_errors(&e, &options.sets) {
            bail!("{msg}");
        }
    }
    let cluster = ClusterFile::checked(text, cluster_toml.to_path_buf())?;
    let config = firstboot::config::ClusterConfig::from_toml_str(&cluster.text, cluster_toml)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(PreparedStamp {
        name: config.name.clone(),
        summary: config.summary(),
        warnings: config.warnings(),
        token: config.token.clone(),
        cluster,
    })
}

/// The problems a `--set` caused, said about the `--set` argument instead of lines of the edited
/// file (which the user never wrote); None when no problem is in a key given with --set. The
/// value is not echoed (it may be the token); the schema's fix is turned into a --set.
fn set_errors(e: &firstboot::config::ConfigError, sets: &[String]) -> Option<String> {
    let keys: Vec<&str> = sets
        .iter()
        .filter_map(|s| s.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut out = Vec::new();
    for d in &e.diagnostics {
        let Some(key) = keys
            .iter()
            .find(|k| **k == d.key || d.key.starts_with(&format!("{k}.")))
        else {
            continue;
        };
        let field = key.rsplit('.').next().unwrap_or(key);
        let fix = match d.fix.strip_prefix(&format!("write {field} = ")) {
            Some(v) => format!("--set {key}={}", v.trim_matches('"')),
            None => d.fix.clone(),
        };
        out.push(format!("--set {key}=...: {}; {fix}", d.problem));
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

/// The boot partition of an open image or card: (partition, its byte range).
fn boot_partition(file: &mut File, shown: &Path) -> Result<crate::disk::Partition> {
    let layout = DiskLayout::read(file)
        .with_context(|| format!("reading the partition table of {}", shown.display()))?;
    let boot = layout
        .partitions
        .iter()
        .find(|p| p.is_fat_type())
        .cloned()
        .with_context(|| format!("{} has no FAT boot partition", shown.display()))?;
    if boot.end() > layout.image_size {
        bail!(
            "partition {} of {} ends past the end of the disk (a truncated image?)",
            boot.number,
            shown.display()
        );
    }
    Ok(boot)
}

/// The token_file named by a cluster.toml text, if any.
fn token_file_name(text: &str) -> Option<String> {
    let t: toml::Table = text.parse().ok()?;
    t.get("cluster")?
        .get("token_file")?
        .as_str()
        .map(String::from)
}

/// Write the prepared settings into the boot partition of an open image or card. A token file
/// that an earlier stamp left there and the new settings no longer name is removed, so no old
/// secret stays on the card. Returns the partition and the files written.
pub fn write_boot(
    file: &mut File,
    shown: &Path,
    cluster: &ClusterFile,
) -> Result<(crate::disk::Partition, Vec<String>)> {
    let epoch = crate::epoch::build_epoch()?;
    let boot = boot_partition(file, shown)?;
    let fat = BootPartition::open(file, &boot, epoch)?;
    let old = fat
        .read(firstboot::config::FILE_NAME)?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| token_file_name(&t));
    fat.write_cluster(cluster)?;
    if let Some(old) = old {
        let kept = cluster.token_file.as_ref().is_some_and(|(n, _)| *n == old);
        if !kept && old != firstboot::config::FILE_NAME {
            fat.remove(&old)?;
        }
    }
    fat.close()?;
    file.sync_all()
        .with_context(|| format!("flushing {}", shown.display()))?;
    let mut files = vec![firstboot::config::FILE_NAME.to_string()];
    files.extend(cluster.token_file.iter().map(|(n, _)| n.clone()));
    Ok((boot, files))
}

/// Read the stamped files back from the boot partition and compare them with what was written.
pub fn check_boot(file: &mut File, shown: &Path, cluster: &ClusterFile) -> Result<()> {
    let boot = boot_partition(file, shown)?;
    let fat = BootPartition::open(file, &boot, 315_532_800)?;
    let mut want = vec![(
        firstboot::config::FILE_NAME.to_string(),
        cluster.text.as_bytes().to_vec(),
    )];
    want.extend(cluster.token_file.iter().cloned());
    for (name, bytes) in want {
        match fat.read(&name)? {
            Some(got) if got == bytes => {}
            Some(_) => bail!(
                "{name} read back from the boot partition of {} differs from what was stamped (bad card or reader?)",
                shown.display()
            ),
            None => bail!(
                "{name} is missing from the boot partition of {} after stamping",
                shown.display()
            ),
        }
    }
    Ok(())
}

/// Validate `cluster_toml` with the overrides and write it into the boot partition of `target`
/// (an image file or a whole block device). Nothing is written unless the settings are valid.
/// On an image file, the `.bmap` and `.sha256` beside it are rewritten to match.
pub fn stamp(target: &Path, cluster_toml: &Path, options: &StampOptions) -> Result<StampReport> {
    let prepared = prepare(cluster_toml, options, &mut std::io::stdin().lock())?;
    for w in &prepared.warnings {
        crate::progress::say(&format!("warning: {w}"));
    }
    let tgt = Target::inspect(target)?;
    if tgt.kind == (TargetKind::File { existed: false }) {
        bail!(
            "{} does not exist; give an image file or a card's whole-disk device",
            target.display()
        );
    }
    if !tgt.is_disk() && crate::source::detect_packing(target)? != crate::source::Packing::Raw {
        bail!(
            "{} is compressed; stamp the raw .img, or stamp while flashing: imagebuild flash {} DEVICE --cluster {}",
            target.display(),
            target.display(),
            cluster_toml.display()
        );
    }
    let mut file = tgt.open_rw(false)?;
    let (boot, files) = write_boot(&mut file, target, &prepared.cluster)?;
    drop(file);
    if !tgt.is_disk() {
        refresh_companions(target, boot.start, boot.end())?;
    }
    Ok(StampReport {
        partition: boot.number,
        files,
        summary: prepared.summary,
    })
}

/// After a stamp changed bytes `[start, end)` of an image file: rewrite IMAGE.bmap and
/// IMAGE.sha256 so they describe the stamped image, and warn about compressed copies beside it,
/// which still hold the image as it was before.
fn refresh_companions(image: &Path, start: u64, end: u64) -> Result<()> {
    use crate::io::write_synced;
    use crate::output::with_suffix;
    let bmap = with_suffix(image, ".bmap");
    let sha = with_suffix(image, ".sha256");
    // The whole image's new hash: written to IMAGE.sha256 and recorded in the map.
    let hash = if bmap.is_file() || sha.is_file() {
        Some(crate::io::sha256_file(image)?)
    } else {
        None
    };
    if bmap.is_file() {
        match crate::bmap::Bmap::load(&bmap).and_then(|m| m.refreshed(image, start, end)) {
            Ok(mut map) => {
                map.image_sha256 = hash.clone();
                write_synced(&bmap, map.to_xml().as_bytes())?
            }
            Err(e) => {
                std::fs::remove_file(&bmap)
                    .with_context(|| format!("removing the stale {}", bmap.display()))?;
                crate::progress::say(&format!(
                    "warning: removed {} (it no longer matches the stamped image: {e:#}); `imagebuild bmap {}` makes a new one",
                    bmap.display(),
                    image.display()
                ));
            }
        }
    }
    if let (true, Some(hash)) = (sha.is_file(), &hash) {
        write_synced(&sha, crate::output::sha256_line(hash, image).as_bytes())?;
    }
    for ext in [".zst", ".xz", ".gz"] {
        let packed = with_suffix(image, ext);
        if packed.exists() {
            crate::progress::say(&format!(
                "warning: {} was made before this stamp and does not carry it; flash {} (or stamp while flashing: imagebuild flash {} DEVICE --cluster FILE)",
                packed.display(),
                image.display(),
                packed.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "# my cluster\n[cluster]\nname = \"lab\"\ntoken = \"0123456789abcdef-xyz\"\nservers = 3\n";

    fn over(sets: &[&str], stdin: &str) -> Result<String> {
        let o = StampOptions {
            sets: sets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        apply_overrides(
            BASE,
            Path::new("/x/cluster.toml"),
            &o,
            &mut stdin.as_bytes(),
        )
    }

    #[test]
    fn set_errors_point_at_the_set_argument() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.toml");
        std::fs::write(&p, BASE).unwrap();
        let opts = StampOptions {
            sets: vec!["cluster.servers=2".into(), "cluster.name=Kit_07".into()],
            ..Default::default()
        };
        let e = format!(
            "{:#}",
            prepare(&p, &opts, &mut std::io::empty()).unwrap_err()
        );
        assert!(e.contains("--set cluster.servers=...:"), "{e}");
        assert!(e.contains("--set cluster.name=kit-07"), "{e}");
        assert!(
            !e.contains("cluster.toml:"),
            "points at lines of the file: {e}"
        );
    }

    #[test]
    fn sets_are_typed_by_the_schema() {
        let t = over(
            &[
                "node.role=server",
                "cluster.servers=5",
                "cluster.nodes=5",
                "k3s.disable=traefik,servicelb",
                "k3s.extra.write-kubeconfig-mode=0644",
            ],
            "",
        )
        .unwrap();
        assert!(t.contains("# my cluster"), "comments kept: {t}");
        assert!(t.contains("servers = 5"), "{t}");
        assert!(t.contains("role = \"server\""), "{t}");
        validate_cluster_toml(&t, Path::new("/x/cluster.toml")).unwrap();
        let c: toml::Table = t.parse().unwrap();
        assert_eq!(c["k3s"]["disable"].as_array().unwrap().len(), 2);
        // Not a TOML integer (leading zero), so it stays the string K3s expects.
        assert_eq!(
            c["k3s"]["extra"]["write-kubeconfig-mode"].as_str(),
            Some("0644")
        );
    }

    #[test]
    fn bad_values_fail_without_echoing_them() {
        let e = format!("{:#}", over(&["cluster.servers=three"], "").unwrap_err());
        assert!(e.contains("whole number"), "{e}");
        let t = over(&["cluster.token=tooshort-secret"], "").unwrap();
        let e = format!(
            "{:#}",
            validate_cluster_toml(&t, Path::new("/x/cluster.toml")).unwrap_err()
        );
        assert!(!e.contains("tooshort-secret"), "token leaked: {e}");
    }

    #[test]
    fn token_from_stdin() {
        let t = over(&["cluster.token=-"], "fedcba9876543210-from-stdin\n").unwrap();
        let c: toml::Table = t.parse().unwrap();
        assert_eq!(
            c["cluster"]["token"].as_str(),
            Some("fedcba9876543210-from-stdin")
        );
    }
}
