//! `firstboot check-config` against the shipped examples and a corpus of broken files.
//!
//! Each file in tests/config/broken/ starts with `# expect: line=N key=K`: the error must name
//! that line and key, and no output may contain any token value written in the file.

use std::path::Path;
use std::process::Command;
use systests::{bin_path, repo_root};

fn check_config(path: &Path) -> (bool, String, String) {
    let out = Command::new(bin_path("firstboot"))
        .arg("check-config")
        .arg(path)
        .output()
        .expect("running firstboot check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Token values written in a file, found by hand so the test does not trust the code under test.
fn secrets_in(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("token ") || l.trim_start().starts_with("token="))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect()
}

#[test]
fn every_example_passes_check_config() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let file = entry.unwrap().path().join("cluster.toml");
        if !file.exists() {
            continue;
        }
        let (ok, stdout, stderr) = check_config(&file);
        assert!(ok, "{} failed:\n{stderr}", file.display());
        assert!(stdout.contains(": ok: cluster \""), "{stdout}");
        assert!(stdout.contains("token <redacted>"), "{stdout}");
        for s in secrets_in(&std::fs::read_to_string(&file).unwrap()) {
            assert!(
                !stdout.contains(&s) && !stderr.contains(&s),
                "token leaked for {}",
                file.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected the homelab, fleet and classroom examples, found {checked}"
    );
}

#[test]
fn broken_corpus_fails_naming_line_and_key_without_leaking_the_token() {
    let dir = repo_root().join("tests/config/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "the corpus must hold at least 15 broken files"
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let header = text.lines().next().unwrap_or_default();
        let expect = header
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{} lacks an expect header", file.display()));
        let mut line = "";
        let mut key = "";
        for part in expect.split_whitespace() {
            if let Some(v) = part.strip_prefix("line=") {
                line = v;
            } else if let Some(v) = part.strip_prefix("key=") {
                key = v;
            }
        }
        let (ok, stdout, stderr) = check_config(file);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if ok {
            failures.push(format!("{name}: was accepted"));
            continue;
        }
        let location = format!("{}:{line}:", file.display());
        if !stderr.contains(&location) {
            failures.push(format!(
                "{name}: error does not point at line {line}:\n{stderr}"
            ));
        }
        if !key.is_empty() && !stderr.contains(&format!("key `{key}`")) {
            failures.push(format!("{name}: error does not name key {key}:\n{stderr}"));
        }
        if !stderr.contains("fix: ") {
            failures.push(format!(
                "{name}: error does not say what to write instead:\n{stderr}"
            ));
        }
        for s in secrets_in(&text) {
            let lower = s.to_ascii_lowercase();
            let all = format!("{stdout}{stderr}").to_ascii_lowercase();
            if all.contains(&lower) {
                failures.push(format!("{name}: output contains the token value"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
