//! Board profiles (`boards/<name>.toml`) and the base-image catalog (`boards/bases.toml`).

use crate::recipe::{toml_error, Media, PageSize};
use crate::suggest::did_you_mean;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors from loading boards and bases; callers match on the kind to word their hints.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The named board has no profile.
    #[error("unknown board `{name}`.{hint} Known boards: {known}. A board is a file boards/<name>.toml.")]
    UnknownBoard {
        name: String,
        hint: String,
        known: String,
    },
    /// The named base is not in the catalog (and is not a path or URL).
    #[error("unknown base `{name}`: it is not in the catalog, not an existing file and not a URL.{hint} Catalog: {known}.")]
    UnknownBase {
        name: String,
        hint: String,
        known: String,
    },
    /// A data file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A data file is not valid.
    #[error("{0}")]
    Invalid(String),
}

/// Where the data files (boards/, overlays/) live.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory holding `boards/` and `overlays/`.
    pub root: PathBuf,
}

impl DataDir {
    /// The data directory: `IMAGEBUILD_DATA_DIR`, else `<exe>/../share/imagebuild`, else the source tree.
    pub fn locate(explicit: Option<&Path>) -> DataDir {
        if let Some(p) = explicit {
            return DataDir { root: p.into() };
        }
        if let Some(p) = std::env::var_os("IMAGEBUILD_DATA_DIR") {
            return DataDir { root: p.into() };
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(share) = exe
                .parent()
                .and_then(Path::parent)
                .map(|p| p.join("share/imagebuild"))
            {
                if share.join("boards").is_dir() {
                    return DataDir { root: share };
                }
            }
        }
        DataDir {
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        }
    }

    /// `boards/` inside the data directory.
    pub fn boards(&self) -> PathBuf {
        self.root.join("boards")
    }

    /// `overlays/` inside the data directory.
    pub fn overlays(&self) -> PathBuf {
        self.root.join("overlays")
    }
}

/// config.txt lines of a board, for every media and per media.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigTxt {
    /// Lines for every media.
    #[serde(default)]
    pub all: Vec<String>,
    /// Lines when booting from SD card (or eMMC).
    #[serde(default)]
    pub sd: Vec<String>,
    /// Lines when booting from an SSD (NVMe or USB).
    #[serde(default)]
    pub ssd: Vec<String>,
}

/// The kernels a board can boot.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Page size of the kernel the firmware picks by default.
    #[serde(default = "four_k")]
    pub page_size: PageSize,
    /// config.txt lines that select a 4 KiB-page kernel instead (empty: none offered).
    #[serde(default)]
    pub page_size_4k: Vec<String>,
}

fn all_boards() -> String {
    "all".into()
}

fn four_k() -> PageSize {
    PageSize::K4
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            page_size: PageSize::K4,
            page_size_4k: Vec::new(),
        }
    }
}

/// One board profile.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// File stem: `rpi5` for boards/rpi5.toml.
    #[serde(skip_deserializing)]
    pub name: String,
    /// Human name.
    pub description: String,
    /// System on chip.
    pub soc: String,
    /// Debian architecture of the images it runs (`arm64`).
    pub arch: String,
    /// RAM variants in MiB.
    pub ram_mib: Vec<u32>,
    /// Whether firstboot may make it a K3s server when the role is `auto`.
    pub may_be_server: bool,
    /// Words added to cmdline.txt.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// config.txt conditional filter naming this board's model family (`pi5`, `pi02`, ...): its
    /// lines go under it, so a card moved to another model does not apply them. Default `all`.
    #[serde(default = "all_boards")]
    pub config_filter: String,
    /// Lines added to config.txt.
    #[serde(default)]
    pub config_txt: ConfigTxt,
    /// The kernels it can boot.
    #[serde(default)]
    pub kernel: Kernel,
    /// Accept a dynamically linked `--firstboot-bin` (test boards whose base has the loader;
    /// real boards need a static one).
    #[serde(default)]
    pub firstboot_may_be_dynamic: bool,
}

impl Board {
    /// The config.txt lines for this media and kernel page size (None: the board's default
    /// kernel): the common ones first.
    pub fn config_lines(
        &self,
        media: Media,
        page_size: Option<PageSize>,
    ) -> Result<Vec<String>, CatalogError> {
        let mut lines = self.config_txt.all.clone();
        lines.extend(match media {
            Media::Sd => self.config_txt.sd.iter().cloned(),
            Media::Ssd => self.config_txt.ssd.iter().cloned(),
        });
        match page_size {
            None => {}
            Some(p) if p == self.kernel.page_size => {}
            Some(PageSize::K4) if !self.kernel.page_size_4k.is_empty() => {
                lines.extend(self.kernel.page_size_4k.iter().cloned());
            }
            Some(p) => {
                return Err(CatalogError::Invalid(format!(
                    "board {} has no kernel with {} pages: remove kernel_page_size from [image] \
                     (the board's kernel uses {} pages)",
                    self.name,
                    page_name(p),
                    page_name(self.kernel.page_size)
                )))
            }
        }
        Ok(lines)
    }
}

fn page_name(p: PageSize) -> &'static str {
    match p {
        PageSize::K4 => "4 KiB",
        PageSize::K16 => "16 KiB",
    }
}

/// The operating-system family of a base: decides which first-boot conventions to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OsFamily {
    /// Raspberry Pi OS 12: `init=/usr/lib/raspberrypi-sys-mods/firstboot`, empty machine-id.
    RaspiosBookworm,
    /// Raspberry Pi OS 13: `resize` on the cmdline, machine-id "uninitialized".
    RaspiosTrixie,
    /// Ubuntu Server for Pi: `system-boot`/`writable`, cloud-init.
    Ubuntu,
}

impl OsFamily {
    /// The family as people call it.
    pub fn describe(self) -> &'static str {
        match self {
            OsFamily::RaspiosBookworm => "Raspberry Pi OS 12 (bookworm)",
            OsFamily::RaspiosTrixie => "Raspberry Pi OS 13 (trixie)",
            OsFamily::Ubuntu => "Ubuntu Server for Raspberry Pi",
        }
    }

    /// The partition labels this family's images carry: (boot, root).
    pub fn default_labels(self) -> (&'static str, &'static str) {
        match self {
            OsFamily::Ubuntu => ("system-boot", "writable"),
            _ => ("bootfs", "rootfs"),
        }
    }
}

/// One catalog entry of bases.toml.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    /// Catalog name (the table name).
    #[serde(skip_deserializing)]
    pub name: String,
    /// Human name.
    pub description: String,
    /// Pinned download URL.
    pub url: String,
    /// sha256 of the file at `url`.
    pub sha256: String,
    /// Which OS conventions apply.
    pub os_family: OsFamily,
    /// Expected FAT label of partition 1.
    pub boot_label: String,
    /// Expected ext4 label of partition 2.
    pub root_label: String,
    /// Whether the sha256 was checked against the publisher's own checksum file.
    #[serde(default)]
    pub confirmed: bool,
    /// Where the sha256 was confirmed (public sources that pin it), for whoever updates the entry.
    pub sha256_source: String,
}

/// All boards and bases of a data directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Boards by name.
    pub boards: BTreeMap<String, Board>,
    /// Bases by name.
    pub bases: BTreeMap<String, BaseImage>,
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
        path: path.into(),
        source,
    })
}

impl Catalog {
    /// Load every `boards/*.toml` profile and `boards/bases.toml`.
    pub fn load(data: &DataDir) -> Result<Catalog, CatalogError> {
        let dir = data.boards();
        let entries = std::fs::read_dir(&dir).map_err(|source| CatalogError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut boards = BTreeMap::new();
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if path.extension().and_then(|e| e.to_str()) != Some("toml") || stem == "bases" {
                continue;
            }
            let text = read(&path)?;
            let mut board: Board = toml::from_str(&text)
                .map_err(|e| CatalogError::Invalid(toml_error(&path, &text, &e, &board_keys())))?;
            board.name = stem.to_string();
            boards.insert(board.name.clone(), board);
        }
        let bases_path = dir.join("bases.toml");
        let text = read(&bases_path)?;
        let raw: BTreeMap<String, BaseImage> = toml::from_str(&text)
            .map_err(|e| CatalogError::Invalid(toml_error(&bases_path, &text, &e, &base_keys())))?;
        let mut bases = BTreeMap::new();
        for (name, mut base) in raw {
            if base.sha256.len() != 64 || !base.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CatalogError::Invalid(format!(
                    "{}: base `{name}` has sha256 {:?}, which is not 64 hex digits",
                    bases_path.display(),
                    base.sha256
                )));
            }
            if base.sha256_source.trim().is_empty() {
                return Err(CatalogError::Invalid(format!(
                    "{}: base `{name}` has an empty sha256_source; say where its sha256 was confirmed",
                    bases_path.display()
                )));
            }
            base.name = name.clone();
            bases.insert(name, base);
        }
        Ok(Catalog { boards, bases })
    }

    /// The board called `name`, or an error listing the known ones with a suggestion.
    pub fn board(&self, name: &str) -> Result<&Board, CatalogError> {
        self.boards
            .get(name)
            .ok_or_else(|| CatalogError::UnknownBoard {
                name: name.into(),
                hint: did_you_mean(name, self.boards.keys().map(String::as_str)),
                known: self.boards.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The base called `name`, or an error listing the catalog with a suggestion.
    pub fn base(&self, name: &str) -> Result<&BaseImage, CatalogError> {
        self.bases
            .get(name)
            .ok_or_else(|| CatalogError::UnknownBase {
                name: name.into(),
                hint: did_you_mean(name, self.bases.keys().map(String::as_str)),
                known: self.bases.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// A plain-text table of boards and bases for `imagebuild boards`.
    pub fn listing(&self) -> String {
        let mut out = String::from("Boards (boards/<name>.toml):\n");
        for b in self.boards.values() {
            let ram: Vec<String> = b
                .ram_mib
                .iter()
                .map(|m| {
                    if m % 1024 == 0 {
                        format!("{}G", m / 1024)
                    } else {
                        format!("{m}M")
                    }
                })
                .collect();
            out.push_str(&format!(
                "  {:<8} {:<32} {:<20} {} RAM {:<16} {}\n",
                b.name,
                b.description,
                b.soc,
                b.arch,
                ram.join("/"),
                if b.may_be_server {
                    "server or agent"
                } else {
                    "agent only (by default)"
                }
            ));
        }
        out.push_str("\nBases (boards/bases.toml):\n");
        for b in self.bases.values() {
            out.push_str(&format!(
                "  {:<28} {:<17} {}{}\n",
                b.name,
                serde_json::to_value(b.os_family)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                b.description,
                if b.confirmed {
                    ""
                } else {
                    " (sha256 not confirmed against the publisher)"
                }
            ));
        }
        out
    }
}

fn board_keys() -> Vec<&'static str> {
    vec![
        "description",
        "soc",
        "arch",
        "ram_mib",
        "may_be_server",
        "cmdline",
        "config_filter",
        "config_txt",
        "all",
        "sd",
        "ssd",
        "kernel",
        "page_size",
        "page_size_4k",
    ]
}

fn base_keys() -> Vec<&'static str> {
    vec![
        "description",
        "url",
        "sha256",
        "os_family",
        "boot_label",
        "root_label",
        "confirmed",
        "sha256_source",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(&DataDir::locate(Some(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        )))
        .unwrap()
    }

    #[test]
    fn shipped_boards_and_bases_load() {
        let c = catalog();
        for b in ["rpi3", "rpi4", "rpi5", "cm4", "cm5", "zero2w"] {
            assert!(c.boards.contains_key(b), "{b} missing");
        }
        assert!(!c.board("zero2w").unwrap().may_be_server);
        assert!(!c.board("rpi3").unwrap().may_be_server);
        assert!(c.board("rpi5").unwrap().may_be_server);
        assert!(c
            .board("rpi5")
            .unwrap()
            .config_lines(Media::Ssd, None)
            .unwrap()
            .contains(&"dtparam=pciex1".to_string()));
        assert_eq!(
            c.base("ubuntu-server-24.04-raspi").unwrap().os_family,
            OsFamily::Ubuntu
        );
    }

    #[test]
    fn pi5_and_cm5_offer_the_4k_kernel_and_gpu_mem_is_filtered() {
        let c = catalog();
        for b in ["rpi5", "cm5"] {
            let lines = c
                .board(b)
                .unwrap()
                .config_lines(Media::Sd, Some(PageSize::K4))
                .unwrap();
            assert!(lines.contains(&"kernel=kernel8.img".to_string()), "{b}");
            let default = c.board(b).unwrap().config_lines(Media::Sd, None).unwrap();
            assert!(!default.iter().any(|l| l.starts_with("kernel=")), "{b}");
        }
        // Asking a 4 KiB board for 4 KiB pages changes nothing; 16 KiB is refused.
        let rpi4 = c.board("rpi4").unwrap();
        assert!(rpi4
            .config_lines(Media::Sd, Some(PageSize::K4))
            .unwrap()
            .is_empty());
        let e = rpi4
            .config_lines(Media::Sd, Some(PageSize::K16))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no kernel with 16 KiB pages"), "{e}");
        for b in c.boards.values() {
            let has_gpu_mem = b.config_txt.all.iter().any(|l| l.starts_with("gpu_mem"));
            assert!(
                !has_gpu_mem || ["pi3", "pi02"].contains(&b.config_filter.as_str()),
                "{}: gpu_mem under [{}]",
                b.name,
                b.config_filter
            );
        }
    }

    #[test]
    fn unknown_board_names_known_ones_and_suggests() {
        let err = catalog().board("rpi55").unwrap_err().to_string();
        assert!(err.contains("Did you mean `rpi5`?"), "{err}");
        assert!(err.contains("cm4, cm5, rpi3, rpi4, rpi5, zero2w"), "{err}");
    }
}
