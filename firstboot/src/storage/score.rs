//! Storage score for the election rank: one byte, higher is better for etcd.
//!
//! Kind decides the tier and the measured speed breaks ties within it:
//!
//! | kind            | slow | fast |
//! |-----------------|------|------|
//! | sd              |  10  |  15  |
//! | emmc            |  20  |  25  |
//! | other (loop...) |  30  |  35  |
//! | usb-flash       |  40  |  45  |
//! | hdd             |  50  |  55  |
//! | usb-ssd, ssd    |  70  |  75  |
//! | nvme            |  80  |  85  |
//!
//! So a node on slow SD ranks below every other node, and any SD below any USB or SSD device;
//! the table leaves gaps so that new kinds can slot in without renumbering the wire value.

use super::class::{DeviceKind, Speed, StorageClass};

/// The election-rank score of a storage class (higher ranks first).
pub fn storage_score(class: StorageClass) -> u8 {
    let tier = match class.kind {
        DeviceKind::Sd => 10,
        DeviceKind::Emmc => 20,
        DeviceKind::Other => 30,
        DeviceKind::UsbFlash => 40,
        DeviceKind::Hdd => 50,
        DeviceKind::UsbSsd | DeviceKind::Ssd => 70,
        DeviceKind::Nvme => 80,
    };
    match class.speed {
        Speed::Slow => tier,
        Speed::Fast => tier + 5,
    }
}

/// The score at or below which a node is "slow SD" and prefers the agent role.
pub const SLOW_SD_SCORE: u8 = 10;

/// True when a node with `own` score should prefer the agent role, given the peers' scores:
/// it is on slow SD and some peer is faster.
pub fn prefers_agent(own: u8, peers: impl IntoIterator<Item = u8>) -> bool {
    own <= SLOW_SD_SCORE && peers.into_iter().any(|p| p > own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: DeviceKind, speed: Speed) -> StorageClass {
        StorageClass { kind, speed }
    }

    #[test]
    fn order_follows_etcd_suitability() {
        use DeviceKind::*;
        use Speed::*;
        let order = [
            c(Sd, Slow),
            c(Sd, Fast),
            c(Emmc, Fast),
            c(UsbFlash, Slow),
            c(UsbFlash, Fast),
            c(Hdd, Fast),
            c(UsbSsd, Slow),
            c(Ssd, Fast),
            c(Nvme, Slow),
            c(Nvme, Fast),
        ];
        for w in order.windows(2) {
            assert!(
                storage_score(w[0]) < storage_score(w[1]),
                "{} vs {}",
                w[0],
                w[1]
            );
        }
        assert_eq!(storage_score(c(UsbSsd, Fast)), storage_score(c(Ssd, Fast)));
    }

    #[test]
    fn slow_sd_prefers_agent_only_when_a_faster_peer_exists() {
        let slow_sd = storage_score(c(DeviceKind::Sd, Speed::Slow));
        let nvme = storage_score(c(DeviceKind::Nvme, Speed::Fast));
        assert!(prefers_agent(slow_sd, [slow_sd, nvme]));
        assert!(!prefers_agent(slow_sd, [slow_sd, slow_sd]));
        assert!(!prefers_agent(nvme, [slow_sd]));
    }
}
