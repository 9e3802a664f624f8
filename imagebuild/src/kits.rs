//! Which settings each card of a batch gets: `{n}` in `--set` values, a token file per kit, or a
//! kits file (name, nodes, cards, token per kit). Every kit gets its own token, and a card of one
//! kit can never carry another kit's token.

use crate::stamp::{prepare, PreparedStamp, StampOptions, FROM_STDIN};
use anyhow::{bail, Context, Result};
use firstboot::config::Token;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What the command line asked to stamp on the cards.
#[derive(Debug, Clone, Default)]
pub struct KitRequest {
    /// The shared settings (cluster.toml).
    pub cluster: PathBuf,
    /// `section.key=value` overrides; `{n}` becomes the card's number (1, 2, ...).
    pub sets: Vec<String>,
    /// One token file for all cards, or one per card, in order.
    pub token_files: Vec<PathBuf>,
    /// A kits file: `[[kit]]` tables with name, and optionally nodes, cards, token_file.
    pub kits: Option<PathBuf>,
    /// Where new kits' tokens are kept as NAME.token (default: beside the kits file, or `.`).
    pub tokens_dir: Option<PathBuf>,
}

/// One kit of a kits file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Kit {
    name: String,
    nodes: Option<i64>,
    cards: Option<usize>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KitsFile {
    kit: Vec<Kit>,
}

/// A kit's token: NAME.token in `dir` when it exists (so a later batch of the same kit gets the
/// same token), else a new random one saved there (mode 0600) and announced by path.
pub fn kit_token(dir: &Path, name: &str) -> Result<Token> {
    let path = dir.join(format!("{name}.token"));
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            return Token::new(t.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|p| anyhow::anyhow!("{}: {p}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = crate::token::new_token()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{token}").with_context(|| format!("writing {}", path.display()))?;
        f.sync_all()?;
    }
    crate::progress::say(&format!(
        "kit {name}: new random token saved in {} (keep it to add nodes to this kit later)",
        path.display()
    ));
    Token::new(token).map_err(|p| anyhow::anyhow!("internal error: {p}"))
}

fn card_sets(sets: &[String], n: usize) -> Vec<String> {
    sets.iter()
        .map(|s| s.replace("{n}", &n.to_string()))
        .collect()
}

fn gives_token(sets: &[String]) -> bool {
    sets.iter().any(|s| {
        let key = s.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
        key == "cluster.token" || key == "cluster.token_file"
    })
}

/// The settings for each of `cards` cards, checked: every card valid, one token per kit, no
/// token shared by two kits.
pub fn plan(req: &KitRequest, cards: usize, stdin: &mut dyn Read) -> Result<Vec<PreparedStamp>> {
    let uses_stdin = req.token_files.iter().any(|p| p.as_os_str() == FROM_STDIN)
        || req.sets.iter().any(|s| s.trim_end().ends_with("=-"));
    if cards > 1 && uses_stdin {
        bail!("standard input gives one token, but {cards} cards were named; give each kit a --token-file, or use --kits FILE (each kit then gets a fresh token)");
    }
    let mut out = Vec::with_capacity(cards);
    match &req.kits {
        Some(kits_path) => {
            if !req.token_files.is_empty() {
                bail!(
                    "--token-file and --kits cannot be combined: give each kit's token_file in {}",
                    kits_path.display()
                );
            }
            if gives_token(&req.sets) {
                bail!("--set cluster.token with --kits would give every kit the same token; give each kit a token_file in {} (or none: each kit then gets a fresh one)", kits_path.display());
            }
            let text = std::fs::read_to_string(kits_path)
                .with_context(|| format!("reading {}", kits_path.display()))?;
            let file: KitsFile = toml::from_str(&text).with_context(|| {
                format!(
                    "reading {}: write one [[kit]] table per kit with name = \"...\" and optionally nodes, cards (default 1) and token_file",
                    kits_path.display()
                )
            })?;
            let base = kits_path.parent().unwrap_or(Path::new("."));
            let dir = req.tokens_dir.clone().unwrap_or_else(|| base.to_path_buf());
            let wanted: usize = file.kit.iter().map(|k| k.cards.unwrap_or(1)).sum();
            if wanted != cards {
                bail!(
                    "{} asks for {wanted} cards (one per kit unless a kit says cards = N) but {cards} devices were named",
                    kits_path.display()
                );
            }
            let mut n = 0;
            for kit in &file.kit {
                let token = match &kit.token_file {
                    Some(p) => {
                        let p = base.join(p);
                        let t = std::fs::read_to_string(&p).with_context(|| {
                            format!("reading kit {}'s token from {}", kit.name, p.display())
                        })?;
                        Token::new(t.trim_end_matches(['\n', '\r']).to_string())
                            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                    }
                    None => kit_token(&dir, &kit.name)?,
                };
                for _ in 0..kit.cards.unwrap_or(1) {
                    n += 1;
                    let mut sets = card_sets(&req.sets, n);
                    sets.push(format!("cluster.name={}", kit.name));
                    if let Some(nodes) = kit.nodes {
                        sets.push(format!("cluster.nodes={nodes}"));
                    }
                    let o = StampOptions {
                        sets,
                        token_file: None,
                        token: Some(token.clone()),
                    };
                    out.push(
                        prepare(&req.cluster, &o, stdin)
                            .with_context(|| format!("settings for kit {} (card {n})", kit.name))?,
                    );
                }
            }
        }
        None => {
            let per_card = match req.token_files.len() {
                0 | 1 => false,
                k if k == cards => true,
                k => bail!("{k} --token-file were given for {cards} cards: give one for all cards of one kit, or one per card"),
            };
            for n in 1..=cards {
                let o = StampOptions {
                    sets: card_sets(&req.sets, n),
                    token_file: if per_card {
                        Some(req.token_files[n - 1].clone())
                    } else {
                        req.token_files.first().cloned()
                    },
                    token: None,
                };
                let ctx = || {
                    if cards > 1 {
                        format!("settings for card {n}")
                    } else {
                        "checking the settings to stamp".to_string()
                    }
                };
                out.push(prepare(&req.cluster, &o, stdin).with_context(ctx)?);
            }
            let names: std::collections::BTreeSet<&str> =
                out.iter().map(|p| p.name.as_str()).collect();
            let placeholder = out
                .iter()
                .any(|p| firstboot::config::PLACEHOLDER_TOKENS.contains(&p.token.expose()));
            if (names.len() > 1 || placeholder)
                && req.token_files.is_empty()
                && !gives_token(&req.sets)
            {
                // Several kits (or the examples' placeholder) and no token given: each kit gets
                // its own, never the file's shared one.
                let dir = req.tokens_dir.clone().unwrap_or_else(|| PathBuf::from("."));
                let mut tokens = BTreeMap::new();
                for name in names {
                    tokens.insert(name.to_string(), kit_token(&dir, name)?);
                    if placeholder {
                        crate::progress::say(&format!(
                            "warning: the token in {} is the placeholder from the examples, which no card may carry: kit {name} gets its own random token, kept in {}",
                            req.cluster.display(),
                            dir.join(format!("{name}.token")).display()
                        ));
                    }
                }
                for (i, p) in out.iter_mut().enumerate() {
                    let o = StampOptions {
                        sets: card_sets(&req.sets, i + 1),
                        token_file: None,
                        token: tokens.get(&p.name).cloned(),
                    };
                    *p = prepare(&req.cluster, &o, stdin)?;
                    p.warnings.retain(|w| !w.contains("placeholder"));
                }
            }
        }
    }
    check_kits(&out)?;
    Ok(out)
}

/// One token per kit, and no token in two kits.
fn check_kits(cards: &[PreparedStamp]) -> Result<()> {
    let mut by_name: BTreeMap<&str, &Token> = BTreeMap::new();
    for c in cards {
        match by_name.get(c.name.as_str()) {
            Some(t) if **t != c.token => bail!(
                "cards of kit {} would get different tokens: they could not form one cluster; give the kit one token",
                c.name
            ),
            _ => {
                by_name.insert(&c.name, &c.token);
            }
        }
    }
    let names: Vec<(&&str, &&Token)> = by_name.iter().collect();
    for (i, (a, ta)) in names.iter().enumerate() {
        for (b, tb) in &names[i + 1..] {
            if ta == tb {
                bail!(
                    "kits {a} and {b} would carry the same token: a node of one could join the other; give each kit its own token file (or none: each kit then gets a fresh random token)"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) -> PathBuf {
        let c = dir.join("cluster.toml");
        std::fs::write(
            &c,
            "[cluster]\nname = \"kit-00\"\ntoken = \"example-token-replace-me\"\nservers = 1\nnodes = 1\n",
        )
        .unwrap();
        c
    }

    #[test]
    fn numbered_kits_get_fresh_distinct_tokens() {
        let d = tempfile::tempdir().unwrap();
        let req = KitRequest {
            cluster: setup(d.path()),
            sets: vec!["cluster.name=kit-{n}".into()],
            tokens_dir: Some(d.path().join("tokens")),
            ..Default::default()
        };
        let p = plan(&req, 3, &mut std::io::empty()).unwrap();
        let names: Vec<&str> = p.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["kit-1", "kit-2", "kit-3"]);
        assert_ne!(p[0].token, p[1].token);
        assert_ne!(p[1].token, p[2].token);
        assert!(!p[0].cluster.text.contains("example-token"));
        // A second batch of kit 2 gets kit 2's token again.
        let again = plan(
            &KitRequest {
                sets: vec!["cluster.name=kit-2".into()],
                ..req.clone()
            },
            1,
            &mut std::io::empty(),
        )
        .unwrap();
        assert_eq!(again[0].token, p[1].token);
    }

    #[test]
    fn a_token_shared_by_two_kits_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("one.token");
        std::fs::write(&t, "0123456789abcdef-shared\n").unwrap();
        let req = KitRequest {
            cluster: setup(d.path()),
            sets: vec!["cluster.name=kit-{n}".into()],
            token_files: vec![t],
            ..Default::default()
        };
        let e = format!("{:#}", plan(&req, 2, &mut std::io::empty()).unwrap_err());
        assert!(e.contains("same token"), "{e}");
        assert!(!e.contains("0123456789abcdef-shared"), "{e}");
    }
}
