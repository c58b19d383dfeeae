//! NTP-style clock offset estimation from one ClockSample/ClockEcho exchange.
//!
//! t1: agent clock when the sample left; t2: coordinator clock at receipt; t3: coordinator
//! clock at reply; t4: agent clock at receipt of the echo. All unix nanoseconds.

/// `offset_ns` is (coordinator clock − agent clock): add it to the agent's clock to get
/// coordinator time. `rtt_ns` is the network round trip excluding coordinator processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEstimate {
    pub offset_ns: i64,
    pub rtt_ns: i64,
}

pub fn estimate(t1: i64, t2: i64, t3: i64, t4: i64) -> ClockEstimate {
    let (t1, t2, t3, t4) = (t1 as i128, t2 as i128, t3 as i128, t4 as i128);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let rtt = ((t4 - t1) - (t3 - t2)).max(0);
    ClockEstimate {
        offset_ns: offset.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        rtt_ns: rtt.clamp(0, i64::MAX as i128) as i64,
    }
}

/// The sample with the smallest round trip: its offset has the tightest error bound
/// (|error| ≤ rtt/2), so that is the one to trust among recent samples.
pub fn best<I: IntoIterator<Item = ClockEstimate>>(samples: I) -> Option<ClockEstimate> {
    samples.into_iter().min_by_key(|s| s.rtt_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_path_recovers_exact_offset() {
        // Coordinator is 5 s ahead; 10 ms each way; 1 ms processing.
        let off = 5_000_000_000;
        let t1 = 1_000_000_000_000;
        let t2 = t1 + 10_000_000 + off;
        let t3 = t2 + 1_000_000;
        let t4 = t3 - off + 10_000_000;
        let e = estimate(t1, t2, t3, t4);
        assert_eq!(e.offset_ns, off);
        assert_eq!(e.rtt_ns, 20_000_000);
    }

    #[test]
    fn agent_ahead_gives_negative_offset() {
        let e = estimate(2_000, 1_000, 1_000, 2_000);
        assert_eq!(e.offset_ns, -1_000);
        assert_eq!(e.rtt_ns, 0);
    }

    #[test]
    fn best_prefers_lowest_rtt() {
        let a = ClockEstimate {
            offset_ns: 10,
            rtt_ns: 50,
        };
        let b = ClockEstimate {
            offset_ns: 3,
            rtt_ns: 5,
        };
        assert_eq!(best([a, b]), Some(b));
        assert_eq!(best([]), None);
    }
}
