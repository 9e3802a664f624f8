//! Storage for etcd on a Pi: measure fdatasync latency, classify the device, tune the OS for it.
//!
//! The pipeline reads like the module list: [`probe`] measures, [`assessment`] ties the steps together, [`class`] names the device and
//! its speed, [`plan`] turns both into a [`plan::TuningPlan`] (pure data), [`apply`] writes that
//! plan under a `--root` prefix idempotently, [`etcd`] holds the cluster-wide etcd timing, and
//! [`data_device`] moves `/var/lib/rancher` to an empty disk. [`score`] feeds the election rank.

pub mod apply;
pub mod assessment;
pub mod class;
pub mod cli;
pub mod data_device;
pub mod etcd;
pub mod plan;
pub mod probe;
pub mod score;
pub mod sysfs;
