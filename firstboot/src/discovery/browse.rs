//! Browses and resolves `_k3s-firstboot._tcp` instances and classifies each record it finds.

use super::avahi::service_browser::{
    FailureStream as BrowseFailureStream, ItemNewStream, ItemRemoveStream,
};
use super::avahi::service_resolver::{Failure as ResolveFailure, Found};
use super::avahi::{
    ServiceBrowserProxy, ServiceResolverProxy, AVAHI_BUS_NAME, IF_UNSPEC, LOOKUP_RESULT_LOCAL,
    PROTO_INET,
};
use super::publish::{server, wait_for_daemon};
use super::record::{classify, ClusterId, Peer};
use super::{REFRESH_SUBTYPE, SERVICE_TYPE};
use crate::keys::MacKey;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::{MatchRule, MessageStream};

/// Pause before a failed resolver is tried again while its instance is still listed.
const RESOLVE_RETRY: Duration = Duration::from_secs(2);

/// How often the browser asks the LAN again for every instance of the service type.
///
/// avahi-daemon asks once when a browse starts and then backs off (1, 3, 7, 15, 31, 63, 127 s,
/// up to an hour, RFC 6762 5.2), and a node announces its records only when it registers them.
/// So two groups of nodes that could not hear each other (a partition from power-on, a switch
/// that came back) would otherwise find each other only at the next backed-off query, up to a
/// minute or more later (issue 18: "learns of it within seconds"). Every `REFRESH_QUERY` the
/// browser makes the daemon send one more query, see `ask_the_lan`.
///
/// The cost is one small multicast query per node per period: a question plus the PTR records
/// this node already knows, which every peer already listed takes as a known answer and so does
/// not answer (RFC 6762 7.1); a peer that saw the same question in the last second does not even
/// send its own (7.3). Five nodes: about one packet a second on the LAN, a few hundred bytes.
/// This is the one place where we query more often than RFC 6762 5.2's backoff: a cluster's
/// membership depends on it, and the traffic stays far below what K3s itself sends.
pub const REFRESH_QUERY: Duration = Duration::from_secs(5);

/// How long a refresh's browser lives: past avahi's first query (sent 20-120 ms after the browser
/// starts) and the peers' answers (delayed 20-120 ms, RFC 6762 6), before its second query (1 s),
/// so each refresh sends exactly one query.
const REFRESH_HOLD: Duration = Duration::from_millis(900);

/// What the browser reports, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// An instance was listed on the LAN; a `Resolved` follows once its records are in.
    Appeared {
        /// Service instance name.
        service: String,
    },
    /// An instance resolved, or its record changed.
    Resolved(Peer),
    /// An instance left the LAN.
    Removed {
        /// Service instance name.
        service: String,
    },
    /// avahi-daemon restarted: forget everything, instances will be reported again.
    Restarted,
}

/// A running browse of `_k3s-firstboot._tcp`; dropping it stops browsing.
pub struct Browser {
    events: mpsc::Receiver<PeerEvent>,
    task: JoinHandle<()>,
}

impl Browser {
    /// Starts browsing; records are classified against `cluster` and `key`.
    pub fn spawn(conn: zbus::Connection, cluster: ClusterId, key: MacKey) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(browse_forever(conn, cluster, key, tx));
        Self { events: rx, task }
    }

    /// The next event; `None` only if the browse task stopped.
    pub async fn next(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a resolver task needs to classify what it finds.
#[derive(Clone)]
struct Classifier {
    cluster: ClusterId,
    key: MacKey,
    events: mpsc::Sender<PeerEvent>,
}

async fn browse_forever(
    conn: zbus::Connection,
    cluster: ClusterId,
    key: MacKey,
    events: mpsc::Sender<PeerEvent>,
) {
    let classifier = Classifier {
        cluster,
        key,
        events,
    };
    let mut first = true;
    loop {
        wait_for_daemon(&conn).await;
        if !first && classifier.events.send(PeerEvent::Restarted).await.is_err() {
            return;
        }
        first = false;
        if let Err(e) = session(&conn, &classifier).await {
            tracing::warn!("browsing {SERVICE_TYPE}: {e}; retrying");
        }
        if classifier.events.is_closed() {
            return;
        }
        tokio::time::sleep(RESOLVE_RETRY / 4).await;
    }
}

/// A service browser for `service_type` (IPv4, all interfaces) that emits nothing until `Start`.
async fn prepare_browser(
    conn: &zbus::Connection,
    service_type: &str,
) -> zbus::Result<ServiceBrowserProxy<'static>> {
    let path = server(conn)
        .await?
        .service_browser_prepare(IF_UNSPEC, PROTO_INET, service_type, "", 0)
        .await?;
    ServiceBrowserProxy::builder(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// One browse against one avahi-daemon instance; returns when the daemon goes away.
async fn session(conn: &zbus::Connection, classifier: &Classifier) -> zbus::Result<()> {
    let server = server(conn).await?;
    let mut owner = server.inner().receive_owner_changed().await?;
    let browser = prepare_browser(conn, SERVICE_TYPE).await?;
    let mut added = browser.receive_item_new().await?;
    let mut removed = browser.receive_item_remove().await?;
    let mut failed = browser.receive_failure().await?;
    browser.start().await?;
    let (listed_tx, mut listed) = mpsc::channel(64);
    let _refresh = RefreshTask(tokio::spawn(refresh_forever(conn.clone(), listed_tx)));
    // One resolver per (interface, instance name); the sender cancels it.
    let mut resolvers: HashMap<(i32, String), oneshot::Sender<()>> = HashMap::new();
    let mut signals = Signals {
        owner: &mut owner,
        added: &mut added,
        removed: &mut removed,
        failed: &mut failed,
        listed: &mut listed,
    };
    let result = follow(conn, classifier, &mut signals, &mut resolvers).await;
    // Dropping the cancel senders stops every resolver task.
    drop(resolvers);
    // However the session ended; if the daemon is gone, so is the browser.
    browser.free().await.ok();
    result
}

/// Stops the refresh queries when a browse session ends.
struct RefreshTask(JoinHandle<()>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the LAN again every [`REFRESH_QUERY`] while the session lasts; sends each instance the
/// answers list as `(interface, name)`.
async fn refresh_forever(conn: zbus::Connection, listed: mpsc::Sender<(i32, String)>) {
    loop {
        tokio::time::sleep(REFRESH_QUERY).await;
        if let Err(e) = ask_the_lan(&conn, &listed).await {
            tracing::debug!("refresh query for {REFRESH_SUBTYPE}: {e}");
        }
        if listed.is_closed() {
            return;
        }
    }
}

/// Makes avahi-daemon send one multicast query for every node now, and reports who answers.
///
/// Freeing and re-creating the service browser would not do it: avahi keeps a query's scheduler
/// (its "querier") alive after its last user leaves until the querier's next backed-off expiry,
/// and a new browser for the same key reuses it without asking (avahi-core/querier.c,
/// `avahi_querier_add` and `avahi_querier_remove`); and avahi refuses record browsers for the
/// pattern type ANY. Every node also lists itself under [`REFRESH_SUBTYPE`], another key: a
/// browser for it gets a querier of its own whose first query goes out at once. Freed after
/// [`REFRESH_HOLD`], the querier dies at its first expiry (1 s), so the next refresh gets a fresh
/// one. The answers name the instances, which the caller resolves like the main browser's.
async fn ask_the_lan(
    conn: &zbus::Connection,
    listed: &mpsc::Sender<(i32, String)>,
) -> zbus::Result<()> {
    let browser = prepare_browser(conn, REFRESH_SUBTYPE).await?;
    let outcome = async {
        let mut added = browser.receive_item_new().await?;
        browser.start().await?;
        let hold = tokio::time::sleep(REFRESH_HOLD);
        tokio::pin!(hold);
        loop {
            tokio::select! {
                _ = &mut hold => break Ok(()),
                item = added.next() => {
                    let Some(item) = item else { break Ok(()) };
                    let args = item.args()?;
                    if args.flags & LOOKUP_RESULT_LOCAL == 0
                        && listed.send((args.interface, args.name.clone())).await.is_err()
                    {
                        break Ok(());
                    }
                }
            }
        }
    }
    .await;
    browser.free().await.ok();
    outcome
}

/// What a browse session follows: the daemon's presence, the browser's signals and the refresh
/// queries' answers.
struct Signals<'a, 'o> {
    owner: &'a mut zbus::proxy::OwnerChangedStream<'o>,
    added: &'a mut ItemNewStream,
    removed: &'a mut ItemRemoveStream,
    failed: &'a mut BrowseFailureStream,
    listed: &'a mut mpsc::Receiver<(i32, String)>,
}

/// Follows the browser's signals, starting and cancelling resolvers, until the daemon goes away.
async fn follow(
    conn: &zbus::Connection,
    classifier: &Classifier,
    signals: &mut Signals<'_, '_>,
    resolvers: &mut HashMap<(i32, String), oneshot::Sender<()>>,
) -> zbus::Result<()> {
    let Signals {
        owner,
        added,
        removed,
        failed,
        listed,
    } = signals;
    loop {
        tokio::select! {
            _ = owner.next() => break Ok(()),
            item = added.next() => {
                let Some(item) = item else { break Ok(()) };
                let args = item.args()?;
                if args.flags & LOOKUP_RESULT_LOCAL != 0 {
                    continue; // our own host's record
                }
                if !appeared(conn, classifier, resolvers, args.interface, &args.name).await {
                    break Ok(());
                }
            }
            Some((interface, name)) = listed.recv() => {
                // A refresh's answer: new only if the main browser has not listed it yet.
                if !appeared(conn, classifier, resolvers, interface, &name).await {
                    break Ok(());
                }
            }
            item = removed.next() => {
                let Some(item) = item else { break Ok(()) };
                let args = item.args()?;
                if resolvers.remove(&(args.interface, args.name.clone())).is_some() {
                    let gone = PeerEvent::Removed { service: args.name.clone() };
                    if classifier.events.send(gone).await.is_err() {
                        break Ok(());
                    }
                }
            }
            failure = failed.next() => {
                let error = match failure {
                    Some(f) => f.args().map(|a| a.error.clone()).unwrap_or_default(),
                    None => String::new(),
                };
                break Err(zbus::Error::Failure(format!("service browser failed: {error}")));
            }
        }
    }
}

/// An instance is listed: report it and resolve it, once per (interface, name); false when
/// nobody listens any more.
async fn appeared(
    conn: &zbus::Connection,
    classifier: &Classifier,
    resolvers: &mut HashMap<(i32, String), oneshot::Sender<()>>,
    interface: i32,
    name: &str,
) -> bool {
    let slot = (interface, name.to_string());
    if resolvers.contains_key(&slot) {
        return true;
    }
    tracing::debug!(service = %name, "instance appeared");
    let (cancel, cancelled) = oneshot::channel();
    resolvers.insert(slot, cancel);
    let appeared = PeerEvent::Appeared {
        service: name.to_string(),
    };
    if classifier.events.send(appeared).await.is_err() {
        return false;
    }
    tokio::spawn(resolve_while_listed(
        conn.clone(),
        interface,
        name.to_string(),
        classifier.clone(),
        cancelled,
    ));
    true
}

/// Resolves one instance and re-reports on every record change until cancelled.
async fn resolve_while_listed(
    conn: zbus::Connection,
    interface: i32,
    name: String,
    classifier: Classifier,
    mut cancelled: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut cancelled => return,
            outcome = resolve(&conn, interface, &name, &classifier) => {
                if let Err(e) = outcome {
                    tracing::debug!(service = %name, "resolving: {e}");
                }
            }
        }
        tokio::select! {
            _ = &mut cancelled => return,
            _ = tokio::time::sleep(RESOLVE_RETRY) => {}
        }
    }
}

/// Runs one resolver until it fails; each `Found` becomes a `Resolved` event.
///
/// avahi 0.8 emits `Found` for cached records right after `ServiceResolverPrepare`, before `Start`
/// and before the caller knows the object path, so the signals are subscribed by interface first
/// and filtered by path once the path is known.
async fn resolve(
    conn: &zbus::Connection,
    interface: i32,
    name: &str,
    classifier: &Classifier,
) -> zbus::Result<()> {
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(AVAHI_BUS_NAME)?
        .interface("org.freedesktop.Avahi.ServiceResolver")?
        .build();
    let mut signals = MessageStream::for_match_rule(rule, conn, Some(64)).await?;
    let server = server(conn).await?;
    let path = server
        .service_resolver_prepare(
            interface,
            PROTO_INET,
            name,
            SERVICE_TYPE,
            "local",
            PROTO_INET,
            0,
        )
        .await?;
    let resolver = ServiceResolverProxy::builder(conn)
        .path(path.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let freed = ResolverGuard(Some(resolver.clone()));
    resolver.start().await?;
    let outcome = loop {
        let Some(message) = signals.next().await else {
            break Ok(());
        };
        let message = message?;
        if message.header().path().map(|p| p.as_str()) != Some(path.as_str()) {
            continue; // another resolver's signal
        }
        if let Some(found) = Found::from_message(message.clone()) {
            let args = found.args()?;
            tracing::debug!(service = %args.name, address = %args.address, "instance resolved");
            let Ok(ip) = args.address.parse::<IpAddr>() else {
                continue;
            };
            let peer = Peer {
                service: args.name.clone(),
                addr: SocketAddr::new(ip, args.port),
                class: classify(&args.txt, &classifier.cluster, &classifier.key),
            };
            if classifier
                .events
                .send(PeerEvent::Resolved(peer))
                .await
                .is_err()
            {
                break Ok(());
            }
        } else if let Some(failure) = ResolveFailure::from_message(message) {
            let error = failure.args().map(|a| a.error.clone()).unwrap_or_default();
            break Err(zbus::Error::Failure(format!("resolver failed: {error}")));
        }
    };
    drop(freed);
    outcome
}

/// Frees a resolver on the daemon when its task ends or is cancelled.
struct ResolverGuard(Option<ServiceResolverProxy<'static>>);

impl Drop for ResolverGuard {
    fn drop(&mut self) {
        // Best effort: if the daemon is gone, so is the resolver; without a runtime (shutdown),
        // the connection closes and avahi frees it.
        if let (Some(resolver), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                resolver.free().await.ok();
            });
        }
    }
}
