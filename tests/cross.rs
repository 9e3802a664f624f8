//! The Raspberry Pi build of firstboot: static aarch64 musl, linked by rust-lld, runs under qemu.

use std::process::Command;

#[test]
fn aarch64_firstboot_is_static_and_runs_under_qemu() {
    let Ok(qemu) = which("qemu-aarch64-static") else {
        systests::skip(
            "aarch64_firstboot_is_static_and_runs_under_qemu",
            "qemu-aarch64-static is not installed (apt-get install qemu-user-static)",
        );
        return;
    };
    let bin = systests::shipped_aarch64_firstboot();

    let elf = std::fs::read(&bin).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "e_machine is not EM_AARCH64"
    );
    assert!(
        !has_interp(&elf),
        "binary has a dynamic loader (PT_INTERP): not static"
    );

    let out = Command::new(qemu)
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("firstboot {}", env!("CARGO_PKG_VERSION"))
    );
}

/// True when the ELF64 file has a PT_INTERP program header (i.e. it needs a dynamic loader).
fn has_interp(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3)
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
