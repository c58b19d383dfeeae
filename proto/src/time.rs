//! RFC 3339 timestamps in UTC, both ways, without a time crate: the coordinator prints
//! them (token expiry, reports) and parses them (`--start-at`, `--since`), the lab
//! passes them to the coordinator.

/// How much of the second a formatted timestamp shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `2026-11-23T02:13:20Z`: the second the instant falls in.
    Seconds,
    /// `2026-11-23T02:13:20.500Z`: rounded to the nearest millisecond.
    Millis,
}

/// Unix seconds as an RFC 3339 UTC timestamp (`YYYY-MM-DDTHH:MM:SS[.mmm]Z`).
pub fn format_rfc3339(unix_s: f64, precision: Precision) -> String {
    let mut secs = unix_s.floor() as i64;
    let mut millis = match precision {
        Precision::Seconds => 0,
        Precision::Millis => ((unix_s - secs as f64) * 1000.0).round() as i64,
    };
    // 999.5 ms and up round into the next second.
    if millis >= 1000 {
        secs += 1;
        millis -= 1000;
    }
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let hms = format!("{:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60);
    match precision {
        Precision::Seconds => format!("{y:04}-{m:02}-{d:02}T{hms}Z"),
        Precision::Millis => format!("{y:04}-{m:02}-{d:02}T{hms}.{millis:03}Z"),
    }
}

/// A timestamp [`parse_rfc3339_ns`] does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time {input:?}: expected RFC 3339, e.g. 2026-11-23T01:00:00Z")]
pub struct InvalidRfc3339 {
    pub input: String,
}

/// RFC 3339 timestamp (`2026-11-23T01:00:00Z`, `...T01:00:00.5+02:00`) → Unix ns.
/// Fractions beyond nanoseconds are truncated; a leap second (`:60`) counts as the
/// first second of the next minute.
pub fn parse_rfc3339_ns(s: &str) -> Result<i64, InvalidRfc3339> {
    let bad = || InvalidRfc3339 {
        input: s.to_owned(),
    };
    let b = s.trim().as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, InvalidRfc3339> {
        std::str::from_utf8(&b[r])
            .ok()
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60
    {
        return Err(bad());
    }
    let mut i = 19;
    let mut frac_ns: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let digits = &b[start..i.min(start + 9)];
        let mut v: i64 = 0;
        for c in digits {
            v = v * 10 + i64::from(c - b'0');
        }
        frac_ns = v * 10i64.pow(9 - digits.len() as u32);
    }
    let offset_s: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = i64::from(num(i + 1..i + 3)?);
            let om = i64::from(num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se) - offset_s;
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_ns))
        .ok_or_else(bad)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC calendar date of a Unix time, `YYYY-MM-DD` (proleptic Gregorian).
pub fn date_of(unix_s: f64) -> String {
    let (y, m, d) = civil_from_days((unix_s / 86_400.0).floor() as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants_to_the_second() {
        let f = |s| format_rfc3339(s, Precision::Seconds);
        assert_eq!(f(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(f(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(f(1_798_761_599.0), "2026-12-31T23:59:59Z");
        // The second an instant falls in, before 1970 too.
        assert_eq!(f(1_798_761_599.999), "2026-12-31T23:59:59Z");
        assert_eq!(f(-0.5), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn formats_known_instants_to_the_millisecond() {
        let f = |s| format_rfc3339(s, Precision::Millis);
        assert_eq!(f(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(f(1_795_400_000.5), "2026-11-23T02:13:20.500Z");
        assert_eq!(f(951_782_400.0), "2000-02-29T00:00:00.000Z");
        // Rounding up to a whole second carries into the seconds.
        assert_eq!(f(59.9996), "1970-01-01T00:01:00.000Z");
    }

    #[test]
    fn parses_known_instants() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Ok(0));
        // 2026-11-23T00:00:00Z = 1795392000 (checked with `date -d ... +%s`).
        assert_eq!(
            parse_rfc3339_ns("2026-11-23T00:00:00Z"),
            Ok(1_795_392_000_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2026-11-23T02:00:00.25+02:00"),
            Ok(1_795_392_000_250_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2000-02-29T12:00:00-00:30"),
            Ok(951_827_400_000_000_000)
        );
        for bad in [
            "2026-11-23",
            "2026-11-23T00:00:00",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T00:00:00.Z",
            "2026-11-23T00:00:00+0200",
            "yesterday at noon",
        ] {
            assert!(parse_rfc3339_ns(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_rfc3339_ns("noon").unwrap_err().to_string(),
            "invalid time \"noon\": expected RFC 3339, e.g. 2026-11-23T01:00:00Z"
        );
    }

    #[test]
    fn what_is_formatted_parses_back() {
        for (s, ns) in [
            (0.0, 0),
            (951_782_400.0, 951_782_400_000_000_000),
            (1_795_400_000.5, 1_795_400_000_500_000_000),
            (-1.25, -1_250_000_000),
        ] {
            assert_eq!(
                parse_rfc3339_ns(&format_rfc3339(s, Precision::Millis)),
                Ok(ns)
            );
        }
    }
}
