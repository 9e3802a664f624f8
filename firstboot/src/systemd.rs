//! systemd over D-Bus: start, restart, stop and disable a unit (k3s.service / k3s-agent.service) and follow its ActiveState.

use std::time::Duration;
use zbus::zvariant::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1Manager {
    /// StartUnit(s name, s mode) -> o job.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// LoadUnit(s name) -> o unit.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// RestartUnit(s name, s mode) -> o job.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// StopUnit(s name, s mode) -> o job.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// DisableUnitFiles(as files, b runtime) -> a(sss) changes.
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;

    /// Reload(): re-reads unit files and symlinks (what `systemctl disable` does after disabling).
    fn reload(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Systemd1Unit {
    /// ActiveState property.
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// A unit's ActiveState as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    /// Running (for Type=notify: READY=1 was sent).
    Active,
    /// Reloading.
    Reloading,
    /// Not running.
    Inactive,
    /// Failed (start limit hit, or exited with an error and no restart).
    Failed,
    /// Starting (for K3s: waiting for READY, or auto-restarting after a crash).
    Activating,
    /// Stopping.
    Deactivating,
    /// A state this build does not know.
    Other(String),
}

impl ActiveState {
    /// Parses systemd's word.
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            other => ActiveState::Other(other.to_string()),
        }
    }

    /// True for states that will not change without someone acting.
    pub fn is_settled(&self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Failed)
    }
}

/// systemd's manager on a D-Bus connection (the system bus on a node).
pub struct Systemd {
    conn: zbus::Connection,
    manager: Systemd1ManagerProxy<'static>,
}

impl Systemd {
    /// Connects the manager proxy.
    pub async fn new(conn: &zbus::Connection) -> zbus::Result<Self> {
        Ok(Systemd {
            conn: conn.clone(),
            manager: Systemd1ManagerProxy::new(conn).await?,
        })
    }

    /// The unit's current ActiveState (read fresh, no cache).
    pub async fn active_state(&self, unit: &str) -> zbus::Result<ActiveState> {
        let path = self.manager.load_unit(unit).await?;
        let proxy = Systemd1UnitProxy::builder(&self.conn)
            .path(path)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        Ok(ActiveState::parse(&proxy.active_state().await?))
    }

    /// Restarts `unit` (mode "replace"): stops it if running, then starts it; the job is queued.
    pub async fn restart(&self, unit: &str) -> zbus::Result<()> {
        self.manager.restart_unit(unit, "replace").await?;
        Ok(())
    }

    /// Stops `unit` (mode "replace") and waits, up to `limit`, until it is no longer running.
    pub async fn stop(&self, unit: &str, limit: Duration) -> zbus::Result<ActiveState> {
        self.manager.stop_unit(unit, "replace").await?;
        let start = tokio::time::Instant::now();
        loop {
            let state = self.active_state(unit).await?;
            if matches!(state, ActiveState::Inactive | ActiveState::Failed)
                || start.elapsed() >= limit
            {
                return Ok(state);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes every symlink that enables `unit` (as `systemctl disable` does, daemon reload
    /// included when something was removed); returns the symlinks removed.
    pub async fn disable(&self, unit: &str) -> zbus::Result<Vec<String>> {
        let changes = self.manager.disable_unit_files(&[unit], false).await?;
        if !changes.is_empty() {
            self.manager.reload().await?;
        }
        Ok(changes.into_iter().map(|(_, link, _)| link).collect())
    }

    /// Follows `unit`'s ActiveState, polling every `poll`, until it is active or failed or
    /// `limit` has passed; returns the last state seen.
    pub async fn follow(
        &self,
        unit: &str,
        limit: Duration,
        poll: Duration,
    ) -> zbus::Result<ActiveState> {
        let start = tokio::time::Instant::now();
        loop {
            let state = self.active_state(unit).await?;
            if state.is_settled() || start.elapsed() >= limit {
                return Ok(state);
            }
            tracing::debug!(unit, ?state, "waiting for the unit");
            tokio::time::sleep(poll).await;
        }
    }

    /// Starts `unit` (mode "replace"; starting an active unit is a no-op, so this is idempotent)
    /// and polls ActiveState every `poll` until it is active or failed, or `limit` has passed;
    /// returns the last state seen.
    pub async fn start_and_follow(
        &self,
        unit: &str,
        limit: Duration,
        poll: Duration,
    ) -> zbus::Result<ActiveState> {
        self.manager.start_unit(unit, "replace").await?;
        self.follow(unit, limit, poll).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_words() {
        assert_eq!(ActiveState::parse("active"), ActiveState::Active);
        assert_eq!(ActiveState::parse("activating"), ActiveState::Activating);
        assert_eq!(
            ActiveState::parse("maintenance"),
            ActiveState::Other("maintenance".into())
        );
        assert!(ActiveState::Failed.is_settled());
        assert!(!ActiveState::Inactive.is_settled());
    }
}
