//! From raw `cluster.toml` text to a [`ClusterConfig`], collecting every problem with its place.

use super::diagnostic::{redact, token_candidates, ConfigError, Diagnostic, SourceMap};
use super::raw::{RawFile, RawK3s};
use super::schema::{self, did_you_mean};
use super::token::Token;
use super::*;
use toml::Spanned;

/// Components K3s can `--disable`.
const K3S_COMPONENTS: &[&str] = &[
    "coredns",
    "servicelb",
    "traefik",
    "local-storage",
    "metrics-server",
    "runtimes",
];

/// K3s config keys that firstboot writes itself; `[k3s] extra` must not set them.
const MANAGED_K3S_KEYS: &[(&str, &str)] = &[
    ("token", "set [cluster] token instead"),
    ("token-file", "set [cluster] token or token_file instead"),
    ("server", "firstboot finds the server by itself; remove it"),
    (
        "cluster-init",
        "the bootstrap election decides which node runs cluster-init; remove it",
    ),
    ("node-name", "set [node] hostname instead"),
    ("node-ip", "firstboot uses the LAN address; remove it"),
    ("tls-san", "use [k3s] tls_san = [...] instead"),
    ("disable", "use [k3s] disable = [...] instead"),
    ("node-taint", "use [k3s] node_taints = [...] instead"),
    (
        "etcd-snapshot-schedule-cron",
        "use [snapshots] schedule instead",
    ),
    (
        "etcd-snapshot-retention",
        "use [snapshots] retention instead",
    ),
    ("etcd-snapshot-dir", "use [snapshots] dir instead"),
    (
        "etcd-arg",
        "firstboot picks etcd timing for the whole cluster from its storage probe; remove it",
    ),
];

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Longest cluster name that still leaves room for the `-xxxxxx` hostname suffix in 63 chars.
const MAX_NAME_LEN: usize = 56;

pub(super) fn parse(text: &str, origin: &Path) -> Result<ClusterConfig, ConfigError> {
    let secrets = token_candidates(text);
    let fail = |diagnostics: Vec<Diagnostic>| ConfigError {
        path: origin.to_path_buf(),
        diagnostics: diagnostics
            .into_iter()
            .map(|d| Diagnostic {
                problem: redact(&d.problem, &secrets),
                fix: redact(&d.fix, &secrets),
                ..d
            })
            .collect(),
    };
    let map = SourceMap::new(text);

    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        let first_line = e.message().lines().next().unwrap_or("invalid TOML").trim().to_string();
        fail(vec![map.at(
            e.span(),
            "",
            format!("this is not valid TOML: {first_line}"),
            "check the quoting and brackets on this line: strings need double quotes (name = \"homelab\"), sections look like [cluster]",
        )])
    })?;
    let schema_problems = schema::check(&doc, &map);
    if !schema_problems.is_empty() {
        return Err(fail(schema_problems));
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        fail(vec![map.at(
            e.span(),
            "",
            format!("cannot read this value: {}", e.message()),
            "compare the line with the documented example in examples/",
        )])
    })?;

    let mut v = Validator {
        map: &map,
        problems: Vec::new(),
        origin,
    };
    let config = v.config(raw);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => {
            v.problems.sort_by_key(|d| (d.line, d.column));
            Err(fail(v.problems))
        }
    }
}

struct Validator<'a> {
    map: &'a SourceMap<'a>,
    problems: Vec<Diagnostic>,
    origin: &'a Path,
}

impl Validator<'_> {
    fn report<T>(
        &mut self,
        s: &Spanned<T>,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems
            .push(self.map.at(Some(s.span()), key, problem, fix));
    }

    fn config(&mut self, raw: RawFile) -> Option<ClusterConfig> {
        if let Some(v) = &raw.version {
            if *v.get_ref() != SCHEMA_VERSION {
                self.report(
                    v,
                    "version",
                    format!("this firstboot understands cluster.toml version {SCHEMA_VERSION}, not {}", v.get_ref()),
                    format!("write version = {SCHEMA_VERSION}, or use a firstboot release that knows the newer schema"),
                );
            }
        }
        let Some(cluster) = raw.cluster else {
            self.problems.push(self.map.at(
                Some(0..0),
                "cluster",
                "the [cluster] section is missing",
                "add a [cluster] section with at least name = \"...\" and token = \"...\" (imagebuild token prints a new token)",
            ));
            return None;
        };
        let cluster_span = cluster.span();
        let cluster = cluster.into_inner();

        let name = match &cluster.name {
            Some(n) => {
                self.check_label(n, "cluster.name", MAX_NAME_LEN);
                n.get_ref().clone()
            }
            None => {
                self.problems.push(self.map.at(
                    Some(cluster_span.clone()),
                    "cluster.name",
                    "the cluster has no name",
                    "add name = \"homelab\" (lowercase letters, digits and '-'); it prefixes every hostname",
                ));
                String::new()
            }
        };
        let token = self.token(
            cluster.token.as_ref(),
            cluster.token_file.as_ref(),
            cluster_span,
        );

        let servers = match &cluster.servers {
            Some(s) if [1, 3, 5, 7].contains(s.get_ref()) => *s.get_ref() as u8,
            Some(s) => {
                let n = *s.get_ref();
                let near = [1i64, 3, 5, 7]
                    .into_iter()
                    .min_by_key(|c| (c - n).abs())
                    .unwrap_or(3);
                self.report(
                    s,
                    "cluster.servers",
                    format!("servers = {n} is not allowed: etcd needs an odd number of members, at most 7"),
                    format!("write servers = {near} (1, 3, 5 or 7; 3 survives one failed server)"),
                );
                3
            }
            None => 3,
        };
        let nodes = match &cluster.nodes {
            Some(n) if (*n.get_ref() as i128) < servers as i128 => {
                self.report(
                    n,
                    "cluster.nodes",
                    format!(
                        "nodes = {} is fewer than servers = {servers}: the servers are chosen among the bootstrap nodes",
                        n.get_ref()
                    ),
                    format!("write nodes = {servers} or more, or lower servers"),
                );
                servers
            }
            Some(n) if *n.get_ref() > 255 => {
                self.report(
                    n,
                    "cluster.nodes",
                    format!("nodes = {} is more than the 255 a bootstrap electorate may have", n.get_ref()),
                    "write the number of nodes that boot together the first time (later nodes join by themselves)",
                );
                servers
            }
            Some(n) => *n.get_ref() as u8,
            None => servers,
        };

        let replace_after = self.replace_after(cluster.replace_after.clone());
        let api_address = self.api_address(cluster.api_address.clone());
        let node = self.node(raw.node.unwrap_or_default());
        let k3s = self.k3s(raw.k3s.unwrap_or_default());
        let storage = self.storage(raw.storage.unwrap_or_default());
        let snapshots = self.snapshots(raw.snapshots.unwrap_or_default());
        let timeouts = self.timeouts(raw.timeouts.unwrap_or_default());
        let status = self.status(raw.status.unwrap_or_default());

        let (token, token_source) = token?;
        Some(ClusterConfig {
            name,
            token,
            token_source,
            servers,
            nodes,
            replace_after,
            api_address,
            node,
            k3s,
            storage,
            snapshots,
            timeouts,
            status,
        })
    }

    fn check_label(&mut self, s: &Spanned<String>, key: &str, max: usize) {
        // (see looks_like_token: such a value is reported without being echoed)
        let v = s.get_ref();
        let problem = if v.is_empty() {
            Some("it is empty".to_string())
        } else if v.len() > max {
            Some(format!("it has {} characters, at most {max} fit", v.len()))
        } else if v.chars().any(|c| c.is_ascii_uppercase()) {
            Some("it has uppercase letters; DNS names here are lowercase".to_string())
        } else if !v
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Some("it may only use lowercase letters, digits and '-'".to_string())
        } else if v.starts_with('-') || v.ends_with('-') {
            Some("it must not start or end with '-'".to_string())
        } else {
            None
        };
        if let (Some(_), true) = (&problem, looks_like_token(v)) {
            // A token pasted into the wrong key: never echo it, not even lowercased.
            let field = key.rsplit('.').next().unwrap_or(key);
            self.report(
                s,
                key,
                "the value looks like a cluster token (a secret), not a DNS label; it is not shown"
                    .to_string(),
                format!("write {field} = \"homelab\" (a short lowercase name) and put the token in [cluster] token or token_file"),
            );
            return;
        }
        if let Some(p) = problem {
            let suggestion: String = v
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .trim_matches('-')
                .chars()
                .take(max)
                .collect();
            let suggestion = if suggestion.is_empty() {
                "homelab".to_string()
            } else {
                suggestion
            };
            let field = key.rsplit('.').next().unwrap_or(key);
            self.report(
                s,
                key,
                format!("\"{v}\" is not a valid DNS label: {p}"),
                format!("write {field} = \"{suggestion}\""),
            );
        }
    }

    fn token(
        &mut self,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        cluster_span: std::ops::Range<usize>,
    ) -> Option<(Token, TokenSource)> {
        match (inline, file) {
            (Some(t), Some(_)) => {
                self.report(
                    t,
                    "cluster.token",
                    "both token and token_file are set",
                    "keep only one of them",
                );
                None
            }
            (None, None) => {
                self.problems.push(self.map.at(
                    Some(cluster_span),
                    "cluster.token",
                    "the cluster has no token",
                    "add token = \"...\" with the output of `imagebuild token`, or token_file = \"cluster-token\" naming a file beside cluster.toml",
                ));
                None
            }
            (Some(t), None) => match Token::new(t.get_ref().clone()) {
                Ok(tok) => Some((tok, TokenSource::Inline)),
                Err(p) => {
                    self.report(
                        t,
                        "cluster.token",
                        p.to_string(),
                        "run `imagebuild token` and paste its output as token = \"...\"",
                    );
                    None
                }
            },
            (None, Some(f)) => self.token_file(f),
        }
    }

    fn token_file(&mut self, f: &Spanned<String>) -> Option<(Token, TokenSource)> {
        let rel = Path::new(f.get_ref());
        let fix_name = "write token_file = \"cluster-token\" and put that file beside cluster.toml";
        if f.get_ref().is_empty()
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            self.report(
                f,
                "cluster.token_file",
                "token_file must name a file beside cluster.toml (no absolute path, no '..')",
                fix_name,
            );
            return None;
        }
        let dir = self.origin.parent().unwrap_or(Path::new("."));
        let path = dir.join(rel);
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                self.report(
                    f,
                    "cluster.token_file",
                    format!("cannot read {}: {e}", path.display()),
                    fix_name,
                );
                return None;
            }
        };
        match Token::new(secret) {
            Ok(t) => Some((t, TokenSource::File(path))),
            Err(p) => {
                self.report(
                    f,
                    "cluster.token_file",
                    format!("{} holds a bad token: {p}", path.display()),
                    "put the output of `imagebuild token` in that file",
                );
                None
            }
        }
    }

    /// Reports a `node.role` that is not a pin; the node then ranks as `auto`.
    fn bad_role(&mut self, r: &Spanned<String>, other: &str) -> RolePin {
        let hint = did_you_mean(other, ["auto", "server", "agent"]).unwrap_or("auto");
        self.report(
            r,
            "node.role",
            format!("role \"{other}\" is not one of auto, server, agent"),
            format!("write role = \"{hint}\""),
        );
        RolePin::Auto
    }

    fn node(&mut self, raw: super::raw::RawNode) -> NodeSettings {
        let role = match raw.role.as_ref().map(|r| (r, r.get_ref().as_str())) {
            None => RolePin::Auto,
            Some((r, word)) => match RolePin::parse(word) {
                Some(pin) => pin,
                None => self.bad_role(r, word),
            },
        };
        let hostname = match raw.hostname {
            Some(h) if !h.get_ref().is_empty() => {
                self.check_label(&h, "node.hostname", 63);
                Some(h.into_inner())
            }
            _ => None,
        };
        NodeSettings { role, hostname }
    }

    fn strings(list: Option<Spanned<Vec<Spanned<String>>>>) -> Vec<Spanned<String>> {
        list.map(|l| l.into_inner()).unwrap_or_default()
    }

    fn k3s(&mut self, raw: RawK3s) -> K3sSettings {
        let disable_given = raw.disable.is_some();
        let mut disable = Vec::new();
        for d in Self::strings(raw.disable) {
            if K3S_COMPONENTS.contains(&d.get_ref().as_str()) {
                disable.push(d.into_inner());
            } else {
                let fix = match did_you_mean(d.get_ref(), K3S_COMPONENTS.iter().copied()) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("use one of {}", K3S_COMPONENTS.join(", ")),
                };
                self.report(
                    &d,
                    "k3s.disable",
                    format!("K3s has no component \"{}\" to disable", d.get_ref()),
                    fix,
                );
            }
        }
        if !disable_given {
            disable.push("traefik".to_string());
        }
        let mut tls_san = Vec::new();
        for s in Self::strings(raw.tls_san) {
            let v = s.get_ref();
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '/' || c == ',') {
                self.report(&s, "k3s.tls_san", format!("\"{v}\" is not a host name or IP address"), "write one name or address per entry, e.g. tls_san = [\"k3s.example.lan\", \"198.18.0.10\"]");
            } else {
                tls_san.push(s.into_inner());
            }
        }
        let mut node_taints = Vec::new();
        for t in Self::strings(raw.node_taints) {
            let v = t.get_ref();
            let ok = v.rsplit_once(':').is_some_and(|(kv, effect)| {
                TAINT_EFFECTS.contains(&effect) && !kv.is_empty() && !kv.starts_with('=')
            });
            if ok {
                node_taints.push(t.into_inner());
            } else {
                self.report(&t, "k3s.node_taints", format!("\"{v}\" is not a taint of the form key[=value]:Effect"), "write e.g. \"dedicated=edge:NoSchedule\" (Effect is NoSchedule, PreferNoSchedule or NoExecute)");
            }
        }
        let mut extra = BTreeMap::new();
        if let Some(table) = raw.extra {
            for (k, v) in table.into_inner() {
                if let Some((_, why)) = MANAGED_K3S_KEYS.iter().find(|(m, _)| *m == k) {
                    self.report(
                        &v,
                        &format!("k3s.extra.{k}"),
                        format!("\"{k}\" is managed by firstboot"),
                        *why,
                    );
                    continue;
                }
                if k.is_empty()
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    self.report(
                        &v,
                        &format!("k3s.extra.{k}"),
                        format!("\"{k}\" does not look like a K3s flag name"),
                        "use the flag name without leading dashes, e.g. \"write-kubeconfig-mode\"",
                    );
                    continue;
                }
                let scalar = |x: &toml::Value| {
                    matches!(
                        x,
                        toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Boolean(_)
                    )
                };
                let ok = match v.get_ref() {
                    toml::Value::Array(items) => items.iter().all(scalar),
                    other => scalar(other),
                };
                if ok {
                    extra.insert(k, v.into_inner());
                } else {
                    self.report(
                        &v,
                        &format!("k3s.extra.{k}"),
                        "values in extra must be strings, numbers, booleans or lists of them",
                        "write e.g. \"kube-apiserver-arg\" = [\"audit-log-maxage=30\"]",
                    );
                }
            }
        }
        K3sSettings {
            disable,
            tls_san,
            node_taints,
            extra,
        }
    }

    fn storage(&mut self, raw: super::raw::RawStorage) -> StorageSettings {
        let profile = match raw.profile.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "auto")) => StorageProfile::Auto,
            Some((_, "sd")) => StorageProfile::Sd,
            Some((_, "ssd")) => StorageProfile::Ssd,
            Some((p, other)) => {
                let hint = did_you_mean(other, ["auto", "sd", "ssd"]).unwrap_or("auto");
                self.report(
                    p,
                    "storage.profile",
                    format!("profile \"{other}\" is not one of auto, sd, ssd"),
                    format!("write profile = \"{hint}\" (auto measures the device)"),
                );
                StorageProfile::Auto
            }
        };
        let data_device = match raw.data_device.as_ref().map(|d| (d, d.get_ref().as_str())) {
            None | Some((_, "")) => DataDevice::None,
            Some((_, "auto")) => DataDevice::Auto,
            Some((d, path)) => {
                let p = Path::new(path);
                let under_dev = p.starts_with("/dev/") && p.components().count() >= 3;
                if under_dev
                    && p.components()
                        .all(|c| !matches!(c, std::path::Component::ParentDir))
                {
                    DataDevice::Path(p.to_path_buf())
                } else {
                    self.report(d, "storage.data_device", format!("\"{path}\" is not a block device path"), "write data_device = \"\" (none), \"auto\" (the one empty disk) or a device such as \"/dev/sda\" or \"/dev/nvme0n1\"");
                    DataDevice::None
                }
            }
        };
        let data_device_force = raw
            .data_device_force
            .map(|f| f.into_inner())
            .unwrap_or(false);
        StorageSettings {
            profile,
            data_device,
            data_device_force,
        }
    }

    fn snapshots(&mut self, raw: super::raw::RawSnapshots) -> SnapshotSettings {
        let schedule = match raw.schedule {
            Some(s) => {
                if let Err(e) = cron::validate_cron(s.get_ref()) {
                    self.report(
                        &s,
                        "snapshots.schedule",
                        format!("schedule = \"{}\": {}", s.get_ref(), e.problem),
                        e.fix,
                    );
                }
                s.into_inner()
            }
            None => "0 */6 * * *".to_string(),
        };
        let retention = match raw.retention {
            Some(r) if (1..=1000).contains(r.get_ref()) => *r.get_ref() as u32,
            Some(r) => {
                self.report(
                    &r,
                    "snapshots.retention",
                    format!("retention = {} must be between 1 and 1000", r.get_ref()),
                    "write retention = 7",
                );
                7
            }
            None => 7,
        };
        let dir = match raw.dir {
            Some(d) if d.get_ref().is_empty() => None,
            Some(d) if Path::new(d.get_ref()).is_absolute() => Some(PathBuf::from(d.into_inner())),
            Some(d) => {
                self.report(&d, "snapshots.dir", format!("\"{}\" is not an absolute path", d.get_ref()), "write dir = \"\" (let firstboot choose) or an absolute path such as \"/mnt/ssd/etcd-snapshots\"");
                None
            }
            None => None,
        };
        SnapshotSettings {
            schedule,
            retention,
            dir,
        }
    }

    fn duration(
        &mut self,
        raw: Option<Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = raw else { return default };
        let field = key.rsplit('.').next().unwrap_or(key);
        let example = format!("write {field} = \"{}\"", duration::format_duration(default));
        match duration::parse_duration(s.get_ref()) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                self.report(
                    &s,
                    key,
                    format!(
                        "\"{}\" must be between {} and {}",
                        s.get_ref(),
                        duration::format_duration(min),
                        duration::format_duration(max)
                    ),
                    example,
                );
                default
            }
            Err(e) => {
                self.report(
                    &s,
                    key,
                    format!("\"{}\" is not a duration: {e}", s.get_ref()),
                    format!("{example} (units: ms, s, m, h, d)"),
                );
                default
            }
        }
    }

    /// `cluster.api_address`: one IPv4 unicast address (a free one on the nodes' LAN).
    fn api_address(&mut self, raw: Option<Spanned<String>>) -> Option<std::net::Ipv4Addr> {
        let s = raw?;
        let text = s.get_ref().trim();
        let fix = "write a free IPv4 address of the nodes' LAN, outside the DHCP pool, e.g. api_address = \"192.168.1.240\"";
        match text.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a))
                if !(a.is_unspecified()
                    || a.is_loopback()
                    || a.is_multicast()
                    || a.is_broadcast()
                    || a.is_link_local()) =>
            {
                Some(a)
            }
            Ok(std::net::IpAddr::V6(_)) => {
                self.report(
                    &s,
                    "cluster.api_address",
                    format!("\"{text}\" is an IPv6 address; the fixed address is announced with ARP, IPv4 only"),
                    fix,
                );
                None
            }
            Ok(_) => {
                self.report(
                    &s,
                    "cluster.api_address",
                    format!("\"{text}\" is not a unicast address a server can hold"),
                    fix,
                );
                None
            }
            Err(_) => {
                self.report(
                    &s,
                    "cluster.api_address",
                    format!("\"{text}\" is not an IPv4 address"),
                    fix,
                );
                None
            }
        }
    }

    /// `cluster.replace_after`: a duration from 10 s to 30 days, or "off".
    fn replace_after(&mut self, raw: Option<Spanned<String>>) -> Option<Duration> {
        if raw
            .as_ref()
            .is_some_and(|s| s.get_ref().trim().eq_ignore_ascii_case("off"))
        {
            return None;
        }
        let default = Duration::from_secs(30 * 60);
        if let Some(s) = &raw {
            if duration::parse_duration(s.get_ref()).is_err() {
                self.report(
                    s,
                    "cluster.replace_after",
                    format!("\"{}\" is neither a duration nor \"off\"", s.get_ref()),
                    "write replace_after = \"30m\" (units: ms, s, m, h, d), or \"off\" to never replace a gone server",
                );
                return Some(default);
            }
        }
        Some(self.duration(
            raw,
            "cluster.replace_after",
            default,
            Duration::from_secs(10),
            Duration::from_secs(30 * 86400),
        ))
    }

    fn timeouts(&mut self, raw: super::raw::RawTimeouts) -> Timeouts {
        let bootstrap = self.duration(
            raw.bootstrap,
            "timeouts.bootstrap",
            Duration::from_secs(15 * 60),
            Duration::from_secs(30),
            Duration::from_secs(24 * 3600),
        );
        let time_sync = self.duration(
            raw.time_sync,
            "timeouts.time_sync",
            Duration::from_secs(90),
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        Timeouts {
            bootstrap,
            time_sync,
        }
    }

    fn status(&mut self, raw: super::raw::RawStatus) -> StatusSettings {
        let led_gpio = match raw.led_gpio {
            None => None,
            Some(p) if *p.get_ref() == 0 => None,
            Some(p) if (1..=27).contains(p.get_ref()) => Some(*p.get_ref() as u8),
            Some(p) => {
                self.report(
                    &p,
                    "status.led_gpio",
                    format!("GPIO {} does not exist on the 40-pin header", p.get_ref()),
                    "write led_gpio = 0 (no LED) or a BCM pin number 1-27, e.g. 17",
                );
                None
            }
        };
        StatusSettings { led_gpio }
    }
}

/// Whether an invalid name looks like a pasted token: a K3s secure token (`K10...::...`), or a
/// long run of letters and digits mixing cases or with no word separator, as `imagebuild token`
/// and `openssl rand` print. Such values are never echoed in errors.
fn looks_like_token(v: &str) -> bool {
    if v.contains("::") || (v.starts_with("K10") && v.len() > 20) {
        return true;
    }
    let alnum = v.chars().filter(|c| c.is_ascii_alphanumeric()).count();
    let digits = v.chars().filter(|c| c.is_ascii_digit()).count();
    let upper = v.chars().any(|c| c.is_ascii_uppercase());
    let lower = v.chars().any(|c| c.is_ascii_lowercase());
    v.len() >= 16
        && alnum * 10 >= v.len() * 8
        && digits >= 3
        && (upper && lower || !v.contains('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "[cluster]\nname = \"homelab\"\ntoken = \"0123456789abcdefXYZ\"\nservers = 3\nnodes = 5\n";

    fn err(text: &str) -> ConfigError {
        ClusterConfig::from_toml_str(text, Path::new("/boot/firmware/cluster.toml")).unwrap_err()
    }

    #[test]
    fn replace_after_defaults_to_30m_and_off_disables_it() {
        let with = |line: &str| {
            ClusterConfig::from_toml_str(
                &format!("[cluster]\nname = \"lab\"\ntoken = \"0123456789abcdefXYZ\"\n{line}\n"),
                Path::new("c.toml"),
            )
        };
        assert_eq!(
            with("").unwrap().replace_after,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(with("replace_after = \"off\"").unwrap().replace_after, None);
        assert_eq!(with("replace_after = \"OFF\"").unwrap().replace_after, None);
        assert_eq!(
            with("replace_after = \"20s\"").unwrap().replace_after,
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            with("replace_after = \"1h30m\"").unwrap().replace_after,
            Some(Duration::from_secs(5400))
        );
        for (bad, problem, fix) in [
            ("\"never\"", "neither a duration nor \"off\"", "\"off\""),
            (
                "\"5s\"",
                "must be between 10s and 30d",
                "replace_after = \"30m\"",
            ),
            (
                "\"31d\"",
                "must be between 10s and 30d",
                "replace_after = \"30m\"",
            ),
        ] {
            let e = with(&format!("replace_after = {bad}")).unwrap_err();
            let d = &e.diagnostics[0];
            assert_eq!(
                (d.line, d.key.as_str()),
                (4, "cluster.replace_after"),
                "{d:?}"
            );
            assert!(d.problem.contains(problem), "{bad}: {}", d.problem);
            assert!(d.fix.contains(fix), "{bad}: {}", d.fix);
        }
    }

    #[test]
    fn api_address_is_one_ipv4_unicast_address() {
        let with = |line: &str| {
            ClusterConfig::from_toml_str(
                &format!("[cluster]\nname = \"lab\"\ntoken = \"0123456789abcdefXYZ\"\n{line}\n"),
                Path::new("c.toml"),
            )
        };
        assert_eq!(with("").unwrap().api_address, None);
        assert_eq!(
            with("api_address = \"198.18.1.240\"").unwrap().api_address,
            Some("198.18.1.240".parse().unwrap())
        );
        for (bad, problem) in [
            ("\"fd00::1\"", "IPv6"),
            ("\"127.0.0.1\"", "not a unicast address"),
            ("\"224.0.0.251\"", "not a unicast address"),
            ("\"0.0.0.0\"", "not a unicast address"),
            ("\"k3s.lan\"", "not an IPv4 address"),
            ("\"198.18.1.240/24\"", "not an IPv4 address"),
        ] {
            let e = with(&format!("api_address = {bad}")).unwrap_err();
            let d = &e.diagnostics[0];
            assert_eq!(
                (d.line, d.key.as_str()),
                (4, "cluster.api_address"),
                "{d:?}"
            );
            assert!(d.problem.contains(problem), "{bad}: {}", d.problem);
            assert!(
                d.fix.contains("api_address = \"192.168.1.240\""),
                "{bad}: {}",
                d.fix
            );
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = ClusterConfig::from_toml_str(
            "[cluster]\nname = \"lab\"\ntoken = \"0123456789abcdefXYZ\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!((c.servers, c.nodes), (3, 3));
        assert_eq!(c.node.role, RolePin::Auto);
        assert_eq!(c.k3s.disable, vec!["traefik".to_string()]);
        assert_eq!(c.snapshots.schedule, "0 */6 * * *");
        assert_eq!(c.timeouts.bootstrap, Duration::from_secs(900));
        assert_eq!(c.timeouts.time_sync, Duration::from_secs(90));
        assert_eq!(c.status.led_gpio, None);
        assert!(!c.summary().contains("0123456789abcdefXYZ"));
    }

    #[test]
    fn good_file_parses() {
        let c = ClusterConfig::from_toml_str(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!((c.name.as_str(), c.servers, c.nodes), ("homelab", 3, 5));
    }

    #[test]
    fn unknown_key_points_at_line_and_suggests() {
        let e = err(&GOOD.replace("servers = 3", "sever = 3"));
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.column, d.key.as_str()), (4, 1, "cluster.sever"));
        assert!(d.fix.contains("did you mean `servers`"), "{}", d.fix);
    }

    #[test]
    fn even_servers_refused_with_fix() {
        let e = err(&GOOD.replace("servers = 3", "servers = 4"));
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.key.as_str()), (4, "cluster.servers"));
        assert!(
            d.fix.contains("servers = 3") || d.fix.contains("servers = 5"),
            "{}",
            d.fix
        );
    }

    #[test]
    fn short_token_never_echoed() {
        let e = err(&GOOD.replace("0123456789abcdefXYZ", "s3cretshort"));
        let shown = e.to_string();
        assert!(shown.contains("cluster.token"), "{shown}");
        assert!(!shown.contains("s3cretshort"), "{shown}");
    }

    #[test]
    fn a_token_pasted_into_the_name_is_never_echoed() {
        // The token in the file is another one: the pasted value is not a known secret.
        for pasted in [
            "Zq3vX9tL2mR8wK4pN7bH",
            "k3x9qv2m8w4p7b1n6z5t0r+Qz",
            "K10abc::server:Zq3vX9tL2mR8",
        ] {
            let e = err(&GOOD.replace("name = \"homelab\"", &format!("name = \"{pasted}\"")));
            let shown = e.to_string();
            assert!(
                !shown
                    .to_ascii_lowercase()
                    .contains(&pasted.to_ascii_lowercase()[..12]),
                "{shown}"
            );
            assert!(shown.contains("looks like a cluster token"), "{shown}");
        }
        // An ordinary bad name is still echoed with its fix.
        let e = err(&GOOD.replace("name = \"homelab\"", "name = \"Home_Lab\""));
        assert!(e.to_string().contains("home-lab"), "{e}");
    }

    #[test]
    fn token_in_wrong_place_is_redacted() {
        let e = err(&GOOD.replace("name = \"homelab\"", "name = \"0123456789abcdefXYZ!\""));
        assert!(!e.to_string().contains("0123456789abcdefXYZ"), "{e}");
    }

    #[test]
    fn syntax_error_located_and_redacted() {
        let e = err("[cluster]\nname = \"x\ntoken = \"0123456789abcdefXYZ\"\n");
        assert_eq!(e.diagnostics[0].line, 2);
        assert!(!e.to_string().contains("0123456789abcdefXYZ"));
    }

    #[test]
    fn collects_several_problems_in_file_order() {
        let e = err(&format!(
            "{GOOD}[status]\nled_gpio = 40\n[node]\nrole = \"master\"\n"
        ));
        let keys: Vec<_> = e.diagnostics.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, vec!["status.led_gpio", "node.role"]);
    }

    #[test]
    fn token_file_is_read_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster-token"), "0123456789abcdefXYZ\n").unwrap();
        let text = "[cluster]\nname = \"lab\"\ntoken_file = \"cluster-token\"\n";
        let c = ClusterConfig::from_toml_str(text, &dir.path().join("cluster.toml")).unwrap();
        assert_eq!(c.token.expose(), "0123456789abcdefXYZ");
        assert!(matches!(c.token_source, TokenSource::File(_)));
    }
}
