//! Parsing of command-line values, as pure functions so bad input is caught (and
//! explained in one line) before anything is sent.

/// "10s", "5m", "2h", "1d" or a bare number of seconds → seconds (≥ 1).
pub fn duration_s(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 1h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration {s:?}: unit must be s, m, h or d")),
    };
    let total = n.saturating_mul(mult);
    if total == 0 {
        return Err(format!("invalid duration {s:?}: must be at least 1s"));
    }
    u32::try_from(total).map_err(|_| format!("duration {s:?} is too long"))
}

/// "LAT,LON" in degrees.
pub fn loc(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("invalid location {s:?}: expected LAT,LON in degrees, e.g. 45.4,-75.7");
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    let lat: f64 = a.trim().parse().map_err(|_| bad())?;
    let lon: f64 = b.trim().parse().map_err(|_| bad())?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(bad());
    }
    Ok((lat, lon))
}

/// "812" or "AS812".
pub fn asn(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("AS")
        .or_else(|| t.strip_prefix("as"))
        .unwrap_or(t);
    t.parse()
        .map_err(|_| format!("invalid AS number {s:?}: expected e.g. 812 or AS812"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 timestamp ("2026-11-23T01:00:00Z", "...T01:00:00.5+02:00") → unix ns.
pub fn rfc3339_ns(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid time {s:?}: expected RFC 3339, e.g. 2026-11-23T01:00:00Z");
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
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
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
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d == 0
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || se > 60
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

/// Expands `@FILE` arguments into the file's lines (blank lines and `#` comments
/// skipped); other arguments pass through. Commas also separate values.
pub fn expand_at_files(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in args {
        if let Some(path) = a.strip_prefix('@') {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read targets file {path}: {e}"))?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if !line.is_empty() {
                    out.push(line.to_string());
                }
            }
        } else {
            out.extend(
                a.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_s("10s"), Ok(10));
        assert_eq!(duration_s("10"), Ok(10));
        assert_eq!(duration_s("5m"), Ok(300));
        assert_eq!(duration_s("2h"), Ok(7200));
        assert_eq!(duration_s("1d"), Ok(86_400));
        for bad in ["", "s", "0s", "10x", "-5s", "1.5m", "99999999999d"] {
            assert!(duration_s(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_and_asns() {
        assert_eq!(loc("45.4,-75.7"), Ok((45.4, -75.7)));
        assert_eq!(loc(" 0 , 0 "), Ok((0.0, 0.0)));
        assert!(loc("91,0").is_err());
        assert!(loc("45.4").is_err());
        assert!(loc("a,b").is_err());
        assert_eq!(asn("AS4134"), Ok(4134));
        assert_eq!(asn("812"), Ok(812));
        assert!(asn("ASX").is_err());
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:00Z"), Ok(0));
        // 2026-11-23T00:00:00Z = 1795392000 (checked with `date -d ... +%s`).
        assert_eq!(
            rfc3339_ns("2026-11-23T00:00:00Z"),
            Ok(1_795_392_000_000_000_000)
        );
        assert_eq!(
            rfc3339_ns("2026-11-23T02:00:00.25+02:00"),
            Ok(1_795_392_000_250_000_000)
        );
        assert_eq!(
            rfc3339_ns("2000-02-29T12:00:00-00:30"),
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
            assert!(rfc3339_ns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn at_files_expand() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.txt");
        std::fs::write(&f, "# targets\n192.0.2.1\n\n198.51.100.0/30 # lab\n").unwrap();
        let got = expand_at_files(&[
            "203.0.113.9,203.0.113.10".into(),
            format!("@{}", f.display()),
        ])
        .unwrap();
        assert_eq!(
            got,
            [
                "203.0.113.9",
                "203.0.113.10",
                "192.0.2.1",
                "198.51.100.0/30"
            ]
        );
        assert!(expand_at_files(&["@/nonexistent/x".into()]).is_err());
    }
}
