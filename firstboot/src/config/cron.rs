//! Validation of etcd snapshot schedules: the 5-field cron syntax K3s accepts (robfig/cron).

/// One cron field: its name and the inclusive range of values, with optional names (JAN, MON).
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    },
    // 7 is Sunday too, as in robfig/cron.
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    },
];

const DESCRIPTORS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Checks a schedule such as `"0 */6 * * *"`, `"@daily"` or `"@every 6h"`; the error says which
/// field is wrong and why.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    let expr = expr.trim();
    if let Some(every) = expr.strip_prefix("@every ") {
        return super::duration::parse_duration(every)
            .map(|_| ())
            .map_err(|e| format!("@every needs a duration like \"6h\": {e}"));
    }
    if expr.starts_with('@') {
        return if DESCRIPTORS.contains(&expr) {
            Ok(())
        } else {
            Err(format!(
                "unknown descriptor {expr}; use one of {}",
                DESCRIPTORS.join(", ")
            ))
        };
    }
    let parts: Vec<&str> = expr.split_whitespace().collect();
    if parts.len() != FIELDS.len() {
        return Err(format!(
            "a schedule has 5 fields (minute hour day-of-month month day-of-week), this one has {}",
            parts.len()
        ));
    }
    for (part, field) in parts.iter().zip(FIELDS.iter()) {
        for item in part.split(',') {
            check_item(item, field).map_err(|e| format!("{} field \"{part}\": {e}", field.name))?;
        }
    }
    Ok(())
}

fn check_item(item: &str, field: &Field) -> Result<(), String> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (item, None),
    };
    if let Some(step) = step {
        let n: u32 = step
            .parse()
            .map_err(|_| format!("step \"{step}\" is not a number"))?;
        if n == 0 || n > field.max {
            return Err(format!("step {n} must be between 1 and {}", field.max));
        }
    }
    if range == "*" || range == "?" {
        return Ok(());
    }
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (value(a, field)?, value(b, field)?),
        None => {
            let v = value(range, field)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("range {lo}-{hi} runs backwards"));
    }
    Ok(())
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        // Month names start at 1, weekday names at 0.
        return Ok(i as u32 + field.min);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number"))?;
    if v < field.min || v > field.max {
        return Err(format!("{v} is outside {}-{}", field.min, field.max));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_k3s_style_schedules() {
        for ok in [
            "0 */12 * * *",
            "0 */6 * * *",
            "*/15 2-4 1,15 JAN-MAR mon",
            "@daily",
            "@every 6h",
            "0 0 * * 7",
        ] {
            assert_eq!(validate_cron(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn explains_bad_schedules() {
        assert!(validate_cron("0 */6 * *").unwrap_err().contains("5 fields"));
        assert!(validate_cron("61 * * * *").unwrap_err().contains("minute"));
        assert!(validate_cron("0 24 * * *").unwrap_err().contains("hour"));
        assert!(validate_cron("0 */0 * * *").unwrap_err().contains("step"));
        assert!(validate_cron("0 5-2 * * *")
            .unwrap_err()
            .contains("backwards"));
        assert!(validate_cron("@sometimes")
            .unwrap_err()
            .contains("descriptor"));
        assert!(validate_cron("0 0 * FOO *").unwrap_err().contains("month"));
    }
}
