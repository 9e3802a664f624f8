//! Using the admin kubeconfig K3s (or the double) writes the way a user's client does: curl with
//! its CA, client certificate and key, shared by the double's test and the machine test.

use base64::Engine;
use std::process::Command;

/// `GET <url>/api/v1/nodes` with curl run by `curl` (a `Command` for `curl` itself or for a
/// wrapper such as `nsenter --net=... curl`), trusting `kubeconfig`'s CA and, when `with_cert`,
/// presenting its client certificate and key; the JSON body.
pub fn curl_nodes(
    mut curl: Command,
    kubeconfig: &str,
    url: &str,
    with_cert: bool,
) -> serde_json::Value {
    let field = |key: &str| {
        let b64 = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in the kubeconfig"));
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    for (file, key) in [
        ("ca.crt", "certificate-authority-data"),
        ("admin.crt", "client-certificate-data"),
        ("admin.key", "client-key-data"),
    ] {
        std::fs::write(dir.path().join(file), field(key)).expect("writing a credential");
    }
    curl.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.path().join("ca.crt"));
    if with_cert {
        curl.arg("--cert")
            .arg(dir.path().join("admin.crt"))
            .arg("--key")
            .arg(dir.path().join("admin.key"));
    }
    let out = curl
        .arg(format!("{url}/api/v1/nodes"))
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
