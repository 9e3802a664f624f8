//! Publishes this node's signed record and keeps it published across daemon restarts and collisions.

use super::avahi::{
    EntryGroupProxy, GroupState, ServerProxy, IF_UNSPEC, PROTO_INET, SERVER_RUNNING,
};
use super::record::{Advert, RecordKey};
use super::SERVICE_TYPE;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zbus::proxy::CacheProperties;

/// How often to look for avahi-daemon while it is away.
const DAEMON_POLL: Duration = Duration::from_millis(250);

/// A running publication of `_k3s-firstboot._tcp`; dropping it withdraws the record.
pub struct Publisher {
    advert: watch::Sender<Advert>,
    registered: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing `advert` under the service instance name `name` (alternatives on collision).
    pub fn spawn(conn: zbus::Connection, name: String, advert: Advert, key: RecordKey) -> Self {
        let (advert_tx, advert_rx) = watch::channel(advert);
        let (registered_tx, registered_rx) = watch::channel(None);
        let task = tokio::spawn(publish_forever(conn, name, key, advert_rx, registered_tx));
        Self {
            advert: advert_tx,
            registered: registered_rx,
            task,
        }
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
}

async fn publish_forever(
    conn: zbus::Connection,
    mut name: String,
    key: RecordKey,
    mut advert: watch::Receiver<Advert>,
    registered: watch::Sender<Option<String>>,
) {
    loop {
        wait_for_daemon(&conn).await;
        match session(&conn, &mut name, &key, &mut advert, &registered).await {
            Ok(SessionEnd::DaemonLost) => {
                tracing::warn!("avahi-daemon went away; will register again when it is back")
            }
            Err(e) => tracing::warn!("publishing {name}: {e}; retrying"),
        }
        registered.send_replace(None);
        tokio::time::sleep(DAEMON_POLL).await;
    }
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

async fn session(
    conn: &zbus::Connection,
    name: &mut String,
    key: &RecordKey,
    advert: &mut watch::Receiver<Advert>,
    registered: &watch::Sender<Option<String>>,
) -> zbus::Result<SessionEnd> {
    let server = server(conn).await?;
    let mut owner = server.inner().receive_owner_changed().await?;
    let mut server_state = server.receive_state_changed().await?;
    let group = EntryGroupProxy::builder(conn)
        .path(server.entry_group_new().await?)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut group_state = group.receive_state_changed().await?;
    // The daemon may have stopped between the state check and now; the owner stream only reports
    // later changes, so ask once more.
    if server.get_state().await? != SERVER_RUNNING {
        return Ok(SessionEnd::DaemonLost);
    }
    let current = advert.borrow_and_update().clone();
    add_and_commit(&group, name, &current, key).await?;
    loop {
        tokio::select! {
            change = owner.next() => {
                // A new owner is a restarted daemon that knows nothing of our group.
                let _ = change;
                return Ok(SessionEnd::DaemonLost);
            }
            signal = server_state.next() => {
                let Some(signal) = signal else { return Ok(SessionEnd::DaemonLost) };
                let state = signal.args()?.state;
                if state != SERVER_RUNNING {
                    // Host name collision or re-probing: avahi wants groups reset and re-added
                    // once it runs again.
                    tracing::info!(state, "avahi server left the running state");
                    group.free().await.ok();
                    return Ok(SessionEnd::DaemonLost);
                }
            }
            signal = group_state.next() => {
                let Some(signal) = signal else { return Ok(SessionEnd::DaemonLost) };
                let args = signal.args()?;
                match GroupState::from_raw(args.state) {
                    GroupState::Established => {
                        tracing::info!(service = %name, "published {SERVICE_TYPE}");
                        registered.send_replace(Some(name.clone()));
                    }
                    GroupState::Collision => {
                        let next = server.get_alternative_service_name(name).await?;
                        tracing::warn!(service = %name, next = %next, "service name collision");
                        *name = next;
                        registered.send_replace(None);
                        group.reset().await?;
                        let current = advert.borrow_and_update().clone();
                        add_and_commit(&group, name, &current, key).await?;
                    }
                    GroupState::Failure => {
                        group.free().await.ok();
                        return Err(zbus::Error::Failure(format!("entry group failed: {}", args.error)));
                    }
                    GroupState::Uncommitted | GroupState::Registering => {}
                }
            }
            changed = advert.changed() => {
                if changed.is_err() {
                    // The Publisher was dropped; its task is being aborted.
                    return Ok(SessionEnd::DaemonLost);
                }
                let current = advert.borrow_and_update().clone();
                let txt = current.to_txt(key);
                group
                    .update_service_txt(IF_UNSPEC, PROTO_INET, 0, name, SERVICE_TYPE, "", txt)
                    .await?;
            }
        }
    }
}

async fn add_and_commit(
    group: &EntryGroupProxy<'_>,
    name: &str,
    advert: &Advert,
    key: &RecordKey,
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
    group.commit().await
}
