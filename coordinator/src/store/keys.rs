//! Key encodings. Every variable-length component is length-prefixed, so the encoding of
//! a prefix (e.g. one campaign) matches exactly that campaign and nothing that merely
//! starts with the same characters; integers are big-endian so byte order is numeric order.

fn push_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// Signed ns → order-preserving unsigned bytes.
fn push_time(out: &mut Vec<u8>, t: i64) {
    out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
}

pub fn str_prefix(s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(s.len() + 2);
    push_str(&mut k, s);
    k
}

/// Primary key: (campaign, round, vantage, dst) — one trace per round per pair.
pub fn trace_key(campaign: &str, round: u32, vantage: &str, dst: &str) -> Vec<u8> {
    let mut k = str_prefix(campaign);
    k.extend_from_slice(&round.to_be_bytes());
    push_str(&mut k, vantage);
    push_str(&mut k, dst);
    k
}

/// (vantage, result_id) → primary key.
pub fn result_key(vantage: &str, result_id: &str) -> Vec<u8> {
    let mut k = str_prefix(vantage);
    push_str(&mut k, result_id);
    k
}

/// Secondary index entry: (component, start, primary key).
pub fn timed_key(component: &str, start_ns: i64, pk: &[u8]) -> Vec<u8> {
    let mut k = str_prefix(component);
    push_time(&mut k, start_ns);
    k.extend_from_slice(pk);
    k
}

/// Time index entry: (start, primary key).
pub fn time_key(start_ns: i64, pk: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + pk.len());
    push_time(&mut k, start_ns);
    k.extend_from_slice(pk);
    k
}

/// Bounds of a time range under an optional component prefix, for sled `range`.
pub fn time_bounds(
    component: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> (Vec<u8>, Vec<u8>) {
    let prefix = component.map(str_prefix).unwrap_or_default();
    let mut lo = prefix.clone();
    push_time(&mut lo, since.unwrap_or(i64::MIN));
    let mut hi = prefix;
    push_time(&mut hi, until.unwrap_or(i64::MAX));
    // Everything at `until` itself, whatever primary key follows, sorts below this.
    hi.push(0xff);
    hi.extend_from_slice(&[0xff; 8]);
    (lo, hi)
}

/// Decodes the primary key at the end of a timed/time index key.
pub fn pk_after_time<'a>(key: &'a [u8], component: Option<&str>) -> Option<&'a [u8]> {
    let skip = component.map(|c| c.len() + 2).unwrap_or(0) + 8;
    key.get(skip..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_prefix_does_not_match_longer_ids() {
        let k = trace_key("c10", 0, "v", "1.1.1.1");
        assert!(k.starts_with(&str_prefix("c10")));
        assert!(!k.starts_with(&str_prefix("c1")));
    }

    #[test]
    fn rounds_and_times_sort_numerically() {
        assert!(trace_key("c", 2, "v", "d") < trace_key("c", 10, "v", "d"));
        assert!(time_key(-5, b"") < time_key(3, b""));
        assert!(time_key(255, b"") < time_key(256, b""));
    }

    #[test]
    fn time_bounds_are_inclusive() {
        let pk = trace_key("c", 0, "v", "d");
        let (lo, hi) = time_bounds(Some("v"), Some(10), Some(20));
        for (t, inside) in [(9, false), (10, true), (20, true), (21, false)] {
            let k = timed_key("v", t, &pk);
            assert_eq!(k >= lo && k <= hi, inside, "t={t}");
            assert_eq!(pk_after_time(&k, Some("v")), Some(pk.as_slice()));
        }
        let (lo, hi) = time_bounds(None, None, Some(20));
        let k = time_key(20, &pk);
        assert!(k >= lo && k <= hi);
        assert_eq!(pk_after_time(&k, None), Some(pk.as_slice()));
    }
}
