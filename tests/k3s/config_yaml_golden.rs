//! config.yaml per role compared byte for byte with the reviewed golden files in tests/k3s/golden/.
//!
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p systests --test
//! k3s_config_yaml`, then review the diff against docs.k3s.io before committing.

use firstboot::config::ClusterConfig;
use firstboot::k3s::{render, CaHash, K3sRole, NodeFacts};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    systests::repo_root().join("tests/k3s/golden")
}

fn config() -> ClusterConfig {
    ClusterConfig::load(&golden_dir().join("cluster.toml")).expect("golden cluster.toml is valid")
}

/// A fixed CA hash: sha256 of the bytes "golden CA bundle\n".
fn ca() -> CaHash {
    CaHash::of_bundle(b"golden CA bundle\n")
}

fn facts(suffix: &str, ip: &str) -> NodeFacts {
    NodeFacts {
        node_name: format!("store-0142-{suffix}"),
        node_ip: ip.parse().expect("literal IP"),
        hostname: format!("store-0142-{suffix}"),
        etcd_args: vec![
            "heartbeat-interval=500".into(),
            "election-timeout=5000".into(),
        ],
        snapshot_dir: None,
        flannel_iface: Some("eth0".into()),
    }
}

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("writing golden file");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(actual, expected, "{name}.yaml differs from the golden file");
}

#[test]
fn init_server() {
    check(
        "init",
        &render(&config(), &K3sRole::Init, &facts("a1b2c3", "198.18.0.11")),
    );
}

#[test]
fn join_server() {
    let role = K3sRole::JoinServer {
        server_url: "https://198.18.0.11:6443".into(),
        ca_hash: ca(),
    };
    check(
        "join-server",
        &render(&config(), &role, &facts("d4e5f6", "198.18.0.12")),
    );
}

/// `servers = 1`: the same cluster with one server runs K3s's default datastore, SQLite (no
/// `cluster-init`; pkg/cluster/managed.go:125 picks etcd only for cluster-init or a join).
#[test]
fn single_server_init() {
    let mut one = config();
    one.servers = 1;
    check(
        "init-single-server",
        &render(&one, &K3sRole::Init, &facts("a1b2c3", "198.18.0.11")),
    );
}

#[test]
fn agent() {
    let role = K3sRole::Agent {
        server_url: "https://198.18.0.11:6443".into(),
        ca_hash: ca(),
    };
    check(
        "agent",
        &render(&config(), &role, &facts("0a0b0c", "198.18.0.13")),
    );
}

#[test]
fn cluster_wide_keys_match_between_servers() {
    let init = render(&config(), &K3sRole::Init, &facts("a1b2c3", "198.18.0.11"));
    let join = render(
        &config(),
        &K3sRole::JoinServer {
            server_url: "https://198.18.0.11:6443".into(),
            ca_hash: ca(),
        },
        &facts("d4e5f6", "198.18.0.12"),
    );
    let wide = |y: &str| -> Vec<String> {
        y.lines()
            .filter(|l| {
                ![
                    "token:",
                    "cluster-init:",
                    "server:",
                    "node-name:",
                    "node-ip:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .filter(|l| !l.contains("198.18.0.1") && !l.contains(".local"))
            .map(String::from)
            .collect()
    };
    assert_eq!(wide(&init), wide(&join));
}

#[test]
fn golden_files_are_yaml_with_the_types_k3s_expects() {
    for name in ["init", "init-single-server", "join-server", "agent"] {
        let text = std::fs::read_to_string(golden_dir().join(format!("{name}.yaml"))).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let map = doc.as_mapping().expect("a mapping of flag names");
        assert!(doc["token"].is_string(), "{name}: token");
        assert!(doc["node-ip"].is_string() && doc["node-name"].is_string());
        if name == "init" {
            assert_eq!(doc["cluster-init"].as_bool(), Some(true));
            assert!(map.get("server").is_none());
        } else if name == "init-single-server" {
            assert!(map.get("cluster-init").is_none() && map.get("server").is_none());
        } else {
            assert!(doc["server"].as_str().unwrap().starts_with("https://"));
            assert!(doc["token"].as_str().unwrap().starts_with("K10"));
        }
        if name == "agent" {
            assert!(map.get("tls-san").is_none() && map.get("etcd-arg").is_none());
        } else {
            assert!(doc["tls-san"].is_sequence() && doc["disable"].is_sequence());
            assert!(doc["etcd-arg"].is_sequence());
            assert_eq!(doc["etcd-snapshot-retention"].as_u64(), Some(12));
            // A mode must stay a string: unquoted 0640 would be read as a number.
            assert_eq!(doc["write-kubeconfig-mode"].as_str(), Some("0640"));
        }
    }
}
