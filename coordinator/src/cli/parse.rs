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
