//! When rounds start. Both the coordinator (deciding what to push, campaign state) and the
//! agent (firing rounds) use these, so they cannot disagree.

const NS_PER_S: i128 = 1_000_000_000;

/// Start of round `k` (unix ns, coordinator time). Saturates instead of overflowing.
pub fn round_start_ns(start_at_ns: i64, every_s: u32, k: u32) -> i64 {
    let t = start_at_ns as i128 + k as i128 * every_s as i128 * NS_PER_S;
    t.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Start of the last round.
pub fn last_round_start_ns(start_at_ns: i64, every_s: u32, rounds: u32) -> i64 {
    round_start_ns(start_at_ns, every_s, rounds.saturating_sub(1))
}

/// The first round whose start is not before `now_ns`, i.e. the next one to fire; `None`
/// when every round has started already (or there are no rounds).
pub fn next_round(start_at_ns: i64, every_s: u32, rounds: u32, now_ns: i64) -> Option<u32> {
    if rounds == 0 {
        return None;
    }
    if now_ns <= start_at_ns {
        return Some(0);
    }
    if every_s == 0 {
        return None;
    }
    let elapsed = now_ns as i128 - start_at_ns as i128;
    let period = every_s as i128 * NS_PER_S;
    // Ceiling division: a round starting exactly now still counts as not past.
    let k = (elapsed + period - 1) / period;
    if k < rounds as i128 {
        Some(k as u32)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn rounds_are_evenly_spaced() {
        assert_eq!(round_start_ns(100 * S, 10, 0), 100 * S);
        assert_eq!(round_start_ns(100 * S, 10, 3), 130 * S);
        assert_eq!(last_round_start_ns(100 * S, 10, 4), 130 * S);
        assert_eq!(round_start_ns(i64::MAX - 1, 10, 5), i64::MAX);
    }

    #[test]
    fn next_round_skips_past_rounds() {
        let start = 100 * S;
        assert_eq!(next_round(start, 10, 3, 50 * S), Some(0));
        assert_eq!(next_round(start, 10, 3, start), Some(0));
        assert_eq!(next_round(start, 10, 3, start + 1), Some(1));
        assert_eq!(next_round(start, 10, 3, 110 * S), Some(1));
        assert_eq!(next_round(start, 10, 3, 120 * S), Some(2));
        assert_eq!(next_round(start, 10, 3, 120 * S + 1), None);
        assert_eq!(next_round(start, 10, 0, 0), None);
        // A one-shot campaign with every_s = 0 is past as soon as it started.
        assert_eq!(next_round(start, 0, 1, start + 1), None);
        assert_eq!(next_round(start, 0, 1, start - 1), Some(0));
    }
}
