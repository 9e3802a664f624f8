//! The recipe's `[cluster]`: turned into cluster.toml text and validated before it is stamped.

use crate::recipe::{ClusterSource, Recipe};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// cluster.toml text ready for the boot partition, with where it came from.
#[derive(Clone)]
pub struct ClusterFile {
    /// The file text (may hold the token: never print it).
    pub text: String,
    /// The recipe or file it came from, for error messages.
    pub origin: PathBuf,
    /// `token_file` named by it: (file name on the boot partition, contents). Secret.
    pub token_file: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ClusterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterFile({}, <redacted>)", self.origin.display())
    }
}

/// The cluster.toml of a recipe, validated; `None` when the recipe has no `[cluster]`.
pub fn from_recipe(recipe: &Recipe) -> Result<Option<ClusterFile>> {
    let file = match &recipe.cluster {
        None => return Ok(None),
        Some(ClusterSource::File(p)) => {
            let path = recipe.resolve(&p.to_string_lossy());
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading cluster file {}", path.display()))?;
            ClusterFile {
                text,
                origin: path,
                token_file: None,
            }
        }
        Some(ClusterSource::Inline(table)) => ClusterFile {
            text: toml::to_string(table).context("writing the inline [cluster] as cluster.toml")?,
            // Error positions count lines of the [cluster] table written out as cluster.toml;
            // the name says so, and keeps token_file resolving beside the recipe.
            origin: recipe.dir().join(format!(
                "{} [cluster] as cluster.toml",
                recipe
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image.toml".into())
            )),
            token_file: None,
        },
    };
    ClusterFile::checked(file.text, file.origin).map(Some)
}

impl ClusterFile {
    /// Validate cluster.toml `text` (as if it were the file `origin`) and read the `token_file`
    /// it names from beside `origin`, so both can be stamped together.
    pub fn checked(text: String, origin: PathBuf) -> Result<ClusterFile> {
        validate_cluster_toml(&text, &origin)?;
        // firstboot reads token_file from the boot partition, beside cluster.toml: stamp it too.
        let table: toml::Table = text.parse().context("re-reading cluster.toml")?;
        let token_file = table
            .get("cluster")
            .and_then(|c| c.get("token_file"))
            .and_then(|t| t.as_str())
            .map(String::from);
        let token_file = match token_file {
            None => None,
            Some(name) => {
                let dir = origin.parent().unwrap_or(Path::new("."));
                let bytes = std::fs::read(dir.join(&name)).with_context(|| {
                    format!("reading token_file {name} beside {}", origin.display())
                })?;
                Some((name, bytes))
            }
        };
        Ok(ClusterFile {
            text,
            origin,
            token_file,
        })
    }
}

impl ClusterFile {
    /// Valid but probably wrong settings (firstboot's own warnings: the examples' placeholder
    /// token, inline or in the token file, no HA). Never mentions the token's value.
    pub fn warnings(&self) -> Vec<String> {
        firstboot::config::ClusterConfig::from_toml_str(&self.text, &self.origin)
            .map(|c| c.warnings())
            .unwrap_or_default()
    }
}

/// The warning for a card that would carry the examples' placeholder token (from `where_`).
pub fn example_token_warning(where_: &str) -> String {
    format!(
        "the token in {where_} is the placeholder from the examples: anyone who has read them can join this cluster; run `imagebuild token > cluster.token` and stamp with --token-file cluster.token"
    )
}

/// The `token_file` a cluster.toml text names, if any.
pub fn token_file_of(text: &str) -> Option<String> {
    let t: toml::Table = text.parse().ok()?;
    t.get("cluster")?
        .get("token_file")?
        .as_str()
        .map(String::from)
}

/// Whether cluster.toml `text` (or its token file `token_file`) carries a placeholder token.
pub fn has_example_token(text: &str, token_file: Option<&[u8]>) -> bool {
    let inline = text.parse::<toml::Table>().ok().and_then(|t| {
        t.get("cluster")?
            .get("token")?
            .as_str()
            .map(|s| s.trim().to_string())
    });
    let from_file = token_file.map(|b| String::from_utf8_lossy(b).trim().to_string());
    [inline, from_file]
        .into_iter()
        .flatten()
        .any(|t| firstboot::config::PLACEHOLDER_TOKENS.contains(&t.as_str()))
}

/// The one place cluster.toml is checked before it is written: the firstboot schema decides.
pub fn validate_cluster_toml(text: &str, origin: &Path) -> Result<()> {
    // The consumer owns the format (SPEC 1): the firstboot library parses and validates it, so
    // an image never carries a cluster.toml that firstboot would reject.
    firstboot::config::ClusterConfig::from_toml_str(text, origin)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("checking the cluster settings from {}", origin.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(cluster: &str) -> Recipe {
        let text = format!(
            "[image]\nboard = \"rpi5\"\nbase = \"raspios-lite-arm64\"\noutput = \"o.img\"\n{cluster}"
        );
        Recipe::parse(&text, Path::new("/nonexistent/image.toml")).unwrap()
    }

    #[test]
    fn inline_cluster_becomes_valid_cluster_toml() {
        let r = recipe("[cluster.cluster]\nname = \"lab\"\ntoken = \"0123456789abcdef-xyz\"\nservers = 3\nnodes = 5\n");
        let c = from_recipe(&r).unwrap().unwrap();
        assert!(c.text.contains("[cluster]"), "{}", c.text);
        assert!(format!("{c:?}").contains("<redacted>"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn invalid_cluster_is_refused() {
        let r = recipe(
            "[cluster.cluster]\nname = \"lab\"\ntoken = \"0123456789abcdef-xyz\"\nservers = 2\n",
        );
        let err = format!("{:#}", from_recipe(&r).unwrap_err());
        assert!(err.contains("servers"), "{err}");
        assert!(!err.contains("0123456789abcdef-xyz"), "token leaked: {err}");
    }
}
