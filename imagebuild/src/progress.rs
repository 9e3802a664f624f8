//! Progress reporting: a bar on a terminal, a few plain lines otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Read, Write};

/// Progress of one long step measured in bytes.
pub struct Meter {
    label: String,
    total: Option<u64>,
    done: u64,
    next_line: u64,
    bar: Option<ProgressBar>,
}

impl Meter {
    /// Start a meter; `total` is None when the size is not known in advance.
    pub fn new(label: &str, total: Option<u64>) -> Meter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let style = ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() {
            eprintln!("{label}: started");
        }
        Meter {
            label: label.into(),
            total,
            done: 0,
            next_line: 0,
            bar,
        }
    }

    /// Count `n` more bytes.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.set_position(self.done),
            None => {
                if self.done >= self.next_line {
                    let step = match self.total {
                        Some(t) => (t / 4).max(1),
                        None => 256 << 20,
                    };
                    if self.next_line > 0 {
                        match self.total {
                            Some(t) => eprintln!(
                                "{}: {}%",
                                self.label,
                                self.done.saturating_mul(100) / t.max(1)
                            ),
                            None => eprintln!("{}: {} MiB", self.label, self.done >> 20),
                        }
                    }
                    self.next_line = self.done + step;
                }
            }
        }
    }

    /// Finish the meter with a closing line.
    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!("{}: done ({} MiB)", self.label, self.done >> 20);
    }
}

/// A reader that counts what passes through it into a [`Meter`] and honours interrupts.
pub struct MeteredReader<'a, R> {
    inner: R,
    meter: &'a mut Meter,
}

impl<'a, R: Read> MeteredReader<'a, R> {
    /// Wrap `inner`.
    pub fn new(inner: R, meter: &'a mut Meter) -> Self {
        MeteredReader { inner, meter }
    }
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if crate::interrupt::requested() {
            // Not ErrorKind::Interrupted: std::io::copy would silently retry that.
            return Err(std::io::Error::other("interrupted by a signal"));
        }
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

/// Print one status line (to stderr, so stdout stays clean for --json).
pub fn say(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{msg}");
}
