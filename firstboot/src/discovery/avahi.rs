//! zbus proxies for the parts of Avahi's D-Bus API that discovery uses (avahi 0.8, `Server2`).

/// Well-known bus name of avahi-daemon.
pub const AVAHI_BUS_NAME: &str = "org.freedesktop.Avahi";

/// `AVAHI_IF_UNSPEC`: all interfaces.
pub const IF_UNSPEC: i32 = -1;
/// `AVAHI_PROTO_INET`: IPv4 only (the test LAN and our transport are IPv4).
pub const PROTO_INET: i32 = 0;
/// `AVAHI_LOOKUP_RESULT_LOCAL`: the record comes from this host.
pub const LOOKUP_RESULT_LOCAL: u32 = 8;

/// `AvahiServerState::AVAHI_SERVER_RUNNING`.
pub const SERVER_RUNNING: i32 = 2;

/// States of an entry group (`AvahiEntryGroupState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// Not yet committed.
    Uncommitted,
    /// Probing the names.
    Registering,
    /// Announced on the network.
    Established,
    /// Another host owns one of the names.
    Collision,
    /// The daemon gave up on the group.
    Failure,
}

impl GroupState {
    /// Maps the D-Bus integer.
    pub fn from_raw(raw: i32) -> Self {
        match raw {
            0 => GroupState::Uncommitted,
            1 => GroupState::Registering,
            2 => GroupState::Established,
            3 => GroupState::Collision,
            _ => GroupState::Failure,
        }
    }
}

/// The Avahi server object.
pub mod server {
    use zbus::proxy;
    use zbus::zvariant::OwnedObjectPath;

    /// `org.freedesktop.Avahi.Server2` at `/`.
    #[proxy(
        interface = "org.freedesktop.Avahi.Server2",
        default_service = "org.freedesktop.Avahi",
        default_path = "/",
        gen_blocking = false
    )]
    pub trait Server {
        /// Daemon version string.
        fn get_version_string(&self) -> zbus::Result<String>;
        /// Server state (`AvahiServerState`).
        fn get_state(&self) -> zbus::Result<i32>;
        /// Host name the daemon announces.
        fn get_host_name(&self) -> zbus::Result<String>;
        /// Next name to try after a collision ("name #2").
        fn get_alternative_service_name(&self, name: &str) -> zbus::Result<String>;
        /// Creates an entry group owned by this connection.
        fn entry_group_new(&self) -> zbus::Result<OwnedObjectPath>;
        /// Creates a service browser that emits nothing until `Start`.
        fn service_browser_prepare(
            &self,
            interface: i32,
            protocol: i32,
            service_type: &str,
            domain: &str,
            flags: u32,
        ) -> zbus::Result<OwnedObjectPath>;
        /// Creates a service resolver that emits nothing until `Start`.
        #[allow(clippy::too_many_arguments)]
        fn service_resolver_prepare(
            &self,
            interface: i32,
            protocol: i32,
            name: &str,
            service_type: &str,
            domain: &str,
            aprotocol: i32,
            flags: u32,
        ) -> zbus::Result<OwnedObjectPath>;
        /// Server state changes (host name collision, restart of the daemon's own probing).
        #[zbus(signal)]
        fn state_changed(&self, state: i32, error: String) -> zbus::Result<()>;
    }
}

/// Entry groups: records published together.
pub mod entry_group {
    use zbus::proxy;

    /// `org.freedesktop.Avahi.EntryGroup`: a set of records published together.
    #[proxy(
        interface = "org.freedesktop.Avahi.EntryGroup",
        default_service = "org.freedesktop.Avahi",
        gen_blocking = false
    )]
    pub trait EntryGroup {
        /// Releases the group (withdraws its records).
        fn free(&self) -> zbus::Result<()>;
        /// Starts probing and announcing.
        fn commit(&self) -> zbus::Result<()>;
        /// Withdraws and empties the group.
        fn reset(&self) -> zbus::Result<()>;
        /// Current `AvahiEntryGroupState`.
        fn get_state(&self) -> zbus::Result<i32>;
        /// Adds a service with its TXT record.
        #[allow(clippy::too_many_arguments)]
        fn add_service(
            &self,
            interface: i32,
            protocol: i32,
            flags: u32,
            name: &str,
            service_type: &str,
            domain: &str,
            host: &str,
            port: u16,
            txt: Vec<Vec<u8>>,
        ) -> zbus::Result<()>;
        /// Also lists a service added to this group under a subtype of its type (RFC 6763 7.1).
        #[allow(clippy::too_many_arguments)]
        fn add_service_subtype(
            &self,
            interface: i32,
            protocol: i32,
            flags: u32,
            name: &str,
            service_type: &str,
            domain: &str,
            subtype: &str,
        ) -> zbus::Result<()>;
        /// Adds an address record `name` -> `address` (with its reverse PTR unless flagged).
        fn add_address(
            &self,
            interface: i32,
            protocol: i32,
            flags: u32,
            name: &str,
            address: &str,
        ) -> zbus::Result<()>;
        /// Replaces the TXT record of a published service.
        #[allow(clippy::too_many_arguments)]
        fn update_service_txt(
            &self,
            interface: i32,
            protocol: i32,
            flags: u32,
            name: &str,
            service_type: &str,
            domain: &str,
            txt: Vec<Vec<u8>>,
        ) -> zbus::Result<()>;
        /// Group state changes.
        #[zbus(signal)]
        fn state_changed(&self, state: i32, error: String) -> zbus::Result<()>;
    }
}

/// Service browsers.
pub mod service_browser {
    use zbus::proxy;

    /// `org.freedesktop.Avahi.ServiceBrowser`: instances of one service type appearing and leaving.
    #[proxy(
        interface = "org.freedesktop.Avahi.ServiceBrowser",
        default_service = "org.freedesktop.Avahi",
        gen_blocking = false
    )]
    pub trait ServiceBrowser {
        /// Releases the browser.
        fn free(&self) -> zbus::Result<()>;
        /// Starts emitting signals (after the caller subscribed).
        fn start(&self) -> zbus::Result<()>;
        /// A service instance appeared.
        #[zbus(signal)]
        #[allow(clippy::too_many_arguments)]
        fn item_new(
            &self,
            interface: i32,
            protocol: i32,
            name: String,
            service_type: String,
            domain: String,
            flags: u32,
        ) -> zbus::Result<()>;
        /// A service instance left.
        #[zbus(signal)]
        #[allow(clippy::too_many_arguments)]
        fn item_remove(
            &self,
            interface: i32,
            protocol: i32,
            name: String,
            service_type: String,
            domain: String,
            flags: u32,
        ) -> zbus::Result<()>;
        /// The browser failed.
        #[zbus(signal)]
        fn failure(&self, error: String) -> zbus::Result<()>;
    }
}

/// Service resolvers.
pub mod service_resolver {
    use zbus::proxy;

    /// `org.freedesktop.Avahi.ServiceResolver`: SRV, TXT and address of one instance, re-emitted on change.
    #[proxy(
        interface = "org.freedesktop.Avahi.ServiceResolver",
        default_service = "org.freedesktop.Avahi",
        gen_blocking = false
    )]
    pub trait ServiceResolver {
        /// Releases the resolver.
        fn free(&self) -> zbus::Result<()>;
        /// Starts emitting signals (after the caller subscribed).
        fn start(&self) -> zbus::Result<()>;
        /// The instance resolved (again after each record change).
        #[zbus(signal)]
        #[allow(clippy::too_many_arguments)]
        fn found(
            &self,
            interface: i32,
            protocol: i32,
            name: String,
            service_type: String,
            domain: String,
            host: String,
            aprotocol: i32,
            address: String,
            port: u16,
            txt: Vec<Vec<u8>>,
            flags: u32,
        ) -> zbus::Result<()>;
        /// Resolution failed (timeout, instance gone).
        #[zbus(signal)]
        fn failure(&self, error: String) -> zbus::Result<()>;
    }
}

pub use entry_group::EntryGroupProxy;
pub use server::ServerProxy;
pub use service_browser::ServiceBrowserProxy;
pub use service_resolver::ServiceResolverProxy;
