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

/// Alias results: (campaign, round, vantage) — one run per round per agent, so a
/// re-upload lands on the same key.
pub fn alias_key(campaign: &str, round: u32, vantage: &str) -> Vec<u8> {
    let mut k = str_prefix(campaign);
    k.extend_from_slice(&round.to_be_bytes());
    push_str(&mut k, vantage);
    k
}

/// Mesh samples: (campaign, round, src, dst) — one per direction per round.
pub fn mesh_key(campaign: &str, round: u32, src: &str, dst: &str) -> Vec<u8> {
    trace_key(campaign, round, src, dst)
}

/// Multipath traces: (campaign, round, vantage, dst) — one per target per MDA round.
pub fn mda_key(campaign: &str, round: u32, vantage: &str, dst: &str) -> Vec<u8> {
    trace_key(campaign, round, vantage, dst)
}

/// (vantage, result_id) → primary key.
pub fn result_key(vantage: &str, result_id: &str) -> Vec<u8> {
    let mut k = str_prefix(vantage);
    push_str(&mut k, result_id);
    k
}

/// Width of one time bucket of the secondary indexes, ns.
pub const BUCKET_NS: i64 = 10_000_000_000;

/// The bucket a start time falls in.
pub fn bucket(start_ns: i64) -> i64 {
    start_ns.div_euclid(BUCKET_NS)
}

/// Secondary index entry ("posting"): (component, bucket, group, chunk) → the
/// (start, primary key) pairs of traces of that component and bucket stored by one ingest
/// group. `component` is the vantage or destination; the time index has none.
pub fn posting_key(component: Option<&str>, bucket: i64, group: u64, chunk: u32) -> Vec<u8> {
    let mut k = component.map(str_prefix).unwrap_or_default();
    push_time(&mut k, bucket);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// Length of the (component, bucket) part of a posting key: keys that agree on it hold
/// the same bucket.
pub fn posting_bucket_len(component: Option<&str>) -> usize {
    component.map_or(0, |c| 2 + c.len().min(u16::MAX as usize)) + 8
}

/// Bounds of the postings whose bucket may hold starts in [since, until], for sled `range`.
pub fn posting_bounds(
    component: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> (Vec<u8>, Vec<u8>) {
    let prefix = component.map(str_prefix).unwrap_or_default();
    let mut lo = prefix.clone();
    push_time(&mut lo, bucket(since.unwrap_or(i64::MIN)));
    let mut hi = prefix;
    push_time(&mut hi, bucket(until.unwrap_or(i64::MAX)));
    hi.extend_from_slice(&[0xff; 12]);
    (lo, hi)
}

/// Bytes before the primary key in a posting pair: start (i64) and key length (u16),
/// big-endian.
const PAIR_HEADER: usize = 10;

/// Appends one (start, primary key) pair to a posting value.
pub fn push_posting(out: &mut Vec<u8>, start_ns: i64, pk: &[u8]) {
    out.extend_from_slice(&start_ns.to_be_bytes());
    let len = u16::try_from(pk.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&pk[..len as usize]);
}

/// Length in bytes of the pair a posting value starts with; None if it is truncated.
fn pair_len(v: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes(v.get(8..PAIR_HEADER)?.try_into().ok()?) as usize;
    let total = PAIR_HEADER + len;
    (total <= v.len()).then_some(total)
}

/// The (start, primary key) pairs of a posting value; None if it is malformed.
pub fn parse_postings(mut v: &[u8]) -> Option<Vec<(i64, &[u8])>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let n = pair_len(v)?;
        let start = i64::from_be_bytes(v[..8].try_into().ok()?);
        out.push((start, &v[PAIR_HEADER..n]));
        v = &v[n..];
    }
    Some(out)
}

/// Splits a posting value into consecutive values of at most `max_pairs` pairs each
/// (at least one), without re-encoding. A malformed tail stays in the last value.
pub fn chunk_postings(mut v: &[u8], max_pairs: usize) -> impl Iterator<Item = &[u8]> {
    let max_pairs = max_pairs.max(1);
    std::iter::from_fn(move || {
        if v.is_empty() {
            return None;
        }
        let mut end = 0;
        for _ in 0..max_pairs {
            match pair_len(&v[end..]) {
                Some(n) => end += n,
                None => {
                    end = v.len();
                    break;
                }
            }
            if end == v.len() {
                break;
            }
        }
        let (chunk, rest) = v.split_at(end);
        v = rest;
        Some(chunk)
    })
}

/// Whether `result_id` is the one agents derive from the slot itself
/// (`campaign/round/dst`, see `tracemesh_proto::result_id`) and unambiguously so (no '/'
/// in campaign or destination). Two such ids are equal only for the same slot, so for
/// them the primary key alone catches a re-upload.
pub fn is_canonical_result_id(result_id: &str, campaign: &str, round: u32, dst: &str) -> bool {
    if campaign.contains('/') || dst.contains('/') {
        return false;
    }
    let Some(rest) = result_id
        .strip_prefix(campaign)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    let Some((r, d)) = rest.split_once('/') else {
        return false;
    };
    d == dst
        && r.parse::<u32>()
            .is_ok_and(|n| n == round && n.to_string() == r)
}

/// The slot (campaign, round, dst) a canonical-looking result id names, if any.
pub fn parse_canonical_result_id(result_id: &str) -> Option<(&str, u32, &str)> {
    let (c, rest) = result_id.split_once('/')?;
    let (r, d) = rest.split_once('/')?;
    let round = r.parse::<u32>().ok()?;
    (round.to_string() == r && !d.contains('/')).then_some((c, round, d))
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
        assert!(posting_key(None, -5, 9, 9) < posting_key(None, 3, 0, 0));
        assert!(posting_key(Some("v"), 255, 9, 9) < posting_key(Some("v"), 256, 0, 0));
    }

    #[test]
    fn posting_bounds_cover_the_buckets_of_the_range() {
        let (lo, hi) = posting_bounds(Some("v"), Some(10 * BUCKET_NS + 5), Some(20 * BUCKET_NS));
        for (b, inside) in [(9, false), (10, true), (15, true), (20, true), (21, false)] {
            let k = posting_key(Some("v"), b, u64::MAX, u32::MAX);
            assert_eq!(k >= lo && k <= hi, inside, "bucket {b}");
            assert_eq!(k.len(), posting_bucket_len(Some("v")) + 12);
        }
        let (lo, hi) = posting_bounds(None, None, None);
        for b in [bucket(i64::MIN), -1, 0, bucket(i64::MAX)] {
            let k = posting_key(None, b, 0, 0);
            assert!(k >= lo && k <= hi);
        }
        assert!(posting_key(None, -1, 9, 9) < posting_key(None, 0, 0, 0));
        assert_eq!(bucket(-1), -1);
    }

    #[test]
    fn postings_round_trip() {
        let mut v = Vec::new();
        push_posting(&mut v, -7, b"pk1");
        push_posting(&mut v, 1 << 40, b"");
        assert_eq!(
            parse_postings(&v),
            Some(vec![(-7, &b"pk1"[..]), (1 << 40, &b""[..])])
        );
        assert_eq!(parse_postings(&v[..5]), None);
        assert_eq!(parse_postings(&v[..12]), None);
    }

    #[test]
    fn postings_split_into_chunks_of_whole_pairs() {
        let mut v = Vec::new();
        for i in 0..5i64 {
            push_posting(&mut v, i, format!("pk{i}").as_bytes());
        }
        let chunks: Vec<&[u8]> = chunk_postings(&v, 2).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), v);
        let starts: Vec<Vec<i64>> = chunks
            .iter()
            .map(|c| parse_postings(c).unwrap().iter().map(|p| p.0).collect())
            .collect();
        assert_eq!(starts, [vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(chunk_postings(&v, 64).collect::<Vec<_>>(), [&v[..]]);
        assert_eq!(chunk_postings(&[], 64).count(), 0);
    }

    #[test]
    fn canonical_result_ids() {
        let id = canon("c1", 3, "1.1.1.1");
        assert!(is_canonical_result_id(&id, "c1", 3, "1.1.1.1"));
        assert!(!is_canonical_result_id(&id, "c1", 4, "1.1.1.1"));
        assert!(!is_canonical_result_id(&id, "c", 3, "1.1.1.1"));
        assert!(!is_canonical_result_id("c1/03/1.1.1.1", "c1", 3, "1.1.1.1"));
        assert!(!is_canonical_result_id("a/1/2/x", "a/1", 2, "x"));
        assert!(!is_canonical_result_id("x", "c1", 3, "1.1.1.1"));
        assert_eq!(parse_canonical_result_id(&id), Some(("c1", 3, "1.1.1.1")));
        assert_eq!(parse_canonical_result_id("a/1/2/x"), None);
        assert_eq!(parse_canonical_result_id("x"), None);
    }

    fn canon(c: &str, r: u32, d: &str) -> String {
        tracemesh_proto::result_id(c, r, d)
    }
}
