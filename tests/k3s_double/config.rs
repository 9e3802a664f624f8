//! config.yaml as K3s reads it: the file and its `config.yaml.d` drop-ins, merged, turned into
//! `--key=value` arguments, filtered (server only) and parsed against the subcommand's flags.
//!
//! The flag sets are firstboot's own table (`firstboot::k3s::flags`, generated from K3s's
//! pkg/cli/cmds), so firstboot's routing of `[k3s] extra` and this check cannot drift apart.
//! Citations are to K3s at the pinned release (see `flags::K3S_VERSION`).
//!
//! Known divergence: K3s parses YAML 1.1 with gopkg.in/yaml.v2 (`yes` is a boolean, `0640` an
//! octal integer); this double parses YAML 1.2, so it reads such unquoted scalars as strings or
//! decimal integers. firstboot quotes every string it writes, which sidesteps both.

use anyhow::{bail, Context, Result};
use firstboot::k3s::flags::{FlagKind, Subcommand};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Flags after parsing: long flag name -> values in order (slices split at commas).
#[derive(Debug, Default)]
pub struct Parsed {
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Parsed {
    /// The last value given for a flag (urfave/cli keeps the last of a repeated scalar).
    pub fn string(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// All values of a slice flag.
    pub fn slice(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// A boolean flag (already checked to parse).
    pub fn bool(&self, name: &str) -> bool {
        self.string(name)
            .and_then(firstboot::k3s::flags::go_parse_bool)
            .unwrap_or(false)
    }

    /// Whether the flag was given at all.
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

/// The config file K3s reads: `$K3S_CONFIG_FILE` or /etc/rancher/k3s/config.yaml
/// (parser.go findConfigFileFlag; defaultparser.go:16-17), under `root`.
pub fn config_path(root: &Path) -> PathBuf {
    match std::env::var("K3S_CONFIG_FILE") {
        Ok(p) if !p.is_empty() => root.join(p.trim_start_matches('/')),
        _ => root.join(firstboot::k3s::CONFIG_YAML_PATH),
    }
}

/// `config.yaml.d/*.yaml` and `*.yml` (suffix case-insensitive, directories skipped), in
/// directory order, which for Go's os.ReadDir is sorted by name (parser.go:227 dotDFiles).
fn drop_ins(file: &Path) -> Result<Vec<PathBuf>> {
    let dir = PathBuf::from(format!("{}.d", file.display()));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_lowercase();
        if e.file_type()?.is_dir() || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        out.push(e.path());
    }
    out.sort();
    Ok(out)
}

/// wrangler's `convert.ToString` as K3s applies it to a YAML value (Go's fmt.Sprint for
/// anything that is not a string; nil is "").
fn go_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            let parts: Vec<String> = items.iter().map(go_string).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Mapping(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{}", go_string(k), go_string(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        Value::Tagged(t) => go_string(&t.value),
    }
}

/// The `--key=value` arguments K3s builds from the config file and its drop-ins
/// (parser.go:246 readConfigFile): later files override a key, `key+` appends to it
/// (parser.go:281-289), keys keep the order they were first seen in, a list becomes one
/// argument per item (parser.go:305-308). `None`: neither the file nor a drop-in exists, and
/// K3s runs with no config (parser.go:47-50).
pub fn config_args(file: &Path) -> Result<Option<Vec<String>>> {
    let mut files = drop_ins(file)?;
    if file.exists() {
        files.insert(0, file.to_path_buf());
    } else if files.is_empty() {
        return Ok(None);
    }
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        // yaml.Unmarshal into a MapSlice (parser.go:275): anything but a mapping is an error.
        let doc: Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("yaml: parsing {}", f.display()))?;
        let map = match doc {
            Value::Null => continue,
            Value::Mapping(m) => m,
            _ => bail!(
                "yaml: unmarshal errors in {}: the document is not a mapping",
                f.display()
            ),
        };
        for (k, v) in map {
            let key = go_string(&k);
            let (key, append) = match key.strip_suffix('+') {
                Some(k) => (k.to_string(), true),
                None => (key, false),
            };
            if !order.contains(&key) {
                order.push(key.clone());
            }
            match values.get_mut(&key) {
                Some(old) if append => {
                    let mut items = to_slice(old);
                    items.extend(to_slice(&v));
                    *old = Value::Sequence(items);
                }
                _ => {
                    values.insert(key, v);
                }
            }
        }
    }
    let mut args = Vec::new();
    for k in order {
        let prefix = if k.chars().count() == 1 { "-" } else { "--" };
        match &values[&k] {
            Value::Sequence(items) => {
                for i in items {
                    args.push(format!("{prefix}{k}={}", go_string(i)));
                }
            }
            other => args.push(format!("{prefix}{k}={}", go_string(other))),
        }
    }
    Ok(Some(args))
}

/// parser.go toSlice: a string or list as is; anything else as its trimmed string, if any.
fn to_slice(v: &Value) -> Vec<Value> {
    match v {
        Value::Sequence(items) => items.clone(),
        Value::String(_) => vec![v.clone()],
        other => {
            let s = go_string(other).trim().to_string();
            if s.is_empty() {
                Vec::new()
            } else {
                vec![Value::String(s)]
            }
        }
    }
}

/// Parses the arguments as `k3s <sub>` does. `server` first drops keys it does not define,
/// with K3s's warning (parser.go:73-96, only commands in defaultparser.go:18 ValidFlags); any
/// remaining unknown flag is urfave/cli's `flag provided but not defined: -<key>` (Go's flag
/// package), which is fatal for `k3s agent`. Bad values fail as urfave/cli's Go flag parsing
/// does (`firstboot::k3s::flags::Flag::check_value`).
pub fn parse_args(sub: Subcommand, args: &[String], warn: &dyn Fn(&str)) -> Result<Parsed> {
    let mut parsed = Parsed::default();
    for arg in args {
        let body = arg.trim_start_matches('-');
        let (name, value) = body.split_once('=').unwrap_or((body, ""));
        let Some(flag) = sub.flag(name) else {
            if sub.skips_unknown_config_keys() {
                warn(&format!(
                    "level=warning msg=\"Unknown flag --{name} found in config.yaml, skipping\""
                ));
                continue;
            }
            bail!("Incorrect Usage: flag provided but not defined: -{name}");
        };
        flag.check_value(value)
            .map_err(|e| anyhow::anyhow!("Incorrect Usage: {e}"))?;
        let slot = parsed.values.entry(flag.name).or_default();
        match flag.kind {
            // urfave/cli v2 StringSlice.Set splits each value at commas (flag_string_slice.go).
            FlagKind::StringSlice => slot.extend(
                value
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            ),
            _ => slot.push(value.to_string()),
        }
    }
    Ok(parsed)
}

/// Reads the configuration of `k3s <sub>` under `root`, once, at process start
/// (cmd/server/main.go: `app.Run(configfilearg.MustParse(os.Args))`). The environment
/// variables K3s binds to flags (`K3S_TOKEN`, `K3S_TOKEN_FILE`, `K3S_URL`, `K3S_NODE_NAME`;
/// agent.go and server.go `EnvVars`) fill flags the file leaves unset.
pub fn load(root: &Path, sub: Subcommand, warn: &dyn Fn(&str)) -> Result<Parsed> {
    let file = config_path(root);
    let args = config_args(&file)?.unwrap_or_default();
    let mut parsed = parse_args(sub, &args, warn)?;
    for (env, flag) in [
        ("K3S_TOKEN", "token"),
        ("K3S_TOKEN_FILE", "token-file"),
        ("K3S_URL", "server"),
        ("K3S_NODE_NAME", "node-name"),
    ] {
        if let Ok(v) = std::env::var(env) {
            if !v.is_empty() && !parsed.has(flag) {
                parsed
                    .values
                    .insert(sub.flag(flag).map(|f| f.name).unwrap_or("token"), vec![v]);
            }
        }
    }
    Ok(parsed)
}
