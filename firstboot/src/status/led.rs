//! The status LED: one blink pattern per lifecycle stage, behind a small trait (GPIO via rppal on the Pi, a recorder in tests).

use super::state::Phase;
use std::time::Duration;

/// What the LED says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedPattern {
    /// Looking for peers: slow blink.
    Discovering,
    /// Election running: fast blink.
    Electing,
    /// Joining / starting K3s: double blink (heartbeat).
    Joining,
    /// K3s up: steady on.
    Ready,
    /// A human must look: three quick flashes, then dark.
    Error,
}

impl LedPattern {
    /// One cycle of the pattern as (LED on?, how long) steps, repeated forever.
    pub fn steps(self) -> &'static [(bool, Duration)] {
        match self {
            LedPattern::Discovering => DISCOVERING,
            LedPattern::Electing => ELECTING,
            LedPattern::Joining => JOINING,
            LedPattern::Ready => READY,
            LedPattern::Error => ERROR,
        }
    }

    /// The pattern for a lifecycle phase.
    pub fn for_phase(phase: Phase) -> Self {
        match phase {
            Phase::Intake
            | Phase::Identity
            | Phase::Clock
            | Phase::Storage
            | Phase::Discovering => LedPattern::Discovering,
            Phase::Electing => LedPattern::Electing,
            Phase::Joining | Phase::StartingK3s => LedPattern::Joining,
            Phase::Ready => LedPattern::Ready,
            Phase::Blocked | Phase::Failed => LedPattern::Error,
        }
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const DISCOVERING: &[(bool, Duration)] = &[(true, ms(1000)), (false, ms(1000))];
const ELECTING: &[(bool, Duration)] = &[(true, ms(150)), (false, ms(150))];
const JOINING: &[(bool, Duration)] = &[
    (true, ms(150)),
    (false, ms(150)),
    (true, ms(150)),
    (false, ms(1050)),
];
const READY: &[(bool, Duration)] = &[(true, ms(1000))];
const ERROR: &[(bool, Duration)] = &[
    (true, ms(100)),
    (false, ms(100)),
    (true, ms(100)),
    (false, ms(100)),
    (true, ms(100)),
    (false, ms(1500)),
];

/// Why the LED could not be driven (never fatal for the node: callers log it).
#[derive(Debug, thiserror::Error)]
#[error("status LED: {0}")]
pub struct LedError(pub String);

/// Something that can show a [`LedPattern`].
pub trait StatusLed {
    /// Switches to `pattern` (returns at once; blinking happens in the background).
    fn show(&mut self, pattern: LedPattern) -> Result<(), LedError>;
}

/// No LED configured (`led_gpio = 0`).
#[derive(Debug, Default)]
pub struct NoLed;

impl StatusLed for NoLed {
    fn show(&mut self, _pattern: LedPattern) -> Result<(), LedError> {
        Ok(())
    }
}

/// Records every pattern shown, for tests.
#[derive(Debug, Default, Clone)]
pub struct RecordingLed {
    /// Patterns in the order they were shown.
    pub shown: Vec<LedPattern>,
}

impl StatusLed for RecordingLed {
    fn show(&mut self, pattern: LedPattern) -> Result<(), LedError> {
        self.shown.push(pattern);
        Ok(())
    }
}

#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
pub use gpio::GpioLed;

/// The LED `[status] led_gpio` asks for; on failure (no GPIO, pin busy, not a Pi) a warning is
/// logged and the node carries on without one.
pub fn open_led(led_gpio: Option<u8>) -> Box<dyn StatusLed + Send> {
    let Some(pin) = led_gpio else {
        return Box::new(NoLed);
    };
    #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
    match GpioLed::open(pin) {
        Ok(led) => return Box::new(led),
        Err(e) => tracing::warn!(error = %e, pin, "no status LED"),
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
    tracing::warn!(
        pin,
        "no status LED: GPIO is only driven on Raspberry Pi (ARM) builds"
    );
    Box::new(NoLed)
}

#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
mod gpio {
    //! The LED on a BCM GPIO pin, blinked by a small thread.
    use super::{LedError, LedPattern, StatusLed};
    use std::sync::mpsc::{self, RecvTimeoutError, Sender};

    /// An LED wired to a BCM GPIO pin (through a resistor, active high).
    pub struct GpioLed {
        tx: Sender<LedPattern>,
    }

    impl GpioLed {
        /// Claims BCM pin `pin` as an output and starts dark.
        pub fn open(pin: u8) -> Result<Self, LedError> {
            let gpio = rppal::gpio::Gpio::new().map_err(|e| LedError(e.to_string()))?;
            let mut out = gpio
                .get(pin)
                .map_err(|e| LedError(format!("GPIO {pin}: {e}")))?
                .into_output_low();
            let (tx, rx) = mpsc::channel::<LedPattern>();
            std::thread::Builder::new()
                .name("status-led".into())
                .spawn(move || {
                    let Ok(mut pattern) = rx.recv() else { return };
                    'outer: loop {
                        for &(on, dur) in pattern.steps() {
                            if on {
                                out.set_high();
                            } else {
                                out.set_low();
                            }
                            match rx.recv_timeout(dur) {
                                Ok(next) => {
                                    pattern = next;
                                    continue 'outer;
                                }
                                Err(RecvTimeoutError::Timeout) => {}
                                Err(RecvTimeoutError::Disconnected) => {
                                    out.set_low();
                                    return;
                                }
                            }
                        }
                    }
                })
                .map_err(|e| LedError(e.to_string()))?;
            Ok(GpioLed { tx })
        }
    }

    impl StatusLed for GpioLed {
        fn show(&mut self, pattern: LedPattern) -> Result<(), LedError> {
            self.tx
                .send(pattern)
                .map_err(|_| LedError("the blink thread has stopped".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_is_distinct_and_lit_at_some_point() {
        let all = [
            LedPattern::Discovering,
            LedPattern::Electing,
            LedPattern::Joining,
            LedPattern::Ready,
            LedPattern::Error,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.steps().iter().any(|(on, _)| *on));
            for b in &all[i + 1..] {
                assert_ne!(a.steps(), b.steps());
            }
        }
    }

    #[test]
    fn recorder_keeps_the_sequence() {
        let mut led = RecordingLed::default();
        for p in [
            Phase::Discovering,
            Phase::Electing,
            Phase::Joining,
            Phase::Ready,
        ] {
            led.show(LedPattern::for_phase(p)).unwrap();
        }
        assert_eq!(
            led.shown,
            [
                LedPattern::Discovering,
                LedPattern::Electing,
                LedPattern::Joining,
                LedPattern::Ready
            ]
        );
        assert_eq!(LedPattern::for_phase(Phase::Blocked), LedPattern::Error);
    }
}
