//! Storage for etcd on a Pi: measure fdatasync latency, classify the device, tune the OS for it.
//!
//! The module list reads like the pipeline: [`data_device`] moves `/var/lib/rancher` to an empty
//! disk, [`probe`] measures, [`class`] names the device and its speed (from [`crate::host::sysfs`]), [`plan`]
//! turns the class into a [`plan::TuningPlan`] (pure data), [`apply`] writes it under a `--root`
//! prefix idempotently, [`etcd`] holds the cluster-wide etcd timing and [`score`] the election
//! rank input. [`assessment`] ties probe, class and plan together, [`setup`] is the daemon's one
//! call for the whole step, and [`cli`] is `firstboot probe-storage`.

pub mod apply;
pub mod assessment;
pub mod class;
pub mod cli;
pub mod data_device;
pub mod etcd;
pub mod plan;
pub mod probe;
pub mod score;
pub mod setup;
