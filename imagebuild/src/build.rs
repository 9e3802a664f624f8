//! `imagebuild build`: the whole pipeline, source -> disk -> boot -> rootfs -> output.

use crate::boards::{Catalog, DataDir, OsFamily};
use crate::boot::{self, BootPartition};
use crate::disk::{round_up, DiskLayout, ALIGN};
use crate::layout::{self, PiLayout};
use crate::output::{self, PendingOutputs};
use crate::payload::{NodeOptions, NodePayload, Versions};
use crate::progress::say;
use crate::recipe::{Compression, Recipe};
use crate::rootfs::payload::{EntryKind, Payload};
use crate::rootfs::{overlay, user, Rootfs};
use crate::source::{self, BaseSource, Cache};
use crate::{cluster, epoch, interrupt};
use anyhow::{bail, Context, Result};
use firstboot::manifest::{self, ImageManifest, ManifestFile};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// How to run a build: the recipe plus command-line overrides and extra payload.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Output path overriding the recipe's.
    pub output: Option<PathBuf>,
    /// Base overriding the recipe's (path or URL).
    pub base: Option<String>,
    /// Never download.
    pub offline: bool,
    /// Cache directory overriding the XDG default.
    pub cache_dir: Option<PathBuf>,
    /// Data directory (boards/, overlays/) overriding the default.
    pub data_dir: Option<PathBuf>,
    /// Extra declared files, applied last (after overlays, user setup and the node payload).
    pub payload: Payload,
    /// Install K3s and firstboot (`imagebuild build` always does; None leaves them out).
    pub node: Option<NodeOptions>,
}

/// What a build did: printed with --json and written as `OUT.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The image written.
    pub output: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Build time (SOURCE_DATE_EPOCH when set), RFC 3339.
    pub build_time: String,
    /// Build time in seconds since 1970.
    pub build_epoch: i64,
    /// Board profile.
    pub board: String,
    /// Boot media.
    pub media: crate::recipe::Media,
    /// Base description (catalog name, path or URL).
    pub base: String,
    /// sha256 of the base as published.
    pub base_sha256: String,
    /// Whether the raw base came from the cache without download or decompression.
    pub base_from_cache: bool,
    /// OS family.
    pub os_family: OsFamily,
    /// Partition layout after growth.
    pub layout: DiskLayout,
    /// Root filesystem size before and after.
    pub rootfs_size_before: u64,
    /// Root filesystem size after growth.
    pub rootfs_size_after: u64,
    /// Free bytes in the root filesystem after the payload.
    pub rootfs_free: u64,
    /// cmdline.txt as written.
    pub cmdline: String,
    /// Lines added to config.txt.
    pub config_lines: Vec<String>,
    /// Whether cluster.toml was stamped.
    pub cluster_stamped: bool,
    /// Overlays applied in order.
    pub overlays: Vec<PathBuf>,
    /// Number of declared root filesystem entries written.
    pub entries: usize,
    /// Compressed copy, if any.
    pub compressed: Option<PathBuf>,
    /// Whether the base's partitions were copied by reflink (copy-on-write filesystems).
    pub reflinked: bool,
    /// The files written beside the image.
    pub artifacts: Artifacts,
    /// Versions of what the image carries (K3s, firstboot, base).
    pub versions: Versions,
    /// Warnings printed during the build (valid, but probably not what you want).
    pub warnings: Vec<String>,
}

/// The files a build writes, for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Artifacts {
    /// The raw image.
    pub image: PathBuf,
    /// `IMAGE.sha256` (sha256sum format).
    pub sha256: PathBuf,
    /// `IMAGE.bmap` (bmap 2.0).
    pub bmap: PathBuf,
    /// `IMAGE.json` (this report).
    pub report: PathBuf,
    /// `IMAGE.zst` or `IMAGE.xz`, when the recipe asks for one.
    pub compressed: Option<PathBuf>,
}

/// Run a build from a recipe file.
pub fn run(recipe_path: &Path, options: BuildOptions) -> Result<BuildReport> {
    interrupt::install().context("installing the interrupt handler")?;
    let recipe = Recipe::load(recipe_path)?;
    run_recipe(&recipe, options).map_err(explain_no_space)
}

fn explain_no_space(e: anyhow::Error) -> anyhow::Error {
    let enospc = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            == Some(libc::ENOSPC)
            || c.to_string().contains("No space left on device")
    });
    let erofs = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            == Some(libc::EROFS)
    });
    if erofs {
        e.context(
            "the output path is on a read-only filesystem: choose another output directory with -o",
        )
    } else if enospc {
        e.context("no room to write the output: the disk holding the output path is full; free some space or choose another output directory")
    } else {
        e
    }
}

/// Run a build from a parsed recipe.
pub fn run_recipe(recipe: &Recipe, options: BuildOptions) -> Result<BuildReport> {
    let epoch = epoch::build_epoch()?;
    let data = DataDir::locate(options.data_dir.as_deref());
    let catalog = Catalog::load(&data)?;
    let board = catalog.board(&recipe.image.board)?.clone();
    let cluster_file = cluster::from_recipe(recipe)?;
    let mut warnings = recipe.warnings();
    if let Some(c) = &cluster_file {
        warnings.extend(c.warnings());
    }
    for w in &warnings {
        say(&format!("warning: {w}"));
    }
    let output_path = options
        .output
        .clone()
        .unwrap_or_else(|| recipe.resolve(&recipe.image.output));
    if output_path.is_dir() {
        bail!(
            "output {} is a directory; give a file name such as homelab.img",
            output_path.display()
        );
    }
    let out_dir = match output_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_output_path(&output_path)?;
    if !out_dir.is_dir() {
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating the output directory {}", out_dir.display()))?;
    }
    check_writable(&out_dir)?;
    let base_text = options
        .base
        .clone()
        .unwrap_or_else(|| recipe.image.base.clone());
    let base_sha = if options.base.is_some() {
        String::new()
    } else {
        recipe.image.base_sha256.clone()
    };
    let source = BaseSource::resolve(&base_text, &base_sha, &catalog, &recipe.dir())?;

    // Everything the root filesystem gets, in order: built-in overlays, recipe overlays, user.
    let mut payload = Payload::new();
    let mut overlays = Vec::new();
    let common = data.overlays().join("common");
    if common.is_dir() {
        overlays.push(common);
    }
    for o in &recipe.overlays {
        let here = recipe.resolve(o);
        let builtin = data.root.join(o);
        overlays.push(if here.is_dir() || !builtin.is_dir() {
            here
        } else {
            builtin
        });
    }
    for o in &overlays {
        payload
            .extend(overlay::load(o).with_context(|| format!("reading overlay {}", o.display()))?);
    }
    payload.check()?;
    options.payload.check()?;

    // Source.
    let cache = Cache::locate(options.cache_dir.as_deref())?;
    let raw = source::obtain(&source, &cache, options.offline)?;
    interrupt::check()?;
    let base_layout = layout::recognize(&raw.path, raw.catalog.as_ref())?;
    // K3s and firstboot: fetched and verified before any output exists.
    let node = match &options.node {
        Some(n) => {
            let mut node = crate::payload::assemble(
                &recipe.k3s,
                &board,
                &recipe.dir(),
                &data,
                &cache,
                options.offline,
                n,
            )?;
            node.versions.base = base_text.clone();
            Some(node)
        }
        None => None,
    };
    interrupt::check()?;
    check_room(
        &raw.path,
        &out_dir,
        payload.size_estimate()
            + options.payload.size_estimate()
            + node.as_ref().map_or(0, |n| n.payload.size_estimate()),
    )?;

    // Output under a temporary name: removed on any error or interrupt. The root filesystem is
    // edited in a file of its own first: resize2fs on `image?offset=N` truncates the image file
    // to the filesystem's size (e2fsprogs 1.47), so growing in place would destroy the image.
    let mut pending = PendingOutputs::new();
    let tmp = pending.add(&output_path);
    let root_tmp = pending.scratch(&output_path, "rootfs");
    let base_file =
        File::open(&raw.path).with_context(|| format!("opening {}", raw.path.display()))?;
    let root = base_layout.root.clone();
    let root_file =
        File::create(&root_tmp).with_context(|| format!("creating {}", root_tmp.display()))?;
    let mut reflinked = output::copy_range(
        &base_file,
        root.start,
        root.size,
        &root_file,
        0,
        "copying the root filesystem",
    )?;
    drop(root_file);
    interrupt::check()?;

    let rootfs = Rootfs::new(&root_tmp, 0, epoch);
    warnings.extend(check_base_supports(recipe, &rootfs, base_layout.family)?);
    let passwd =
        String::from_utf8_lossy(&rootfs.read_file("/etc/passwd")?.unwrap_or_default()).into_owned();
    let account = user::find_account(&passwd, &recipe.os.user);
    // Ubuntu creates its first user at first boot (cloud-init user-data, written to the boot
    // partition below); only an account the image already has gets keys in the root filesystem.
    let ubuntu = base_layout.family == OsFamily::Ubuntu;
    let mut os = recipe.os.clone();
    if ubuntu && account.is_none() {
        os.ssh_authorized_keys.clear();
    }
    let facts = user::BaseFacts {
        passwd,
        network_manager: !ubuntu,
        creates_user: ubuntu,
    };
    payload.extend(user::entries(&os, account.as_ref(), &facts)?);
    let versions = match node {
        Some(NodePayload {
            payload: p,
            versions,
        }) => {
            payload.extend(p);
            versions
        }
        None => Versions {
            base: base_text.clone(),
            ..Default::default()
        },
    };
    payload.extend(options.payload.clone());
    let manifest = image_manifest(recipe, &raw.source_sha256, epoch, &versions, &payload)?;
    payload.bytes(manifest::ABSOLUTE_PATH, manifest.to_vec(), 0o644);

    // Grow the filesystem so payload plus free_space fit, then write the payload.
    let free_space = recipe.image.free_space.0;
    let before = base_layout.root_super.size();
    grow(
        &rootfs,
        root.start,
        root.size,
        payload.size_estimate() + free_space,
    )?;
    interrupt::check()?;
    let staging = tempfile::Builder::new()
        .prefix(".imagebuild-staging-")
        .tempdir_in(&out_dir)
        .or_else(|_| tempfile::tempdir())
        .context("creating a staging directory")?;
    rootfs.apply(&payload, staging.path())?;
    interrupt::check()?;
    // The estimate is conservative, but never trust it: top up until free_space really is free.
    for _ in 0..3 {
        let sb = rootfs.superblock()?;
        if sb.free_bytes() >= free_space {
            break;
        }
        let short = free_space - sb.free_bytes();
        say(&format!(
            "rootfs: {short} bytes short of free_space, growing further"
        ));
        grow(
            &rootfs,
            root.start,
            sb.size(),
            free_space + short / 8 + (16 << 20),
        )?;
    }
    let after = rootfs.superblock()?;
    if after.free_bytes() < free_space {
        bail!(
            "the root filesystem cannot grow enough: {} bytes free, {} wanted",
            after.free_bytes(),
            free_space
        );
    }

    // Disk: the base's head (partition table, boot partition), then partition 2 grown to fit.
    let mut disk = base_layout.disk.clone();
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    reflinked &= output::copy_range(
        &base_file,
        0,
        root.start,
        &out,
        0,
        "copying the boot partition",
    )?;
    let root_len = std::fs::metadata(&root_tmp)?.len().max(after.size());
    let new_end = root.start + root_len;
    if new_end > root.end() {
        disk.grow_last_partition(&mut out, new_end)?;
    }
    out.set_len(new_end.max(root.end()))
        .context("sizing the output image")?;
    drop(out);

    // Boot partition.
    let mut words: Vec<String> = boot::CGROUP_FLAGS.iter().map(|s| s.to_string()).collect();
    words.extend(board.cmdline.iter().cloned());
    if recipe.os.wifi.wanted() {
        words.push(format!(
            "cfg80211.ieee80211_regdom={}",
            recipe.os.wifi.country_code()
        ));
    }
    let config_lines = board.config_lines(recipe.image.media, recipe.image.kernel_page_size)?;
    let cmdline = edit_boot(
        &tmp,
        &base_layout,
        epoch,
        &words,
        &config_lines,
        &board.config_filter,
        &format!("board {}, media {:?}", board.name, recipe.image.media).to_lowercase(),
        recipe,
        cluster_file.as_ref(),
    )?;
    interrupt::check()?;

    // The edited root filesystem goes into partition 2, checksummed on the way.
    let sha = {
        let out = OpenOptions::new().read(true).write(true).open(&tmp)?;
        let root_file = File::open(&root_tmp)?;
        let sha = output::append_and_hash(
            &out,
            root.start,
            &root_file,
            root_len,
            "writing the root filesystem",
        )?;
        out.sync_all().context("flushing the image")?;
        sha
    };
    std::fs::remove_file(&root_tmp).context("removing the scratch root filesystem")?;
    interrupt::check()?;

    // Outputs: checksum, optional compressed copy, manifest; all renamed at the end.
    let size = std::fs::metadata(&tmp)?.len();
    let sha_path = output::with_suffix(&output_path, ".sha256");
    let sha_tmp = pending.add(&sha_path);
    output::write_synced(&sha_tmp, output::sha256_line(&sha, &output_path).as_bytes())?;
    let bmap_tmp = pending.add(&output::with_suffix(&output_path, ".bmap"));
    crate::bmap::write_for(&tmp, &bmap_tmp, Some(&sha))?;
    let compressed = match recipe.image.compress {
        Compression::None => None,
        how => {
            let ext = if how == Compression::Zstd {
                ".zst"
            } else {
                ".xz"
            };
            let path = output::with_suffix(&output_path, ext);
            let ctmp = pending.add(&path);
            output::compress(&tmp, &ctmp, how, &sha)?;
            Some(path)
        }
    };
    let json_path = output::with_suffix(&output_path, ".json");
    let artifacts = Artifacts {
        image: output_path.clone(),
        sha256: sha_path.clone(),
        bmap: output::with_suffix(&output_path, ".bmap"),
        report: json_path.clone(),
        compressed: compressed.clone(),
    };
    let report = BuildReport {
        output: output_path.clone(),
        sha256: sha,
        size,
        build_time: epoch::rfc3339(epoch),
        build_epoch: epoch,
        board: board.name.clone(),
        media: recipe.image.media,
        base: base_text,
        base_sha256: raw.source_sha256.clone(),
        base_from_cache: raw.from_cache,
        os_family: base_layout.family,
        layout: disk,
        rootfs_size_before: before,
        rootfs_size_after: after.size(),
        rootfs_free: after.free_bytes(),
        cmdline,
        config_lines,
        cluster_stamped: cluster_file.is_some(),
        overlays,
        entries: payload.entries.len(),
        compressed,
        reflinked,
        artifacts,
        versions: versions.clone(),
        warnings,
    };
    let json_tmp = pending.add(&json_path);
    output::write_synced(&json_tmp, serde_json::to_string_pretty(&report)?.as_bytes())?;
    pending.commit()?;
    say(&format!(
        "wrote {} ({})",
        output_path.display(),
        report.sha256
    ));
    Ok(report)
}

/// Refuse what the base cannot do, before any output exists: a timezone its zoneinfo lacks, and
/// K3s's default pod network on an Ubuntu kernel without the vxlan module.
/// Returns the warnings it printed.
fn check_base_supports(recipe: &Recipe, rootfs: &Rootfs, family: OsFamily) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let tz = recipe.os.timezone.trim();
    let share: std::collections::BTreeSet<String> = ["/usr/share".to_string()].into();
    let has_zoneinfo = rootfs
        .list_dirs(&share)?
        .get("/usr/share")
        .is_some_and(|l| l.get("zoneinfo").is_some_and(|e| e.is_dir()));
    if !has_zoneinfo {
        // Not Raspberry Pi OS or Ubuntu (both ship tzdata): nothing to check the name against.
        let w = format!(
            "the base has no /usr/share/zoneinfo (tzdata is not installed): timezone {tz:?} \
             is not checked, and the node keeps UTC until tzdata is installed"
        );
        say(&format!("warning: {w}"));
        warnings.push(w);
    } else if rootfs
        .read_file(&format!("/usr/share/zoneinfo/{tz}"))?
        .is_none()
    {
        bail!(
            "{}: [os] timezone = {tz:?} is not a timezone the base image knows (it has no \
             /usr/share/zoneinfo/{tz}); use an IANA name such as \"Europe/Berlin\" or \"Etc/UTC\" \
             (list them with `timedatectl list-timezones`)",
            recipe.path.display()
        );
    }
    if family == OsFamily::Ubuntu {
        if let Some(why) = ubuntu_vxlan_missing(recipe, rootfs)? {
            bail!("{}: {why}", recipe.path.display());
        }
    }
    Ok(warnings)
}

/// Why K3s pods on this Ubuntu image could not reach other nodes, or None when they can: flannel's
/// default backend is vxlan, and Ubuntu's raspi kernel keeps `vxlan.ko` in
/// `linux-modules-extra-raspi`, which the preinstalled image lacks and an air-gapped node cannot
/// install (docs.k3s.io, "Enabling vxlan for Ubuntu 21.10+ on Raspberry Pi").
fn ubuntu_vxlan_missing(recipe: &Recipe, rootfs: &Rootfs) -> Result<Option<String>> {
    if let Some(backend) = flannel_backend(recipe) {
        if backend != "vxlan" {
            return Ok(None);
        }
    }
    let modules = "/usr/lib/modules";
    let kernels: std::collections::BTreeSet<String> = [modules.to_string()].into();
    let listed = rootfs.list_dirs(&kernels)?;
    let versions: Vec<String> = listed
        .get(modules)
        .map(|l| {
            l.iter()
                .filter(|(_, e)| e.is_dir())
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    let dirs: std::collections::BTreeSet<String> = versions
        .iter()
        .map(|v| format!("{modules}/{v}/kernel/drivers/net/vxlan"))
        .collect();
    let found = rootfs.list_dirs(&dirs)?;
    let missing: Vec<&String> = versions
        .iter()
        .filter(|v| {
            !found
                .get(&format!("{modules}/{v}/kernel/drivers/net/vxlan"))
                .is_some_and(|l| l.keys().any(|n| n.starts_with("vxlan.ko")))
        })
        .collect();
    if !versions.is_empty() && missing.is_empty() {
        return Ok(None);
    }
    let kernels = if versions.is_empty() {
        "no kernel modules at all".to_string()
    } else {
        format!(
            "no vxlan.ko for kernel {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(Some(format!(
        "this Ubuntu base has {kernels}: Ubuntu for Raspberry Pi ships the vxlan module in \
         linux-modules-extra-raspi, which the preinstalled image lacks and an offline node cannot \
         install, so K3s's default pod network (flannel vxlan) would leave pods unable to reach other \
         nodes. Use a Raspberry Pi OS base (base = \"raspios-lite-arm64\"), or give the recipe's cluster \
         a backend without vxlan when all nodes share one LAN: [cluster.k3s] extra = \
         {{ flannel-backend = \"host-gw\" }}, or build from an Ubuntu image that already has \
         linux-modules-extra-raspi installed"
    )))
}

/// `flannel-backend` from the recipe's cluster (`[k3s] extra`), if it sets one.
fn flannel_backend(recipe: &Recipe) -> Option<String> {
    let table = match recipe.cluster.as_ref()? {
        crate::recipe::ClusterSource::Inline(t) => t.clone(),
        crate::recipe::ClusterSource::File(p) => {
            let text = std::fs::read_to_string(recipe.resolve(&p.to_string_lossy())).ok()?;
            toml::from_str::<toml::Table>(&text).ok()?
        }
    };
    table
        .get("k3s")?
        .get("extra")?
        .get("flannel-backend")?
        .as_str()
        .map(str::to_string)
}

fn sha256_quiet(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// An image is written to a regular file only: never over a device node or anything under /dev
/// (a mistyped card name would otherwise replace the device node with a file).
fn check_output_path(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let ft = m.file_type();
        if ft.is_block_device() || ft.is_char_device() {
            bail!(
                "output {} is a device: build writes an image file; write it to a card afterwards with imagebuild flash IMAGE {}",
                path.display(),
                path.display()
            );
        }
        if !ft.is_file() && !ft.is_symlink() {
            bail!("output {} exists and is not a regular file", path.display());
        }
    }
    if std::path::absolute(path)
        .map(|p| p.starts_with("/dev"))
        .unwrap_or(false)
    {
        bail!(
            "output {} is under /dev: build writes an image file; choose a path such as out/homelab.img and flash it with imagebuild flash",
            path.display()
        );
    }
    Ok(())
}

/// A read-only or unwritable output directory is named as such (not as "no room").
fn check_writable(dir: &Path) -> Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("output directory name contains a NUL byte")?;
    // SAFETY: access() only reads the valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        let why = if e.raw_os_error() == Some(libc::EROFS) {
            "it is on a read-only filesystem"
        } else {
            "this user may not write there"
        };
        bail!(
            "cannot write to the output directory {}: {why} ({e}); choose another output with -o",
            dir.display()
        );
    }
    Ok(())
}

fn check_room(raw: &Path, out_dir: &Path, payload: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(raw)?.blocks() * 512;
    // The root filesystem exists twice for a moment (scratch file and image), payload included.
    let need = 2 * (allocated + payload);
    let c = std::ffi::CString::new(out_dir.as_os_str().as_encoded_bytes())
        .context("output directory name contains a NUL byte")?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc == 0 {
        let avail = st.f_bavail as u64 * st.f_frsize as u64;
        if avail < need {
            bail!(
                "no room to write the output: {} has {} free but the image needs about {}; free some space or choose another output directory",
                out_dir.display(),
                crate::size::ByteSize(avail),
                crate::size::ByteSize(need)
            );
        }
    }
    Ok(())
}

/// Grow the filesystem (in its own file) so that `need` more bytes are free; no-op if they are.
/// The new size keeps the partition's end on the 8 MiB grid.
fn grow(rootfs: &Rootfs, part_start: u64, part_size: u64, need: u64) -> Result<()> {
    let sb = rootfs.superblock()?;
    let free = sb.free_bytes();
    if free >= need {
        return Ok(());
    }
    let missing = need - free;
    // New block groups bring inode tables, bitmaps and 5% root-reserved blocks with them.
    let extra = missing + missing / 8 + (16 << 20);
    let new_size = round_up(part_start + sb.size().max(part_size) + extra, ALIGN) - part_start;
    say(&format!(
        "rootfs: growing from {} to {}",
        crate::size::ByteSize(sb.size()),
        crate::size::ByteSize(new_size)
    ));
    rootfs.resize(new_size)
}

#[allow(clippy::too_many_arguments)]
fn edit_boot(
    image: &Path,
    layout: &PiLayout,
    epoch: i64,
    words: &[String],
    config_lines: &[String],
    config_filter: &str,
    why: &str,
    recipe: &Recipe,
    cluster: Option<&cluster::ClusterFile>,
) -> Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let fat = BootPartition::open(&mut file, &layout.boot, epoch)?;
    let old = fat
        .read("cmdline.txt")?
        .context("the boot partition has no cmdline.txt")?;
    let cmdline = boot::edit_cmdline(&String::from_utf8_lossy(&old), words);
    fat.write("cmdline.txt", cmdline.as_bytes())?;
    let config = fat.read("config.txt")?.unwrap_or_default();
    let new_config = boot::edit_config(
        &String::from_utf8_lossy(&config),
        config_lines,
        config_filter,
        why,
    );
    if new_config.as_bytes() != config.as_slice() {
        fat.write("config.txt", new_config.as_bytes())?;
    }
    if fat.read("ssh")?.is_none() && fat.read("ssh.txt")?.is_none() {
        fat.write("ssh", b"")?;
    }
    if layout.family != OsFamily::Ubuntu {
        // An empty hash means key-only login: `*` matches no password and, unlike `!`, does not
        // make sshd treat the account as locked.
        let hash = if recipe.os.password_hash.is_empty() {
            "*"
        } else {
            recipe.os.password_hash.as_str()
        };
        if hash.contains([':', '\n']) {
            bail!("[os] password_hash must be a crypt(3) hash on one line without ':' (make one with `openssl passwd -6`)");
        }
        fat.write(
            "userconf.txt",
            format!("{}:{hash}\n", recipe.os.user).as_bytes(),
        )?;
    }
    if layout.family == OsFamily::Ubuntu {
        fat.write(
            "user-data",
            user::cloud_init_user_data(&recipe.os).as_bytes(),
        )?;
        if recipe.os.wifi.wanted() {
            fat.write(
                "network-config",
                user::cloud_init_network_config(&recipe.os.wifi).as_bytes(),
            )?;
        }
    }
    if let Some(c) = cluster {
        fat.write_cluster(c)?;
    }
    fat.close()?;
    file.sync_all().context("flushing the boot partition")?;
    Ok(cmdline.trim_end().to_string())
}

/// The image manifest: build time (the clock floor for first boot) and every file's sha256.
fn image_manifest(
    recipe: &Recipe,
    base_sha: &str,
    epoch: i64,
    versions: &Versions,
    payload: &Payload,
) -> Result<ImageManifest> {
    // A later entry for the same path replaces an earlier one, as in the image itself.
    let mut files = std::collections::BTreeMap::new();
    for e in &payload.entries {
        if !matches!(e.kind, EntryKind::File(_) | EntryKind::Bytes(_)) {
            files.remove(&e.dest);
        }
        let sha = match &e.kind {
            EntryKind::File(p) => Some(sha256_quiet(p)?),
            EntryKind::Bytes(b) => Some(hex::encode(Sha256::digest(b))),
            _ => None,
        };
        if let Some(sha) = sha {
            // The Wi-Fi keyfile holds the passphrase: its hash would let anyone test guesses.
            let secret = e
                .dest
                .starts_with("/etc/NetworkManager/system-connections/");
            files.insert(
                e.dest.clone(),
                ManifestFile {
                    path: e.dest.clone(),
                    sha256: (!secret).then_some(sha),
                    mode: format!("{:04o}", e.mode),
                    uid: e.uid,
                    gid: e.gid,
                },
            );
        }
    }
    Ok(ImageManifest {
        schema: manifest::SCHEMA,
        // build_time is the clock floor firstboot reads: integer unix seconds, nothing else.
        build_time: u64::try_from(epoch).context("the build time is before 1970")?,
        build_time_rfc3339: epoch::rfc3339(epoch),
        board: recipe.image.board.clone(),
        media: recipe.image.media,
        base_sha256: base_sha.to_string(),
        versions: versions.clone(),
        files: files.into_values().collect(),
    })
}
