//! `image-build-bench`: imagebuild against the floor of what a build must do, and against
//! loop-mount-and-copy, on the same >= 2.5 GiB base, side by side in one run.
//!
//! Run as root (the loop-mount baseline needs loop devices and mount):
//!   cargo run --release -p systests --bin image-build-bench [-- WORKDIR]
//! It makes a realistic base (2.7 GiB image, ~1.6 GiB of files in ~10k files), its `.xz`, a
//! K3s-sized payload (a 64 MiB binary, a 133 MiB air-gap archive, symlinks, overlays, user
//! setup). `imagebuild` runs as the unprivileged user `nobody` (library pipeline, the recipe's base
//! a local raw file; one untimed build first, so the timed ones are warm rebuilds of an unchanged
//! recipe). It prints, each with its ratio:
//!   1. warm, uncompressed: imagebuild against the floor `cp --sparse=always` of the base + `sync`
//!      + `sha256sum` of the copy;
//!   2. warm, zstd: imagebuild against that floor + `zstd -T0` at the level imagebuild uses;
//!   3. cold from the `.xz` (empty cache): imagebuild against `xz -T0 -d` + the warm figure;
//!   4. warm against loop-mount-and-copy from the same raw file: cp --sparse, sfdisk grow,
//!      losetup, e2fsck -f, resize2fs, mount, copy + chown/chmod, umount, boot edits (mtools),
//!      sync, sha256sum;
//!   5. the release build against the debug build (the program builds its other profile and runs
//!      both as the child, on the same inputs): warm, warm with zstd, cold from the `.xz`;
//!   6. zstd levels 3, 10 and 19 (size and time, `zstd -T0`) on a compressible sample: 128 MiB of
//!      the machine tests' debootstrap node image (real packages; `COMPRESSIBLE=PATH` picks
//!      another file), else of the built image.

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
    // The cold build starts from the base as published: an .xz (made once, kept in WORKDIR).
    let xz = work.join("base.img.xz");
    if !xz.exists() {
        eprintln!("compressing the base to base.img.xz (once)...");
        let tmp = work.join("base.img.xz.partial");
        let out = std::fs::File::create(&tmp)?;
        let st = Command::new("xz")
            .args(["-T0", "-3", "-c"])
            .arg(&base)
            .stdout(out)
            .status()?;
        if !st.success() {
            bail!("xz failed");
        }
        std::fs::rename(&tmp, &xz)?;
    }
    let recipe = write_recipe(work, "image.toml", &base, "none", &overlay)?;
    for p in [&base, &xz, &k3s, &airgap, &recipe] {
        sh(Command::new("chmod").arg("a+r").arg(p))?;
    }
    sh(Command::new("chmod").arg("-R").arg("a+rX").arg(&overlay))?;
    for d in ["out", "cache", "cache-cold"] {
        std::fs::create_dir_all(work.join(d))?;
        sh(Command::new("chmod")
            .arg("-R")
            .arg("a+rwX")
            .arg(work.join(d)))?;
    }
    sh(Command::new("chmod").arg("777").arg(work))?;
    Ok(Inputs {
        base,
        k3s,
        airgap,
        overlay,
        recipe,
    })
}

/// A recipe building `out/imagebuild.img` from `base` (a local path, as people point at a
/// downloaded image), compressed as `compress` says.
fn write_recipe(
    work: &Path,
    name: &str,
    base: &Path,
    compress: &str,
    overlay: &Path,
) -> Result<PathBuf> {
    let recipe = work.join(name);
    std::fs::write(
        &recipe,
        format!(
            "[image]\nboard = \"rpi5\"\nbase = \"{}\"\noutput = \"out/imagebuild.img\"\ncompress = \"{compress}\"\nfree_space = \"1GiB\"\n\n[os]\nssh_authorized_keys = [\"ssh-ed25519 AAAAbench bench@example\"]\noverlays = [\"overlays/sd-tuning\", \"{}\"]\n",
            base.display(),
            overlay.display()
        ),
    )?;
    sh(Command::new("chmod").arg("a+r").arg(&recipe))?;
    Ok(recipe)
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

/// The rootless side, run in a child process as `nobody`: one build of `recipe`.
fn child(work: &Path, recipe: &Path, cache: &Path) -> Result<()> {
    let i = Inputs {
        base: work.join("base.img"),
        k3s: work.join("k3s-arm64"),
        airgap: work.join("k3s-airgap-images-arm64.tar.zst"),
        overlay: work.join("overlay"),
        recipe: recipe.to_path_buf(),
    };
    let options = imagebuild::build::BuildOptions {
        cache_dir: Some(cache.to_path_buf()),
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

/// The zstd level imagebuild compresses with (the floor runs `zstd -T0` at the same level).
const ZSTD_LEVEL: i32 = imagebuild::output::DEFAULT_ZSTD_LEVEL;

/// One `imagebuild` build of `recipe` as `nobody` by `exe` (a build of this program), timed.
fn timed_build(exe: &Path, work: &Path, recipe: &Path, cache: &Path) -> Result<f64> {
    let _ = std::fs::remove_file(work.join("out/imagebuild.img"));
    sh(&mut Command::new("sync"))?;
    let t = Instant::now();
    let st = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .arg("--imagebuild-child")
        .arg(work)
        .arg(recipe)
        .arg(cache)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("HOME", work)
        .status()?;
    if !st.success() {
        bail!("the imagebuild run of {} failed", recipe.display());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The floor of a warm build: a sparse copy of the raw base, sync, one sha256 pass of the copy.
fn floor_copy(base: &Path, out: &Path) -> Result<f64> {
    let _ = std::fs::remove_file(out);
    sh(&mut Command::new("sync"))?;
    let t = Instant::now();
    sh(Command::new("cp").arg("--sparse=always").arg(base).arg(out))?;
    sh(&mut Command::new("sync"))?;
    sh(Command::new("sha256sum").arg(out))?;
    Ok(t.elapsed().as_secs_f64())
}

/// `zstd -T0 -LEVEL` of `file` to `out`, timed; returns (seconds, compressed bytes).
fn zstd_file(file: &Path, out: &Path, level: i32) -> Result<(f64, u64)> {
    let _ = std::fs::remove_file(out);
    let t = Instant::now();
    sh(Command::new("zstd")
        .args(["-q", "-f", "-T0", &format!("-{level}")])
        .arg(file)
        .arg("-o")
        .arg(out))?;
    let secs = t.elapsed().as_secs_f64();
    let len = std::fs::metadata(out)?.len();
    let _ = std::fs::remove_file(out);
    Ok((secs, len))
}

/// A compressible file of real packages: the machine tests' node image (debootstrap + K3s).
fn compressible(work: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COMPRESSIBLE") {
        return Some(PathBuf::from(p));
    }
    let dirs = [
        systests::repo_root().join("target/machines-cache"),
        PathBuf::from("/work/coord/machines-cache"),
        work.to_path_buf(),
    ];
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut found: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("node-") && n.ends_with(".img"))
            })
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Some(p);
        }
    }
    None
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-9)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--imagebuild-child") {
        return child(
            Path::new(&args[2]),
            Path::new(&args[3]),
            Path::new(&args[4]),
        );
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
    let builds = systests::profiles::both()?;
    let this = systests::profiles::this_profile();
    let exe = std::env::current_exe()?;
    let (other, other_exe) = builds
        .iter()
        .find(|(p, _)| *p != this)
        .cloned()
        .context("no build of the other profile")?;
    let base_len = std::fs::metadata(&inputs.base)?.len();
    let cache = work.join("cache");
    let floor_img = work.join("out/floor.img");

    // 1. Warm, uncompressed: one untimed build first (it may hash the base and fill caches).
    eprintln!("warm-up build (untimed)...");
    timed_build(&exe, &work, &inputs.recipe, &cache)?;
    let warm = timed_build(&exe, &work, &inputs.recipe, &cache)?;
    let out_len = std::fs::metadata(work.join("out/imagebuild.img"))?.len();
    let floor = floor_copy(&inputs.base, &floor_img)?;

    // 2. Warm, zstd at imagebuild's level, against the floor plus `zstd -T0` of the floor's copy.
    let zrecipe = write_recipe(
        &work,
        "image-zstd.toml",
        &inputs.base,
        "zstd",
        &inputs.overlay,
    )?;
    let warm_zstd = timed_build(&exe, &work, &zrecipe, &cache)?;
    let zst_len = std::fs::metadata(work.join("out/imagebuild.img.zst"))?.len();
    let _ = std::fs::remove_file(work.join("out/imagebuild.img.zst"));
    let floor2 = floor_copy(&inputs.base, &floor_img)?;
    let (zstd_floor, _) = zstd_file(&floor_img, &work.join("out/floor.img.zst"), ZSTD_LEVEL)?;

    // 3. Cold from the .xz with an empty cache, against `xz -T0 -d` + the warm figure.
    let xrecipe = write_recipe(
        &work,
        "image-xz.toml",
        &work.join("base.img.xz"),
        "none",
        &inputs.overlay,
    )?;
    let cold_cache = work.join("cache-cold");
    let cold_build = |exe: &Path| -> Result<f64> {
        let _ = std::fs::remove_dir_all(&cold_cache);
        std::fs::create_dir_all(&cold_cache)?;
        sh(Command::new("chmod").arg("777").arg(&cold_cache))?;
        let t = timed_build(exe, &work, &xrecipe, &cold_cache)?;
        let _ = std::fs::remove_dir_all(&cold_cache);
        Ok(t)
    };
    let cold = cold_build(&exe)?;
    let unxz_dir = work.join("out/unxz");
    let _ = std::fs::remove_dir_all(&unxz_dir);
    std::fs::create_dir_all(&unxz_dir)?;
    std::fs::hard_link(work.join("base.img.xz"), unxz_dir.join("b.img.xz"))?;
    let t = Instant::now();
    sh(Command::new("xz")
        .args(["-T0", "-d", "-k"])
        .arg(unxz_dir.join("b.img.xz")))?;
    sh(&mut Command::new("sync"))?;
    let unxz = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&unxz_dir);

    // The other profile's build on the same three builds (its warm-up first), for item 5.
    eprintln!("the {other} build: warm-up, warm, warm zstd, cold ...");
    timed_build(&other_exe, &work, &inputs.recipe, &cache)?;
    let other_warm = timed_build(&other_exe, &work, &inputs.recipe, &cache)?;
    let other_zstd = timed_build(&other_exe, &work, &zrecipe, &cache)?;
    let _ = std::fs::remove_file(work.join("out/imagebuild.img.zst"));
    let other_cold = cold_build(&other_exe)?;

    // 4. Loop-mount-and-copy from the same raw file.
    let t = Instant::now();
    baseline(&inputs, &work)?;
    let theirs = t.elapsed().as_secs_f64();
    for f in ["out/baseline.img", "out/floor.img"] {
        let _ = std::fs::remove_file(work.join(f));
    }

    // 6. Compression levels on a compressible sample.
    let sample_src = compressible(&work).unwrap_or_else(|| work.join("out/imagebuild.img"));
    let sample = work.join("out/sample.img");
    const SAMPLE: u64 = 128 << 20;
    {
        use std::os::unix::fs::FileExt;
        let src = std::fs::File::open(&sample_src)
            .with_context(|| format!("opening {}", sample_src.display()))?;
        // From the start of the root filesystem when it is a Pi-like image (8 MiB + 512 MiB boot).
        let from = if src.metadata()?.len() > (520 << 20) + SAMPLE {
            520u64 << 20
        } else {
            0
        };
        let mut buf = vec![0u8; SAMPLE as usize];
        let n = src.read_at(&mut buf, from)?;
        std::fs::write(&sample, &buf[..n])?;
    }
    let mut levels = Vec::new();
    for level in [3, 10, 19] {
        levels.push((
            level,
            zstd_file(&sample, &work.join("out/sample.zst"), level)?,
        ));
    }
    let _ = std::fs::remove_file(&sample);
    let _ = std::fs::remove_file(work.join("out/imagebuild.img"));

    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "base image: {:.2} GiB raw ({:.2} GiB .xz); output image {:.2} GiB; zstd level of imagebuild: {ZSTD_LEVEL}",
        gib(base_len),
        gib(std::fs::metadata(work.join("base.img.xz"))?.len()),
        gib(out_len)
    );
    println!(
        "warm, uncompressed: imagebuild {warm:7.2} s | floor (cp --sparse + sync + sha256sum) {floor:7.2} s | ratio {:.2}",
        ratio(warm, floor)
    );
    println!(
        "warm, zstd -{ZSTD_LEVEL}:     imagebuild {warm_zstd:7.2} s | floor + zstd -T0 -{ZSTD_LEVEL} {:7.2} s ({floor2:.2} + {zstd_floor:.2}) | ratio {:.2} | .zst {:.2} GiB",
        floor2 + zstd_floor,
        ratio(warm_zstd, floor2 + zstd_floor),
        gib(zst_len)
    );
    println!(
        "cold from .xz:      imagebuild {cold:7.2} s | xz -T0 -d + warm {:7.2} s ({unxz:.2} + {warm:.2}) | ratio {:.2}",
        unxz + warm,
        ratio(cold, unxz + warm)
    );
    println!(
        "warm vs loop-mount: imagebuild {warm:7.2} s | loop-mount-and-copy (root) {theirs:7.2} s | ratio {:.2}",
        ratio(warm, theirs)
    );
    println!("release build against debug build, same inputs:");
    for (what, mine, theirs) in [
        ("warm, uncompressed:", warm, other_warm),
        ("warm, zstd:", warm_zstd, other_zstd),
        ("cold from .xz:", cold, other_cold),
    ] {
        let (r, d) = if this == "release" {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        println!(
            "  {what:20} release {r:7.2} s | debug {d:7.2} s | release/debug {:.2}",
            ratio(r, d)
        );
    }
    println!(
        "zstd -T0 levels on {} MiB of {} (compressible: real packages):",
        SAMPLE >> 20,
        sample_src.display()
    );
    for (level, (secs, len)) in levels {
        println!(
            "  level {level:2}: {:6.1} MiB ({:5.1}% of the sample) in {secs:6.2} s ({:6.1} MiB/s)",
            len as f64 / (1 << 20) as f64,
            len as f64 * 100.0 / SAMPLE as f64,
            SAMPLE as f64 / (1 << 20) as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
