//! The values options take that clap does not parse itself: sizes, LSNs and durations.

use std::time::Duration;

/// Parses a size: `1GiB`, `512MiB`, `64KiB`, `1GB`, or plain bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let (n, unit) = number_and_unit(s, "a size (examples: 1GiB, 512MiB)")?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" | "k" => 1024.0,
        "mb" => 1e6,
        "mib" | "m" => 1024.0 * 1024.0,
        "gb" => 1e9,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        "tib" | "t" => 1024f64.powi(4),
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB, GiB)")),
    };
    Ok((n * mult) as i64)
}

/// Parses an LSN (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Result<crate::event::Lsn, String> {
    crate::event::Lsn::parse(s.trim())
        .map_err(|e| format!("{e} (expected an LSN such as 16/B374D848)"))
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(s, "a duration (examples: 500ms, 10s, 2m)")?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `12.5GiB` → (12.5, "GiB"); `what` names the expected value in the error.
fn number_and_unit<'a>(s: &'a str, what: &str) -> Result<(f64, &'a str), String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = num.parse().map_err(|_| format!("'{s}' is not {what}"))?;
    Ok((n, unit.trim()))
}
