//! Bootstrap on a real LAN (SPEC 4.1 steps 5 and 6): the election core driven by UDP, Avahi and timers.

pub mod driver;
pub mod store;

pub use driver::ElectionDriver;
pub use store::ElectionStore;
