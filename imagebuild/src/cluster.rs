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
            ClusterFile { text, origin: path }
        }
        Some(ClusterSource::Inline(table)) => ClusterFile {
            text: toml::to_string(table).context("writing the inline [cluster] as cluster.toml")?,
            origin: recipe.path.clone(),
        },
    };
    validate_cluster_toml(&file.text, &file.origin)?;
    Ok(Some(file))
}

/// The one place cluster.toml is checked before it is written: the firstboot schema decides.
pub fn validate_cluster_toml(text: &str, origin: &Path) -> Result<()> {
    // The consumer owns the format (SPEC 1). Until the firstboot schema lands on main, only the
    // TOML syntax is checked here: replace this body with
    // `firstboot::config::ClusterConfig::from_toml_str(text, origin)`.
    text.parse::<toml::Table>()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{}: {}", origin.display(), e.message()))
        .with_context(|| format!("checking the cluster settings from {}", origin.display()))
}
