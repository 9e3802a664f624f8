//! `imagebuild stamp`: write a cluster's settings (cluster.toml, and its token file) into the FAT
//! boot partition of an image or of an already-flashed card, after validating them.

use crate::boot::BootPartition;
use crate::cluster::{validate_cluster_toml, ClusterFile};
use crate::device::{Target, TargetKind};
use crate::disk::DiskLayout;
use anyhow::{bail, Context, Result};
use firstboot::config::Kind;
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

/// Validate `cluster_toml` with the overrides and write it into the boot partition of `target`
/// (an image file or a whole block device). Nothing is written unless the settings are valid.
pub fn stamp(target: &Path, cluster_toml: &Path, options: &StampOptions) -> Result<StampReport> {
    let text = std::fs::read_to_string(cluster_toml)
        .with_context(|| format!("reading {}", cluster_toml.display()))?;
    let text = apply_overrides(&text, cluster_toml, options, &mut std::io::stdin().lock())?;
    let cluster = ClusterFile::checked(text, cluster_toml.to_path_buf())?;
    let summary = firstboot::config::ClusterConfig::from_toml_str(&cluster.text, cluster_toml)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .summary();
    let tgt = Target::inspect(target)?;
    if tgt.kind == (TargetKind::File { existed: false }) {
        bail!(
            "{} does not exist; give an image file or a card's whole-disk device",
            target.display()
        );
    }
    if !tgt.is_disk() && crate::source::detect_packing(target)? != crate::source::Packing::Raw {
        bail!(
            "{} is compressed; stamp the raw .img (before compressing it, or after `imagebuild flash` to a file)",
            target.display()
        );
    }
    let epoch = crate::epoch::build_epoch()?;
    let mut file = tgt.open_rw(false)?;
    let layout = DiskLayout::read(&mut file)
        .with_context(|| format!("reading the partition table of {}", target.display()))?;
    let boot = layout
        .partitions
        .iter()
        .find(|p| p.is_fat_type())
        .cloned()
        .with_context(|| format!("{} has no FAT boot partition", target.display()))?;
    if boot.end() > layout.image_size {
        bail!(
            "partition {} of {} ends past the end of the disk (a truncated image?)",
            boot.number,
            target.display()
        );
    }
    let fat = BootPartition::open(&mut file, &boot, epoch)?;
    fat.write_cluster(&cluster)?;
    fat.close()?;
    file.sync_all()
        .with_context(|| format!("flushing {}", target.display()))?;
    let mut files = vec![firstboot::config::FILE_NAME.to_string()];
    files.extend(cluster.token_file.iter().map(|(n, _)| n.clone()));
    Ok(StampReport {
        partition: boot.number,
        files,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "# my cluster\n[cluster]\nname = \"lab\"\ntoken = \"0123456789abcdef-xyz\"\nservers = 3\n";

    fn over(sets: &[&str], stdin: &str) -> Result<String> {
        let o = StampOptions {
            sets: sets.iter().map(|s| s.to_string()).collect(),
            token_file: None,
        };
        apply_overrides(
            BASE,
            Path::new("/x/cluster.toml"),
            &o,
            &mut stdin.as_bytes(),
        )
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
