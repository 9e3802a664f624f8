//! The flags `k3s server` and `k3s agent` define at the pinned K3s release, and how K3s parses them.
//!
//! One table for two users: firstboot routes `[k3s] extra` keys by it (a server-only key never
//! reaches an agent's config.yaml), and the K3s test double checks every config.yaml against it.
//! Why agents must be filtered: K3s drops unknown config.yaml keys only for the subcommands in
//! `ValidFlags` (pkg/configfilearg/defaultparser.go:18 has `server` and `etcd-snapshot`, not
//! `agent`); for `agent` the key reaches urfave/cli, which exits with "flag provided but not
//! defined" (pkg/configfilearg/parser.go:73 returns the args unfiltered).
//!
//! The table is generated: `tests/k3s/gen_flag_table.py` reads pkg/cli/cmds/{server,agent}.go.

#[path = "flag_table.rs"]
mod table;

/// The K3s release the flag tables were read from (e.g. `v1.31.10+k3s1`).
pub const K3S_VERSION: &str = table::VERSION;

/// How urfave/cli parses a flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `cli.BoolFlag`: Go's `strconv.ParseBool`.
    Bool,
    /// `cli.StringFlag`: any text; a repeated flag keeps the last value.
    String,
    /// `cli.IntFlag`: Go's `strconv.ParseInt(s, 0, 64)` (decimal, `0x`, `0o`, `0b`, leading `0`).
    Int,
    /// `cli.StringSliceFlag`: repeatable; each value is also split at commas.
    StringSlice,
    /// `cli.DurationFlag`: Go's `time.ParseDuration` (`90s`, `1h30m`; no `d`).
    Duration,
}

/// One K3s command-line flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The long name, which is also the config.yaml key.
    pub name: &'static str,
    /// Other names (`t` for `token`).
    pub aliases: &'static [&'static str],
    /// How its value is parsed.
    pub kind: FlagKind,
    /// Where K3s defines it (`pkg/cli/cmds/agent.go:170`).
    pub source: &'static str,
}

impl Flag {
    /// Whether `name` is this flag's name or one of its aliases.
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.aliases.contains(&name)
    }

    /// Checks one value as urfave/cli (through Go's `flag` package) would; the error text is
    /// K3s's ("invalid value \"x\" for flag -etcd-snapshot-retention: parse error").
    pub fn check_value(&self, value: &str) -> Result<(), String> {
        let ok = match self.kind {
            FlagKind::String | FlagKind::StringSlice => true,
            FlagKind::Int => go_parse_int(value).is_some(),
            FlagKind::Duration => go_parse_duration(value).is_some(),
            FlagKind::Bool => {
                return match go_parse_bool(value) {
                    Some(_) => Ok(()),
                    None => Err(format!(
                        "invalid boolean value {value:?} for -{}: parse error",
                        self.name
                    )),
                }
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid value {value:?} for flag -{}: parse error",
                self.name
            ))
        }
    }
}

/// A K3s subcommand firstboot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subcommand {
    /// `k3s server` (with its embedded agent).
    Server,
    /// `k3s agent`.
    Agent,
}

impl Subcommand {
    /// Every flag this subcommand defines.
    pub fn flags(self) -> &'static [Flag] {
        match self {
            Subcommand::Server => table::SERVER,
            Subcommand::Agent => table::AGENT,
        }
    }

    /// The flag `name` (long name or alias) of this subcommand.
    pub fn flag(self, name: &str) -> Option<&'static Flag> {
        self.flags().iter().find(|f| f.is_named(name))
    }

    /// Whether K3s drops config.yaml keys this subcommand does not define (with a warning)
    /// instead of exiting: only `server` is in `ValidFlags` (pkg/configfilearg/defaultparser.go:18).
    pub fn skips_unknown_config_keys(self) -> bool {
        self == Subcommand::Server
    }
}

/// Which subcommands define a config.yaml key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Both `server` and `agent` (e.g. `node-label`, `kubelet-arg`).
    Both,
    /// Only `server` (e.g. `write-kubeconfig-mode`, `kube-apiserver-arg`).
    ServerOnly,
    /// Only `agent` (hidden, deprecated flags such as `disable-apiserver-lb`).
    AgentOnly,
    /// Neither: a typo or a flag of another K3s version.
    Neither,
}

/// Which subcommands define `key`. A `key+` (K3s's append syntax, parser.go:281) counts as `key`.
pub fn reach(key: &str) -> Reach {
    let key = key.strip_suffix('+').unwrap_or(key);
    match (
        Subcommand::Server.flag(key).is_some(),
        Subcommand::Agent.flag(key).is_some(),
    ) {
        (true, true) => Reach::Both,
        (true, false) => Reach::ServerOnly,
        (false, true) => Reach::AgentOnly,
        (false, false) => Reach::Neither,
    }
}

/// Whether a config.yaml key belongs in this subcommand's config.yaml.
pub fn reaches(key: &str, sub: Subcommand) -> bool {
    matches!(
        (reach(key), sub),
        (Reach::Both, _)
            | (Reach::ServerOnly, Subcommand::Server)
            | (Reach::AgentOnly, Subcommand::Agent)
    )
}

/// Go's `strconv.ParseBool`.
pub fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: sign, base prefix, underscores only between digits.
pub fn go_parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower, false)
    };
    // Underscores: each must sit between digits (or right after a base prefix).
    let chars: Vec<char> = digits.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '_' {
            let before = if i == 0 {
                prefixed
            } else {
                chars[i - 1] != '_'
            };
            let after = chars.get(i + 1).is_some_and(|n| *n != '_');
            if !before || !after {
                return None;
            }
        }
    }
    let clean: String = chars.into_iter().filter(|c| *c != '_').collect();
    if clean.is_empty() {
        return None;
    }
    let v = i64::from_str_radix(&clean, radix).ok()?;
    Some(if neg { -v } else { v })
}

/// Go's `time.ParseDuration`, returning nanoseconds: `[-+]?([0-9]*(\.[0-9]*)?unit)+` or `0`.
pub fn go_parse_duration(s: &str) -> Option<f64> {
    let s = s
        .strip_prefix('-')
        .or_else(|| s.strip_prefix('+'))
        .unwrap_or(s);
    if s == "0" {
        return Some(0.0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok().or_else(|| {
            // "5." and ".5" are valid in Go.
            format!("0{num}0").parse().ok()
        })?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_follows_the_k3s_flag_sets() {
        assert_eq!(reach("write-kubeconfig-mode"), Reach::ServerOnly);
        assert_eq!(reach("kube-apiserver-arg"), Reach::ServerOnly);
        assert_eq!(reach("cluster-init"), Reach::ServerOnly);
        assert_eq!(reach("kubelet-arg"), Reach::Both);
        assert_eq!(reach("node-label+"), Reach::Both);
        assert_eq!(reach("flannel-iface"), Reach::Both);
        assert_eq!(reach("disable-apiserver-lb"), Reach::AgentOnly);
        assert_eq!(reach("write-kubeconfig-mod"), Reach::Neither);
        assert!(reaches("protect-kernel-defaults", Subcommand::Agent));
        assert!(!reaches("tls-san", Subcommand::Agent));
        assert_eq!(Subcommand::Agent.flag("t").map(|f| f.name), Some("token"));
        assert_eq!(
            Subcommand::Server
                .flag("etcd-snapshot-retention")
                .map(|f| f.kind),
            Some(FlagKind::Int)
        );
    }

    #[test]
    fn values_parse_as_go_does() {
        let retention = Subcommand::Server.flag("etcd-snapshot-retention").unwrap();
        assert!(retention.check_value("12").is_ok());
        assert!(retention.check_value("0x0c").is_ok());
        assert!(retention.check_value("1_000").is_ok());
        assert_eq!(
            retention.check_value("twelve").unwrap_err(),
            "invalid value \"twelve\" for flag -etcd-snapshot-retention: parse error"
        );
        assert!(retention.check_value("12.5").is_err());
        assert!(retention.check_value("_1").is_err());
        let init = Subcommand::Server.flag("cluster-init").unwrap();
        assert!(init.check_value("True").is_ok());
        assert!(init.check_value("yes").is_err());
        assert_eq!(go_parse_duration("1h30m"), Some(5400e9));
        assert_eq!(go_parse_duration("1.5s"), Some(1.5e9));
        assert_eq!(go_parse_duration("1d"), None);
        assert_eq!(go_parse_duration("10"), None);
        assert_eq!(go_parse_duration("0"), Some(0.0));
    }
}
