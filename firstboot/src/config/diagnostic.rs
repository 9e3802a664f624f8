//! Config errors that point at the file, line, column and key, and say what to write instead.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line of the offending key or value (0 when the file as a whole is wrong).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted key path such as `cluster.servers` (empty for file-level problems).
    pub key: String,
    /// What is wrong. Never contains the token.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

/// Everything wrong with one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problems are in.
    pub path: PathBuf,
    /// The problems, at least one.
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// A single problem that is about the file as a whole (unreadable, not UTF-8, ...).
    pub fn whole_file(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            diagnostics: vec![Diagnostic {
                line: 0,
                column: 0,
                key: String::new(),
                problem: problem.into(),
                fix: fix.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        if n > 1 {
            writeln!(f, "{} has {n} problems:", self.path.display())?;
        }
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line == 0 {
                write!(f, "{}: ", self.path.display())?;
            } else {
                write!(f, "{}:{}:{}: ", self.path.display(), d.line, d.column)?;
            }
            if !d.key.is_empty() {
                write!(f, "key `{}`: ", d.key)?;
            }
            write!(f, "{}\n  fix: {}", d.problem, d.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte offsets into 1-based line and column numbers for one source text.
pub(crate) struct SourceMap<'a> {
    text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        SourceMap { text }
    }

    /// Line and column of the start of `span` (end of file when out of range).
    pub(crate) fn position(&self, span: Option<Range<usize>>) -> (usize, usize) {
        let offset = span
            .map(|s| s.start)
            .unwrap_or(self.text.len())
            .min(self.text.len());
        // Step back to a char boundary so slicing cannot panic on a span inside a multibyte char.
        let mut offset = offset;
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A diagnostic located at `span`.
    pub(crate) fn at(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = self.position(span);
        Diagnostic {
            line,
            column,
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Replaces any of `secrets` in `text` by `<redacted>`, ignoring ASCII case (a suggestion may
/// lowercase a value); a last guard so that messages built from values can never carry the token.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        let needle = s.to_ascii_lowercase();
        // ASCII lowercasing keeps byte offsets, so positions found in `lower` apply to `out`.
        let lower = out.to_ascii_lowercase();
        let mut scrubbed = String::with_capacity(out.len());
        let mut last = 0;
        for (at, _) in lower.match_indices(&needle) {
            scrubbed.push_str(&out[last..at]);
            scrubbed.push_str("<redacted>");
            last = at + needle.len();
        }
        scrubbed.push_str(&out[last..]);
        out = scrubbed;
    }
    out
}

/// Quoted values of every `token = ...` line, found without a TOML parser (the file may not
/// parse), so error output can be scrubbed of them.
pub(crate) fn token_candidates(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim().trim_matches('"').trim_matches('\'') != "token" {
            continue;
        }
        let value = value.trim();
        let inner = value
            .strip_prefix('"')
            .and_then(|v| v.split('"').next())
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.split('\'').next()))
            .unwrap_or(value.split('#').next().unwrap_or("").trim());
        if !inner.is_empty() {
            found.push(inner.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let map = SourceMap::new("a = 1\nbé = 2\n");
        assert_eq!(map.position(Some(0..1)), (1, 1));
        assert_eq!(map.position(Some(6..7)), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(map.position(Some(9..10)), (2, 3));
    }

    #[test]
    fn finds_and_redacts_token_values() {
        let text = "token = \"abcdefghijklmnopq\" # x\ntoken='zyxwvutsrqponmlk'\n";
        let c = token_candidates(text);
        assert_eq!(
            c,
            vec![
                "abcdefghijklmnopq".to_string(),
                "zyxwvutsrqponmlk".to_string()
            ]
        );
        assert_eq!(
            redact("bad abcdefghijklmnopq here", &c),
            "bad <redacted> here"
        );
        assert_eq!(redact("ZYXWVUTSRQPONMLK!", &c), "<redacted>!");
        // A secret that is part of the marker itself must not loop.
        assert_eq!(redact("x dact y", &["dact".to_string()]), "x <redacted> y");
    }
}
