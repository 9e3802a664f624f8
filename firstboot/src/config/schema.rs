//! The key schema of `cluster.toml` v1, checked before deserializing so that unknown keys and
//! wrong value kinds get precise, friendly errors ("did you mean ...").

use super::diagnostic::{Diagnostic, SourceMap};
use toml_edit::{Item, TableLike, Value};

/// The kind of value a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A boolean.
    Bool,
    /// An array of strings.
    StrList,
    /// A free-form table (only `k3s.extra`).
    Table,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a quoted string",
            Kind::Int => "a whole number",
            Kind::Bool => "true or false",
            Kind::StrList => "a list of quoted strings",
            Kind::Table => "a table",
        }
    }
}

/// One allowed key: its name, kind, and an example line to show in fixes.
pub(crate) struct KeySpec {
    pub name: &'static str,
    pub kind: Kind,
    pub example: &'static str,
}

const fn key(name: &'static str, kind: Kind, example: &'static str) -> KeySpec {
    KeySpec {
        name,
        kind,
        example,
    }
}

/// Every section of schema version 1 and its keys.
pub(crate) const SECTIONS: &[(&str, &[KeySpec])] = &[
    (
        "cluster",
        &[
            key("name", Kind::Str, "name = \"homelab\""),
            key(
                "token",
                Kind::Str,
                "token = \"<output of imagebuild token>\"",
            ),
            key("token_file", Kind::Str, "token_file = \"cluster-token\""),
            key("servers", Kind::Int, "servers = 3"),
            key("nodes", Kind::Int, "nodes = 5"),
            key("replace_after", Kind::Str, "replace_after = \"30m\""),
            key("api_address", Kind::Str, "api_address = \"192.168.1.240\""),
        ],
    ),
    (
        "node",
        &[
            key("role", Kind::Str, "role = \"auto\""),
            key("hostname", Kind::Str, "hostname = \"\""),
        ],
    ),
    (
        "k3s",
        &[
            key("disable", Kind::StrList, "disable = [\"traefik\"]"),
            key("tls_san", Kind::StrList, "tls_san = [\"k3s.example.lan\"]"),
            key(
                "node_taints",
                Kind::StrList,
                "node_taints = [\"dedicated=edge:NoSchedule\"]",
            ),
            key(
                "extra",
                Kind::Table,
                "extra = { \"node-label\" = [\"site=lab\"] }",
            ),
        ],
    ),
    (
        "storage",
        &[
            key("profile", Kind::Str, "profile = \"auto\""),
            key("data_device", Kind::Str, "data_device = \"\""),
            key("data_device_force", Kind::Bool, "data_device_force = false"),
        ],
    ),
    (
        "snapshots",
        &[
            key("schedule", Kind::Str, "schedule = \"0 */6 * * *\""),
            key("retention", Kind::Int, "retention = 7"),
            key("dir", Kind::Str, "dir = \"\""),
        ],
    ),
    (
        "timeouts",
        &[
            key("bootstrap", Kind::Str, "bootstrap = \"15m\""),
            key("time_sync", Kind::Str, "time_sync = \"90s\""),
        ],
    ),
    ("status", &[key("led_gpio", Kind::Int, "led_gpio = 17")]),
];

/// The kind of value `section.key` takes in schema version 1, or None for an unknown key; for
/// tools that set single keys (`imagebuild stamp --set node.role=server`).
pub fn key_kind(section: &str, key_name: &str) -> Option<Kind> {
    section_keys(section)?
        .iter()
        .find(|k| k.name == key_name)
        .map(|k| k.kind)
}

/// Top-level keys that are not sections.
const TOP_LEVEL: &[KeySpec] = &[key("version", Kind::Int, "version = 1")];

/// The closest candidate to `typed`, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(
    typed: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    crate::suggest::closest(typed, candidates)
}

fn section_keys(section: &str) -> Option<&'static [KeySpec]> {
    SECTIONS
        .iter()
        .find(|(s, _)| *s == section)
        .map(|(_, keys)| *keys)
}

/// The section a key name belongs to, for "this key belongs in \[cluster\]" hints.
fn home_of(key_name: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .find(|(_, keys)| keys.iter().any(|k| k.name == key_name))
        .map(|(s, _)| *s)
}

fn value_kind_matches(item: &Item, kind: Kind) -> bool {
    match kind {
        Kind::Table => item.is_table_like(),
        _ => match item.as_value() {
            Some(Value::String(_)) => kind == Kind::Str,
            Some(Value::Integer(_)) => kind == Kind::Int,
            Some(Value::Boolean(_)) => kind == Kind::Bool,
            Some(Value::Array(a)) => {
                kind == Kind::StrList && a.iter().all(|v| matches!(v, Value::String(_)))
            }
            _ => false,
        },
    }
}

/// Checks every key of the document against the schema; returns all problems in file order.
pub(crate) fn check(doc: &toml_edit::ImDocument<&str>, map: &SourceMap<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let root: &dyn TableLike = doc.as_table();
    for (name, item) in root.iter() {
        let key_span = root.get_key_value(name).and_then(|(k, _)| k.span());
        if let Some(keys) = section_keys(name) {
            match item.as_table_like() {
                Some(table) => check_section(name, table, keys, map, &mut out),
                None => out.push(map.at(
                    key_span,
                    name,
                    format!("`{name}` must be a section, not a single value"),
                    format!("write a `[{name}]` header on its own line and put its keys below it"),
                )),
            }
        } else if let Some(spec) = TOP_LEVEL.iter().find(|k| k.name == name) {
            check_kind(name, item, spec, key_span, map, &mut out);
        } else if let Some(section) = home_of(name) {
            out.push(map.at(
                key_span,
                name,
                format!("`{name}` is outside any section"),
                format!("move it below the `[{section}]` header"),
            ));
        } else {
            let names = SECTIONS
                .iter()
                .map(|(s, _)| *s)
                .chain(TOP_LEVEL.iter().map(|k| k.name));
            let fix = match did_you_mean(name, names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "use one of the sections {}",
                    SECTIONS
                        .iter()
                        .map(|(s, _)| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out.push(map.at(
                key_span,
                name,
                format!("unknown section or key `{name}`"),
                fix,
            ));
        }
    }
    out.sort_by_key(|d| (d.line, d.column));
    out
}

fn check_section(
    section: &str,
    table: &dyn TableLike,
    keys: &[KeySpec],
    map: &SourceMap<'_>,
    out: &mut Vec<Diagnostic>,
) {
    for (name, item) in table.iter() {
        let path = format!("{section}.{name}");
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        if let Some(spec) = keys.iter().find(|k| k.name == name) {
            check_kind(&path, item, spec, key_span, map, out);
            continue;
        }
        let fix = if let Some(s) = did_you_mean(name, keys.iter().map(|k| k.name)) {
            format!(
                "did you mean `{s}`? ({})",
                keys.iter().find(|k| k.name == s).map_or("", |k| k.example)
            )
        } else if let Some(home) = home_of(name) {
            format!("`{name}` belongs in `[{home}]`, not `[{section}]`; move it there")
        } else {
            format!(
                "`[{section}]` accepts: {}",
                keys.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
            )
        };
        out.push(map.at(
            key_span,
            &path,
            format!("unknown key `{name}` in `[{section}]`"),
            fix,
        ));
    }
}

fn check_kind(
    path: &str,
    item: &Item,
    spec: &KeySpec,
    key_span: Option<std::ops::Range<usize>>,
    map: &SourceMap<'_>,
    out: &mut Vec<Diagnostic>,
) {
    if !value_kind_matches(item, spec.kind) {
        let span = item.span().or(key_span);
        out.push(map.at(
            span,
            path,
            format!("`{}` must be {}", spec.name, spec.kind.describe()),
            format!("write it like `{}`", spec.example),
        ));
    }
}
