//! Intake killed with SIGKILL at many points, then run again, ends exactly where an
//! uninterrupted run ends: same root copy, same scrubbed boot files, no token on the boot side.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const SECRET: &str = "kill9-secret-Pq47Ws2Xa";

fn setup(dir: &Path) {
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(
        boot.join("cluster.toml"),
        "# site 7\n[cluster]\nname = \"site-7\"\ntoken_file = \"cluster-token\" # beside me\nservers = 3\n\n[snapshots]\nretention = 9\n",
    )
    .unwrap();
    std::fs::write(boot.join("cluster-token"), format!("{SECRET}\n")).unwrap();
}

/// Every regular file under `dir` (relative path -> bytes and mode), temp files included.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, (std::fs::read(&p).unwrap(), md.mode() & 0o7777));
            }
        }
    }
    out
}

fn run_once(dir: &Path) -> std::process::ExitStatus {
    Command::new(systests::bin_path("intake-once"))
        .arg(dir.join("boot"))
        .arg(dir.join("root"))
        .status()
        .unwrap()
}

#[test]
fn kill_9_at_any_point_then_restart_reaches_the_same_end() {
    let reference = tempfile::tempdir().unwrap();
    setup(reference.path());
    let started = std::time::Instant::now();
    assert!(run_once(reference.path()).success());
    // Used only to spread the kills over a whole run, not asserted.
    let run_time = started.elapsed();
    let want = snapshot(reference.path());
    assert!(want.contains_key("root/etc/firstboot/cluster.toml"));
    assert!(want.contains_key("root/etc/firstboot/cluster-token"));

    let mut interrupted = 0;
    for i in 0..60u64 {
        let t = tempfile::tempdir().unwrap();
        setup(t.path());
        let mut child = Command::new(systests::bin_path("intake-once"))
            .arg(t.path().join("boot"))
            .arg(t.path().join("root"))
            .spawn()
            .unwrap();
        // Spread the kills over the run: from before exec to after the end.
        std::thread::sleep(run_time * (i as u32) / 40);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        assert!(
            run_once(t.path()).success(),
            "restart after kill #{i} failed"
        );
        let got = snapshot(t.path());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "kill #{i}: different files"
        );
        assert!(
            got == want,
            "kill #{i}: contents or modes differ from an uninterrupted run"
        );
        for (name, (bytes, _)) in &got {
            if name.starts_with("boot/") {
                assert!(
                    !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "kill #{i}: token left in {name}"
                );
            }
        }
    }
    eprintln!("intake killed mid-run in {interrupted} of 60 trials; all restarts converged");
    assert!(interrupted > 0, "no trial was actually interrupted");
}
