//! `firstboot peers`: browse for a few seconds and show the verified peers of this cluster.

use super::browse::Browser;
use super::record::ClusterKeys;
use super::table::{PeerSummary, PeerTable};
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
    /// File holding the cluster token [default: <root>/etc/firstboot/token].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Bootstrap electorate size (cluster.nodes).
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// Desired K3s servers (cluster.servers).
    #[arg(long, default_value_t = 3)]
    pub servers: u8,
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
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| paths.config_dir().join("token"));
    let keys = ClusterKeys::derive(&read_token(&token_file)?, args.nodes, args.servers);
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
