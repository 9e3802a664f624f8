//! `firstboot peers`: browse for a few seconds and show the verified peers of this cluster.

use super::browse::Browser;
use super::record::ClusterKeys;
use super::table::{PeerSummary, PeerTable};
use crate::config::ClusterConfig;
use crate::paths::Paths;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// Extra time given to instances that were listed but have not resolved when `wait` ends
/// (avahi's own resolver gives up after 5 s).
const RESOLVE_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `firstboot peers`.
#[derive(clap::Args, Debug, Clone)]
pub struct PeersArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Seconds to browse before answering.
    #[arg(long, default_value_t = 3)]
    pub wait: u64,
    /// Instead of this node's cluster.toml, browse for the cluster of the token in this file
    /// (with --nodes and --servers, which are part of the cluster id).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Bootstrap electorate size (cluster.nodes), with --token-file.
    #[arg(long, default_value_t = 3, requires = "token_file")]
    pub nodes: u8,
    /// Desired K3s servers (cluster.servers), with --token-file.
    #[arg(long, default_value_t = 3, requires = "token_file")]
    pub servers: u8,
}

/// The keys of the cluster to look for: from `--token-file`, else from this node's cluster.toml
/// (intake's root-only copy, which keeps the token, else the boot partition's).
fn cluster_keys(args: &PeersArgs, paths: &Paths) -> anyhow::Result<ClusterKeys> {
    if let Some(file) = &args.token_file {
        return Ok(ClusterKeys::from_secret(
            &read_token(file)?,
            args.nodes,
            args.servers,
        ));
    }
    let candidates = [
        crate::intake::root_config_path(paths.root()),
        paths.boot_cluster_toml(),
    ];
    let Some(path) = candidates.iter().find(|p| p.exists()) else {
        anyhow::bail!(
            "no cluster.toml at {} or {}: run this on a node, or pass --token-file FILE --nodes N --servers S",
            candidates[0].display(),
            candidates[1].display()
        );
    };
    let config = ClusterConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ClusterKeys::from_secret(
        config.token.expose().as_bytes(),
        config.nodes,
        config.servers,
    ))
}

/// Browses for `wait` and summarizes what was resolved by the end.
pub async fn browse_for(
    conn: &zbus::Connection,
    keys: &ClusterKeys,
    wait: Duration,
) -> PeerSummary {
    let mut browser = Browser::spawn(conn.clone(), keys.cluster, keys.record.clone());
    let mut table = PeerTable::default();
    let start = tokio::time::Instant::now();
    let (deadline, last_chance) = (start + wait, start + wait + RESOLVE_GRACE);
    loop {
        // Past `wait`, keep going only while listed instances are still resolving.
        let until = if table.is_resolving() {
            last_chance
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, browser.next()).await {
            Ok(Some(event)) => table.apply(event),
            Ok(None) => break,
            Err(_) if table.is_resolving() && tokio::time::Instant::now() < last_chance => {}
            Err(_) => break,
        }
    }
    table.summary()
}

/// Reads the token file, trimming the line end; the bytes stay in this process.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let raw =
        std::fs::read(path).with_context(|| format!("reading token file {}", path.display()))?;
    let end = raw
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    anyhow::ensure!(end > 0, "token file {} is empty", path.display());
    Ok(raw[..end].to_vec())
}

/// Runs `firstboot peers` against the system bus (`DBUS_SYSTEM_BUS_ADDRESS` honoured).
pub fn run(args: &PeersArgs, paths: &Paths) -> anyhow::Result<()> {
    let keys = cluster_keys(args, paths)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(async {
        let conn = zbus::Connection::system()
            .await
            .context("connecting to the system bus")?;
        anyhow::Ok(browse_for(&conn, &keys, Duration::from_secs(args.wait)).await)
    })?;
    if args.json {
        let report = serde_json::json!({
            "cluster": keys.cluster.to_hex(),
            "verified": summary.verified,
            "foreign": summary.foreign,
            "unverified": summary.unverified,
            "resolving": summary.resolving,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding JSON")?
        );
    } else {
        println!(
            "cluster {}: {} verified peer(s)",
            keys.cluster,
            summary.verified.len()
        );
        for peer in &summary.verified {
            println!(
                "  {}  node {}  {}  state {}  role {}  storage {}  ram {} MiB",
                peer.service,
                peer.advert.node,
                peer.addr,
                peer.advert.state,
                peer.advert.role.as_str(),
                peer.advert.storage,
                peer.advert.ram_mib
            );
        }
        println!(
            "foreign: {}  unverified: {}  still resolving: {}",
            summary.foreign, summary.unverified, summary.resolving
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_line_end_is_trimmed_and_empty_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret token value\r\n").expect("write");
        assert_eq!(read_token(&path).expect("token"), b"s3cret token value");
        std::fs::write(&path, "\n").expect("write");
        assert!(read_token(&path).is_err());
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::election::ClusterId;

    fn args(token_file: Option<PathBuf>) -> PeersArgs {
        PeersArgs {
            json: true,
            wait: 1,
            token_file,
            nodes: 3,
            servers: 3,
        }
    }

    #[test]
    fn keys_come_from_the_nodes_own_cluster_toml() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), None);
        let config = crate::intake::root_config_path(dir.path());
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "[cluster]\nname = \"lab\"\ntoken = \"peers-test-token-0123\"\nservers = 3\nnodes = 5\n").unwrap();
        let keys = cluster_keys(&args(None), &paths).unwrap();
        // nodes = 5 is part of the cluster id: a 3/3 default would look for another cluster.
        assert_eq!(
            keys.cluster,
            ClusterId::derive(b"peers-test-token-0123", 5, 3)
        );
        assert_ne!(
            keys.cluster,
            ClusterId::derive(b"peers-test-token-0123", 3, 3)
        );
    }

    #[test]
    fn no_config_names_both_places_and_the_alternative() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), None);
        let err = cluster_keys(&args(None), &paths).unwrap_err().to_string();
        assert!(
            err.contains("etc/firstboot/cluster.toml")
                && err.contains("boot/firmware/cluster.toml"),
            "{err}"
        );
        assert!(err.contains("--token-file"), "{err}");
    }

    #[test]
    fn token_file_overrides_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "peers-test-token-0123\n").unwrap();
        let keys = cluster_keys(&args(Some(token)), &Paths::new(dir.path(), None)).unwrap();
        assert_eq!(
            keys.cluster,
            ClusterId::derive(b"peers-test-token-0123", 3, 3)
        );
    }
}
