//! firstboot: reads `cluster.toml`, finds peers, elects one cluster-init node and brings up K3s.
//!
//! The library holds all logic; `main.rs` only parses arguments and dispatches. `imagebuild`
//! uses [`config`] so that the boot-partition contract has one owner.
//!
//! [`lifecycle`] runs the steps in order: [`intake`] → [`identity`] → [`clock`] → [`storage`] →
//! [`discovery`] → [`election`] (the sans-IO core and its async [`election::driver`]) → role and
//! [`k3s`] (with [`announce`]) → ready, reporting through [`status`]. Every module speaks the
//! vocabulary of [`model`] (`NodeId`, `RolePin`, `Role`), takes its token-derived keys from
//! [`keys`] and its file locations from [`paths`]; every JSON state file is read and written through
//! [`durable::JsonFile`]. The election core is split as quinn-proto splits a connection (epoch
//! state, per-instance acceptors, timers, peer view, persist-gated outbox, status, legacy state
//! files: one file each, listed in [`election`] and docs/architecture.md). No test code is compiled in: the crate has no
//! features; tests break the election's [`election::Rules`] or hook its driver
//! ([`election::PersistHook`]) from the test crate.

pub mod announce;
pub mod api_address;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod default_route;
pub mod discovery;
pub mod durable;
pub mod election;
pub mod healer;
pub mod host;
pub mod identity;
pub mod intake;
pub mod k3s;
pub mod keys;
pub mod kubeconfig;
pub mod lifecycle;
pub mod manifest;
pub mod model;
pub mod paths;
pub mod seat_book;
pub mod status;
pub mod storage;
pub mod suggest;
pub mod systemd;
