//! Human durations as written in `cluster.toml`: "90s", "15m", "1h30m", "500ms".

use std::time::Duration;

/// Parses a duration made of one or more `<number><unit>` parts (units: ms, s, m, h, d).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the duration is empty".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("expected a number at \"{rest}\""));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("the number {number} is too large"))?;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(format!("the number {number} has no unit")),
            other => return Err(format!("unknown unit \"{other}\"")),
        };
        total = total.saturating_add(part);
        rest = after;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it, choosing the largest exact units.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("90").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn formats_round_trip() {
        for (input, shown) in [
            ("90s", "1m30s"),
            ("15m", "15m"),
            ("500ms", "500ms"),
            ("1d2h", "1d2h"),
        ] {
            assert_eq!(format_duration(parse_duration(input).unwrap()), shown);
        }
    }
}
