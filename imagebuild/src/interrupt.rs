//! Ctrl-C handling: SIGINT/SIGTERM set a flag that long steps check, so cleanup always runs.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Install the SIGINT/SIGTERM handlers (idempotent). Without this, signals kill the process as usual.
pub fn install() -> Result<()> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag))?;
    }
    Ok(())
}

/// True once an interrupt was received.
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// Fail with "interrupted" when an interrupt was received; called between and inside long steps.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted: the build was stopped by a signal; nothing was written to the output path");
    }
    Ok(())
}
