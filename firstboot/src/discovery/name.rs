//! The cluster's own name on the LAN: `<cluster name>.local`, published over mDNS by the server
//! holding the fixed registration address's Lease ([`crate::api_address`]), pointing at that
//! address (or at the holder's node-ip when no `api_address` is set), so
//! `kubectl --server https://homelab.local:6443` works from a laptop with mDNS.

use super::avahi::{EntryGroupProxy, IF_UNSPEC, PROTO_INET};
use super::publish::server;
use std::net::IpAddr;
use zbus::proxy::CacheProperties;

/// `AVAHI_PUBLISH_NO_REVERSE`: no PTR record (the address's reverse name is the host's own).
const PUBLISH_NO_REVERSE: u32 = 16;

/// A published name; [`Published::withdraw`] takes it off the LAN.
pub struct Published {
    group: EntryGroupProxy<'static>,
}

/// Publishes `<cluster>.local` -> `address` through avahi-daemon.
pub async fn publish(
    conn: &zbus::Connection,
    cluster: &str,
    address: IpAddr,
) -> zbus::Result<Published> {
    let server = server(conn).await?;
    let group = EntryGroupProxy::builder(conn)
        .path(server.entry_group_new().await?)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let added = async {
        group
            .add_address(
                IF_UNSPEC,
                PROTO_INET,
                PUBLISH_NO_REVERSE,
                &format!("{cluster}.local"),
                &address.to_string(),
            )
            .await?;
        group.commit().await
    }
    .await;
    if let Err(e) = added {
        group.free().await.ok();
        return Err(e);
    }
    Ok(Published { group })
}

impl Published {
    /// Withdraws the name (avahi sends goodbyes).
    pub async fn withdraw(self) {
        self.group.free().await.ok();
    }
}
