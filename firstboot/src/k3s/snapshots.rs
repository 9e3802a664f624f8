//! etcd snapshots on a server (SPEC 4.5): where K3s keeps them, the newest one's age against
//! the schedule (`firstboot status`), and `firstboot snapshot`, which has K3s take one now.
//!
//! Everything is read from what K3s reads: config.yaml's `etcd-snapshot-schedule-cron` and
//! `etcd-snapshot-dir` (firstboot writes both on servers), else K3s's default directory
//! `${data-dir}/server/db/snapshots` (K3s v1.31.4 pkg/etcd/snapshot.go snapshotDir). A file is
//! a snapshot when K3s named it `<name>-<node>-<unix seconds>` (pkg/etcd/snapshot.go:240, with
//! `.zip` when compressed); its time is that suffix.

use super::CONFIG_YAML_PATH;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// K3s's default snapshot directory, relative to the root prefix.
pub const DEFAULT_DIR: &str = "var/lib/rancher/k3s/server/db/snapshots";

/// A server's snapshots as `firstboot status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotView {
    /// The directory K3s writes them to (on the node, without the root prefix).
    pub dir: String,
    /// The schedule (`[snapshots] schedule`).
    pub schedule: String,
    /// The longest time between two scheduled snapshots, seconds.
    pub period_secs: Option<u64>,
    /// The newest snapshot's file name.
    pub newest: Option<String>,
    /// When it was taken, unix seconds.
    pub newest_unix: Option<u64>,
    /// How many snapshots the directory holds.
    pub count: usize,
}

impl SnapshotView {
    /// Reads the view under `root`; `None` on a node whose K3s keeps no etcd snapshots (an
    /// agent, a SQLite server, no config.yaml yet).
    pub fn read(root: &Path) -> Option<SnapshotView> {
        let yaml = std::fs::read_to_string(root.join(CONFIG_YAML_PATH)).ok()?;
        let schedule = yaml_scalar(&yaml, "etcd-snapshot-schedule-cron")?;
        // etcd only: the init with cluster-init, or a joined server (its `server:`).
        if yaml_scalar(&yaml, "cluster-init").as_deref() != Some("true")
            && yaml_scalar(&yaml, "server").is_none()
        {
            return None;
        }
        let dir =
            yaml_scalar(&yaml, "etcd-snapshot-dir").unwrap_or_else(|| format!("/{DEFAULT_DIR}"));
        let on_disk = root.join(dir.trim_start_matches('/'));
        let mut snapshots: Vec<(u64, String)> = std::fs::read_dir(&on_disk)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((taken_unix(&name)?, name))
            })
            .collect();
        snapshots.sort();
        let newest = snapshots.last().cloned();
        Some(SnapshotView {
            period_secs: crate::config::cron::longest_gap_secs(&schedule),
            schedule,
            dir,
            count: snapshots.len(),
            newest_unix: newest.as_ref().map(|(t, _)| *t),
            newest: newest.map(|(_, n)| n),
        })
    }

    /// Whether the newest snapshot is older than two schedule periods at `now_unix` (none at
    /// all is not stale: a new cluster's first snapshot is still due).
    pub fn is_stale(&self, now_unix: u64) -> bool {
        match (self.newest_unix, self.period_secs) {
            (Some(at), Some(period)) => now_unix.saturating_sub(at) > 2 * period,
            _ => false,
        }
    }
}

/// The unix time in a K3s snapshot file name `<name>-<node>-<unix>[.zip]`.
fn taken_unix(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".zip").unwrap_or(name);
    let (_, unix) = stem.rsplit_once('-')?;
    (unix.len() >= 9 && unix.chars().all(|c| c.is_ascii_digit()))
        .then(|| unix.parse().ok())
        .flatten()
}

/// A top-level scalar of the config.yaml firstboot writes (`key: value` or `key: "value"`).
fn yaml_scalar(yaml: &str, key: &str) -> Option<String> {
    yaml.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
        if v.is_empty() {
            return None;
        }
        Some(
            match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(q) => q.replace("\\\"", "\"").replace("\\\\", "\\"),
                None => v.to_string(),
            },
        )
    })
}

/// Take a snapshot now (on a server, as root).
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// The snapshot's name prefix (K3s's `--name`; the file is `<name>-<node>-<unix time>`).
    #[arg(long, default_value = "on-demand")]
    pub name: String,
    /// Print the result as JSON (`dir`, `file`, `path`, `bytes`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `firstboot snapshot`: `k3s etcd-snapshot save`, then names the file it wrote.
pub fn run(args: &SnapshotArgs, root: &Path) -> anyhow::Result<()> {
    let Some(before) = SnapshotView::read(root) else {
        bail!(
            "this node keeps no etcd snapshots: only a K3s server with etcd does (an agent or a \
             one-server SQLite cluster has none). Run it on a server (`firstboot status` says \
             `role server` or `init`)"
        );
    };
    let out = std::process::Command::new("k3s")
        .args(["etcd-snapshot", "save", "--name", &args.name])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running `k3s etcd-snapshot save`")?;
    if !out.status.success() {
        bail!(
            "`k3s etcd-snapshot save` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let after = SnapshotView::read(root).context("reading the snapshot directory")?;
    let file = match (&after.newest, after.newest != before.newest) {
        (Some(f), true) => f.clone(),
        _ => bail!(
            "`k3s etcd-snapshot save` succeeded but no new snapshot is in {} (a learner takes \
             none: try again once this server is a voting member)",
            after.dir
        ),
    };
    let path: PathBuf = Path::new(&after.dir).join(&file);
    let bytes = std::fs::metadata(root.join(path.strip_prefix("/").unwrap_or(&path)))
        .map(|m| m.len())
        .unwrap_or_default();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"dir": after.dir, "file": file, "path": path, "bytes": bytes})
        );
    } else {
        println!("saved {} ({bytes} bytes)", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str, files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        super::super::write_config_yaml(root.path(), yaml).unwrap();
        let dir = root.path().join("data/snap");
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        root
    }

    #[test]
    fn the_newest_snapshot_and_its_age_against_the_schedule() {
        let yaml = "cluster-init: true\netcd-snapshot-schedule-cron: \"0 */12 * * *\"\netcd-snapshot-dir: \"/data/snap\"\n";
        let root = node(
            yaml,
            &[
                "etcd-snapshot-lab-1-1796000000",
                "on-demand-lab-1-1796050000.zip",
                "not-a-snapshot",
            ],
        );
        let v = SnapshotView::read(root.path()).unwrap();
        assert_eq!(v.dir, "/data/snap");
        assert_eq!(v.count, 2);
        assert_eq!(v.newest.as_deref(), Some("on-demand-lab-1-1796050000.zip"));
        assert_eq!(v.period_secs, Some(12 * 3600));
        assert!(!v.is_stale(1796050000 + 24 * 3600));
        assert!(v.is_stale(1796050000 + 24 * 3600 + 1));
    }

    #[test]
    fn agents_and_sqlite_servers_keep_none() {
        let agent = node("server: \"https://198.18.0.10:6443\"\n", &[]);
        assert_eq!(SnapshotView::read(agent.path()), None);
        let sqlite = node("etcd-snapshot-schedule-cron: \"0 */12 * * *\"\n", &[]);
        assert_eq!(SnapshotView::read(sqlite.path()), None);
        let joined = node(
            "server: \"https://198.18.0.10:6443\"\netcd-snapshot-schedule-cron: \"@daily\"\n",
            &[],
        );
        let v = SnapshotView::read(joined.path()).unwrap();
        assert_eq!(v.dir, format!("/{DEFAULT_DIR}"));
        assert_eq!((v.count, v.newest.clone()), (0, None));
        assert!(!v.is_stale(u64::MAX), "none yet is not stale");
    }
}
