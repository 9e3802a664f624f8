//! What firstboot tells humans: sd_notify lines, the persisted state behind `firstboot status`, and the LED.

pub mod command;
pub mod led;
pub mod notify;
pub mod state;

pub use command::StatusArgs;
pub use led::{LedPattern, RecordingLed, StatusLed};
pub use notify::Notifier;
pub use state::{NodeRole, NodeState, Phase, StorageSummary};
