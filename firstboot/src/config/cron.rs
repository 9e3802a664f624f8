//! Validation of `[snapshots] schedule` exactly as K3s's cron library parses it.
//!
//! K3s (v1.31.10) schedules etcd snapshots with `e.cron.AddJob(EtcdSnapshotCron, ...)` and drops
//! the error (pkg/etcd/snapshot.go:899) on a cron made by `cron.New(cron.WithLogger(...))`
//! (pkg/etcd/etcd.go:178), i.e. robfig/cron v3.0.1's standard parser. A schedule that parser
//! refuses, or one that parses but can never fire, leaves the cluster without scheduled snapshots
//! and no error anywhere; so every rule below follows robfig/cron v3.0.1 (parser.go, spec.go,
//! constantdelay.go) and Go's `time.ParseDuration`, and we refuse what it would drop.

use std::path::Path;

/// Why a schedule is refused, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    /// What K3s would do with it.
    pub problem: String,
    /// A schedule or change that works.
    pub fix: String,
}

fn err(problem: impl Into<String>, fix: impl Into<String>) -> CronError {
    CronError {
        problem: problem.into(),
        fix: fix.into(),
    }
}

const GENERIC_FIX: &str =
    "write e.g. schedule = \"0 */6 * * *\" (minute hour day-of-month month day-of-week)";

/// Bit 63 marks a field written as `*` or `?` (spec.go `starBit`); it decides how day of month
/// and day of week combine.
const STAR_BIT: u64 = 1 << 63;

/// One field of the standard spec: spec.go `bounds`.
struct Bounds {
    name: &'static str,
    min: u64,
    max: u64,
    /// Lower-case names and their values (spec.go `months`, `dow`).
    names: &'static [(&'static str, u64)],
}

const MINUTES: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
// 0-6 only: robfig/cron v3 has no 7 for Sunday (spec.go `dow`).
const DOW: Bounds = Bounds {
    name: "day of week",
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// The standard parser's fields, in order (parser.go `standardParser`: no seconds).
const FIELDS: [&Bounds; 5] = [&MINUTES, &HOURS, &DOM, &MONTHS, &DOW];

/// parser.go `parseDescriptor`.
const DESCRIPTORS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Checks a schedule such as `"0 */6 * * *"`, `"@daily"` or `"@every 6h"`, with time zones looked
/// up in `/usr/share/zoneinfo` as K3s (Go's `time.LoadLocation`) does on the Pi.
pub fn validate_cron(spec: &str) -> Result<(), CronError> {
    validate_cron_in(spec, Path::new("/usr/share/zoneinfo"))
}

/// [`validate_cron`] with time zones looked up in `zoneinfo`.
pub fn validate_cron_in(spec: &str, zoneinfo: &Path) -> Result<(), CronError> {
    let schedule = parse(spec, zoneinfo).map_err(|e| CronError {
        problem: format!(
            "K3s's cron library refuses it ({}), and K3s ignores that error: no scheduled snapshots would be taken",
            e.problem
        ),
        fix: e.fix,
    })?;
    match schedule {
        // constantdelay.go `Every`: anything under a second runs every second.
        Schedule::Every(nanos) if nanos < 1_000_000_000 => Err(err(
            format!("\"{spec}\" is under one second, so K3s would take a snapshot every second"),
            "write a longer interval, e.g. \"@every 6h\"",
        )),
        Schedule::Spec(bits) => fires(&bits),
        Schedule::Every(_) | Schedule::Descriptor => Ok(()),
    }
}

/// The longest time between two runs of a valid schedule, in seconds (`None` for a schedule
/// [`validate_cron`] refuses): a descriptor's period (a month counts 31 days, a year 366),
/// `@every`'s duration, and for five fields the longest gap between consecutive fire times over
/// eight years of days (leap days included), time zones ignored. `firstboot status` warns when
/// the newest snapshot is older than two of these.
pub fn longest_gap_secs(spec: &str) -> Option<u64> {
    validate_cron(spec).ok()?;
    match parse(spec, Path::new("/usr/share/zoneinfo")).ok()? {
        Schedule::Every(nanos) => Some((nanos / 1_000_000_000).max(1) as u64),
        Schedule::Descriptor => {
            let word = spec.split_whitespace().find(|w| w.starts_with('@'))?;
            Some(match word {
                "@yearly" | "@annually" => 366 * 86_400,
                "@monthly" => 31 * 86_400,
                "@weekly" => 7 * 86_400,
                "@daily" | "@midnight" => 86_400,
                _ => 3_600,
            })
        }
        Schedule::Spec(bits) => spec_gap(&bits),
    }
}

/// The longest gap between fire times of five-field `bits`, over eight years from a Monday
/// 1 January (2029), in seconds.
fn spec_gap(bits: &[u64; 5]) -> Option<u64> {
    let [minute, hour, dom, month, dow] = *bits;
    let and_mode = dom & STAR_BIT != 0 || dow & STAR_BIT != 0;
    let times: Vec<u64> = (0..60).filter(|m| minute & (1 << m) != 0).collect();
    let hours: Vec<u64> = (0..24).filter(|h| hour & (1 << h) != 0).collect();
    let (mut last, mut gap) = (None::<u64>, 0u64);
    let mut day_index = 0u64;
    for year in 2029u64..2037 {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        for m in 1..=12u64 {
            let days = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            for d in 1..=days {
                // 2029-01-01 is a Monday (weekday 1, Sunday 0).
                let weekday = (day_index + 1) % 7;
                let day_ok = if and_mode {
                    dom & (1 << d) != 0 && dow & (1 << weekday) != 0
                } else {
                    dom & (1 << d) != 0 || dow & (1 << weekday) != 0
                };
                if month & (1 << m) != 0 && day_ok {
                    for h in &hours {
                        for mi in &times {
                            let at = day_index * 86_400 + h * 3_600 + mi * 60;
                            if let Some(prev) = last {
                                gap = gap.max(at - prev);
                            }
                            last = Some(at);
                        }
                    }
                }
                day_index += 1;
            }
        }
    }
    last.map(|_| gap.max(60))
}

/// What robfig/cron made of a schedule.
enum Schedule {
    /// `@yearly` ... `@hourly`.
    Descriptor,
    /// `@every <duration>`, in nanoseconds.
    Every(i64),
    /// The five fields as spec.go bit sets.
    Spec([u64; 5]),
}

/// parser.go `Parse`, step by step; the spec is not trimmed (only after a time zone prefix).
fn parse(spec: &str, zoneinfo: &Path) -> Result<Schedule, CronError> {
    if spec.is_empty() {
        return Err(err("the schedule is empty", GENERIC_FIX));
    }
    let mut spec = spec;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        // `spec[eq+1 : strings.Index(spec, " ")]`: without a space Go slices to -1 and panics.
        let Some(space) = spec.find(' ') else {
            return Err(err(
                format!("\"{spec}\" has a time zone but no schedule after it; the library even crashes on this"),
                "write the time zone, a space, then the schedule, e.g. \"CRON_TZ=UTC 0 */6 * * *\"",
            ));
        };
        let eq = spec.find('=').unwrap_or(0); // present: the prefix ends in '='
        let zone = &spec[eq + 1..space];
        check_zone(zone, zoneinfo)?;
        spec = spec[space..].trim();
    }
    if spec.starts_with('@') {
        return descriptor(spec);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        let fix = if fields.len() == 6 {
            "K3s's cron has no seconds or year field: write the 5 fields minute hour day-of-month month day-of-week, e.g. \"0 */6 * * *\"".to_string()
        } else if fields.len() == 1 && fields[0].starts_with('@') {
            format!("write \"{}\" without spaces around it", fields[0])
        } else {
            GENERIC_FIX.to_string()
        };
        return Err(err(
            format!(
                "it expects exactly 5 fields (minute hour day-of-month month day-of-week), this schedule has {}",
                fields.len()
            ),
            fix,
        ));
    }
    let mut bits = [0u64; 5];
    for (i, (text, bounds)) in fields.iter().zip(FIELDS).enumerate() {
        bits[i] = field_bits(text, bounds)?;
    }
    Ok(Schedule::Spec(bits))
}

/// Go `time.LoadLocation` on Linux: "", "UTC" and "Local" are built in; other names are files
/// under the zoneinfo directory, and names with ".." or a leading slash are refused.
fn check_zone(zone: &str, zoneinfo: &Path) -> Result<(), CronError> {
    if zone.is_empty() || zone == "UTC" || zone == "Local" {
        return Ok(());
    }
    let fix = "use a time zone name such as \"Europe/Berlin\" or \"UTC\", or drop the prefix (K3s then uses the Pi's time zone, [os] timezone in image.toml)";
    if zone.contains("..") || zone.starts_with('/') || zone.starts_with('\\') {
        return Err(err(format!("\"{zone}\" is not a time zone name"), fix));
    }
    let file = zoneinfo.join(zone);
    let is_tzif = std::fs::read(&file)
        .map(|b| b.starts_with(b"TZif"))
        .unwrap_or(false);
    if !is_tzif {
        return Err(err(
            format!("unknown time zone \"{zone}\" (no {})", file.display()),
            fix,
        ));
    }
    Ok(())
}

/// parser.go `parseDescriptor`.
fn descriptor(spec: &str) -> Result<Schedule, CronError> {
    if DESCRIPTORS.contains(&spec) {
        return Ok(Schedule::Descriptor);
    }
    if let Some(text) = spec.strip_prefix("@every ") {
        let nanos = go_parse_duration(text).map_err(|problem| err(problem, every_fix(text)))?;
        return Ok(Schedule::Every(nanos));
    }
    let trimmed = spec.trim();
    let fix =
        if trimmed != spec && (DESCRIPTORS.contains(&trimmed) || trimmed.starts_with("@every ")) {
            format!("write \"{trimmed}\" without surrounding spaces")
        } else {
            format!(
                "use one of {} or \"@every <duration>\" such as \"@every 6h\"",
                DESCRIPTORS.join(", ")
            )
        };
    Err(err(format!("unknown descriptor \"{spec}\""), fix))
}

/// A fix for an `@every` duration Go cannot parse; days and weeks are rewritten in hours.
fn every_fix(text: &str) -> String {
    let digits = text.trim_end_matches(['d', 'w']);
    let per = if text.ends_with('d') { 24 } else { 168 };
    match digits.parse::<u64>() {
        Ok(n) if digits.len() + 1 == text.len() && n > 0 => {
            format!("Go durations have no days or weeks: write \"@every {}h\"", n * per)
        }
        _ => "write a Go duration with units ns, us, ms, s, m or h, e.g. \"@every 6h\" or \"@every 1h30m\"".to_string(),
    }
}

/// parser.go `getField`: a comma-separated list of ranges; empty items are skipped
/// (`strings.FieldsFunc`), so "," is a field that matches nothing.
fn field_bits(text: &str, b: &Bounds) -> Result<u64, CronError> {
    let mut bits = 0;
    for item in text.split(',').filter(|s| !s.is_empty()) {
        bits |= range_bits(item, b).map_err(|problem| {
            let fix = if b.name == DOW.name && problem.contains("above maximum (6)") {
                "Sunday is 0 (or SUN): K3s's cron counts the day of week 0-6, e.g. \"0 0 * * 0\""
                    .to_string()
            } else {
                format!(
                    "the {} field takes {}-{}{}, ranges a-b, steps */n or a-b/n, and lists a,b",
                    b.name,
                    b.min,
                    b.max,
                    if b.names.is_empty() {
                        ""
                    } else if b.name == MONTHS.name {
                        " or JAN-DEC"
                    } else {
                        " or SUN-SAT"
                    }
                )
            };
            err(format!("{} field \"{text}\": {problem}", b.name), fix)
        })?;
    }
    Ok(bits)
}

/// parser.go `getRange`: `number | number "-" number [ "/" number ]`, `*` or `?`.
fn range_bits(expr: &str, b: &Bounds) -> Result<u64, String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut extra) = if low_and_high[0] == "*" || low_and_high[0] == "?" {
        // Whatever follows a '-' here is ignored, as in getRange.
        (b.min, b.max, STAR_BIT)
    } else {
        let start = int_or_name(low_and_high[0], b)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => int_or_name(low_and_high[1], b)?,
            _ => return Err(format!("too many hyphens in \"{expr}\"")),
        };
        (start, end, 0)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = go_atoi_unsigned(range_and_step[1])?;
            // "N/step" means "N-max/step".
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(format!("too many slashes in \"{expr}\"")),
    };
    if start < b.min {
        return Err(format!("{start} is below minimum ({})", b.min));
    }
    if end > b.max {
        return Err(format!("{end} is above maximum ({})", b.max));
    }
    if start > end {
        return Err(format!("range {start}-{end} runs backwards"));
    }
    if step == 0 {
        return Err(format!("step 0 in \"{expr}\" must be a positive number"));
    }
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v = v.saturating_add(step);
    }
    Ok(bits | extra)
}

/// parser.go `parseIntOrName`: names are case-insensitive.
fn int_or_name(text: &str, b: &Bounds) -> Result<u64, String> {
    let lower = text.to_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    go_atoi_unsigned(text)
}

/// parser.go `mustParseInt`: Go `strconv.Atoi` (optional sign, decimal, 64-bit), no negatives.
fn go_atoi_unsigned(text: &str) -> Result<u64, String> {
    // Rust's i64 parser takes the same syntax as Atoi: [+-]?[0-9]+, overflow refused.
    let n: i64 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number"))?;
    u64::try_from(n).map_err(|_| format!("negative number {n} in \"{text}\""))
}

/// Whether the schedule ever fires: spec.go `Next` gives up after five years, and a schedule
/// that never matches runs nothing, silently.
fn fires(bits: &[u64; 5]) -> Result<(), CronError> {
    let [minute, hour, dom, month, dow] = *bits;
    for (field, b) in [
        (minute, &MINUTES),
        (hour, &HOURS),
        (month, &MONTHS),
        (dom, &DOM),
        (dow, &DOW),
    ] {
        if field & !STAR_BIT == 0 {
            return Err(err(
                format!(
                    "the {} field lists no value, so K3s would never take a snapshot",
                    b.name
                ),
                GENERIC_FIX,
            ));
        }
    }
    // spec.go `dayMatches`: if either day field was written `*`, both must match; otherwise
    // either may. Every month has every weekday, so only "day of month AND any weekday" can be
    // impossible: days that no chosen month has (Feb 29 exists within five years).
    let and_mode = dom & STAR_BIT != 0 || dow & STAR_BIT != 0;
    if and_mode && dom & STAR_BIT == 0 {
        const DAYS: [u64; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let possible = (1..=12u64)
            .filter(|m| month & (1 << m) != 0)
            .any(|m| (1..=DAYS[m as usize]).any(|d| dom & (1 << d) != 0));
        if !possible {
            return Err(err(
                "no chosen month has the chosen day of month, so K3s would never take a snapshot",
                "pick a day every chosen month has (1-28 always exists), e.g. \"0 0 1 * *\"",
            ));
        }
    }
    Ok(())
}

/// Go `time.ParseDuration` (Go 1.23 time/format.go), to nanoseconds.
fn go_parse_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("Go cannot parse the duration \"{orig}\"");
    let mut s = orig.as_bytes();
    let mut neg = false;
    if let Some(&c) = s.first() {
        if c == b'-' || c == b'+' {
            neg = c == b'-';
            s = &s[1..];
        }
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut d: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // leadingInt
        let before = s.len();
        let mut v: u64 = 0;
        while let Some(&c) = s.first() {
            if !c.is_ascii_digit() {
                break;
            }
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(c - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
            s = &s[1..];
        }
        let pre = before != s.len();
        // leadingFraction
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            let mut overflow = false;
            while let Some(&c) = s.first() {
                if !c.is_ascii_digit() {
                    break;
                }
                s = &s[1..];
                if overflow {
                    continue;
                }
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(c - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = before != s.len();
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("the duration \"{orig}\" has no unit"));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit_ns: u64 = match unit {
            b"ns" => 1,
            b"us" => 1_000,
            // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU, both followed by 's'
            [0xc2, 0xb5, b's'] | [0xce, 0xbc, b's'] => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit \"{}\" in the duration \"{orig}\" (Go knows ns, us, ms, s, m, h)",
                    String::from_utf8_lossy(other)
                ))
            }
        };
        if v > LIMIT / unit_ns {
            return Err(invalid());
        }
        v *= unit_ns;
        if f > 0 {
            v += (f as f64 * (unit_ns as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        d += v;
        if d > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // d <= 2^63, so -d fits.
        return Ok((d as i128).wrapping_neg() as i64);
    }
    i64::try_from(d).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zoneinfo directory with only Europe/Berlin (a TZif header is all LoadLocation's file
    /// lookup needs to find it; the parse of the rest is Go's business).
    fn zoneinfo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("Europe")).unwrap();
        std::fs::write(dir.path().join("Europe/Berlin"), b"TZif2\0\0").unwrap();
        std::fs::write(dir.path().join("Europe/NotAZone"), b"hello").unwrap();
        dir
    }

    /// Every row is what robfig/cron v3.0.1's standard parser (as K3s v1.31 uses it) does with
    /// the schedule: `true` = K3s schedules snapshots with it.
    const K3S_TABLE: &[(&str, bool)] = &[
        // The audit's two: K3s drops both silently.
        ("0 0 * * 7", false),
        ("@every 1d", false),
        // Defaults and ordinary schedules.
        ("0 */12 * * *", true),
        ("0 */6 * * *", true),
        ("*/15 2-4 1,15 JAN-MAR mon", true),
        ("0 0 * * 0", true),
        ("0 0 * * SUN", true),
        ("0 0 * * sun-sat", true),
        ("0 0 * * mon-fri", true),
        ("0 0 * * 1-5/2", true),
        ("5/15 * * * *", true),
        ("0 0 ? * ?", true),
        ("  0   3 * * *  ", true),
        // Descriptors, exact.
        ("@yearly", true),
        ("@annually", true),
        ("@monthly", true),
        ("@weekly", true),
        ("@daily", true),
        ("@midnight", true),
        ("@hourly", true),
        ("@reboot", false),
        ("@sometimes", false),
        (" @daily", false),
        ("@daily ", false),
        ("@DAILY", false),
        // @every takes Go durations only.
        ("@every 6h", true),
        ("@every 1h30m", true),
        ("@every 1.5h", true),
        ("@every .5h", true),
        ("@every 5.h", true),
        ("@every 90m", true),
        ("@every 2562047h", true),
        ("@every 9999999h", false),
        ("@every 1w", false),
        ("@every 6", false),
        ("@every 6 h", false),
        ("@every 6h ", false),
        ("@every  6h", false),
        ("@every", false),
        ("@every 0", false),
        ("@every -1h", false),
        ("@every 500ms", false),
        // Field counts and bounds.
        ("", false),
        ("0 */6 * *", false),
        ("0 0 * * * *", false),
        ("60 * * * *", false),
        ("0 24 * * *", false),
        ("0 0 0 * *", false),
        ("0 0 32 * *", false),
        ("0 0 * 0 *", false),
        ("0 0 * 13 *", false),
        ("0 0 * * 0-7", false),
        ("0 0 * JANUARY *", false),
        ("0 0 * FOO *", false),
        ("0 0 L * *", false),
        ("0 0 * * 1#2", false),
        // Steps, ranges and lists as robfig parses them.
        ("*/60 * * * *", true),
        ("0 0 1 */13 *", true),
        ("*/0 * * * *", false),
        ("5-1 * * * *", false),
        ("1-2-3 * * * *", false),
        ("1/2/3 * * * *", false),
        ("-5 * * * *", false),
        ("+5 * * * *", true),
        ("*-5 * * * *", true),
        ("1,,2 * * * *", true),
        (", * * * *", false),
        // Parses, but never fires.
        ("0 0 30 2 *", false),
        ("0 0 31 4,6,9,11 *", false),
        ("0 0 30 2 */1", false),
        ("0 0 29 2 *", true),
        ("0 0 30 2 MON", true),
        ("0 0 30 2 */2", true),
        // Time zone prefixes.
        ("TZ=UTC 0 3 * * *", true),
        ("CRON_TZ=Europe/Berlin 0 3 * * *", true),
        ("CRON_TZ=Europe/Berlin @daily", true),
        ("TZ=Local 0 3 * * *", true),
        ("TZ=Mars/Olympus 0 3 * * *", false),
        ("TZ=Europe/NotAZone 0 3 * * *", false),
        ("TZ=../etc/passwd 0 3 * * *", false),
        ("TZ=UTC", false),
    ];

    #[test]
    fn the_longest_gap_of_a_schedule() {
        assert_eq!(longest_gap_secs("0 */12 * * *"), Some(12 * 3600));
        assert_eq!(
            longest_gap_secs("0 9,17 * * *"),
            Some(16 * 3600),
            "17:00 to 09:00"
        );
        assert_eq!(longest_gap_secs("30 2 * * 1"), Some(7 * 86_400));
        assert_eq!(longest_gap_secs("0 0 1 * *"), Some(31 * 86_400));
        assert_eq!(
            longest_gap_secs("0 0 29 2 *"),
            Some(4 * 365 * 86_400 + 86_400)
        );
        assert_eq!(longest_gap_secs("@every 90m"), Some(5400));
        assert_eq!(longest_gap_secs("@daily"), Some(86_400));
        assert_eq!(longest_gap_secs("CRON_TZ=UTC 0 */6 * * *"), Some(6 * 3600));
        assert_eq!(longest_gap_secs("0 0 31 2 *"), None, "never fires");
    }

    #[test]
    fn agrees_with_k3s_cron_on_every_row() {
        let zones = zoneinfo();
        let mut wrong = vec![];
        for (spec, k3s) in K3S_TABLE {
            let ours = validate_cron_in(spec, zones.path());
            if ours.is_ok() != *k3s {
                wrong.push(format!("{spec:?}: K3s accepts={k3s}, we said {ours:?}"));
            }
        }
        assert!(wrong.is_empty(), "disagreements:\n{}", wrong.join("\n"));
    }

    #[test]
    fn fixes_say_what_to_write() {
        let e = validate_cron("0 0 * * 7").unwrap_err();
        assert!(e.problem.contains("day of week"), "{e:?}");
        assert!(e.fix.contains("Sunday is 0"), "{e:?}");
        let e = validate_cron("@every 1d").unwrap_err();
        assert!(e.problem.contains("unknown unit \"d\""), "{e:?}");
        assert!(e.problem.contains("no scheduled snapshots"), "{e:?}");
        assert!(e.fix.contains("@every 24h"), "{e:?}");
        let e = validate_cron("@every 2w").unwrap_err();
        assert!(e.fix.contains("@every 336h"), "{e:?}");
        let e = validate_cron("0 0 30 2 *").unwrap_err();
        assert!(e.problem.contains("never"), "{e:?}");
        let e = validate_cron("0 0 0 * * *").unwrap_err();
        assert!(e.fix.contains("no seconds"), "{e:?}");
        let e = validate_cron("@daily ").unwrap_err();
        assert!(e.fix.contains("without surrounding spaces"), "{e:?}");
        let e = validate_cron("@every 0").unwrap_err();
        assert!(e.problem.contains("every second"), "{e:?}");
        let e = validate_cron("0 5-2 * * *").unwrap_err();
        assert!(
            e.problem.contains("hour") && e.problem.contains("backwards"),
            "{e:?}"
        );
    }

    #[test]
    fn go_durations() {
        for (text, ns) in [
            ("0", 0),
            ("1h", 3_600_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("-1.5h", -5_400_000_000_000),
            ("+90s", 90_000_000_000),
            ("1.000000001s", 1_000_000_001),
            ("100us", 100_000),
            ("100\u{b5}s", 100_000),
            ("100\u{3bc}s", 100_000),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ] {
            assert_eq!(go_parse_duration(text), Ok(ns), "{text}");
        }
        for bad in [
            "",
            "+",
            "-",
            ".",
            ".s",
            "1",
            "1d",
            "1hh",
            "1h 2m",
            "2562047h47m16.854775808s",
            "9223372036854775808ns",
        ] {
            assert!(go_parse_duration(bad).is_err(), "{bad}");
        }
    }
}
