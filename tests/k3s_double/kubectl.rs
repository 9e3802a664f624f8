//! `k3s kubectl` (the double invoked as `k3s kubectl ...`): the subset firstboot's day-2 code
//! uses, backed by the local server's etcd (K3s's kubectl talks to the local apiserver, whose
//! storage is that etcd). Messages and exit codes are kubectl's:
//! - `get nodes -o json`, `get node NAME -o json`: Nodes with a Ready condition from their
//!   heartbeat (`store::node_view`);
//! - `delete node NAME`: a non-forced delete: the Node gets a deletionTimestamp, the server's
//!   finalizer removes its etcd member, kubectl waits until it is gone (`--wait=false` returns at
//!   once);
//! - `get configmap|cm|lease NAME [-n NS] -o json`;
//! - `create -f FILE -o json`, `replace -f FILE -o json` (FILE or `-` for stdin) of a ConfigMap or
//!   Lease; `replace` with a `metadata.resourceVersion` is a compare-and-swap: a stale one is
//!   "Error from server (Conflict)" (HTTP 409 in the apiserver), exit 1.
//!
//! Anything else is refused with "the K3s test double does not implement ...".

use crate::{etcd, store};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// A kubectl error: printed to stderr as is, exit 1.
pub struct KubectlError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, KubectlError> {
    Err(KubectlError(msg.into()))
}

fn resource(kind_or_alias: &str) -> Option<(&'static str, &'static str, bool)> {
    // (plural, Kind, namespaced)
    match kind_or_alias.to_lowercase().as_str() {
        "node" | "nodes" | "no" => Some(("nodes", "Node", false)),
        "configmap" | "configmaps" | "cm" => Some(("configmaps", "ConfigMap", true)),
        "lease" | "leases" => Some(("leases", "Lease", true)),
        _ => None,
    }
}

fn api_version(kind: &str) -> &'static str {
    match kind {
        "Lease" => "coordination.k8s.io/v1",
        _ => "v1",
    }
}

/// Runs `kubectl args`; Ok(stdout) or a kubectl error.
pub async fn run(args: &[String], now: impl Fn() -> i64) -> Result<String, KubectlError> {
    let mut pos = Vec::new();
    let mut namespace = "default".to_string();
    let mut output = None;
    let mut file = None;
    let mut wait = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-n" | "--namespace" => namespace = it.next().cloned().unwrap_or_default(),
            "-o" | "--output" => output = it.next().cloned(),
            "-f" | "--filename" => file = it.next().cloned(),
            "--wait=false" => wait = false,
            "--wait=true" | "--wait" => wait = true,
            s if s.starts_with("--namespace=") => namespace = s[12..].to_string(),
            s if s.starts_with("-o") && s.len() > 2 => {
                output = Some(s[2..].trim_start_matches('=').to_string())
            }
            s if s.starts_with("--output=") => output = Some(s[9..].to_string()),
            s if s.starts_with('-') => {
                return err(format!(
                    "error: the K3s test double does not implement the kubectl flag {s}"
                ))
            }
            s => pos.push(s.to_string()),
        }
    }
    let ep = etcd::url("127.0.0.1", etcd::client_port());
    // Without a running server kubectl cannot reach the apiserver.
    if etcd::status(&ep).await.is_err() {
        return err("The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?");
    }
    let verb = pos.first().cloned().unwrap_or_default();
    let json_out = |v: &Value| -> Result<String, KubectlError> {
        match output.as_deref() {
            Some("json") => Ok(format!(
                "{}\n",
                serde_json::to_string_pretty(v).unwrap_or_default()
            )),
            None | Some("name") => Ok(format!(
                "{}/{}\n",
                v["kind"].as_str().unwrap_or_default().to_lowercase(),
                v["metadata"]["name"].as_str().unwrap_or_default()
            )),
            Some(o) => err(format!(
                "error: the K3s test double does not implement the output format {o}"
            )),
        }
    };
    let internal =
        |e: anyhow::Error| KubectlError(format!("Error from server (InternalError): {e:#}"));
    match verb.as_str() {
        "get" => {
            let Some((plural, kind, namespaced)) = pos.get(1).and_then(|r| resource(r)) else {
                return err(format!(
                    "error: the K3s test double does not implement get {}",
                    pos.get(1).cloned().unwrap_or_default()
                ));
            };
            let ns = namespaced.then_some(namespace.as_str());
            match pos.get(2) {
                Some(name) => {
                    let Some(mut v) = store::read(&ep, &store::key(plural, ns, name))
                        .await
                        .map_err(internal)?
                    else {
                        return err(format!(
                            "Error from server (NotFound): {plural} \"{name}\" not found"
                        ));
                    };
                    if kind == "Node" {
                        v = store::node_view(&ep, v, now()).await.map_err(internal)?;
                    }
                    json_out(&v)
                }
                None => {
                    let prefix = match ns {
                        _ if kind == "Node" => "/registry/minions/".to_string(),
                        Some(ns) => format!("/registry/{plural}/{ns}/"),
                        None => format!("/registry/{plural}/"),
                    };
                    let mut items = Vec::new();
                    for v in store::read_all(&ep, &prefix).await.map_err(internal)? {
                        items.push(if kind == "Node" {
                            store::node_view(&ep, v, now()).await.map_err(internal)?
                        } else {
                            v
                        });
                    }
                    if output.as_deref() != Some("json") {
                        return err("error: the K3s test double lists only with -o json");
                    }
                    json_out(&json!({"apiVersion": "v1", "kind": "List", "items": items,
                                     "metadata": {"resourceVersion": ""}}))
                }
            }
        }
        "delete" => {
            let (Some(("nodes", _, _)), Some(name)) =
                (pos.get(1).and_then(|r| resource(r)), pos.get(2))
            else {
                return err("error: the K3s test double deletes only nodes (delete node NAME)");
            };
            let k = store::key("nodes", None, name);
            let Some(node) = store::read(&ep, &k).await.map_err(internal)? else {
                return err(format!(
                    "Error from server (NotFound): nodes \"{name}\" not found"
                ));
            };
            let has_finalizers = node["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if has_finalizers {
                let ts = store::rfc3339(now());
                store::update(&ep, &k, |v| {
                    if v["metadata"]["deletionTimestamp"].is_null() {
                        v["metadata"]["deletionTimestamp"] = json!(ts);
                        true
                    } else {
                        false
                    }
                })
                .await
                .map_err(internal)?;
            } else {
                let rv: i64 = node["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                etcd::delete_if(&ep, &k, rv).await.map_err(internal)?;
                // K3s puts its node controller's finalizer on every Node (wrangler
                // `nodes.OnRemove(ctx, "node", ...)`, pkg/node/controller.go:31), whose onRemove
                // deletes the node-password secret (:49-51, :71-75, :191-192): an agent's too.
                // The double has no such finalizer on a Node without an etcd member and does it
                // here, with the Lease the node lifecycle controller drops.
                store::forget_node(&ep, name).await.map_err(internal)?;
                let _ = crate::store::finalize_deleted_nodes(&ep).await;
            }
            // kubectl delete waits for the object to be gone (--wait defaults to true).
            if wait {
                while store::read(&ep, &k).await.map_err(internal)?.is_some() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Ok(format!("node \"{name}\" deleted\n"))
        }
        "create" | "replace" => {
            let Some(f) = file else {
                return err("error: must specify one of -f and -k");
            };
            let text = read_file(&f).map_err(|e| KubectlError(format!("error: {e:#}")))?;
            let mut obj: Value = serde_json::from_str(&text)
                .or_else(|_| serde_yaml_ng::from_str(&text))
                .map_err(|e| KubectlError(format!("error: error parsing {f}: {e}")))?;
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let Some((plural, kind, _)) = resource(&kind).filter(|(p, _, _)| *p != "nodes") else {
                return err(format!(
                    "error: the K3s test double creates and replaces only ConfigMaps and Leases, not {kind:?}"
                ));
            };
            let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
                return err("error: resource name may not be empty");
            };
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .map(String::from)
                .unwrap_or(namespace.clone());
            obj["metadata"]["namespace"] = json!(ns);
            obj["apiVersion"] = json!(api_version(kind));
            let k = store::key(plural, Some(&ns), &name);
            let current = etcd::get(&ep, &k).await.map_err(internal)?;
            let conflict = || {
                KubectlError(format!("Error from server (Conflict): error when replacing \"{f}\": Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"))
            };
            let expected = if verb == "create" {
                if current.is_some() {
                    return err(format!(
                        "Error from server (AlreadyExists): error when creating \"{f}\": {plural} \"{name}\" already exists"
                    ));
                }
                obj["metadata"]["creationTimestamp"] = json!(store::rfc3339(now()));
                0
            } else {
                let Some(cur) = current else {
                    return err(format!(
                        "Error from server (NotFound): error when replacing \"{f}\": {plural} \"{name}\" not found"
                    ));
                };
                match obj["metadata"]["resourceVersion"].as_str() {
                    // Unconditional update (ConfigMaps and Leases allow it).
                    None | Some("") => cur.mod_revision,
                    Some(rv) => {
                        let rv: i64 = rv.parse().map_err(|_| conflict())?;
                        if rv != cur.mod_revision {
                            return Err(conflict());
                        }
                        rv
                    }
                }
            };
            match store::write(&ep, &k, &obj, expected).await.map_err(internal)? {
                Some(rev) => {
                    obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                    match output.as_deref() {
                        Some("json") => json_out(&obj),
                        _ => Ok(format!(
                            "{}/{name} {}\n",
                            kind.to_lowercase(),
                            if verb == "create" { "created" } else { "replaced" }
                        )),
                    }
                }
                None if verb == "create" => err(format!(
                    "Error from server (AlreadyExists): error when creating \"{f}\": {plural} \"{name}\" already exists"
                )),
                None => Err(conflict()),
            }
        }
        other => err(format!(
            "error: the K3s test double does not implement kubectl {other}"
        )),
    }
}

fn read_file(f: &str) -> Result<String> {
    if f == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(f).with_context(|| format!("the path \"{f}\" does not exist"))
}
