//! The `cluster.toml` contract (schema version 1): raw serde structs validated into [`ClusterConfig`].
