//! `imagebuild inspect`: what an image holds, as text or JSON.

use crate::boot::{self, BootPartition};
use crate::layout;
use crate::rootfs::Rootfs;
use anyhow::{Context, Result};
use firstboot::manifest::{ImageManifest, ABSOLUTE_PATH as IMAGE_MANIFEST};
use serde::Serialize;
use std::fs::File;
use std::path::Path;

/// Everything `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The recognized layout (partitions, labels, family, rootfs superblock).
    pub layout: layout::PiLayout,
    /// Free bytes in the root filesystem.
    pub rootfs_free: u64,
    /// Free bytes on the boot partition.
    pub boot_free: u64,
    /// FAT volume serial as 8 hex digits.
    pub boot_serial: String,
    /// cmdline.txt (one line).
    pub cmdline: String,
    /// How often each cgroup flag appears on the cmdline (want exactly 1).
    pub cgroup_flags: Vec<(String, usize)>,
    /// First-boot hooks present on the cmdline (`init=...`, `resize`).
    pub first_boot_hooks: Vec<String>,
    /// Lines imagebuild added to config.txt.
    pub config_lines: Vec<String>,
    /// Whether `ssh` (or `ssh.txt`) is on the boot partition.
    pub ssh_enabled: bool,
    /// The user named in userconf.txt, if any.
    pub userconf_user: Option<String>,
    /// Whether cluster.toml is on the boot partition.
    pub cluster_toml: bool,
    /// /etc/machine-id exactly as stored (empty, "uninitialized", or an id).
    pub machine_id: Option<String>,
    /// /etc/firstboot/image.json, when present.
    pub image_manifest: Option<ImageManifest>,
    /// Every file the image manifest declares, with its owner and mode as found in the image.
    pub declared_files: Vec<DeclaredFile>,
    /// The K3s and firstboot payload: versions and what is missing.
    pub payload: PayloadCheck,
    /// Things that look wrong.
    pub warnings: Vec<String>,
}

/// The node payload as found in the image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PayloadCheck {
    /// K3s version from the manifest.
    pub k3s_version: Option<String>,
    /// firstboot version from the manifest.
    pub firstboot_version: Option<String>,
    /// Whether the manifest says air-gap images were included.
    pub airgap_expected: bool,
    /// Payload paths that should be there and are not.
    pub missing: Vec<String>,
    /// K3s units enabled in the image (should be none: firstboot starts the right one).
    pub k3s_units_enabled: Vec<String>,
    /// Whether firstboot.service is enabled for multi-user.target.
    pub firstboot_enabled: bool,
}

fn check_payload(rootfs: &Rootfs, manifest: Option<&ImageManifest>) -> Result<PayloadCheck> {
    use crate::payload::{
        AIRGAP_DIR, FIRSTBOOT_BIN, FIRSTBOOT_UNIT, FIRSTBOOT_WANTS, K3S_BIN, K3S_LINKS,
        K3S_SCRIPTS, K3S_UNITS,
    };
    let versions = manifest.map(|m| &m.versions);
    let text = |v: fn(&crate::payload::Versions) -> &String| {
        versions.map(v).filter(|s| !s.is_empty()).cloned()
    };
    let airgap_expected = versions.is_some_and(|v| v.airgap);
    let wants = "/etc/systemd/system/multi-user.target.wants";
    let dirs: std::collections::BTreeSet<String> =
        ["/usr/local/bin", "/etc/systemd/system", wants, AIRGAP_DIR]
            .into_iter()
            .map(String::from)
            .collect();
    let listings = rootfs.list_dirs(&dirs)?;
    let exists = |path: &str| {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("/", path));
        listings.get(dir).is_some_and(|l| l.contains_key(name))
    };
    let mut expected: Vec<String> = vec![K3S_BIN.into()];
    expected.extend(K3S_LINKS.iter().map(|l| format!("/usr/local/bin/{l}")));
    expected.extend(K3S_SCRIPTS.iter().map(|s| s.to_string()));
    expected.extend(K3S_UNITS.iter().map(|s| s.to_string()));
    expected.extend([FIRSTBOOT_BIN, FIRSTBOOT_UNIT, FIRSTBOOT_WANTS].map(String::from));
    let mut missing: Vec<String> = expected.into_iter().filter(|p| !exists(p)).collect();
    if airgap_expected
        && listings
            .get(AIRGAP_DIR)
            .is_none_or(|l| !l.keys().any(|n| n.starts_with("k3s-airgap-images-")))
    {
        missing.push(format!("{AIRGAP_DIR}/k3s-airgap-images-*"));
    }
    let k3s_units_enabled = K3S_UNITS
        .iter()
        .filter_map(|u| u.rsplit('/').next())
        .filter(|u| exists(&format!("{wants}/{u}")))
        .map(String::from)
        .collect();
    Ok(PayloadCheck {
        k3s_version: text(|v| &v.k3s),
        firstboot_version: text(|v| &v.firstboot),
        airgap_expected,
        missing,
        k3s_units_enabled,
        firstboot_enabled: exists(FIRSTBOOT_WANTS),
    })
}

/// A file from the image manifest and what the root filesystem really holds.
#[derive(Debug, Clone, Serialize)]
pub struct DeclaredFile {
    /// Path in the image.
    pub path: String,
    /// Declared permission bits, octal text ("0600").
    pub mode: String,
    /// Declared uid.
    pub uid: u32,
    /// Declared gid.
    pub gid: u32,
    /// Found permission bits, octal text; None when the file is missing.
    pub found_mode: Option<String>,
    /// Found uid.
    pub found_uid: Option<u32>,
    /// Found gid.
    pub found_gid: Option<u32>,
    /// True when it exists with the declared owner and mode.
    pub matches: bool,
}

fn declared_files(rootfs: &Rootfs, manifest: &ImageManifest) -> Result<Vec<DeclaredFile>> {
    let entries: Vec<(String, String, u32, u32)> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.mode.clone(), f.uid, f.gid))
        .collect();
    let dirs: std::collections::BTreeSet<String> = entries
        .iter()
        .filter_map(|(p, ..)| {
            p.rsplit_once('/').map(|(d, _)| {
                if d.is_empty() {
                    "/".to_string()
                } else {
                    d.to_string()
                }
            })
        })
        .collect();
    let listings = rootfs.list_dirs(&dirs)?;
    Ok(entries
        .into_iter()
        .map(|(path, mode, uid, gid)| {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            let dir = if dir.is_empty() { "/" } else { dir };
            let found = listings.get(dir).and_then(|l| l.get(name)).copied();
            let found_mode = found.map(|f| format!("{:04o}", f.mode & 0o7777));
            let matches = found.is_some_and(|f| f.uid == uid && f.gid == gid)
                && found_mode.as_deref() == Some(mode.as_str());
            DeclaredFile {
                found_uid: found.map(|f| f.uid),
                found_gid: found.map(|f| f.gid),
                found_mode,
                matches,
                path,
                mode,
                uid,
                gid,
            }
        })
        .collect())
}

/// Look at an image file.
pub fn inspect(image: &Path) -> Result<Inspection> {
    crate::source::require_raw(image, "imagebuild inspect")?;
    let layout = layout::recognize(image, None)?;
    let mut file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let (cmdline, config, ssh, userconf, cluster, boot_free, serial) = {
        let fat = BootPartition::open(&mut file, &layout.boot, 315_532_800)?;
        let text = |n: &str| -> Result<Option<String>> {
            Ok(fat
                .read(n)?
                .map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        (
            text("cmdline.txt")?.unwrap_or_default(),
            text("config.txt")?.unwrap_or_default(),
            fat.read("ssh")?.is_some() || fat.read("ssh.txt")?.is_some(),
            text("userconf.txt")?,
            match fat.read(firstboot::config::FILE_NAME)? {
                Some(b) => {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    let token_file = crate::cluster::token_file_of(&text)
                        .map(|n| fat.read(&n))
                        .transpose()?
                        .flatten();
                    Some(crate::cluster::has_example_token(
                        &text,
                        token_file.as_deref(),
                    ))
                }
                None => None,
            },
            fat.free_bytes()?,
            format!("{:08x}", fat.serial()),
        )
    };
    let rootfs = Rootfs::new(image, layout.root.start, 315_532_800);
    let machine_id = rootfs
        .read_file("/etc/machine-id")?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let (image_manifest, manifest_warning) = match rootfs.read_file(IMAGE_MANIFEST)? {
        Some(b) => match ImageManifest::from_slice(&b, std::path::Path::new(IMAGE_MANIFEST)) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (
            None,
            Some(format!("no {IMAGE_MANIFEST}: not built by imagebuild")),
        ),
    };
    let declared = match &image_manifest {
        Some(m) => declared_files(&rootfs, m)?,
        None => Vec::new(),
    };
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let cgroup_flags: Vec<(String, usize)> = boot::CGROUP_FLAGS
        .iter()
        .map(|f| (f.to_string(), words.iter().filter(|w| *w == f).count()))
        .collect();
    let first_boot_hooks: Vec<String> = words
        .iter()
        .filter(|w| w.starts_with("init=") || **w == "resize")
        .map(|w| w.to_string())
        .collect();
    let mut warnings = Vec::new();
    for (f, n) in &cgroup_flags {
        if *n != 1 {
            warnings.push(format!(
                "cmdline.txt has {f} {n} times (K3s needs it exactly once)"
            ));
        }
    }
    if cmdline.trim_end().lines().count() > 1 {
        warnings
            .push("cmdline.txt has more than one line; the firmware reads only the first".into());
    }
    for d in declared.iter().filter(|d| !d.matches) {
        warnings.push(format!(
            "{} should be {} {}:{} but is {} {}:{}",
            d.path,
            d.mode,
            d.uid,
            d.gid,
            d.found_mode.as_deref().unwrap_or("missing"),
            d.found_uid.map_or("-".into(), |u| u.to_string()),
            d.found_gid.map_or("-".into(), |g| g.to_string())
        ));
    }
    warnings.extend(manifest_warning);
    let payload = check_payload(&rootfs, image_manifest.as_ref())?;
    for m in &payload.missing {
        warnings.push(format!("payload: {m} is missing"));
    }
    for u in &payload.k3s_units_enabled {
        warnings.push(format!(
            "{u} is enabled in the image; firstboot should decide which K3s unit starts"
        ));
    }
    match cluster {
        None => warnings.push(
            "no cluster.toml on the boot partition: stamp one with `imagebuild stamp`".into(),
        ),
        Some(true) => warnings.push(crate::cluster::example_token_warning(
            "the stamped cluster.toml",
        )),
        Some(false) => {}
    }
    let cluster = cluster.is_some();
    let rootfs_free = layout.root_super.free_bytes();
    Ok(Inspection {
        layout,
        rootfs_free,
        boot_free,
        boot_serial: serial,
        cmdline: cmdline.trim_end().to_string(),
        cgroup_flags,
        first_boot_hooks,
        config_lines: boot::added_config_lines(&config),
        ssh_enabled: ssh,
        userconf_user: userconf.and_then(|u| u.split(':').next().map(String::from)),
        cluster_toml: cluster,
        machine_id,
        image_manifest,
        declared_files: declared,
        payload,
        warnings,
    })
}

impl Inspection {
    /// A human-readable report.
    pub fn to_text(&self) -> String {
        use crate::size::ByteSize;
        let l = &self.layout;
        let mut s = format!(
            "partition table: {}, disk id {}, image {}\n",
            match l.disk.table {
                crate::disk::TableKind::Mbr => "MBR (DOS)",
                crate::disk::TableKind::Gpt => "GPT",
            },
            l.disk.disk_id,
            ByteSize(l.disk.image_size)
        );
        for p in &l.disk.partitions {
            s.push_str(&format!(
                "  partition {}: start {} size {} type {} PARTUUID {}\n",
                p.number,
                p.start,
                ByteSize(p.size),
                p.type_id,
                p.partuuid
            ));
        }
        s.push_str(&format!(
            "operating system: {}\nboot: label {} serial {} free {}\nroot: label {} size {} free {}\n",
            l.family.describe(),
            l.boot_label,
            self.boot_serial,
            ByteSize(self.boot_free),
            l.root_label,
            ByteSize(l.root_super.size()),
            ByteSize(self.rootfs_free)
        ));
        s.push_str(&format!("cmdline.txt: {}\n", self.cmdline));
        s.push_str(&format!(
            "first-boot hooks: {}\n",
            self.first_boot_hooks.join(" ")
        ));
        s.push_str(&format!(
            "config.txt additions: {}\n",
            self.config_lines.join(", ")
        ));
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        s.push_str(&format!(
            "ssh enabled: {}  first user (userconf.txt): {}  cluster.toml: {}\n",
            yes_no(self.ssh_enabled),
            self.userconf_user.as_deref().unwrap_or("-"),
            if self.cluster_toml {
                "stamped"
            } else {
                "not stamped"
            }
        ));
        s.push_str(&format!(
            "machine-id: {}\n",
            match self.machine_id.as_deref().map(str::trim) {
                None => "missing".to_string(),
                Some("") => "empty (set at first boot)".to_string(),
                Some("uninitialized") => "uninitialized (first boot runs the presets)".to_string(),
                Some(id) => format!("{id} (baked in: every card would share it)"),
            }
        ));
        if let Some(m) = &self.image_manifest {
            s.push_str(&format!(
                "built: {} board {}\n",
                m.build_time_rfc3339, m.board,
            ));
        }
        let p = &self.payload;
        s.push_str(&format!(
            "payload: k3s {} firstboot {} airgap images {} firstboot.service {}\n",
            p.k3s_version.as_deref().unwrap_or("-"),
            p.firstboot_version.as_deref().unwrap_or("-"),
            if p.airgap_expected { "yes" } else { "no" },
            if p.firstboot_enabled {
                "enabled"
            } else {
                "not enabled"
            }
        ));
        let ok = self.declared_files.iter().filter(|d| d.matches).count();
        s.push_str(&format!(
            "declared files: {ok}/{} with the declared owner and mode\n",
            self.declared_files.len()
        ));
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}
