//! A K3s server data directory that firstboot's K3s did not create: set aside before the first start.
//!
//! K3s never starts over on data it finds (K3s v1.31.4):
//! - etcd data on disk makes a server an "existing cluster member" that ignores `server` and
//!   `cluster-init` (pkg/cluster/bootstrap.go:88-99 shouldBootstrapLoad; pkg/etcd/etcd.go:470-487
//!   Start), so a joiner with etcd data of an earlier cluster never joins this one ("if the user
//!   wants to rejoin a cluster they need to delete the database", bootstrap.go:89-90);
//! - a joiner whose `server/tls` files differ from the cluster's and are newer on disk exits with
//!   "... newer than datastore and could cause a cluster outage. Remove the file(s) from disk and
//!   restart to be recreated from datastore." (bootstrap.go:307-345, isNewerFile :357-391);
//! - `cluster-init` on a SQLite server copies every `/registry/` object of `server/db/state.db`
//!   into the new etcd (pkg/etcd/etcd.go:862-928 newCluster/migrateFromSQLite), so an init node
//!   would carry a stale standalone cluster's Nodes and Secrets into the new one.
//!
//! Such data comes from a K3s that ran before firstboot chose the role (started by hand, by an
//! older image's `[Install]`, a standalone SQLite test run) or from an earlier cluster on a reused
//! card. So the first time firstboot brings up a server, a `server` directory already there is
//! moved (never deleted: it may be someone's data) to `server.stale-<unix time>` beside it, after
//! stopping the unit, and a marker records that from now on the directory is this cluster's.
//! Agents keep their `agent` directory: K3s rewrites an agent's certificates at every start and
//! the directory holds the imported container images.

use super::DATA_DIR;
use crate::durable::write_atomic;
use std::io;
use std::path::{Path, PathBuf};

/// The marker, relative to the root prefix: present once firstboot started a K3s server here.
pub const SERVER_DATA_MARKER: &str = "var/lib/firstboot/k3s-server-data";

/// The server data directory, relative to the root prefix.
fn server_dir(root: &Path) -> PathBuf {
    root.join(DATA_DIR).join("server")
}

/// True when a server data directory exists that no K3s started by firstboot as a server made.
pub fn is_stale(root: &Path) -> io::Result<bool> {
    if root.join(SERVER_DATA_MARKER).try_exists()? {
        return Ok(false);
    }
    server_dir(root).try_exists()
}

/// Moves the stale server directory to `server.stale-<unix>` (a free name) and returns the new path.
pub fn set_aside(root: &Path, unix: u64) -> io::Result<PathBuf> {
    let from = server_dir(root);
    let mut to = root.join(DATA_DIR).join(format!("server.stale-{unix}"));
    let mut n = 1;
    while to.symlink_metadata().is_ok() {
        to = root.join(DATA_DIR).join(format!("server.stale-{unix}-{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to)?;
    // The rename must survive a power cut before K3s writes a new server directory.
    std::fs::File::open(root.join(DATA_DIR))?.sync_all()?;
    Ok(to)
}

/// Records that the server data directory from now on belongs to the K3s firstboot starts.
/// Written before K3s first starts as a server: a crash in between leaves at most an empty
/// directory to K3s, never a stale one set aside by mistake later.
pub fn claim(root: &Path) -> io::Result<()> {
    if root.join(SERVER_DATA_MARKER).try_exists()? {
        return Ok(());
    }
    write_atomic(
        &root.join(SERVER_DATA_MARKER),
        b"the K3s server data directory was created by a K3s that firstboot started\n",
        0o644,
    )
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
    fn no_server_directory_is_not_stale() {
        let root = tempfile::tempdir().unwrap();
        assert!(!is_stale(root.path()).unwrap());
        // The agent directory is never looked at.
        touch(root.path(), "agent/client-kubelet.crt");
        assert!(!is_stale(root.path()).unwrap());
    }

    #[test]
    fn a_server_directory_before_the_claim_is_stale_and_set_aside_whole() {
        let root = tempfile::tempdir().unwrap();
        touch(root.path(), "server/db/state.db");
        touch(root.path(), "server/tls/server-ca.crt");
        assert!(is_stale(root.path()).unwrap());
        let to = set_aside(root.path(), 1_700_000_000).unwrap();
        assert_eq!(
            to,
            root.path().join(DATA_DIR).join("server.stale-1700000000")
        );
        assert!(to.join("db/state.db").exists() && to.join("tls/server-ca.crt").exists());
        assert!(!root.path().join(DATA_DIR).join("server").exists());
        assert!(!is_stale(root.path()).unwrap());
        // A second stale directory in the same second gets its own name.
        touch(root.path(), "server/db/state.db");
        let again = set_aside(root.path(), 1_700_000_000).unwrap();
        assert_eq!(
            again,
            root.path().join(DATA_DIR).join("server.stale-1700000000-1")
        );
    }

    #[test]
    fn after_the_claim_the_server_directory_is_this_clusters() {
        let root = tempfile::tempdir().unwrap();
        claim(root.path()).unwrap();
        touch(root.path(), "server/db/etcd/member/wal/0.wal");
        assert!(!is_stale(root.path()).unwrap());
        claim(root.path()).unwrap();
        assert!(!is_stale(root.path()).unwrap());
    }
}
