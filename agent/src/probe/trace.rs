//! The state machine of one traceroute: which TTL to probe next, when to retry, when to
//! stop. It never touches a socket or a clock; the engine hands it `now`.
//!
//! Probing is hop by hop with one probe in flight per trace, as scamper does: a TTL is
//! probed again only after its previous attempt timed out, and the next TTL only after
//! this one answered or ran out of attempts. Parallelism comes from many traces at once.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::model::{Hop, MplsLabel, Proto, StopReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParams {
    pub proto: Proto,
    pub first_ttl: u8,
    pub max_ttl: u8,
    /// Probes per TTL before the hop counts as silent.
    pub attempts: u8,
    /// How long to wait for each probe's reply.
    pub wait: Duration,
    /// Consecutive silent hops after which the trace gives up.
    pub gap_limit: u8,
}

impl Default for TraceParams {
    fn default() -> Self {
        TraceParams {
            proto: Proto::Icmp,
            first_ttl: 1,
            max_ttl: 30,
            attempts: 2,
            wait: Duration::from_millis(1000),
            gap_limit: 5,
        }
    }
}

/// What kind of answer came back, as the engine classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A router on the way: ICMP Time Exceeded.
    Intermediate,
    /// The destination answered: the trace is complete.
    Destination,
    /// Destination Unreachable other than port-unreachable (which only the destination sends).
    Unreachable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub kind: AnswerKind,
    pub addr: IpAddr,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub reply_ttl: u8,
    pub quoted_ttl: Option<u8>,
    pub tcp_flags: Option<String>,
    pub mpls: Vec<MplsLabel>,
}

#[derive(Debug)]
struct Sent {
    ttl: u8,
    at: Instant,
}

#[derive(Debug)]
pub struct Trace {
    pub dst: IpAddr,
    pub src: IpAddr,
    pub params: TraceParams,
    hops: Vec<Hop>,
    cur_ttl: u8,
    attempts_at_cur: u8,
    /// Indexed by probe id − 1.
    sent: Vec<Sent>,
    outstanding: Option<u16>,
    gap: u8,
    stop: Option<StopReason>,
    first_sent: Option<Instant>,
}

impl Trace {
    pub fn new(dst: IpAddr, src: IpAddr, params: TraceParams) -> Self {
        let first = params.first_ttl.max(1);
        Trace {
            dst,
            src,
            params,
            hops: Vec::new(),
            cur_ttl: first,
            attempts_at_cur: 0,
            sent: Vec::new(),
            outstanding: None,
            gap: 0,
            stop: if first > params.max_ttl {
                Some(StopReason::MaxTtl)
            } else {
                None
            },
            first_sent: None,
        }
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    pub fn has_outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    pub fn first_sent(&self) -> Option<Instant> {
        self.first_sent
    }

    pub fn probes_sent(&self) -> u32 {
        self.sent.len() as u32
    }

    /// Whether the trace wants to send now.
    pub fn wants_to_send(&self) -> bool {
        self.stop.is_none() && self.outstanding.is_none()
    }

    /// Takes the next probe to send at `now`: its TTL and probe id.
    pub fn next_probe(&mut self, now: Instant) -> Option<(u8, u16)> {
        if !self.wants_to_send() {
            return None;
        }
        // Probe ids are 1..=0xfffe; a trace never comes near that many probes, since
        // attempts × TTLs ≤ 255 × 255, but refuse rather than wrap.
        if self.sent.len() >= 0xfffe {
            self.stop = Some(StopReason::MaxTtl);
            return None;
        }
        let ttl = self.cur_ttl;
        if self.attempts_at_cur == 0 {
            self.hops.push(Hop {
                ttl,
                addr: None,
                rtt_ms: None,
                icmp_type: None,
                icmp_code: None,
                reply_ttl: None,
                quoted_ttl: None,
                tcp_flags: None,
                mpls: Vec::new(),
                probes: 0,
            });
        }
        self.attempts_at_cur += 1;
        if let Some(h) = self.hops.last_mut() {
            h.probes = h.probes.saturating_add(1);
        }
        self.sent.push(Sent { ttl, at: now });
        self.first_sent.get_or_insert(now);
        let id = self.sent.len() as u16;
        self.outstanding = Some(id);
        Some((ttl, id))
    }

    /// The instant probe `probe_id` really left, when it is later than the one
    /// [`Trace::next_probe`] was given (the send waited for room in a full queue, or for
    /// the driver's turn): its RTT counts from here. Ignored once the probe is no longer
    /// awaited.
    pub fn restamp(&mut self, probe_id: u16, at: Instant) {
        if self.outstanding != Some(probe_id) {
            return;
        }
        if let Some(s) = usize::from(probe_id)
            .checked_sub(1)
            .and_then(|i| self.sent.get_mut(i))
            && at > s.at
        {
            s.at = at;
        }
    }

    /// The probe's deadline, if it is the one still awaited.
    pub fn deadline_of(&self, probe_id: u16) -> Option<Instant> {
        let s = self.sent.get(usize::from(probe_id).checked_sub(1)?)?;
        Some(s.at + self.params.wait)
    }

    pub fn on_timeout(&mut self, probe_id: u16) {
        if self.outstanding != Some(probe_id) || self.stop.is_some() {
            return;
        }
        self.outstanding = None;
        if self.attempts_at_cur < self.params.attempts {
            return;
        }
        self.gap += 1;
        if self.gap >= self.params.gap_limit {
            self.stop = Some(StopReason::GapLimit);
        } else {
            self.advance();
        }
    }

    pub fn on_answer(&mut self, probe_id: u16, answer: Answer, rx: Instant) {
        let Some(sent) = usize::from(probe_id)
            .checked_sub(1)
            .and_then(|i| self.sent.get(i))
        else {
            return;
        };
        let ttl = sent.ttl;
        let rtt = rx.saturating_duration_since(sent.at);
        let Some(hop_idx) = self.hops.iter().position(|h| h.ttl == ttl) else {
            return;
        };
        let first_answer = self.hops[hop_idx].addr.is_none();
        if first_answer {
            let h = &mut self.hops[hop_idx];
            h.addr = Some(answer.addr);
            h.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            h.icmp_type = answer.icmp_type;
            h.icmp_code = answer.icmp_code;
            h.reply_ttl = Some(answer.reply_ttl);
            h.quoted_ttl = answer.quoted_ttl;
            h.tcp_flags = answer.tcp_flags.clone();
            h.mpls = answer.mpls.clone();
        }
        // Only an answer at the TTL being probed moves the trace on; a late answer for
        // an earlier TTL just fills in its hop.
        if ttl != self.cur_ttl || self.stop.is_some() || !first_answer {
            return;
        }
        self.outstanding = None;
        self.gap = 0;
        match answer.kind {
            AnswerKind::Destination => self.stop = Some(StopReason::Completed),
            AnswerKind::Unreachable => self.stop = Some(StopReason::Unreachable),
            AnswerKind::Intermediate => {
                if self.is_loop(hop_idx, answer.addr) {
                    self.stop = Some(StopReason::Loop);
                } else {
                    self.advance();
                }
            }
        }
    }

    /// A loop: the address already answered two or more TTLs earlier, or at the two TTLs
    /// right before (a hop that stops decrementing TTL repeats forever).
    fn is_loop(&self, hop_idx: usize, addr: IpAddr) -> bool {
        let earlier = &self.hops[..hop_idx];
        let n = earlier.len();
        let non_adjacent = n >= 1 && earlier[..n - 1].iter().any(|h| h.addr == Some(addr));
        let repeated = n >= 2 && earlier[n - 2..].iter().all(|h| h.addr == Some(addr));
        non_adjacent || repeated
    }

    fn advance(&mut self) {
        if self.cur_ttl >= self.params.max_ttl {
            self.stop = Some(StopReason::MaxTtl);
        } else {
            self.cur_ttl += 1;
            self.attempts_at_cur = 0;
        }
    }

    pub fn into_hops(self) -> Vec<Hop> {
        self.hops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn answer(kind: AnswerKind, addr: &str) -> Answer {
        Answer {
            kind,
            addr: ip(addr),
            icmp_type: Some(11),
            icmp_code: Some(0),
            reply_ttl: 250,
            quoted_ttl: Some(1),
            tcp_flags: None,
            mpls: vec![],
        }
    }

    fn params(attempts: u8, gap_limit: u8, max_ttl: u8) -> TraceParams {
        TraceParams {
            attempts,
            gap_limit,
            max_ttl,
            wait: Duration::from_millis(100),
            ..TraceParams::default()
        }
    }

    #[test]
    fn walks_hop_by_hop_to_the_destination() {
        let t0 = Instant::now();
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(2, 5, 30));
        let routers = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
        for (i, r) in routers.iter().enumerate() {
            let (ttl, id) = t.next_probe(t0).unwrap();
            assert_eq!(ttl as usize, i + 1);
            assert!(t.next_probe(t0).is_none(), "one probe in flight");
            t.on_answer(
                id,
                answer(AnswerKind::Intermediate, r),
                t0 + Duration::from_millis(3),
            );
        }
        let (ttl, id) = t.next_probe(t0).unwrap();
        assert_eq!(ttl, 4);
        t.on_answer(
            id,
            answer(AnswerKind::Destination, "8.8.8.8"),
            t0 + Duration::from_millis(5),
        );
        assert_eq!(t.stop_reason(), Some(StopReason::Completed));
        let hops = t.into_hops();
        assert_eq!(hops.len(), 4);
        assert_eq!(hops[3].rtt_ms, Some(5.0));
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
    }

    #[test]
    fn an_rtt_counts_from_when_the_probe_really_left() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(2, 5, 30));
        // Built at t0, sent at t0 + 4 ms (the queue was full), answered at t0 + 5 ms.
        let (_, id) = t.next_probe(t0).unwrap();
        t.restamp(id, t0 + ms(4));
        // A stamp before the one it has is not a send: ignored.
        t.restamp(id, t0 + ms(1));
        t.on_answer(id, answer(AnswerKind::Intermediate, "10.0.0.1"), t0 + ms(5));
        let (_, id2) = t.next_probe(t0 + ms(6)).unwrap();
        t.on_answer(id2, answer(AnswerKind::Destination, "8.8.8.8"), t0 + ms(8));
        let hops = t.into_hops();
        assert_eq!(hops[0].rtt_ms, Some(1.0));
        assert_eq!(hops[1].rtt_ms, Some(2.0));
    }

    #[test]
    fn retries_then_records_a_silent_hop_and_stops_at_the_gap_limit() {
        let t0 = Instant::now();
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(2, 3, 30));
        let mut ids = vec![];
        for _ in 0..6 {
            let (ttl, id) = t.next_probe(t0).unwrap();
            ids.push((ttl, id));
            t.on_timeout(id);
        }
        assert_eq!(
            ids.iter().map(|x| x.0).collect::<Vec<_>>(),
            [1, 1, 2, 2, 3, 3]
        );
        assert_eq!(t.stop_reason(), Some(StopReason::GapLimit));
        let hops = t.into_hops();
        assert_eq!(hops.len(), 3);
        assert!(hops.iter().all(|h| h.addr.is_none() && h.probes == 2));
    }

    #[test]
    fn a_late_answer_to_a_retried_probe_still_counts() {
        let t0 = Instant::now();
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(2, 5, 30));
        let (_, first) = t.next_probe(t0).unwrap();
        t.on_timeout(first);
        let (_, second) = t.next_probe(t0 + Duration::from_millis(100)).unwrap();
        t.on_answer(
            first,
            answer(AnswerKind::Intermediate, "10.0.0.1"),
            t0 + Duration::from_millis(150),
        );
        assert_eq!(t.next_probe(t0).map(|p| p.0), Some(2));
        // The retry's own answer now arrives and changes nothing.
        t.on_answer(
            second,
            answer(AnswerKind::Intermediate, "10.9.9.9"),
            t0 + Duration::from_millis(160),
        );
        let hops = t.into_hops();
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert_eq!(hops[0].rtt_ms, Some(150.0));
    }

    #[test]
    fn stops_on_unreachable_loop_and_max_ttl() {
        let t0 = Instant::now();
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(1, 5, 30));
        let (_, id) = t.next_probe(t0).unwrap();
        t.on_answer(id, answer(AnswerKind::Unreachable, "10.0.0.1"), t0);
        assert_eq!(t.stop_reason(), Some(StopReason::Unreachable));

        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(1, 5, 30));
        for r in ["10.0.0.1", "10.0.0.2", "10.0.0.1"] {
            let (_, id) = t.next_probe(t0).unwrap();
            t.on_answer(id, answer(AnswerKind::Intermediate, r), t0);
        }
        assert_eq!(t.stop_reason(), Some(StopReason::Loop));

        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(1, 5, 2));
        for r in ["10.0.0.1", "10.0.0.2"] {
            let (_, id) = t.next_probe(t0).unwrap();
            t.on_answer(id, answer(AnswerKind::Intermediate, r), t0);
        }
        assert_eq!(t.stop_reason(), Some(StopReason::MaxTtl));
        assert!(t.next_probe(t0).is_none());
    }

    #[test]
    fn one_repeat_at_adjacent_ttls_is_not_a_loop_but_three_are() {
        let t0 = Instant::now();
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(1, 5, 30));
        for r in ["10.0.0.1", "10.0.0.2", "10.0.0.2"] {
            let (_, id) = t.next_probe(t0).unwrap();
            t.on_answer(id, answer(AnswerKind::Intermediate, r), t0);
        }
        assert_eq!(t.stop_reason(), None);
        let (_, id) = t.next_probe(t0).unwrap();
        t.on_answer(id, answer(AnswerKind::Intermediate, "10.0.0.2"), t0);
        assert_eq!(t.stop_reason(), Some(StopReason::Loop));
    }

    #[test]
    fn unknown_probe_ids_are_ignored() {
        let t0 = Instant::now();
        let mut t = Trace::new(ip("8.8.8.8"), ip("192.0.2.1"), params(1, 5, 30));
        t.on_answer(0, answer(AnswerKind::Destination, "8.8.8.8"), t0);
        t.on_answer(99, answer(AnswerKind::Destination, "8.8.8.8"), t0);
        t.on_timeout(42);
        assert_eq!(t.stop_reason(), None);
        assert!(t.wants_to_send());
    }
}
