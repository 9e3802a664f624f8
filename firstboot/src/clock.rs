//! A trustworthy clock before K3s creates certificates: NTP wait, image build-time floor, agreement with the init node.
//!
//! The Pi has no RTC, so a node may boot with a clock from 1970 or from its last shutdown.
//! Certificates issued with a clock behind the other nodes' fail there as "not yet valid".
//! The rules, as pure functions over injected times ([`ntp_wait`], [`floor_step`],
//! [`init_agreement_step`]), and a thin proxy to systemd-timedated ([`Timedate`]) that applies them:
//!
//! 1. wait up to `timeouts.time_sync` for `NTPSynchronized`;
//! 2. never run below the image's build time (`build_time`, unix seconds, in
//!    `/etc/firstboot/image.json`, written by imagebuild);
//! 3. before K3s first starts on a joiner, step forward (never back) to within
//!    [`INIT_AGREEMENT`] of the init node's clock, taken from its signed announcement.

use std::path::Path;
use std::time::Duration;

/// How close a joiner's clock must be to the init node's before K3s starts.
pub const INIT_AGREEMENT: Duration = Duration::from_secs(2);

const USEC_PER_SEC: i64 = 1_000_000;

/// Where the NTP wait stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NtpWait {
    /// timedated reports NTPSynchronized.
    Synced,
    /// Not yet; keep polling.
    KeepWaiting,
    /// `time_sync` has passed without sync: go on with the floor and init agreement.
    GaveUp,
}

/// Decides the NTP wait from whether timedated says synced and how long we have waited.
pub fn ntp_wait(synced: bool, waited: Duration, limit: Duration) -> NtpWait {
    if synced {
        NtpWait::Synced
    } else if waited >= limit {
        NtpWait::GaveUp
    } else {
        NtpWait::KeepWaiting
    }
}

/// How far to step forward (µs) so the clock is not below the image build time; `None` if it is not.
pub fn floor_step(now_usec: i64, build_time_secs: u64) -> Option<i64> {
    let floor = i64::try_from(build_time_secs)
        .ok()?
        .checked_mul(USEC_PER_SEC)?;
    (now_usec < floor).then(|| floor - now_usec)
}

/// What agreeing with the init node's clock asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitAgreement {
    /// Already within [`INIT_AGREEMENT`].
    Agrees,
    /// Behind: step forward by this many µs.
    StepForward(i64),
    /// Ahead by this many µs: never stepped back (that would break what this clock already
    /// signed); reported so a human can look at the node's NTP.
    Ahead(i64),
}

/// Compares this node's clock with the init node's (both unix µs at the same instant; the
/// init value is its announced time plus the time elapsed since the announcement arrived).
pub fn init_agreement_step(local_usec: i64, init_usec: i64) -> InitAgreement {
    let tolerance = INIT_AGREEMENT.as_micros() as i64;
    let diff = init_usec - local_usec;
    if diff > tolerance {
        InitAgreement::StepForward(diff)
    } else if -diff > tolerance {
        InitAgreement::Ahead(-diff)
    } else {
        InitAgreement::Agrees
    }
}

/// What [`Timedate::settle`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettled {
    /// Whether NTP synced in time.
    pub ntp: NtpWait,
    /// The forward step to the build-time floor, if one was needed (µs).
    pub floor_step_usec: Option<i64>,
}

/// Why the clock could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The image manifest is unreadable or malformed.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// timedated could not be reached or refused.
    #[error("talking to systemd-timedated")]
    Bus(#[from] zbus::Error),
}

/// Reads `build_time` (unix seconds) from the image manifest under `root`; `Ok(None)` when the
/// image has no manifest (not built by imagebuild).
pub fn image_build_time(root: &Path) -> Result<Option<u64>, ClockError> {
    Ok(crate::manifest::ImageManifest::load(root)?.map(|m| m.build_time))
}

/// The current wall clock in whole unix seconds (0 before 1970).
pub fn unix_now() -> i64 {
    now_usec().div_euclid(1_000_000).max(0)
}

/// The current wall clock in unix µs.
pub fn now_usec() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.timedate1",
    default_service = "org.freedesktop.timedate1",
    default_path = "/org/freedesktop/timedate1"
)]
trait Timedate1 {
    /// NTPSynchronized property.
    #[zbus(property, name = "NTPSynchronized")]
    fn ntp_synchronized(&self) -> zbus::Result<bool>;

    /// SetTime(x usec_utc, b relative, b interactive).
    fn set_time(&self, usec_utc: i64, relative: bool, interactive: bool) -> zbus::Result<()>;

    /// SetNTP(b use_ntp, b interactive).
    #[zbus(name = "SetNTP")]
    fn set_ntp(&self, use_ntp: bool, interactive: bool) -> zbus::Result<()>;
}

/// systemd-timedated on a D-Bus connection (the system bus on a node).
pub struct Timedate {
    proxy: Timedate1Proxy<'static>,
}

impl Timedate {
    /// Connects the proxy; properties are read fresh each time (no cache).
    pub async fn new(conn: &zbus::Connection) -> Result<Self, ClockError> {
        let proxy = Timedate1Proxy::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        Ok(Timedate { proxy })
    }

    /// Whether the kernel clock is NTP-synchronized.
    pub async fn ntp_synchronized(&self) -> Result<bool, ClockError> {
        Ok(self.proxy.ntp_synchronized().await?)
    }

    /// Polls NTPSynchronized every `poll` until synced or `limit` has passed.
    pub async fn wait_for_ntp(
        &self,
        limit: Duration,
        poll: Duration,
    ) -> Result<NtpWait, ClockError> {
        let start = tokio::time::Instant::now();
        loop {
            let synced = self.ntp_synchronized().await?;
            match ntp_wait(synced, start.elapsed(), limit) {
                NtpWait::KeepWaiting => tokio::time::sleep(poll).await,
                done => return Ok(done),
            }
        }
    }

    /// Steps the clock by `delta_usec` (relative, non-interactive). timedated refuses SetTime
    /// while automatic sync is on, so then NTP is switched off for the step and back on after.
    pub async fn step_by(&self, delta_usec: i64) -> Result<(), ClockError> {
        match self.proxy.set_time(delta_usec, true, false).await {
            Ok(()) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.timedate1.AutomaticTimeSyncEnabled" =>
            {
                self.proxy.set_ntp(false, false).await?;
                let stepped = self.proxy.set_time(delta_usec, true, false).await;
                let restored = self.proxy.set_ntp(true, false).await;
                stepped?;
                restored?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Lifecycle step 3 before the election: wait (bounded) for NTP, then, if it did not sync,
    /// make sure the clock is not below the image build time.
    pub async fn settle(
        &self,
        build_time_secs: Option<u64>,
        time_sync: Duration,
        poll: Duration,
    ) -> Result<ClockSettled, ClockError> {
        let ntp = self.wait_for_ntp(time_sync, poll).await?;
        let floor_step_usec = match (ntp, build_time_secs) {
            (NtpWait::GaveUp, Some(build)) => self.enforce_floor(build).await?,
            _ => None,
        };
        Ok(ClockSettled {
            ntp,
            floor_step_usec,
        })
    }

    /// Steps forward to the build-time floor if the clock is below it; returns the step (µs).
    pub async fn enforce_floor(&self, build_time_secs: u64) -> Result<Option<i64>, ClockError> {
        let step = floor_step(now_usec(), build_time_secs);
        if let Some(delta) = step {
            tracing::warn!(
                delta_s = delta / USEC_PER_SEC,
                "clock is below the image build time; stepping forward"
            );
            self.step_by(delta).await?;
        }
        Ok(step)
    }

    /// Agrees with the init node's clock (`init_usec` estimated for now); steps forward only.
    pub async fn agree_with_init(&self, init_usec: i64) -> Result<InitAgreement, ClockError> {
        let decision = init_agreement_step(now_usec(), init_usec);
        match decision {
            InitAgreement::StepForward(delta) => {
                tracing::warn!(
                    delta_ms = delta / 1000,
                    "clock is behind the serving server; stepping forward"
                );
                self.step_by(delta).await?;
            }
            InitAgreement::Ahead(delta) => {
                tracing::warn!(
                    delta_ms = delta / 1000,
                    "clock is ahead of the serving server; not stepping back"
                );
            }
            InitAgreement::Agrees => {}
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = USEC_PER_SEC;

    #[test]
    fn ntp_wait_is_bounded() {
        let limit = Duration::from_secs(90);
        assert_eq!(ntp_wait(true, Duration::ZERO, limit), NtpWait::Synced);
        assert_eq!(
            ntp_wait(true, Duration::from_secs(500), limit),
            NtpWait::Synced
        );
        assert_eq!(
            ntp_wait(false, Duration::from_secs(89), limit),
            NtpWait::KeepWaiting
        );
        assert_eq!(
            ntp_wait(false, Duration::from_secs(90), limit),
            NtpWait::GaveUp
        );
    }

    #[test]
    fn floor_steps_only_when_below_build_time() {
        let build = 1_780_000_000u64;
        // A Pi without RTC boots at the epoch.
        assert_eq!(floor_step(0, build), Some(build as i64 * S));
        assert_eq!(floor_step(build as i64 * S - 1, build), Some(1));
        assert_eq!(floor_step(build as i64 * S, build), None);
        assert_eq!(floor_step(build as i64 * S + 3600 * S, build), None);
        assert_eq!(floor_step(0, u64::MAX), None);
    }

    #[test]
    fn init_agreement_steps_forward_only_beyond_two_seconds() {
        let t = 1_780_000_000 * S;
        assert_eq!(init_agreement_step(t, t), InitAgreement::Agrees);
        assert_eq!(init_agreement_step(t, t + 2 * S), InitAgreement::Agrees);
        assert_eq!(init_agreement_step(t, t - 2 * S), InitAgreement::Agrees);
        assert_eq!(
            init_agreement_step(t - 3600 * S, t),
            InitAgreement::StepForward(3600 * S)
        );
        assert_eq!(
            init_agreement_step(t, t + 2 * S + 1),
            InitAgreement::StepForward(2 * S + 1)
        );
        assert_eq!(
            init_agreement_step(t + 10 * S, t),
            InitAgreement::Ahead(10 * S)
        );
    }

    #[test]
    fn build_time_comes_from_the_image_manifest() {
        use crate::manifest::{ImageManifest, Media, Versions, PATH, SCHEMA};
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(image_build_time(dir.path()).unwrap(), None);
        let p = dir.path().join(PATH);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let manifest = ImageManifest {
            schema: SCHEMA,
            build_time: 1_780_000_000,
            build_time_rfc3339: "2026-05-28T20:26:40Z".into(),
            board: "rpi4".into(),
            media: Media::Sd,
            base_sha256: String::new(),
            versions: Versions::default(),
            files: Vec::new(),
        };
        std::fs::write(&p, manifest.to_vec()).unwrap();
        assert_eq!(image_build_time(dir.path()).unwrap(), Some(1_780_000_000));
        std::fs::write(&p, r#"{"schema": 2, "build_time": "yesterday"}"#).unwrap();
        assert!(image_build_time(dir.path()).is_err());
        std::fs::write(&p, "not json").unwrap();
        assert!(image_build_time(dir.path()).is_err());
    }
}
