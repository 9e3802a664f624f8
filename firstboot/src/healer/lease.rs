//! Only one server heals at a time: the Lease `kube-system/firstboot-healer` (coordination.k8s.io/v1), taken and renewed by resourceVersion compare-and-swap through `k3s kubectl`.
//!
//! The rules ([`next_holder`]) are client-go's leader election reduced to what the healer needs:
//! a holder renews before `leaseDurationSeconds` runs out; anyone may take a Lease whose renewal
//! is older than that; a lost compare-and-swap means another server acted first, and this round
//! does nothing. The healer's actions are themselves safe to repeat (a deletion of a deleted
//! Node, a release of a released seat are no-ops), so a leader that lost its Lease unknowingly
//! for one round cannot over-grant: seats still go through the seat book's CAS.

use crate::seat_book::{KubectlError, Run};
use serde_json::{json, Value};

/// The Lease's name.
pub const LEASE_NAME: &str = "firstboot-healer";
/// Its namespace.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// The Lease's spec as the healer uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSpec {
    /// holderIdentity: the node id of the healing server.
    pub holder: String,
    /// renewTime, unix seconds.
    pub renewed: i64,
    /// leaseDurationSeconds.
    pub duration: i64,
}

/// The Lease this server should write at `now` to hold it, or `None` when another server
/// holds it (renewed within its duration).
pub fn next_holder(
    current: Option<&LeaseSpec>,
    me: &str,
    now: i64,
    duration: i64,
) -> Option<LeaseSpec> {
    let mine = LeaseSpec {
        holder: me.to_string(),
        renewed: now,
        duration,
    };
    match current {
        None => Some(mine),
        Some(lease) if lease.holder == me => Some(mine),
        Some(lease) if now - lease.renewed >= lease.duration => Some(mine),
        Some(_) => None,
    }
}

/// Whether this server holds the Lease after one attempt at `now` (take or renew by CAS).
/// A lost race is `Ok(false)`.
pub fn acquire(kubectl: &dyn Run, me: &str, now: i64, duration: i64) -> Result<bool, KubectlError> {
    acquire_named(kubectl, LEASE_NAME, me, now, duration)
}

/// [`acquire`] for the Lease `kube-system/NAME` (the same rules hold the fixed registration
/// address, [`crate::api_address`]).
pub fn acquire_named(
    kubectl: &dyn Run,
    name: &str,
    me: &str,
    now: i64,
    duration: i64,
) -> Result<bool, KubectlError> {
    let get = ["get", "lease", name, "-n", LEASE_NAMESPACE, "-o", "json"];
    let (current, version) = match kubectl.json(&get, None) {
        Ok(lease) => (
            parse(&lease),
            lease["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        ),
        Err(KubectlError::NotFound(_)) => (None, None),
        Err(e) => return Err(e),
    };
    let Some(next) = next_holder(current.as_ref(), me, now, duration) else {
        return Ok(false);
    };
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": next.holder,
            "leaseDurationSeconds": next.duration,
            "renewTime": rfc3339_micro(next.renewed),
        },
    });
    let verb = match &version {
        Some(v) => {
            lease["metadata"]["resourceVersion"] = json!(v);
            "replace"
        }
        None => "create",
    };
    let body = lease.to_string();
    match kubectl.json(&[verb, "-f", "-", "-o", "json"], Some(body.as_bytes())) {
        Ok(_) => Ok(true),
        Err(KubectlError::Conflict(_) | KubectlError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The healer's view of a Lease object (a Lease without a holder or renewal is free).
fn parse(lease: &Value) -> Option<LeaseSpec> {
    let spec = &lease["spec"];
    Some(LeaseSpec {
        holder: spec["holderIdentity"].as_str()?.to_string(),
        renewed: parse_rfc3339(spec["renewTime"].as_str()?)?,
        duration: spec["leaseDurationSeconds"].as_i64()?,
    })
}

/// `renewTime` is a MicroTime: `2006-01-02T15:04:05.000000Z`.
pub(crate) fn rfc3339_micro(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Unix seconds of `YYYY-MM-DDTHH:MM:SS[.frac]Z` (what the apiserver prints), else `None`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let time = time.split('.').next()?;
    let mut time = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (time.next()??, time.next()??, time.next()??);
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder: by.into(),
            renewed,
            duration: 30,
        }
    }

    #[test]
    fn a_lease_is_taken_when_free_or_expired_and_renewed_by_its_holder_only() {
        assert_eq!(next_holder(None, "a", 100, 30), Some(held("a", 100)));
        // Held by b, renewed 29 s ago: not ours.
        assert_eq!(next_holder(Some(&held("b", 71)), "a", 100, 30), None);
        // 30 s ago: expired, ours.
        assert_eq!(
            next_holder(Some(&held("b", 70)), "a", 100, 30),
            Some(held("a", 100))
        );
        // Our own: renewed.
        assert_eq!(
            next_holder(Some(&held("a", 99)), "a", 100, 30),
            Some(held("a", 100))
        );
    }

    #[test]
    fn renew_times_round_trip_as_the_apiserver_prints_them() {
        for unix in [0, 951_782_400, 1_700_000_000, 1_796_083_200, 4_102_444_799] {
            let text = rfc3339_micro(unix);
            assert_eq!(parse_rfc3339(&text), Some(unix), "{text}");
        }
        assert_eq!(rfc3339_micro(1_700_000_000), "2023-11-14T22:13:20.000000Z");
        assert_eq!(parse_rfc3339("2026-11-30T15:19:07Z"), Some(1_796_051_947));
        assert_eq!(parse_rfc3339("yesterday"), None);
        let lease = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 30,
            "renewTime": "2023-11-14T22:13:20.123456Z"}});
        assert_eq!(parse(&lease), Some(held("a", 1_700_000_000)));
        assert_eq!(parse(&json!({"spec": {}})), None);
    }
}
