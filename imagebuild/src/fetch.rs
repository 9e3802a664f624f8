//! HTTP(S) downloads into the cache: retries with backoff, resume with Range, progress, sha256.

use crate::progress::{Meter, MeteredReader};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Attempts per download before giving up.
const ATTEMPTS: u32 = 4;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status (e.g. 404): retrying will not help.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
    },
    /// The content does not have the expected sha256.
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual}")]
    Mismatch {
        /// The URL.
        url: String,
        /// What the publisher's checksum says.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
}

/// Download `url` into `dest` (atomically: written to `partial`, renamed when complete and, when
/// `expected` is given, only if its sha256 matches). A `partial` left by an interrupted run is
/// resumed with a Range request. Returns the sha256 of what was stored.
pub fn download(url: &str, expected: Option<&str>, partial: &Path, dest: &Path) -> Result<String> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .timeout(None)
        .build()
        .context("starting the HTTP client")?;
    let mut attempt = 1;
    loop {
        crate::interrupt::check()?;
        match attempt_once(&client, url, partial) {
            Ok(()) => break,
            Err(e)
                if e.downcast_ref::<FetchError>().is_some()
                    || crate::interrupt::requested()
                    || attempt == ATTEMPTS =>
            {
                // An interrupted build leaves nothing behind; a network failure keeps the
                // partial file so the next run resumes it.
                if crate::interrupt::requested() {
                    let _ = std::fs::remove_file(partial);
                }
                return Err(e.context(format!("downloading {url} (attempt {attempt})")));
            }
            Err(e) => {
                let wait = Duration::from_secs(1 << (attempt - 1));
                crate::progress::say(&format!(
                    "download of {url} failed ({e:#}); retrying in {}s",
                    wait.as_secs()
                ));
                std::thread::sleep(wait);
                attempt += 1;
            }
        }
    }
    let actual = crate::io::sha256_file(partial)?;
    if let Some(want) = expected {
        if !want.eq_ignore_ascii_case(&actual) {
            // A corrupt partial must not be resumed next time.
            let _ = std::fs::remove_file(partial);
            return Err(FetchError::Mismatch {
                url: url.into(),
                expected: want.into(),
                actual,
            }
            .into());
        }
    }
    std::fs::rename(partial, dest)
        .with_context(|| format!("storing {} in the cache", dest.display()))?;
    Ok(actual)
}

/// One GET, appending to what `partial` already holds when the server honours Range.
fn attempt_once(client: &reqwest::blocking::Client, url: &str, partial: &Path) -> Result<()> {
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = req.send().with_context(|| format!("connecting to {url}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // The partial file is already complete (or longer than the file: then the hash says so).
        return Ok(());
    }
    if !status.is_success() {
        if status.is_server_error() {
            bail!("{url} answered {status}");
        }
        return Err(FetchError::Status {
            url: url.into(),
            status,
        }
        .into());
    }
    let resume = status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0;
    let file = if resume {
        OpenOptions::new().append(true).open(partial)
    } else {
        File::create(partial)
    }
    .with_context(|| format!("opening {}", partial.display()))?;
    let start = if resume { have } else { 0 };
    let total = resp.content_length().map(|n| n + start);
    let name = url.rsplit('/').next().unwrap_or(url);
    let mut meter = Meter::new(&format!("downloading {name}"), total);
    meter.add(start);
    let mut reader = MeteredReader::new(resp, &mut meter);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    std::io::copy(&mut reader, &mut w).with_context(|| format!("downloading {url}"))?;
    w.flush().context("writing the download")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().context("flushing the download")?;
    meter.finish();
    if let Some(t) = total {
        let got = std::fs::metadata(partial)?.len();
        if got != t {
            bail!("{url} ended after {got} of {t} bytes");
        }
    }
    Ok(())
}
