//! firstboot: reads `cluster.toml`, finds peers, elects one cluster-init node and brings up K3s.
//!
//! The library holds all logic; `main.rs` only parses arguments and dispatches. `imagebuild`
//! uses [`config`] so that the boot-partition contract has one owner.

pub mod announce;
pub mod clock;
pub mod config;
pub mod default_route;
pub mod discovery;
pub mod durable;
pub mod election;
pub mod identity;
pub mod intake;
pub mod k3s;
pub mod keys;
pub mod lifecycle;
pub mod model;
pub mod paths;
pub mod status;
pub mod storage;
pub mod suggest;
pub mod systemd;
