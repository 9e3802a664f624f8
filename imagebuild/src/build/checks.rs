//! What the base must support, checked before any output exists: the recipe's timezone and, on
//! Ubuntu, the vxlan module K3s's default pod network needs.

use crate::boards::OsFamily;
use crate::progress::say;
use crate::recipe::Recipe;
use crate::rootfs::Rootfs;
use anyhow::{bail, Result};

/// Refuse what the base cannot do, before any output exists: a timezone its zoneinfo lacks, and
/// K3s's default pod network on an Ubuntu kernel without the vxlan module.
/// Returns the warnings it printed.
pub(super) fn check_base_supports(
    recipe: &Recipe,
    rootfs: &Rootfs,
    family: OsFamily,
) -> Result<Vec<String>> {
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
