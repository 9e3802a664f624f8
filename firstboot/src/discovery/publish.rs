//! Publishes this node's signed record and keeps it published across daemon restarts and collisions.

use super::avahi::{
    EntryGroupProxy, GroupState, ServerProxy, IF_UNSPEC, PROTO_INET, SERVER_RUNNING,
};
use super::record::Advert;
use super::{REFRESH_SUBTYPE, SERVICE_TYPE};
use crate::keys::MacKey;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zbus::proxy::CacheProperties;

/// How often to look for avahi-daemon while it is away.
const DAEMON_POLL: Duration = Duration::from_millis(250);

/// A running publication of `_k3s-firstboot._tcp`.
///
/// [`Publisher::withdraw`] takes the record off the LAN; merely dropping the publisher stops the
/// upkeep and leaves the record with avahi until this D-Bus connection closes.
pub struct Publisher {
    advert: watch::Sender<Advert>,
    registered: watch::Receiver<Option<String>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing `advert` under the service instance name `name` (alternatives on collision).
    pub fn spawn(conn: zbus::Connection, name: String, advert: Advert, key: MacKey) -> Self {
        let (advert_tx, advert_rx) = watch::channel(advert);
        let (registered_tx, registered_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(publish_forever(
            conn,
            name,
            key,
            advert_rx,
            registered_tx,
            stop_rx,
        ));
        Self {
            advert: advert_tx,
            registered: registered_rx,
            stop: stop_tx,
            task,
        }
    }

    /// Withdraws the record from the LAN (avahi sends goodbyes) and stops.
    pub async fn withdraw(mut self) {
        self.stop.send_replace(true);
        // The task frees its entry group and returns; an error here means it already ended.
        let _ = (&mut self.task).await;
    }

    /// Replaces the published record (new state or rank inputs); re-signed on the way out.
    pub fn update(&self, advert: Advert) {
        self.advert.send_replace(advert);
    }

    /// The service name while the record is established on the LAN, `None` while (re-)registering.
    pub fn registered(&self) -> watch::Receiver<Option<String>> {
        self.registered.clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // The entry group belongs to our D-Bus connection: avahi withdraws it when we go away.
        self.task.abort();
    }
}

/// Why a publishing session ended.
enum SessionEnd {
    /// The daemon went away or stopped running: wait for it and register again.
    DaemonLost,
    /// [`Publisher::withdraw`] was called.
    Withdrawn,
}

async fn publish_forever(
    conn: zbus::Connection,
    mut name: String,
    key: MacKey,
    mut advert: watch::Receiver<Advert>,
    registered: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = wait_for_daemon(&conn) => {}
            _ = stop_requested(&mut stop) => return,
        }
        let mut session = Session {
            conn: &conn,
            name: &mut name,
            key: &key,
            advert: &mut advert,
            registered: &registered,
            stop: &mut stop,
        };
        match session.run().await {
            Ok(SessionEnd::Withdrawn) => {
                registered.send_replace(None);
                return;
            }
            Ok(SessionEnd::DaemonLost) => {
                tracing::warn!("avahi-daemon went away; will register again when it is back")
            }
            Err(e) => tracing::warn!("publishing {name}: {e}; retrying"),
        }
        registered.send_replace(None);
        tokio::time::sleep(DAEMON_POLL).await;
    }
}

/// Resolves once a withdrawal is requested (or the publisher is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // The guard returned by wait_for is not Send: drop it before returning.
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// Waits until avahi-daemon answers on the bus and its server is running.
pub(crate) async fn wait_for_daemon(conn: &zbus::Connection) {
    let mut said = false;
    loop {
        let state = match server(conn).await {
            Ok(server) => server.get_state().await.ok(),
            Err(_) => None,
        };
        if state == Some(SERVER_RUNNING) {
            return;
        }
        if !said {
            tracing::info!("waiting for avahi-daemon");
            said = true;
        }
        tokio::time::sleep(DAEMON_POLL).await;
    }
}

/// A proxy for the Avahi server object without property caching (it has no properties).
pub(crate) async fn server(conn: &zbus::Connection) -> zbus::Result<ServerProxy<'static>> {
    ServerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// One registration against one avahi-daemon instance.
struct Session<'a> {
    conn: &'a zbus::Connection,
    name: &'a mut String,
    key: &'a MacKey,
    advert: &'a mut watch::Receiver<Advert>,
    registered: &'a watch::Sender<Option<String>>,
    stop: &'a mut watch::Receiver<bool>,
}

impl Session<'_> {
    /// Creates an entry group, keeps it published, and frees it however the session ends.
    async fn run(&mut self) -> zbus::Result<SessionEnd> {
        let server = server(self.conn).await?;
        let mut owner = server.inner().receive_owner_changed().await?;
        let mut server_state = server.receive_state_changed().await?;
        let group = EntryGroupProxy::builder(self.conn)
            .path(server.entry_group_new().await?)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let outcome = self
            .keep_published(&server, &group, &mut owner, &mut server_state)
            .await;
        // Without this, an error path would leave our record registered and the next group
        // would collide with it. If the daemon is gone, so is the group: ignore that error.
        group.free().await.ok();
        outcome
    }

    async fn keep_published(
        &mut self,
        server: &ServerProxy<'_>,
        group: &EntryGroupProxy<'_>,
        owner: &mut zbus::proxy::OwnerChangedStream<'_>,
        server_state: &mut super::avahi::server::StateChangedStream,
    ) -> zbus::Result<SessionEnd> {
        let mut group_state = group.receive_state_changed().await?;
        // The daemon may have stopped between the caller's state check and the subscriptions
        // above; the streams only report later changes, so ask once more.
        if server.get_state().await? != SERVER_RUNNING {
            return Ok(SessionEnd::DaemonLost);
        }
        // The record as last published; the watch itself is borrowed by `changed()` below.
        let mut current = self.advert.borrow_and_update().clone();
        add_and_commit(group, self.name, &current, self.key).await?;
        loop {
            tokio::select! {
                _ = owner.next() => {
                    // A new owner is a restarted daemon that knows nothing of our group.
                    return Ok(SessionEnd::DaemonLost);
                }
                _ = stop_requested(self.stop) => return Ok(SessionEnd::Withdrawn),
                signal = server_state.next() => {
                    let Some(signal) = signal else { return Ok(SessionEnd::DaemonLost) };
                    let state = signal.args()?.state;
                    if state != SERVER_RUNNING {
                        // Host name collision or re-probing: avahi wants groups dropped and
                        // added again once it runs again.
                        tracing::info!(state, "avahi server left the running state");
                        return Ok(SessionEnd::DaemonLost);
                    }
                }
                signal = group_state.next() => {
                    let Some(signal) = signal else { return Ok(SessionEnd::DaemonLost) };
                    let args = signal.args()?;
                    match GroupState::from_raw(args.state) {
                        GroupState::Established => {
                            tracing::info!(service = %self.name, "published {SERVICE_TYPE}");
                            self.registered.send_replace(Some(self.name.clone()));
                        }
                        GroupState::Collision => {
                            let next = server.get_alternative_service_name(self.name).await?;
                            tracing::warn!(service = %self.name, next = %next, "service name collision");
                            *self.name = next;
                            self.registered.send_replace(None);
                            group.reset().await?;
                            add_and_commit(group, self.name, &current, self.key).await?;
                        }
                        GroupState::Failure => {
                            return Err(zbus::Error::Failure(format!(
                                "entry group failed: {}",
                                args.error
                            )));
                        }
                        GroupState::Uncommitted | GroupState::Registering => {}
                    }
                }
                changed = self.advert.changed() => {
                    if changed.is_err() {
                        // The Publisher is gone; its task is being aborted.
                        return Ok(SessionEnd::Withdrawn);
                    }
                    current = self.advert.borrow_and_update().clone();
                    let txt = current.to_txt(self.key);
                    group
                        .update_service_txt(IF_UNSPEC, PROTO_INET, 0, self.name, SERVICE_TYPE, "", txt)
                        .await?;
                }
            }
        }
    }
}

/// Adds the service with `advert` signed under `key` and commits the group.
async fn add_and_commit(
    group: &EntryGroupProxy<'_>,
    name: &str,
    advert: &Advert,
    key: &MacKey,
) -> zbus::Result<()> {
    group
        .add_service(
            IF_UNSPEC,
            PROTO_INET,
            0,
            name,
            SERVICE_TYPE,
            "",
            "",
            advert.port,
            advert.to_txt(key),
        )
        .await?;
    group
        .add_service_subtype(
            IF_UNSPEC,
            PROTO_INET,
            0,
            name,
            SERVICE_TYPE,
            "",
            REFRESH_SUBTYPE,
        )
        .await?;
    group.commit().await
}
