//! `image-build-bench`: rootless imagebuild versus loop-mount-and-copy on the same >= 2.5 GiB base.
//!
//! Run as root (the baseline needs loop devices and mount):
//!   cargo run --release -p systests --bin image-build-bench [-- WORKDIR]
//! It makes a realistic base (2.7 GiB image, ~1.6 GiB of files in ~10k files), a K3s-sized payload
//! (a 64 MiB binary, a 133 MiB air-gap archive, symlinks, overlays, user setup), then times
//!   1. `imagebuild` (library pipeline, run as the unprivileged user `nobody`, base already in its
//!      raw cache as on any rebuild): copy, grow, edit FAT and ext4, sha256 of the output;
//!   2. the baseline from the same raw file: cp --sparse, sfdisk grow, losetup, e2fsck -f,
//!      resize2fs, mount, copy + chown/chmod, umount, boot edits (mtools), sync, sha256sum,
//!
//! and prints both times and the ratio.

use systests::image::fixture;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const EPOCH: &str = "1735689600";

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn random_file(path: &Path, size: usize, seed: u64) -> Result<()> {
    let mut s = seed | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    std::fs::write(path, data)?;
    Ok(())
}

struct Inputs {
    base: PathBuf,
    k3s: PathBuf,
    airgap: PathBuf,
    overlay: PathBuf,
    recipe: PathBuf,
}

fn prepare(work: &Path) -> Result<Inputs> {
    let base = work.join("base.img");
    if !base.exists() {
        eprintln!("making the base image (2.7 GiB, ~1.6 GiB of files)...");
        let spec = fixture::Spec {
            flavor: fixture::Flavor::Trixie,
            root_mib: 2200,
            filler_bytes: 1600 << 20,
        };
        fixture::make(&spec, &base)?;
    }
    let k3s = work.join("k3s-arm64");
    let airgap = work.join("k3s-airgap-images-arm64.tar.zst");
    if !k3s.exists() {
        random_file(&k3s, 64 << 20, 7)?;
        random_file(&airgap, 133 << 20, 11)?;
    }
    let overlay = work.join("overlay");
    std::fs::create_dir_all(overlay.join("etc/rancher/k3s"))?;
    std::fs::write(
        overlay.join("etc/rancher/k3s/registries.yaml"),
        "mirrors: {}\n",
    )?;
    // The base sits in imagebuild's raw cache, as after the first build from the catalog: the
    // timed build neither downloads, decompresses nor re-hashes it (the baseline starts from the
    // same raw file). The URL is never contacted (--offline and a cache hit).
    let sha = sh(Command::new("sha256sum").arg(&base))?;
    let sha = sha
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_string();
    let raw_dir = work.join("cache/raw");
    std::fs::create_dir_all(work.join("cache/downloads"))?;
    std::fs::create_dir_all(&raw_dir)?;
    let cached = raw_dir.join(format!("{sha}.img"));
    if !cached.exists() {
        std::fs::hard_link(&base, &cached)?;
    }
    sh(Command::new("chmod")
        .arg("-R")
        .arg("a+rwX")
        .arg(work.join("cache")))?;
    let recipe = work.join("image.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nboard = \"rpi5\"\nbase = \"http://127.0.0.1:9/bench-base.img.xz\"\nbase_sha256 = \"{sha}\"\noutput = \"out/imagebuild.img\"\nfree_space = \"1GiB\"\n\n[os]\nssh_authorized_keys = [\"ssh-ed25519 AAAAbench bench@example\"]\noverlays = [\"overlays/sd-tuning\", \"{}\"]\n",
            overlay.display()
        ),
    )?;
    for p in [&base, &k3s, &airgap, &recipe] {
        sh(Command::new("chmod").arg("a+r").arg(p))?;
    }
    sh(Command::new("chmod").arg("-R").arg("a+rX").arg(&overlay))?;
    std::fs::create_dir_all(work.join("out"))?;
    sh(Command::new("chmod")
        .arg("777")
        .arg(work.join("out"))
        .arg(work))?;
    Ok(Inputs {
        base,
        k3s,
        airgap,
        overlay,
        recipe,
    })
}

fn payload(i: &Inputs) -> imagebuild::rootfs::payload::Payload {
    let mut p = imagebuild::rootfs::payload::Payload::new();
    p.file(&i.k3s, "/usr/local/bin/k3s", 0o755);
    for l in ["kubectl", "crictl", "ctr"] {
        p.symlink(&format!("/usr/local/bin/{l}"), "k3s");
    }
    p.dir("/var/lib/rancher/k3s/agent/images", 0o755);
    p.file(
        &i.airgap,
        "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst",
        0o644,
    );
    p
}

/// The rootless side, run in a child process as `nobody`.
fn child(work: &Path) -> Result<()> {
    let i = Inputs {
        base: work.join("base.img"),
        k3s: work.join("k3s-arm64"),
        airgap: work.join("k3s-airgap-images-arm64.tar.zst"),
        overlay: work.join("overlay"),
        recipe: work.join("image.toml"),
    };
    let options = imagebuild::build::BuildOptions {
        cache_dir: Some(work.join("cache")),
        offline: true,
        data_dir: Some(systests::repo_root()),
        payload: payload(&i),
        ..Default::default()
    };
    imagebuild::build::run(&i.recipe, options)?;
    Ok(())
}

fn baseline(i: &Inputs, work: &Path) -> Result<()> {
    let out = work.join("out/baseline.img");
    let _ = std::fs::remove_file(&out);
    sh(Command::new("cp")
        .arg("--sparse=always")
        .arg(&i.base)
        .arg(&out))?;
    // Grow by the same amount imagebuild needed: payload + 1 GiB free, rounded generously.
    let grow = 1500u64 << 20;
    let len = std::fs::metadata(&out)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&out)?
        .set_len(len + grow)?;
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q", "-N", "2"])
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().context("stdin")?.write_all(b", +\n")?;
    if !child.wait()?.success() {
        bail!("sfdisk grow failed");
    }
    let root_start = 520u64 << 20;
    let loopdev = sh(Command::new("losetup")
        .args(["--find", "--show", "--offset"])
        .arg(root_start.to_string())
        .arg(&out))?;
    let result = (|| -> Result<()> {
        sh(Command::new("e2fsck").args(["-fy"]).arg(&loopdev))?;
        sh(Command::new("resize2fs").arg(&loopdev))?;
        let mnt = work.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        sh(Command::new("mount").arg(&loopdev).arg(&mnt))?;
        let copy = (|| -> Result<()> {
            let m = |p: &str| mnt.join(p.trim_start_matches('/'));
            sh(Command::new("install")
                .args(["-D", "-m", "0755"])
                .arg(&i.k3s)
                .arg(m("/usr/local/bin/k3s")))?;
            for l in ["kubectl", "crictl", "ctr"] {
                std::os::unix::fs::symlink("k3s", m(&format!("/usr/local/bin/{l}")))?;
            }
            sh(Command::new("install")
                .args(["-D", "-m", "0644"])
                .arg(&i.airgap)
                .arg(m(
                    "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst",
                )))?;
            for o in [
                systests::repo_root().join("overlays/common"),
                systests::repo_root().join("overlays/sd-tuning"),
                i.overlay.clone(),
            ] {
                sh(Command::new("cp")
                    .arg("-r")
                    .arg("--no-preserve=ownership")
                    .arg(format!("{}/.", o.display()))
                    .arg(&mnt))?;
            }
            std::fs::create_dir_all(m("/home/pi/.ssh"))?;
            std::fs::write(
                m("/home/pi/.ssh/authorized_keys"),
                "ssh-ed25519 AAAAbench bench@example\n",
            )?;
            sh(Command::new("chown")
                .arg("-R")
                .arg("1000:1000")
                .arg(m("/home/pi/.ssh")))?;
            sh(Command::new("chmod").arg("0700").arg(m("/home/pi/.ssh")))?;
            sh(Command::new("chmod")
                .arg("0600")
                .arg(m("/home/pi/.ssh/authorized_keys")))?;
            std::fs::write(m("/etc/timezone"), "Etc/UTC\n")?;
            Ok(())
        })();
        sh(Command::new("umount").arg(&mnt))?;
        copy
    })();
    sh(Command::new("losetup").arg("-d").arg(&loopdev))?;
    result?;
    // Boot partition edits with mtools (vfat may not be mountable here; mtools is cheaper anyway).
    let img = format!("{}@@{}", out.display(), 8u64 << 20);
    let cmdline = sh(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&img)
        .arg("::cmdline.txt"))?;
    let tmp = work.join("cmdline.txt");
    std::fs::write(&tmp, format!("{cmdline} cgroup_enable=memory\n"))?;
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i"])
        .arg(&img)
        .arg(&tmp)
        .arg("::cmdline.txt"))?;
    std::fs::write(work.join("ssh"), "")?;
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i"])
        .arg(&img)
        .arg(work.join("ssh"))
        .arg("::ssh"))?;
    sh(&mut Command::new("sync"))?;
    sh(Command::new("sha256sum").arg(&out))?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--imagebuild-child") {
        return child(Path::new(&args[2]));
    }
    if !systests::is_root() {
        bail!("run as root: the loop-mount baseline needs losetup and mount (imagebuild itself runs as nobody)");
    }
    let work = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/image-build-bench".into()),
    );
    std::fs::create_dir_all(&work)?;
    let inputs = prepare(&work)?;
    let base_len = std::fs::metadata(&inputs.base)?.len();
    let _ = std::fs::remove_file(work.join("out/imagebuild.img"));
    sh(&mut Command::new("sync"))?;

    let t = Instant::now();
    let exe = std::env::current_exe()?;
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .arg("--imagebuild-child")
        .arg(&work)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("HOME", &work)
        .status()?;
    if !st.success() {
        bail!("the imagebuild run failed");
    }
    let ours = t.elapsed().as_secs_f64();

    let t = Instant::now();
    baseline(&inputs, &work)?;
    let theirs = t.elapsed().as_secs_f64();
    println!(
        "base image: {:.2} GiB",
        base_len as f64 / (1u64 << 30) as f64
    );
    println!("imagebuild (rootless, as nobody): {ours:.2} s");
    println!("loop-mount-and-copy (root):       {theirs:.2} s");
    println!("ratio imagebuild / loop-mount:    {:.2}", ours / theirs);
    Ok(())
}
