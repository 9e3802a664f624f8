//! Discovery on the LAN (lifecycle step 5, see docs/architecture.md): Avahi over D-Bus, signed TXT records, the frame transport.

pub mod avahi;
pub mod browse;
pub mod name;
pub mod peers;
pub mod publish;
pub mod record;
pub mod table;
pub mod transport;

/// The DNS-SD service type every firstboot node publishes and browses.
pub const SERVICE_TYPE: &str = "_k3s-firstboot._tcp";
/// The subtype every node also lists itself under, so a browser can ask the LAN again without
/// waiting for avahi's backed-off queries of [`SERVICE_TYPE`] (see `browse::REFRESH_QUERY`).
pub const REFRESH_SUBTYPE: &str = "_node._sub._k3s-firstboot._tcp";

pub use browse::{Browser, PeerEvent};
pub use publish::Publisher;
pub use record::{Advert, ClusterId, Peer, PeerClass, RolePin};
pub use table::PeerTable;
pub use transport::{FrameTransport, UdpTransport, FRAME_PORT, MAX_FRAME};
