//! The Kubernetes objects the double keeps in its etcd, under the apiserver's own keys
//! (`/registry/<resource>/<namespace>/<name>`; Nodes are `/registry/minions/<name>`), each
//! object's resourceVersion being its etcd mod revision, as the apiserver's etcd3 storage does
//! (k8s.io/apiserver pkg/storage/etcd3/store.go: GuaranteedUpdate compares mod_revision).
//! Objects are stored as JSON (the apiserver stores most as protobuf; nothing here depends on it).
//!
//! What lives here: Node objects with their etcd annotations and the member-removal finalizer,
//! node heartbeats (Leases in kube-node-lease), node-password secrets, and the ConfigMaps and
//! Leases `k3s kubectl` creates. The `k3s kubectl` subset is in `kubectl.rs`.

use crate::etcd;
use anyhow::{bail, Result};
use serde_json::{json, Value};

/// K3s's etcd member annotations on a server's Node (pkg/etcd/etcd.go NodeNameAnnotation,
/// NodeAddressAnnotation) and the etcd role label (pkg/util ETCDRoleLabelKey).
pub const MEMBER_NAME_ANNOTATION: &str = "etcd.k3s.cattle.io/node-name";
pub const MEMBER_ADDRESS_ANNOTATION: &str = "etcd.k3s.cattle.io/node-address";
pub const ETCD_ROLE_LABEL: &str = "node-role.kubernetes.io/etcd";
/// The finalizer wrangler's OnRemove("managed-etcd-controller") puts on Nodes
/// (pkg/etcd/member_controller.go:29: `nodes.OnRemove(ctx, "managed-etcd-controller", ...)`).
pub const MEMBER_FINALIZER: &str = "wrangler.cattle.io/managed-etcd-controller";
/// kubelet renews its node Lease every 10 s; the node lifecycle controller marks a node whose
/// heartbeat is older than node-monitor-grace-period (40 s) Ready=Unknown
/// (k8s.io/kubernetes pkg/controller/nodelifecycle: nodeMonitorGracePeriod default 40 s).
pub const HEARTBEAT_SECS: u64 = 10;
pub const GRACE_SECS: i64 = 40;

/// The etcd key of an object.
pub fn key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    match (resource, namespace) {
        ("nodes", _) => format!("/registry/minions/{name}"),
        (r, Some(ns)) => format!("/registry/{r}/{ns}/{name}"),
        (r, None) => format!("/registry/{r}/{name}"),
    }
}

/// An object read from etcd, with its resourceVersion filled in.
pub async fn read(ep: &str, key: &str) -> Result<Option<Value>> {
    Ok(etcd::get(ep, key).await?.map(|kv| with_version(&kv)))
}

fn with_version(kv: &etcd::Kv) -> Value {
    let mut v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    v
}

/// Every object under a key prefix.
pub async fn read_all(ep: &str, prefix: &str) -> Result<Vec<Value>> {
    Ok(etcd::list(ep, prefix)
        .await?
        .iter()
        .map(with_version)
        .collect())
}

/// Writes `obj` if the stored object's revision is still `expected` (0: create). None on a
/// conflict. The stored JSON has no resourceVersion.
pub async fn write(ep: &str, key: &str, obj: &Value, expected: i64) -> Result<Option<i64>> {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    etcd::put_if(ep, key, o.to_string().as_bytes(), expected).await
}

/// Reads, changes and writes back an object, retrying on conflicts (GuaranteedUpdate).
/// `change` returns false to leave it as is.
pub async fn update(ep: &str, key: &str, change: impl Fn(&mut Value) -> bool) -> Result<()> {
    for _ in 0..20 {
        let Some(kv) = etcd::get(ep, key).await? else {
            return Ok(());
        };
        let mut v = with_version(&kv);
        if !change(&mut v) {
            return Ok(());
        }
        if write(ep, key, &v, kv.mod_revision).await?.is_some() {
            return Ok(());
        }
    }
    bail!("too many conflicts updating {key}")
}

/// Unix seconds as RFC 3339 (`2026-11-30T08:00:00Z`), the form Kubernetes writes times in.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The inverse of [`rfc3339`] (whole seconds, `Z` only).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time
        .split(':')
        .map(|x| x.split('.').next()?.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The node-password secret's name (pkg/nodepassword/nodepassword.go:51-53 getSecretName).
pub fn node_password_secret(node: &str) -> String {
    format!("{}.node-password.k3s", node.to_lowercase())
}

/// K3s nodepassword.Ensure (pkg/nodepassword/nodepassword.go:70-95): the first password a node
/// name registers with is kept (hashed) in kube-system; another password for the same name is
/// refused. Returns false when refused.
pub async fn ensure_node_password(ep: &str, node: &str, password: &str) -> Result<bool> {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(password.as_bytes()));
    let k = key("secrets", Some("kube-system"), &node_password_secret(node));
    loop {
        match etcd::get(ep, &k).await? {
            Some(kv) => {
                let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                return Ok(v["data"]["hash"].as_str() == Some(hash.as_str()));
            }
            None => {
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "k3s.cattle.io/node-password",
                    "metadata": {"name": node_password_secret(node), "namespace": "kube-system"},
                    "data": {"hash": hash},
                });
                if write(ep, &k, &secret, 0).await?.is_some() {
                    return Ok(true);
                }
            }
        }
    }
}

/// What a node registers about itself.
pub struct NodeInfo<'a> {
    pub name: &'a str,
    pub address: &'a str,
    /// A server's etcd member name (servers with etcd only).
    pub etcd_member: Option<&'a str>,
    pub server: bool,
    /// A server's supervisor address (`host:port`) agents may reach it at.
    pub supervisor: Option<&'a str>,
}

/// The double's own annotation for a server's supervisor address. K3s lists apiservers from the
/// `kubernetes` Endpoints, which each apiserver keeps up to date under a master lease
/// (pkg/server/router.go:310-324 apiserversHandler); the double reads its servers' Nodes
/// instead, so tests can run several servers on one address with different ports.
pub const SUPERVISOR_ANNOTATION: &str = "k3s-double.test/supervisor";

/// Creates or refreshes the Node object (kubelet registration; K3s's etcd metadata controller
/// adds the member annotations and the etcd label, pkg/etcd/metadata_controller.go, and the
/// member controller its finalizer).
pub async fn register_node(ep: &str, n: &NodeInfo<'_>, now: i64) -> Result<()> {
    let k = key("nodes", None, n.name);
    loop {
        let existing = etcd::get(ep, &k).await?;
        let mut v = match &existing {
            Some(kv) => with_version(kv),
            None => json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "creationTimestamp": rfc3339(now),
                             "labels": {}, "annotations": {}},
                "status": {},
            }),
        };
        let md = &mut v["metadata"];
        md["labels"]["kubernetes.io/hostname"] = json!(n.name);
        if n.server {
            md["labels"]["node-role.kubernetes.io/control-plane"] = json!("true");
            md["labels"]["node-role.kubernetes.io/master"] = json!("true");
        }
        if let Some(address) = n.supervisor {
            md["annotations"][SUPERVISOR_ANNOTATION] = json!(address);
        }
        if let Some(member) = n.etcd_member {
            md["labels"][ETCD_ROLE_LABEL] = json!("true");
            md["annotations"][MEMBER_NAME_ANNOTATION] = json!(member);
            md["annotations"][MEMBER_ADDRESS_ANNOTATION] = json!(n.address);
            let fins = md["finalizers"].as_array().cloned().unwrap_or_default();
            if !fins.iter().any(|f| f == MEMBER_FINALIZER) {
                let mut f = fins;
                f.push(json!(MEMBER_FINALIZER));
                md["finalizers"] = json!(f);
            }
        }
        v["status"]["addresses"] = json!([
            {"type": "InternalIP", "address": n.address},
            {"type": "Hostname", "address": n.name},
        ]);
        let expected = existing.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
        if write(ep, &k, &v, expected).await?.is_some() {
            return Ok(());
        }
    }
}

/// The supervisor addresses of the servers whose heartbeat is within the grace period (the
/// endpoints of live apiservers), sorted.
pub async fn apiservers(ep: &str, now: i64) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for node in read_all(ep, "/registry/minions/").await? {
        let Some(address) = node["metadata"]["annotations"][SUPERVISOR_ANNOTATION].as_str() else {
            continue;
        };
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let renew = read(ep, &key("leases", Some("kube-node-lease"), name))
            .await?
            .and_then(|l| l["spec"]["renewTime"].as_str().and_then(parse_rfc3339));
        if renew.is_some_and(|t| now - t <= GRACE_SECS) {
            out.push(address.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Renews the node's Lease in kube-node-lease (kubelet's heartbeat).
pub async fn heartbeat(ep: &str, node: &str, now: i64) -> Result<()> {
    let k = key("leases", Some("kube-node-lease"), node);
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": GRACE_SECS,
                 "renewTime": rfc3339(now)},
    });
    let current = etcd::get(ep, &k)
        .await?
        .map(|kv| kv.mod_revision)
        .unwrap_or(0);
    // A lost race is another heartbeat of the same node: fine.
    write(ep, &k, &lease, current).await?;
    Ok(())
}

/// The Node as `kubectl get` shows it: with a Ready condition from its heartbeat (True while the
/// Lease is younger than the grace period, else Unknown, as the node lifecycle controller sets it).
pub async fn node_view(ep: &str, mut node: Value, now: i64) -> Result<Value> {
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let renew = read(ep, &key("leases", Some("kube-node-lease"), &name))
        .await?
        .and_then(|l| l["spec"]["renewTime"].as_str().and_then(parse_rfc3339));
    let (status, reason, message, heartbeat) = match renew {
        Some(t) if now - t <= GRACE_SECS => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
            t,
        ),
        Some(t) => (
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.".to_string(),
            t,
        ),
        None => (
            "Unknown",
            "NodeStatusNeverUpdated",
            "Kubelet never posted node status.".to_string(),
            0,
        ),
    };
    node["status"]["conditions"] = json!([{
        "type": "Ready", "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": rfc3339(heartbeat),
    }]);
    Ok(node)
}

/// K3s's member removal on node deletion, run by the etcd leader: a Node with a
/// deletionTimestamp and the member finalizer has its etcd member removed
/// (member_controller.go:112-134 onRemove -> RemovePeer), then the finalizer goes and the
/// object with it, its Lease and its node-password secret (pkg/node/controller.go:49-58, :192
/// nodepassword.Delete). Returns what it did, for the log.
pub async fn finalize_deleted_nodes(ep: &str) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for kv in etcd::list(ep, "/registry/minions/").await? {
        let node = with_version(&kv);
        if node["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let fins: Vec<Value> = node["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if fins.iter().any(|f| f == MEMBER_FINALIZER) {
            if let Some(member) = node["metadata"]["annotations"][MEMBER_NAME_ANNOTATION].as_str() {
                let members = etcd::member_list(ep).await?;
                if let Some(m) = members.iter().find(|m| m.name == member) {
                    etcd::remove(ep, &m.id).await?;
                    done.push(format!(
                        "level=info msg=\"Removing etcd member from cluster due to node delete\" name={member}"
                    ));
                }
            }
        }
        if etcd::delete_if(ep, &kv.key, kv.mod_revision).await? {
            let _ = forget_node(ep, &name).await;
            done.push(format!("level=info msg=\"node {name} deleted\""));
        }
    }
    Ok(done)
}

/// What goes with a deleted Node: its heartbeat Lease and its node-password secret (K3s's node
/// controller's onRemove, pkg/node/controller.go:49-51, :71-75, :191-192 nodepassword.Delete).
pub async fn forget_node(ep: &str, name: &str) -> Result<()> {
    etcd_delete(ep, &key("leases", Some("kube-node-lease"), name)).await?;
    etcd_delete(
        ep,
        &key("secrets", Some("kube-system"), &node_password_secret(name)),
    )
    .await
}

async fn etcd_delete(ep: &str, k: &str) -> Result<()> {
    if let Some(kv) = etcd::get(ep, k).await? {
        etcd::delete_if(ep, k, kv.mod_revision).await?;
    }
    Ok(())
}
