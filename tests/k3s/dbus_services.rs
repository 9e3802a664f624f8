//! The timedate1 and systemd1 proxies over a real dbus-daemon.
//!
//! The services on the bus are test doubles served from this test (the real ones would set the
//! host's clock or need systemd as PID 1), except one read-only check against the real
//! systemd-timedated when it is installed: it runs on the private bus and we read
//! NTPSynchronized from it, never SetTime.

mod private_bus;

use firstboot::clock::{InitAgreement, NtpWait, Timedate};
use firstboot::systemd::{ActiveState, Systemd};
use private_bus::PrivateBus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the timedate1 double has been asked to do.
#[derive(Default)]
struct TimedateLog {
    synced: bool,
    ntp_enabled: bool,
    /// (usec, relative) per successful SetTime.
    set_time: Vec<(i64, bool)>,
    /// Every SetNTP value in order.
    set_ntp: Vec<bool>,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.timedate1")]
enum TimedateError {
    #[zbus(error)]
    ZBus(zbus::Error),
    AutomaticTimeSyncEnabled(String),
}

/// A double of systemd-timedated that refuses SetTime while NTP is on, as the real one does.
struct TimedateDouble(Arc<Mutex<TimedateLog>>);

#[zbus::interface(name = "org.freedesktop.timedate1")]
impl TimedateDouble {
    #[zbus(property, name = "NTPSynchronized")]
    fn ntp_synchronized(&self) -> bool {
        self.0.lock().unwrap().synced
    }

    fn set_time(&self, usec: i64, relative: bool, _interactive: bool) -> Result<(), TimedateError> {
        let mut log = self.0.lock().unwrap();
        if log.ntp_enabled {
            return Err(TimedateError::AutomaticTimeSyncEnabled(
                "Automatic time synchronization is enabled".into(),
            ));
        }
        log.set_time.push((usec, relative));
        Ok(())
    }

    #[zbus(name = "SetNTP")]
    fn set_ntp(&self, enable: bool, _interactive: bool) {
        let mut log = self.0.lock().unwrap();
        log.ntp_enabled = enable;
        log.set_ntp.push(enable);
    }
}

#[tokio::test]
async fn clock_waits_for_ntp_and_steps_forward_to_the_init_node() {
    let bus = PrivateBus::start();
    let log = Arc::new(Mutex::new(TimedateLog {
        ntp_enabled: true,
        ..Default::default()
    }));
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.timedate1")
        .unwrap()
        .serve_at("/org/freedesktop/timedate1", TimedateDouble(log.clone()))
        .unwrap()
        .build()
        .await
        .unwrap();
    let conn = bus.connect().await;
    let clock = Timedate::new(&conn).await.unwrap();

    // Not synced: the wait is bounded by time_sync (here zero) and gives up.
    assert_eq!(
        clock
            .wait_for_ntp(Duration::ZERO, Duration::from_millis(10))
            .await
            .unwrap(),
        NtpWait::GaveUp
    );
    log.lock().unwrap().synced = true;
    assert_eq!(
        clock
            .wait_for_ntp(Duration::from_secs(60), Duration::from_millis(10))
            .await
            .unwrap(),
        NtpWait::Synced
    );

    // This node's clock is one hour behind the init node's: it steps forward by an hour,
    // switching automatic sync off for the step and back on after.
    let init_now = firstboot::clock::now_usec() + 3_600_000_000;
    let decision = clock.agree_with_init(init_now).await.unwrap();
    let InitAgreement::StepForward(delta) = decision else {
        panic!("expected a forward step, got {decision:?}");
    };
    {
        let log = log.lock().unwrap();
        assert_eq!(log.set_time.len(), 1);
        let (usec, relative) = log.set_time[0];
        assert!(relative);
        assert_eq!(usec, delta);
        assert!((3_598_000_000..=3_600_000_000).contains(&usec), "{usec}");
        assert_eq!(log.set_ntp, [false, true]);
        assert!(log.ntp_enabled);
    }

    // Ahead of the init node: never stepped back.
    let before = firstboot::clock::now_usec() - 60_000_000;
    assert!(matches!(
        clock.agree_with_init(before).await.unwrap(),
        InitAgreement::Ahead(_)
    ));
    assert_eq!(clock.enforce_floor(1).await.unwrap(), None);
}

#[tokio::test]
async fn reads_ntp_state_from_the_real_timedated() {
    let daemon = "/usr/lib/systemd/systemd-timedated";
    if !std::path::Path::new(daemon).exists() {
        systests::skip(
            "reads_ntp_state_from_the_real_timedated",
            "systemd-timedated not installed",
        );
        return;
    }
    let bus = PrivateBus::start();
    // timedated exits after ~30 s idle; the test is done long before.
    let mut child = std::process::Command::new(daemon)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let conn = bus.connect().await;
    let clock = Timedate::new(&conn).await.unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let name = zbus::names::BusName::try_from("org.freedesktop.timedate1").unwrap();
    let mut tries = 0;
    while !dbus.name_has_owner(name.clone()).await.unwrap() {
        tries += 1;
        assert!(
            tries < 200,
            "systemd-timedated never took its name on the private bus"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A container's clock is whatever the host says; the property must simply be readable.
    let synced = clock.ntp_synchronized().await.unwrap();
    eprintln!("real systemd-timedated: NTPSynchronized = {synced}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A double of systemd's manager with one unit whose state moves on each poll.
struct ManagerDouble {
    started: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl ManagerDouble {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::zvariant::OwnedObjectPath {
        assert_eq!(mode, "replace");
        self.started.lock().unwrap().push(name.to_string());
        zbus::zvariant::OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap()
    }

    fn load_unit(&self, name: &str) -> zbus::fdo::Result<zbus::zvariant::OwnedObjectPath> {
        let path = match name {
            "k3s.service" => "/org/freedesktop/systemd1/unit/k3s_2eservice",
            "broken.service" => "/org/freedesktop/systemd1/unit/broken_2eservice",
            _ => return Err(zbus::fdo::Error::Failed(format!("Unit {name} not found."))),
        };
        Ok(zbus::zvariant::OwnedObjectPath::try_from(path).unwrap())
    }
}

/// A unit that reports each state of `script` once per read, then stays on the last.
struct UnitDouble {
    script: Vec<&'static str>,
    reads: Mutex<usize>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl UnitDouble {
    #[zbus(property)]
    fn active_state(&self) -> String {
        let mut n = self.reads.lock().unwrap();
        let s = self.script[(*n).min(self.script.len() - 1)];
        *n += 1;
        s.to_string()
    }
}

#[tokio::test]
async fn start_and_follow_reaches_active_or_failed() {
    let bus = PrivateBus::start();
    let started = Arc::new(Mutex::new(Vec::new()));
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1",
            ManagerDouble {
                started: started.clone(),
            },
        )
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1/unit/k3s_2eservice",
            UnitDouble {
                script: vec!["inactive", "activating", "activating", "active"],
                reads: Mutex::new(0),
            },
        )
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1/unit/broken_2eservice",
            UnitDouble {
                script: vec!["activating", "failed"],
                reads: Mutex::new(0),
            },
        )
        .unwrap()
        .build()
        .await
        .unwrap();
    let conn = bus.connect().await;
    let systemd = Systemd::new(&conn).await.unwrap();
    let poll = Duration::from_millis(5);
    let limit = Duration::from_secs(60);
    assert_eq!(
        systemd
            .start_and_follow("k3s.service", limit, poll)
            .await
            .unwrap(),
        ActiveState::Active
    );
    assert_eq!(
        systemd
            .start_and_follow("broken.service", limit, poll)
            .await
            .unwrap(),
        ActiveState::Failed
    );
    assert!(systemd
        .start_and_follow("missing.service", limit, poll)
        .await
        .is_err());
    assert_eq!(
        *started.lock().unwrap(),
        ["k3s.service", "broken.service", "missing.service"]
    );
}

#[tokio::test]
async fn settle_steps_to_the_build_time_floor_when_ntp_never_syncs() {
    let bus = PrivateBus::start();
    let log = Arc::new(Mutex::new(TimedateLog::default()));
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.timedate1")
        .unwrap()
        .serve_at("/org/freedesktop/timedate1", TimedateDouble(log.clone()))
        .unwrap()
        .build()
        .await
        .unwrap();
    let conn = bus.connect().await;
    let clock = Timedate::new(&conn).await.unwrap();
    // An image "built" a day after this host's clock: the node must not run below that.
    let build_time = (firstboot::clock::now_usec() / 1_000_000) as u64 + 86_400;
    let settled = clock
        .settle(Some(build_time), Duration::ZERO, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(settled.ntp, NtpWait::GaveUp);
    let step = settled
        .floor_step_usec
        .expect("a forward step to the floor");
    assert!((86_398_000_000..=86_400_000_000).contains(&step), "{step}");
    assert_eq!(log.lock().unwrap().set_time, [(step, true)]);

    // Synced NTP is trusted: no floor step even with a future build time.
    log.lock().unwrap().synced = true;
    let settled = clock
        .settle(Some(build_time), Duration::ZERO, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(settled.ntp, NtpWait::Synced);
    assert_eq!(settled.floor_step_usec, None);
    assert_eq!(log.lock().unwrap().set_time.len(), 1);
}
