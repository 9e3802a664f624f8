//! `cluster.toml` exactly as written: every field optional and carrying its source span.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub version: Option<Spanned<i64>>,
    pub cluster: Option<Spanned<RawCluster>>,
    pub node: Option<RawNode>,
    pub k3s: Option<RawK3s>,
    pub storage: Option<RawStorage>,
    pub snapshots: Option<RawSnapshots>,
    pub timeouts: Option<RawTimeouts>,
    pub status: Option<RawStatus>,
}

/// `[cluster]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub name: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub servers: Option<Spanned<i64>>,
    pub nodes: Option<Spanned<i64>>,
    pub replace_after: Option<Spanned<String>>,
    pub api_address: Option<Spanned<String>>,
}

/// `[node]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub role: Option<Spanned<String>>,
    pub hostname: Option<Spanned<String>>,
}

/// `[k3s]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawK3s {
    pub disable: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls_san: Option<Spanned<Vec<Spanned<String>>>>,
    pub node_taints: Option<Spanned<Vec<Spanned<String>>>>,
    pub extra: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub profile: Option<Spanned<String>>,
    pub data_device: Option<Spanned<String>>,
    pub data_device_force: Option<Spanned<bool>>,
}

/// `[snapshots]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnapshots {
    pub schedule: Option<Spanned<String>>,
    pub retention: Option<Spanned<i64>>,
    pub dir: Option<Spanned<String>>,
}

/// `[timeouts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub bootstrap: Option<Spanned<String>>,
    pub time_sync: Option<Spanned<String>>,
}

/// `[status]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStatus {
    pub led_gpio: Option<Spanned<i64>>,
}
