//! The fixed registration address (`[cluster] api_address`, SPEC 4.5): one serving server at a
//! time holds it, under the Lease `kube-system/firstboot-api-address` in the cluster's own etcd.
//!
//! Every serving server runs a holder ([`spawn`]). Every [`ROUND`] it takes or renews the Lease
//! by compare-and-swap ([`crate::healer::lease::acquire_named`]: client-go's leader election
//! rules, whole seconds). The server that holds it adds the address to its LAN interface and
//! sends gratuitous ARP on takeover; every K3s server listens on all addresses and has the
//! address in its `tls-san`, so the holder serves the API there.
//!
//! Never two holders: the holder keeps the address only until [`HOLD`] after the moment it
//! started its last successful renewal, while another server may take the Lease only
//! [`DURATION`] after that renewal's time (the Lease's renewTime, written in whole seconds, is
//! at most a second earlier than that moment). So a holder that cannot renew (partitioned from
//! the other servers: its etcd has no quorum; K3s hanging) lets go at least
//! `DURATION - HOLD - 1 s` = 2 s before anyone else may take over. The address also carries a
//! kernel lifetime no longer than what is left of [`HOLD`], refreshed at each renewal, so it
//! disappears even if firstboot dies or hangs while holding it. The rule needs the servers'
//! clocks to agree within a second; firstboot's clock agreement at join makes them agree.
//!
//! Failover: a holder that loses power is replaced at most `DURATION` plus one [`ROUND`] plus a
//! kubectl call after its last renewal, about 11 s.

pub mod iface;

use crate::clock::unix_now;
use crate::healer::lease;
use crate::seat_book::{KubectlError, Run};
use iface::AddressOps;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Lease's name.
pub const LEASE_NAME: &str = "firstboot-api-address";
/// How often a holder renews and the others try to take the Lease.
pub const ROUND: Duration = Duration::from_secs(2);
/// The Lease's duration, seconds: another server may take it this long after its renewal.
pub const DURATION: i64 = 8;
/// How long after starting a successful renewal the holder keeps the address.
pub const HOLD: Duration = Duration::from_secs(5);
/// How often the watchdog checks the holder's deadline.
const WATCH: Duration = Duration::from_millis(100);
/// Gratuitous ARP goes out at takeover and at this many renewals after it (a frame the LAN
/// lost is sent again).
const ANNOUNCE_ROUNDS: u8 = 2;

/// What the holder did, for the log and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// This server took the address.
    Took,
    /// This server let the address go (why).
    Dropped(String),
}

/// The holding rules, on one server: what it holds and until when.
#[derive(Debug)]
pub struct Holder<O: AddressOps> {
    ops: O,
    /// Holding the address until this moment.
    until: Option<Instant>,
    /// Rounds left in which to send gratuitous ARP again.
    announce_left: u8,
}

impl<O: AddressOps> Holder<O> {
    /// A holder that holds nothing yet. Whatever an earlier run left on the interface is
    /// removed first: it no longer knows whether it holds the Lease.
    pub fn new(mut ops: O) -> Self {
        if let Err(e) = ops.release() {
            tracing::warn!(error = %e, "could not remove a fixed address left from an earlier run");
        }
        Holder {
            ops,
            until: None,
            announce_left: 0,
        }
    }

    /// Whether the address is held now.
    pub fn holds(&self) -> bool {
        self.until.is_some()
    }

    /// One Lease attempt started at `started` ended with `result` at `now`.
    pub fn after_attempt(
        &mut self,
        started: Instant,
        now: Instant,
        result: &Result<bool, KubectlError>,
    ) -> Change {
        match result {
            Ok(true) => {
                let until = started + HOLD;
                let Some(left) = until.checked_duration_since(now).filter(|l| !l.is_zero()) else {
                    // The renewal took so long that its hold is over already.
                    return self.drop_if_held("the Lease renewal came too late");
                };
                // Whole seconds, rounded down: the kernel drops it no later than the rule.
                let lifetime = left.as_secs() as u32;
                if lifetime == 0 {
                    return self.drop_if_held("the Lease renewal came too late");
                }
                if let Err(e) = self.ops.hold(lifetime) {
                    tracing::error!(error = %e, "could not add the fixed address");
                    return self.drop_if_held("the address could not be refreshed");
                }
                let took = self.until.is_none();
                self.until = Some(until);
                if took {
                    self.announce_left = ANNOUNCE_ROUNDS + 1;
                }
                if self.announce_left > 0 {
                    self.announce_left -= 1;
                    if let Err(e) = self.ops.announce() {
                        tracing::warn!(error = %e, "could not send gratuitous ARP for the fixed address");
                    }
                }
                if took {
                    Change::Took
                } else {
                    Change::None
                }
            }
            Ok(false) => self.drop_if_held("another server holds the Lease"),
            // The watchdog lets go at the deadline if no renewal succeeds before it.
            Err(_) => Change::None,
        }
    }

    /// The watchdog at `now`: a hold past its deadline ends.
    pub fn tick(&mut self, now: Instant) -> Change {
        match self.until {
            Some(until) if now >= until => {
                self.drop_if_held("the Lease could not be renewed in time")
            }
            _ => Change::None,
        }
    }

    /// Stops holding (this server stops serving).
    pub fn stop(&mut self) -> Change {
        self.drop_if_held("this server stopped serving")
    }

    fn drop_if_held(&mut self, why: &str) -> Change {
        if self.until.take().is_none() {
            return Change::None;
        }
        if let Err(e) = self.ops.release() {
            tracing::error!(error = %e, "could not remove the fixed address (the kernel drops it when its lifetime ends)");
        }
        Change::Dropped(why.to_string())
    }
}

/// Who holds the address, as the daemon reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// This server holds it now.
    pub holding: bool,
    /// Since when (unix seconds), while holding.
    pub since_unix: Option<u64>,
}

/// Starts the holder of `address` on `iface` for server `me`: a renewal thread and a watchdog
/// thread. Returns what the daemon reads for status.
pub fn spawn(
    kubectl: Arc<dyn Run>,
    me: String,
    ops: impl AddressOps + 'static,
) -> std::io::Result<Arc<Mutex<Shared>>> {
    let holder = Arc::new(Mutex::new(Holder::new(ops)));
    let shared = Arc::new(Mutex::new(Shared::default()));
    let report = |shared: &Arc<Mutex<Shared>>, change: &Change| {
        if let Ok(mut s) = shared.lock() {
            match change {
                Change::Took => {
                    s.holding = true;
                    s.since_unix = Some(unix_now() as u64);
                }
                Change::Dropped(_) => *s = Shared::default(),
                Change::None => {}
            }
        }
        match change {
            Change::Took => tracing::info!("took the fixed registration address (Lease firstboot-api-address); gratuitous ARP sent"),
            Change::Dropped(why) => tracing::warn!(why = %why, "let the fixed registration address go"),
            Change::None => {}
        }
    };
    {
        let (holder, shared) = (holder.clone(), shared.clone());
        std::thread::Builder::new()
            .name("api-address-watch".into())
            .spawn(move || loop {
                let change = holder
                    .lock()
                    .map(|mut h| h.tick(Instant::now()))
                    .unwrap_or(Change::None);
                report(&shared, &change);
                std::thread::sleep(WATCH);
            })?;
    }
    let (holder2, shared2) = (holder, shared.clone());
    std::thread::Builder::new()
        .name("api-address".into())
        .spawn(move || {
            let mut last_error: Option<String> = None;
            loop {
                let started = Instant::now();
                let result =
                    lease::acquire_named(&*kubectl, LEASE_NAME, &me, unix_now(), DURATION);
                match &result {
                    Err(e) if last_error.as_deref() != Some(&e.to_string()) => {
                        tracing::warn!(error = %e, "fixed address: the Lease could not be read or written; retrying");
                        last_error = Some(e.to_string());
                    }
                    Err(_) => {}
                    Ok(_) => last_error = None,
                }
                let change = holder2
                    .lock()
                    .map(|mut h| h.after_attempt(started, Instant::now(), &result))
                    .unwrap_or(Change::None);
                report(&shared2, &change);
                std::thread::sleep(ROUND.saturating_sub(started.elapsed()));
            }
        })?;
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Records what the holder did to the "interface".
    #[derive(Debug, Default, Clone)]
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        fail_hold: bool,
    }

    impl AddressOps for Fake {
        fn hold(&mut self, lifetime_secs: u32) -> io::Result<()> {
            if self.fail_hold {
                return Err(io::Error::other("no such device"));
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("hold {lifetime_secs}"));
            Ok(())
        }
        fn release(&mut self) -> io::Result<()> {
            self.log.lock().unwrap().push("release".into());
            Ok(())
        }
        fn announce(&mut self) -> io::Result<()> {
            self.log.lock().unwrap().push("announce".into());
            Ok(())
        }
    }

    fn log(f: &Fake) -> Vec<String> {
        std::mem::take(&mut *f.log.lock().unwrap())
    }

    #[test]
    fn a_leftover_address_is_removed_at_start_and_takeover_announces() {
        let fake = Fake::default();
        let mut h = Holder::new(fake.clone());
        assert_eq!(log(&fake), ["release"]);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        assert_eq!(h.after_attempt(t0, at(300), &Ok(true)), Change::Took);
        assert!(h.holds());
        // Lifetime: what is left of HOLD (4.7 s), rounded down.
        assert_eq!(log(&fake), ["hold 4", "announce"]);
        // Renewals refresh the lifetime and announce twice more, then only refresh.
        for (i, expected) in [
            vec!["hold 4", "announce"],
            vec!["hold 4", "announce"],
            vec!["hold 4"],
        ]
        .into_iter()
        .enumerate()
        {
            let start = at(2000 * (i as u64 + 1));
            assert_eq!(
                h.after_attempt(start, start + Duration::from_millis(100), &Ok(true)),
                Change::None
            );
            assert_eq!(log(&fake), expected, "renewal {}", i + 1);
        }
    }

    #[test]
    fn a_holder_that_cannot_renew_lets_go_at_hold_before_anyone_may_take_over() {
        let fake = Fake::default();
        let mut h = Holder::new(fake.clone());
        log(&fake);
        let t0 = Instant::now();
        h.after_attempt(t0, t0 + Duration::from_millis(50), &Ok(true));
        log(&fake);
        // Renewals fail (no etcd quorum): nothing changes until the deadline.
        let failed = Err(KubectlError::Output("etcdserver: request timed out".into()));
        assert_eq!(
            h.after_attempt(t0 + ROUND, t0 + Duration::from_secs(4), &failed),
            Change::None
        );
        assert_eq!(h.tick(t0 + HOLD - Duration::from_millis(1)), Change::None);
        assert!(h.holds());
        let change = h.tick(t0 + HOLD);
        assert!(matches!(change, Change::Dropped(_)), "{change:?}");
        assert!(!h.holds());
        assert_eq!(log(&fake), ["release"]);
        // The earliest takeover: the Lease's renewTime (at most 1 s before t0) plus DURATION.
        assert!(HOLD + Duration::from_secs(1) < Duration::from_secs(DURATION as u64));
    }

    #[test]
    fn a_late_renewal_does_not_extend_the_hold_and_another_holder_means_let_go() {
        let fake = Fake::default();
        let mut h = Holder::new(fake.clone());
        let t0 = Instant::now();
        // A renewal that came back after HOLD is no hold at all.
        assert_eq!(h.after_attempt(t0, t0 + HOLD, &Ok(true)), Change::None);
        assert!(!h.holds());
        assert_eq!(
            h.after_attempt(t0, t0 + Duration::from_millis(4500), &Ok(true)),
            Change::None,
            "0.5 s left rounds down to no lifetime: not taken"
        );
        assert!(!h.holds());
        log(&fake);
        assert_eq!(
            h.after_attempt(t0, t0 + Duration::from_millis(10), &Ok(true)),
            Change::Took
        );
        let lost = h.after_attempt(t0 + ROUND, t0 + ROUND, &Ok(false));
        assert_eq!(
            lost,
            Change::Dropped("another server holds the Lease".into())
        );
        assert_eq!(log(&fake).last().map(String::as_str), Some("release"));
    }

    #[test]
    fn an_address_that_cannot_be_added_is_not_held() {
        let fake = Fake {
            fail_hold: true,
            ..Fake::default()
        };
        let mut h = Holder::new(fake);
        let t0 = Instant::now();
        assert_eq!(h.after_attempt(t0, t0, &Ok(true)), Change::None);
        assert!(!h.holds());
    }
}
