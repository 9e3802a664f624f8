//! The `firstboot` binary for the board: built from this workspace as a static musl binary, or given.

use crate::progress::say;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of a static firstboot binary for a Debian architecture.
pub fn musl_target(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "arm64" => "aarch64-unknown-linux-musl",
        "amd64" => "x86_64-unknown-linux-musl",
        other => {
            bail!("no firstboot build target for architecture {other:?}; pass --firstboot-bin")
        }
    })
}

/// The workspace this imagebuild was built from, when it is still there.
pub fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    (root.join("Cargo.toml").is_file() && root.join("firstboot/Cargo.toml").is_file())
        .then_some(root)
}

/// Build firstboot for `arch` with cargo into `target_dir` (its own, so a cargo already running
/// on the workspace's target dir cannot hold the build lock) and return the binary.
pub fn build(arch: &str, target_dir: Option<&Path>) -> Result<PathBuf> {
    let target = musl_target(arch)?;
    let Some(root) = workspace_root() else {
        bail!("the firstboot sources are not at {} any more; pass --firstboot-bin PATH (a static {target} build of firstboot)", env!("CARGO_MANIFEST_DIR"));
    };
    let target_dir = match target_dir {
        Some(d) => d.to_path_buf(),
        None => root.join("target").join("imagebuild-firstboot"),
    };
    say(&format!(
        "firstboot: cargo build -p firstboot --release --target {target} (into {})",
        target_dir.display()
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "firstboot", "--release", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags of an outer cargo (running imagebuild or its tests) must not leak into this build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context(
            "running cargo to build firstboot (is cargo installed? else pass --firstboot-bin)",
        )?;
    // A cold cross-build compiles about a hundred crates for minutes: say how far it is.
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let err = follow_cargo(std::io::BufReader::new(stderr));
    let status = child
        .wait()
        .context("waiting for cargo building firstboot")?;
    let out = CargoOutcome { status, err };
    if !out.status.success() {
        let err = &out.err;
        if target_missing(err) {
            bail!(
                "building firstboot needs the Rust target {target}, which is not installed: run `rustup target add {target}` (once), or pass --firstboot-bin PATH (a static {target} build of firstboot)"
            );
        }
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        bail!(
            "building firstboot for {target} failed ({}); pass --firstboot-bin PATH to use a prebuilt binary:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let bin = target_dir.join(target).join("release").join("firstboot");
    if !bin.is_file() {
        bail!("cargo built firstboot but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Whether cargo's error output says the standard library of the target is missing.
/// What the firstboot build left: its exit status and everything it said on stderr.
struct CargoOutcome {
    status: std::process::ExitStatus,
    err: String,
}

/// How many crates between two progress lines when stderr is not a terminal (a CI log).
const PROGRESS_EVERY: usize = 25;

/// Reads cargo's stderr to its end, reporting the crates it compiles; returns all of it.
fn follow_cargo(stderr: impl std::io::BufRead) -> String {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let mut all = String::new();
    let mut compiled = 0usize;
    for line in stderr.lines() {
        let Ok(line) = line else { break };
        if let Some(krate) = compiling(&line) {
            compiled += 1;
            if terminal {
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\rfirstboot: compiling crate {compiled}: {krate:<40}");
                let _ = e.flush();
            } else if compiled.is_multiple_of(PROGRESS_EVERY) {
                say(&format!("firstboot: {compiled} crates compiled ({krate})"));
            }
        }
        all.push_str(&line);
        all.push('\n');
    }
    if terminal && compiled > 0 {
        eprintln!();
    }
    if compiled > 0 {
        say(&format!("firstboot: built ({compiled} crates compiled)"));
    }
    all
}

/// The crate a line of cargo's output starts compiling, e.g. `serde v1.0.0`.
fn compiling(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix("Compiling ")
}

fn target_missing(stderr: &str) -> bool {
    stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`")
}

/// The version of the firstboot in this workspace.
pub fn workspace_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// ELF `e_machine` and name of the programs a Debian architecture runs.
fn elf_machine(arch: &str) -> Option<(u16, &'static str, &'static str)> {
    // (e_machine, how `file` names it, qemu-user's name for it)
    match arch {
        "arm64" => Some((183, "aarch64 (ARM 64-bit)", "aarch64")),
        "amd64" => Some((62, "x86-64", "x86_64")),
        _ => None,
    }
}

fn elf_machine_name(m: u16) -> String {
    match m {
        183 => "aarch64 (ARM 64-bit)".into(),
        62 => "x86-64".into(),
        40 => "32-bit ARM".into(),
        3 => "i386".into(),
        243 => "RISC-V".into(),
        other => format!("machine {other}"),
    }
}

/// What the ELF header and program headers of a file say.
struct ElfFacts {
    machine: u16,
    /// The dynamic loader it asks for (PT_INTERP), if any.
    interpreter: Option<String>,
}

fn read_elf(bin: &Path) -> Result<Option<ElfFacts>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(bin).with_context(|| format!("opening {}", bin.display()))?;
    let mut h = [0u8; 64];
    let n = f.read_at(&mut h, 0)?;
    if n < 64 || h[..4] != [0x7f, b'E', b'L', b'F'] || h[4] != 2 || h[5] != 1 {
        // Not a 64-bit little-endian ELF: the caller names what it is.
        if n >= 20 && h[..4] == [0x7f, b'E', b'L', b'F'] {
            let machine = u16::from_le_bytes([h[18], h[19]]);
            return Ok(Some(ElfFacts {
                machine: if h[4] == 2 { machine } else { machine | 0x8000 },
                interpreter: None,
            }));
        }
        return Ok(None);
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let machine = u16_at(18);
    let phoff = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
    let (phentsize, phnum) = (u16_at(54) as u64, u16_at(56) as u64);
    let mut interpreter = None;
    for i in 0..phnum.min(256) {
        let mut ph = [0u8; 56];
        if phentsize < 56 || f.read_at(&mut ph, phoff + i * phentsize)? < 56 {
            bail!(
                "{} is a damaged ELF file (its program headers are cut off)",
                bin.display()
            );
        }
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == PT_INTERP {
            let off = u64::from_le_bytes(ph[8..16].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(ph[32..40].try_into().expect("8 bytes")).min(4096);
            let mut s = vec![0u8; len as usize];
            f.read_at(&mut s, off)?;
            interpreter = Some(
                String::from_utf8_lossy(&s)
                    .trim_end_matches('\0')
                    .to_string(),
            );
        }
    }
    Ok(Some(ElfFacts {
        machine,
        interpreter,
    }))
}

/// A program `name` on PATH or in /usr/bin, /usr/local/bin.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Check a `--firstboot-bin` before it goes into an image for a board of `arch`: an ELF for
/// that architecture, static (unless `dynamic_ok`: a test board whose base has the loader), and,
/// where it can run here (natively or under qemu-user), answering `--version` as firstboot does.
/// Returns the version it reports, or a note when it could not be run here.
pub fn check_given(bin: &Path, arch: &str, dynamic_ok: bool) -> Result<String> {
    let shown = bin.display();
    if !bin.is_file() {
        bail!("--firstboot-bin {shown} is not a file; give the path of a static firstboot binary for {arch}");
    }
    let Some((want, want_name, qemu_arch)) = elf_machine(arch) else {
        bail!("--firstboot-bin cannot be checked for architecture {arch:?} (imagebuild knows arm64 and amd64)");
    };
    let target = musl_target(arch)?;
    let build_hint = format!(
        "build one with `cargo build -p firstboot --release --target {target}` and pass target/{target}/release/firstboot"
    );
    let Some(elf) = read_elf(bin)? else {
        bail!("--firstboot-bin {shown} is not a program (not an ELF file: a script or data?); {build_hint}");
    };
    if elf.machine != want {
        let got = if elf.machine & 0x8000 != 0 {
            format!("a 32-bit {}", elf_machine_name(elf.machine & 0x7fff))
        } else {
            elf_machine_name(elf.machine)
        };
        bail!("--firstboot-bin {shown} is a {got} program, but the board runs {want_name} ({arch}); {build_hint}");
    }
    if let (Some(interp), false) = (&elf.interpreter, dynamic_ok) {
        bail!("--firstboot-bin {shown} is dynamically linked (it needs {interp}), but firstboot must be static to run on any base image; {build_hint}");
    }
    let native = std::env::consts::ARCH == qemu_arch;
    let runner = if native {
        None
    } else {
        match find_program(&format!("qemu-{qemu_arch}-static"))
            .or_else(|| find_program(&format!("qemu-{qemu_arch}")))
        {
            Some(q) => Some(q),
            None => {
                say(&format!("note: --firstboot-bin {shown} is a static {want_name} ELF; qemu-{qemu_arch}-static is not installed, so its --version was not checked"));
                return Ok("unknown (--firstboot-bin, not run)".into());
            }
        }
    };
    let mut cmd = match &runner {
        Some(q) => {
            let mut c = Command::new(q);
            c.arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {shown} --version"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut words = stdout.split_whitespace();
    match (out.status.success(), words.next(), words.next()) {
        (true, Some("firstboot"), Some(v)) => Ok(v.to_string()),
        _ => {
            let said: String = stdout
                .chars()
                .chain(String::from_utf8_lossy(&out.stderr).chars())
                .take(200)
                .collect();
            bail!(
                "--firstboot-bin {shown} does not answer `--version` as firstboot does (expected `firstboot X.Y.Z`, got {} and {:?}); it is not firstboot, or it is broken; {build_hint}",
                out.status,
                said.trim()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_output_is_followed_to_its_end_and_counts_crates() {
        let out = "   Compiling libc v0.2.1\n   Compiling serde v1.0.0\n    Finished `release`\nerror: x\n";
        let all = follow_cargo(std::io::Cursor::new(out));
        assert_eq!(all, out, "every line is kept for the error report");
        assert_eq!(compiling("   Compiling serde v1.0.0"), Some("serde v1.0.0"));
        assert_eq!(compiling("    Finished `release`"), None);
        assert_eq!(compiling("warning: Compiling is a word"), None);
    }

    #[test]
    fn a_missing_rust_target_is_recognized() {
        // rustc 1.95's words when the target's standard library is not installed.
        let err = "error[E0463]: can't find crate for `core`\n  |\n  = note: the `x86_64-unknown-linux-musl` target may not be installed\n  = help: consider downloading the target with `rustup target add x86_64-unknown-linux-musl`";
        assert!(target_missing(err));
        assert!(!target_missing(
            "error: could not compile `firstboot` (bin \"firstboot\")"
        ));
    }
}
