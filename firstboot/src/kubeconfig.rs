//! `firstboot kubeconfig`: the admin kubeconfig of this server, pointed at the cluster's
//! address instead of `127.0.0.1`, for the user to copy to a laptop (SPEC 4.5).
//!
//! K3s writes `/etc/rancher/k3s/k3s.yaml` on every server (K3s v1.31.4 pkg/server/server.go:401-444
//! writeKubeConfig): server `https://127.0.0.1:6443`, the server CA and the `system:admin`
//! client certificate inline, every name `default` (pkg/clientaccess/kubeconfig.go:12-46, written
//! by client-go's clientcmd). This reads it (root only: firstboot keeps its mode 0600), names the
//! server by the fixed registration address (`[cluster] api_address`), else by `<cluster
//! name>.local` (one live server publishes it over mDNS for its own address), and names cluster, user and context after
//! the cluster, so it merges into a laptop's kubeconfig beside others. Nothing else changes; a
//! file laid out otherwise is refused rather than guessed at.

use crate::config::ClusterConfig;
use crate::k3s::API_PORT;
use crate::paths::Paths;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::PathBuf;

/// Where K3s writes the admin kubeconfig, relative to the root prefix.
pub const K3S_KUBECONFIG: &str = "etc/rancher/k3s/k3s.yaml";

/// Print an admin kubeconfig for this cluster (run on a server, as root).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeconfigArgs {
    /// Write it to FILE (mode 0600, replaced atomically) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Where the kubeconfig points and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://host:6443`.
    pub server: String,
    /// Said on stderr when the target is one server only.
    pub note: Option<String>,
}

/// The server URL for `config`: the fixed address when set, else `<cluster name>.local`, which
/// one serving server publishes over mDNS for its own address.
pub fn target(config: &ClusterConfig) -> Target {
    match config.api_address {
        Some(a) => Target {
            server: format!("https://{a}:{API_PORT}"),
            note: None,
        },
        None => Target {
            server: format!("https://{}.local:{API_PORT}", config.name),
            note: Some(format!(
                "this kubeconfig names {name}.local, which one live server publishes over mDNS \
                 for its own address (cluster.toml sets no api_address); a computer that does not \
                 resolve .local names needs a server's address there instead. Set [cluster] \
                 api_address to a free LAN address for one address that moves between servers",
                name = config.name
            )),
        },
    }
}

/// Rewrites K3s's kubeconfig `text`: the one `server:` line names `server`, and the names
/// `default` (cluster, user, context, current-context) become `name`.
pub fn rewrite(text: &str, server: &str, name: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut servers = 0;
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let trimmed = line.trim_start();
        let rewritten = if let Some(url) = trimmed.strip_prefix("server: ") {
            if !url.starts_with("https://") {
                bail!("{K3S_KUBECONFIG}: its server is {url}, not https://...: not a kubeconfig K3s wrote");
            }
            servers += 1;
            format!("{indent}server: {server}")
        } else {
            match trimmed {
                "name: default" => format!("{indent}name: {name}"),
                "cluster: default" => format!("{indent}cluster: {name}"),
                "user: default" => format!("{indent}user: {name}"),
                "- name: default" => format!("{indent}- name: {name}"),
                "current-context: default" => format!("{indent}current-context: {name}"),
                _ => line.to_string(),
            }
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    if servers != 1 {
        bail!(
            "{K3S_KUBECONFIG} has {servers} server lines, K3s writes one: not a kubeconfig K3s wrote; \
             copy it by hand and change its server to {server}"
        );
    }
    if !out.contains("client-certificate-data:") || !out.contains("client-key-data:") {
        bail!("{K3S_KUBECONFIG} holds no client certificate and key: not the admin kubeconfig K3s writes");
    }
    Ok(out)
}

/// Runs `firstboot kubeconfig`.
pub fn run(args: &KubeconfigArgs, paths: &Paths) -> anyhow::Result<()> {
    let config = crate::identity::early::config_for_identity(paths)?;
    let path = paths.root().join(K3S_KUBECONFIG);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "{} is readable by root only (it is a cluster-admin credential): run `sudo firstboot kubeconfig`",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: only a K3s server has the admin kubeconfig, and K3s writes it once it \
             has started. Run this on a server (`firstboot status` says `role server` or `init`) once \
             it is ready",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let target = target(&config);
    let out = rewrite(&text, &target.server, &config.name)?;
    if let Some(note) = &target.note {
        eprintln!("note: {note}");
    }
    match &args.output {
        Some(file) => {
            crate::durable::write_atomic(file, out.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", file.display()))?;
            eprintln!(
                "wrote {} (mode 0600): a cluster-admin credential for {}; use it with `kubectl --kubeconfig {}`",
                file.display(),
                target.server,
                file.display()
            );
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                eprintln!("note: this is a cluster-admin credential; `firstboot kubeconfig -o FILE` writes it with mode 0600");
            }
            std::io::stdout()
                .write_all(out.as_bytes())
                .context("writing the kubeconfig to standard output")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout K3s v1.31.4 writes (clientcmd), with short stand-in data.
    const K3S_YAML: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {}\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

    #[test]
    fn the_server_and_the_names_are_rewritten_and_nothing_else() {
        let out = rewrite(K3S_YAML, "https://198.18.0.240:6443", "homelab").unwrap();
        assert_eq!(
            out,
            K3S_YAML
                .replace("https://127.0.0.1:6443", "https://198.18.0.240:6443")
                .replace("default", "homelab")
        );
    }

    #[test]
    fn a_file_not_laid_out_like_k3s_is_refused() {
        let two = K3S_YAML.replace(
            "  name: default\ncontexts",
            "  name: default\n- cluster:\n    server: https://10.0.0.1:6443\n  name: other\ncontexts",
        );
        let e = rewrite(&two, "https://x:6443", "lab")
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 server lines"), "{e}");
        let no_key = K3S_YAML.replace("    client-key-data: S0VZ\n", "");
        assert!(rewrite(&no_key, "https://x:6443", "lab").is_err());
    }

    #[test]
    fn the_fixed_address_wins_else_the_cluster_name_with_a_note() {
        let load = |text: &str| {
            ClusterConfig::from_toml_str(text, std::path::Path::new("/nonexistent/cluster.toml"))
                .unwrap()
        };
        let base = "[cluster]\nname = \"lab\"\ntoken = \"unit-secret-abcdefgh\"\nservers = 3\n";
        let t = target(&load(&format!("{base}api_address = \"198.18.0.240\"\n")));
        assert_eq!(t.server, "https://198.18.0.240:6443");
        assert_eq!(t.note, None);
        let t = target(&load(base));
        assert_eq!(t.server, "https://lab.local:6443");
        assert!(t.note.unwrap().contains("api_address"));
    }
}
