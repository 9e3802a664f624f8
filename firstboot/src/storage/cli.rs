//! `firstboot probe-storage`: measure the data directory's device and print the assessment.

use super::assessment::{assess, StorageAssessment};
use super::probe::StorageProbe;
use crate::config::StorageProfile;
use std::path::{Path, PathBuf};

/// Arguments of `firstboot probe-storage`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeStorageArgs {
    /// Directory whose device is measured (its nearest existing ancestor if it does not exist).
    #[arg(long, default_value = "/var/lib/rancher")]
    pub dir: PathBuf,
    /// Print the assessment as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `probe-storage` with parsed arguments.
pub fn run(args: &ProbeStorageArgs) -> anyhow::Result<()> {
    run_probe_storage(&args.dir, args.json)
}

/// Probe `dir`, classify and plan, and print the result (human-readable or JSON) to stdout.
pub fn run_probe_storage(dir: &Path, json: bool) -> anyhow::Result<()> {
    let a = assess(
        &StorageProbe::new(dir),
        Path::new("/sys"),
        StorageProfile::Auto,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", render(&a));
    }
    Ok(())
}

/// Human-readable report of an assessment.
pub fn render(a: &StorageAssessment) -> String {
    let p = &a.probe;
    let mut s = String::new();
    s += &format!("directory:   {}\n", a.dir.display());
    s += &format!(
        "disk:        {}\n",
        a.disk.as_deref().unwrap_or("(not a disk)")
    );
    s += &format!("class:       {}  (score {})\n", a.class, a.score);
    s += &format!(
        "fdatasync:   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (etcd wants p99 < 10 ms)\n",
        p.p50_us as f64 / 1000.0,
        p.p99_us as f64 / 1000.0,
        p.max_us as f64 / 1000.0
    );
    s += &format!(
        "probe:       {} writes, {} bytes in {} ms\n",
        p.writes, p.bytes, p.elapsed_ms
    );
    s += &format!("etcd:        {}\n", a.etcd.etcd_args().join(" "));
    let plan = &a.plan;
    s += &format!(
        "plan:        noatime={} commit={} journal={} swap_off={} writeback={} scheduler={} k3s_ionice={} snapshots={}\n",
        plan.mount.noatime,
        plan.mount.commit_secs.map_or("default".into(), |c| c.to_string()),
        plan.journal.map_or("unchanged".into(), |j| j.to_string()),
        plan.swap_off,
        plan.writeback.map_or("default".into(), |w| format!("{}/{} bytes", w.background_bytes, w.dirty_bytes)),
        plan.io_scheduler.as_ref().map_or("unchanged".into(), |s| format!("{}={}", s.disk, s.scheduler)),
        plan.k3s_io_priority,
        plan.snapshot_dir.as_ref().map_or("default".into(), |d| d.display().to_string()),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::class::{DeviceKind, Speed, StorageClass};
    use crate::storage::etcd::EtcdTuning;
    use crate::storage::plan::TuningPlan;
    use crate::storage::probe::ProbeResult;

    #[test]
    fn report_names_class_latencies_and_etcd_args() {
        let class = StorageClass {
            kind: DeviceKind::Sd,
            speed: Speed::Slow,
        };
        let a = StorageAssessment {
            dir: "/var/lib".into(),
            disk: Some("mmcblk0".into()),
            measured: class,
            class,
            probe: ProbeResult {
                writes: 40,
                bytes: 92000,
                elapsed_ms: 2010,
                p50_us: 21_500,
                p99_us: 48_000,
                max_us: 60_000,
            },
            score: 10,
            etcd: EtcdTuning::SLOW_STORAGE,
            plan: TuningPlan::for_class(class, Some("mmcblk0"), &[]),
        };
        let text = render(&a);
        assert!(text.contains("class:       sd (slow)  (score 10)\n"));
        assert!(text.contains("p50 21.50 ms  p99 48.00 ms  max 60.00 ms"));
        assert!(text.contains("etcd:        heartbeat-interval=1000 election-timeout=10000\n"));
        assert!(text.contains("journal=volatile (max 32 MiB)"));
        assert!(text.contains("scheduler=mmcblk0=bfq"));
        assert_eq!(
            a.status_line(),
            "storage: sd (slow) on mmcblk0, fdatasync p50 21.5 ms p99 48.0 ms"
        );
        let json: serde_json::Value = serde_json::to_value(&a).unwrap();
        assert_eq!(json["probe"]["p99_us"], 48_000);
        assert_eq!(json["class"]["kind"], "sd");
    }
}
