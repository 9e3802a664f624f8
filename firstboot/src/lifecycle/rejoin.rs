//! A server removed from the cluster while it was away rejoins through the seat book (SPEC 4.4).
//!
//! While a server is partitioned away (or powered off) for `replace_after`, the healer on the
//! majority side deletes its Node (non-forced: K3s's finalizer removes its etcd member) and
//! releases its seat, recording it under the book's `removed`. When the server is back, its etcd
//! data describes a cluster that no longer has it: its etcd is refused by the peers (they answer
//! a removed member's raft messages with 410 Gone, etcd's `ErrMemberRemoved`), and K3s v1.31
//! then writes `server/db/etcd/tombstone` and stops etcd; at its next start K3s moves
//! `server/db/etcd` aside by itself and joins again as a new member through the `server` URL in
//! its config (pkg/daemons/executor/etcd.go:36-45, pkg/etcd/etcd.go:656-664 Register), a join no
//! seat book granted, which could make a voter beyond `servers` when the seat was refilled.
//!
//! So firstboot learns of the removal from the signed protocol, not from K3s's logs: any
//! serving server whose book lists this node under `removed` (and not as a holder) and hears it
//! claim to serve sends it a signed `Removed` frame with the removal time
//! ([`crate::election::Body::Removed`]). The node then, in order, each step safe to repeat:
//! 1. stops `k3s.service` (K3s is never restarted on the old data);
//! 2. moves `server/db` (etcd's data, the tombstone included) to `server/db.removed-<unix>`
//!    beside it: never deleted, as K3s's own "delete the database" advice
//!    (pkg/cluster/bootstrap.go:88-90) would;
//! 3. removes the K3s plan (it named the old join), so the next role takes a fresh announcement;
//! 4. records the removal in `removed.json` (when, by whom, where the data went): a replayed
//!    frame of that removal, or an older one, is ignored from then on;
//! 5. forgets its election role, durably, and restarts the daemon (exec of itself, same PID), so
//!    every step runs again from the persisted state: with no role, it asks for a seat as a new
//!    card does and never takes its old seat from a roster; a seat keeper grants it the free
//!    seat (`SeatGranted`), or tells it to join as an agent when the seat was refilled.
//!
//! The cluster-init node rejoins the same way: once `removed.json` exists (written before the
//! role is forgotten) its election never makes it the init again (that would run
//! `cluster-init`: a second cluster, which is what K3s itself would do at its next start with
//! the tombstone and no `server`, pkg/etcd/etcd.go:490-491), it asks for a seat instead.

use super::report::Report;
use crate::clock::unix_now;
use crate::durable::write_atomic;
use crate::election::{ElectionDriver, Event, NodeId, Role};
use crate::k3s::{K3sPlan, DATA_DIR};
use crate::paths::Paths;
use crate::systemd::Systemd;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The record of the last removal handled, relative to the root prefix.
pub const REMOVED_RECORD: &str = "var/lib/firstboot/removed.json";

/// What `removed.json` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRecord {
    /// When the seat book recorded the removal, unix seconds (the healer's clock).
    pub at: i64,
    /// The serving server that told this node.
    pub via: NodeId,
    /// When this node handled it, unix seconds.
    pub handled_at: i64,
    /// Where `server/db` was moved (`None`: there was none).
    pub set_aside: Option<PathBuf>,
}

/// Whether this node was ever removed (the record exists, readable or not): then it never
/// takes a seat but from the seat book, and never initializes a cluster again.
pub fn was_removed(root: &Path) -> bool {
    root.join(REMOVED_RECORD).symlink_metadata().is_ok()
}

/// The last removal handled, if any.
pub fn load(root: &Path) -> io::Result<Option<RemovedRecord>> {
    match std::fs::read(root.join(REMOVED_RECORD)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a removal recorded at `at` is news: later than the last one handled.
pub fn is_new(last: Option<&RemovedRecord>, at: i64) -> bool {
    last.is_none_or(|r| at > r.at)
}

/// Moves `server/db` to `server/db.removed-<unix>` (a free name) and returns where it went;
/// `None` when there is no `server/db`. The rename is made durable before returning.
pub fn set_aside_db(root: &Path, unix: i64) -> io::Result<Option<PathBuf>> {
    let server = root.join(DATA_DIR).join("server");
    let from = server.join("db");
    if !from.try_exists()? {
        return Ok(None);
    }
    let mut to = server.join(format!("db.removed-{unix}"));
    let mut n = 1;
    while to.symlink_metadata().is_ok() {
        to = server.join(format!("db.removed-{unix}-{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to)?;
    std::fs::File::open(&server)?.sync_all()?;
    Ok(Some(to))
}

/// Removes the K3s plan (it named the join of the removed member); absent is fine.
fn remove_plan(root: &Path) -> io::Result<()> {
    match std::fs::remove_file(K3sPlan::path(root)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What handling a `Removed` event came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Not news (a replay, or an agent): nothing done.
    Ignored,
    /// The data was set aside and the role forgotten: restart the daemon now.
    Restart,
}

/// Handles [`Event::Removed`] (the steps in the module docs). `role` is this node's role.
pub async fn on_removed(
    event: Event,
    role: Option<Role>,
    conn: &zbus::Connection,
    paths: &Paths,
    driver: &mut ElectionDriver,
    report: &mut Report,
) -> anyhow::Result<Handled> {
    let Event::Removed { at, via } = event else {
        return Ok(Handled::Ignored);
    };
    let root = paths.root();
    let last = load(root).context("reading the record of the last removal")?;
    if !is_new(last.as_ref(), at) || !matches!(role, Some(Role::Server { .. } | Role::ClusterInit))
    {
        tracing::debug!(at, %via, "a removal already handled (or no server role): ignored");
        return Ok(Handled::Ignored);
    }
    tracing::warn!(at, %via, "this server was removed from the cluster while it was away (its Node and etcd member deleted, its seat released): setting its etcd data aside");
    let systemd = Systemd::new(conn).await?;
    let state = systemd
        .stop("k3s.service", Duration::from_secs(90))
        .await
        .context("stopping k3s.service")?;
    tracing::info!(?state, "stopped k3s.service");
    let now = unix_now();
    let set_aside = set_aside_db(root, now).context("moving server/db aside")?;
    remove_plan(root).context("removing the K3s plan")?;
    let record = RemovedRecord {
        at,
        via,
        handled_at: now,
        set_aside: set_aside.clone(),
    };
    let json = serde_json::to_vec_pretty(&record).context("encoding removed.json")?;
    write_atomic(&root.join(REMOVED_RECORD), &json, 0o644).context("writing removed.json")?;
    let moved = set_aside.map_or_else(
        || "there was no etcd data to set aside".to_string(),
        |p| format!("its etcd data was moved to {}", p.display()),
    );
    driver.forget_role().await.context("forgetting the role")?;
    report.note(&format!(
        "removed from the cluster while away (server {via} said so; removal recorded at unix {at}); {moved}; rejoining through the seat book (a free seat, else as an agent)"
    ));
    Ok(Handled::Restart)
}

/// Restarts the daemon in place (same PID for systemd): exec of this program with its
/// arguments, so every lifecycle step runs again from the persisted state. Returns only on error.
pub fn restart_daemon() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow::Error::new(e).context("finding this program to restart it"),
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(exe = %exe.display(), "restarting the daemon to rejoin the cluster");
    let e = std::process::Command::new(&exe).args(args).exec();
    anyhow::Error::new(e).context(format!("restarting {}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(DATA_DIR).join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x").unwrap();
    }

    #[test]
    fn only_server_db_is_set_aside_whole_and_never_over_an_earlier_one() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(set_aside_db(root.path(), 5).unwrap(), None);
        touch(root.path(), "server/db/etcd/member/wal/0.wal");
        touch(root.path(), "server/db/etcd/tombstone");
        touch(root.path(), "server/tls/server-ca.crt");
        let to = set_aside_db(root.path(), 5).unwrap().unwrap();
        let server = root.path().join(DATA_DIR).join("server");
        assert_eq!(to, server.join("db.removed-5"));
        assert!(to.join("etcd/member/wal/0.wal").exists() && to.join("etcd/tombstone").exists());
        assert!(!server.join("db").exists());
        // The rest of the server directory (the cluster's CA, kept in sync by K3s) stays.
        assert!(server.join("tls/server-ca.crt").exists());
        touch(root.path(), "server/db/etcd/name");
        assert_eq!(
            set_aside_db(root.path(), 5).unwrap(),
            Some(server.join("db.removed-5-1"))
        );
    }

    #[test]
    fn a_removal_is_news_only_when_later_than_the_last_handled() {
        let last = RemovedRecord {
            at: 100,
            via: NodeId(2),
            handled_at: 130,
            set_aside: None,
        };
        assert!(is_new(None, 1));
        assert!(!is_new(Some(&last), 100), "a replay of the handled removal");
        assert!(!is_new(Some(&last), 99));
        assert!(is_new(Some(&last), 101));
    }

    #[test]
    fn the_record_round_trips_and_a_missing_one_is_none() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(load(root.path()).unwrap(), None);
        let record = RemovedRecord {
            at: 100,
            via: NodeId(2),
            handled_at: 130,
            set_aside: Some(PathBuf::from("/var/lib/rancher/k3s/server/db.removed-130")),
        };
        let path = root.path().join(REMOVED_RECORD);
        write_atomic(&path, &serde_json::to_vec(&record).unwrap(), 0o644).unwrap();
        assert_eq!(load(root.path()).unwrap(), Some(record));
        remove_plan(root.path()).unwrap();
    }
}
