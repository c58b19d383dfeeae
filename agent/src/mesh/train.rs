//! One-way delay trains between two agents, sans I/O: the datagram codec, and the
//! receiver's bookkeeping that turns a train into one sample (least and median one-way
//! delay, loss, clock-error bound).
//!
//! Both ends stamp with their clock corrected to the coordinator's (each agent keeps that
//! offset from its session), so a receive stamp minus a send stamp is the one-way delay
//! up to the two offsets' errors. Each offset comes from the lowest-RTT clock sample,
//! whose error is at most half that RTT; the sample carries the sum of both ends' bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use thiserror::Error;

const MAGIC: &[u8; 4] = b"TMD1";
/// magic, round, seq, count, send_ns, err_ns, id length.
const FIXED: usize = 4 + 4 + 2 + 2 + 8 + 8 + 1;
/// Campaign ids are short tokens; anything longer is not ours.
pub const MAX_CAMPAIGN_ID: usize = 128;
/// Trains in flight at once at most: an enrolled but misbehaving peer inventing
/// campaigns and rounds cannot make a receiver's memory grow without bound.
pub const MAX_TRAINS: usize = 8192;

/// One datagram of a train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub campaign: String,
    pub round: u32,
    pub seq: u16,
    /// Datagrams in the train.
    pub count: u16,
    /// Sender's corrected clock when it left (Unix ns).
    pub send_ns: i64,
    /// Sender's clock-offset error bound (ns).
    pub err_ns: i64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("mesh datagram of {0} bytes is too short")]
    Short(usize),
    #[error("mesh datagram has no tracemesh magic")]
    Magic,
    #[error("mesh datagram: seq {seq} outside a train of {count}")]
    Seq { seq: u16, count: u16 },
    #[error("mesh datagram: campaign id is not UTF-8 or too long")]
    Campaign,
    #[error("mesh datagram: negative clock-error bound")]
    Err,
}

impl Stamp {
    pub fn encode(&self, pad_to: usize) -> Vec<u8> {
        let id = self.campaign.as_bytes();
        let id = &id[..id.len().min(MAX_CAMPAIGN_ID)];
        let mut b = Vec::with_capacity((FIXED + id.len()).max(pad_to));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.round.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(&self.send_ns.to_be_bytes());
        b.extend_from_slice(&self.err_ns.to_be_bytes());
        b.push(id.len() as u8);
        b.extend_from_slice(id);
        if b.len() < pad_to {
            b.resize(pad_to, 0);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Stamp, DecodeError> {
        if b.len() < FIXED {
            return Err(DecodeError::Short(b.len()));
        }
        if &b[..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let i64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            i64::from_be_bytes(a)
        };
        let round = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let (seq, count) = (u16_at(8), u16_at(10));
        if count == 0 || seq >= count {
            return Err(DecodeError::Seq { seq, count });
        }
        let (send_ns, err_ns) = (i64_at(12), i64_at(20));
        if err_ns < 0 {
            return Err(DecodeError::Err);
        }
        let n = usize::from(b[28]);
        let id = b.get(FIXED..FIXED + n).ok_or(DecodeError::Short(b.len()))?;
        let campaign = std::str::from_utf8(id).map_err(|_| DecodeError::Campaign)?;
        if n > MAX_CAMPAIGN_ID {
            return Err(DecodeError::Campaign);
        }
        Ok(Stamp {
            campaign: campaign.to_string(),
            round,
            seq,
            count,
            send_ns,
            err_ns,
        })
    }
}

/// How a train is sent: `count` datagrams, `spacing` apart, padded to `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainSpec {
    pub count: u16,
    pub spacing: Duration,
    pub size: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        // Ten 100-byte datagrams over 90 ms: enough for a least and a median, and a loss
        // figure in tenths, for ~11 kB per peer per round both ways with QUIC's overhead.
        TrainSpec {
            count: 10,
            spacing: Duration::from_millis(10),
            size: 100,
        }
    }
}

/// The train a peer sends in one round, as the receiver sees it.
#[derive(Debug, Clone, Default)]
struct Train {
    count: u16,
    seqs: BTreeSet<u16>,
    owd_ns: Vec<i64>,
    err_ns: i64,
    deadline_ns: i64,
}

/// One direction of one pair in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sending agent (the receiver is the one that made this sample).
    pub src: String,
    pub campaign: String,
    pub round: u32,
    /// Datagrams the sender announced (or the default train's count when none arrived).
    pub sent: u32,
    pub received: u32,
    /// Least and median one-way delay (ns); `None` when nothing arrived.
    pub owd_min_ns: Option<i64>,
    pub owd_median_ns: Option<i64>,
    /// Bound on the clock error in the delays: both ends' offset error bounds (ns).
    pub clock_error_ns: i64,
}

impl Sample {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - f64::from(self.received.min(self.sent)) / f64::from(self.sent)
    }
}

/// The receiving end: every train it expects or has seen, until its deadline.
#[derive(Debug, Default)]
pub struct Receiver {
    trains: BTreeMap<(String, String, u32), Train>,
    /// Trains already reported: late datagrams of them are dropped, not restarted.
    done: BTreeSet<(String, String, u32)>,
}

impl Receiver {
    /// A train `peer` should send in `round` of `campaign`: reported by `deadline_ns`
    /// (receiver's corrected clock) even when nothing arrives, as total loss.
    pub fn expect(&mut self, peer: &str, campaign: &str, round: u32, count: u16, deadline_ns: i64) {
        let k = (peer.to_string(), campaign.to_string(), round);
        if self.done.contains(&k) {
            return;
        }
        let t = self.trains.entry(k).or_default();
        if t.count == 0 {
            t.count = count;
        }
        t.deadline_ns = t.deadline_ns.max(deadline_ns);
    }

    /// A datagram from `peer` received at `recv_ns` (corrected) with our own offset error
    /// bound `own_err_ns`. Datagrams of trains nobody expects start one that ends
    /// `grace_ns` after it.
    pub fn on_datagram(
        &mut self,
        peer: &str,
        s: &Stamp,
        recv_ns: i64,
        own_err_ns: i64,
        grace_ns: i64,
    ) {
        let k = (peer.to_string(), s.campaign.clone(), s.round);
        if self.done.contains(&k)
            || (self.trains.len() >= MAX_TRAINS && !self.trains.contains_key(&k))
        {
            return;
        }
        let t = self.trains.entry(k).or_default();
        t.count = s.count;
        if t.deadline_ns == 0 {
            t.deadline_ns = recv_ns.saturating_add(grace_ns);
        }
        if t.seqs.insert(s.seq) {
            t.owd_ns.push(recv_ns.saturating_sub(s.send_ns));
            t.err_ns = t.err_ns.max(s.err_ns.saturating_add(own_err_ns.max(0)));
        }
    }

    /// Trains that are complete or past their deadline at `now_ns`, as samples.
    pub fn poll(&mut self, now_ns: i64) -> Vec<Sample> {
        self.take(now_ns, |_| true)
    }

    /// The trains of one round that are complete or due at `now_ns`; trains of other
    /// rounds stay for their own round to take.
    pub fn take_round(&mut self, campaign: &str, round: u32, now_ns: i64) -> Vec<Sample> {
        self.take(now_ns, |k| k.1 == campaign && k.2 == round)
    }

    /// Drops trains nobody took `older_ns` after their deadline (a peer's train for a
    /// round this agent does not run).
    pub fn expire(&mut self, now_ns: i64, older_ns: i64) -> usize {
        let before = self.trains.len();
        self.trains
            .retain(|_, t| now_ns < t.deadline_ns.saturating_add(older_ns));
        before - self.trains.len()
    }

    fn take(&mut self, now_ns: i64, want: impl Fn(&(String, String, u32)) -> bool) -> Vec<Sample> {
        let ready: Vec<_> = self
            .trains
            .iter()
            .filter(|(k, t)| {
                want(k)
                    && (now_ns >= t.deadline_ns
                        || (t.count > 0 && t.seqs.len() >= usize::from(t.count)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::with_capacity(ready.len());
        for k in ready {
            let Some(mut t) = self.trains.remove(&k) else {
                continue;
            };
            t.owd_ns.sort_unstable();
            let n = t.owd_ns.len();
            let median = match n {
                0 => None,
                n if n % 2 == 1 => Some(t.owd_ns[n / 2]),
                n => Some((t.owd_ns[n / 2 - 1] + t.owd_ns[n / 2]) / 2),
            };
            out.push(Sample {
                src: k.0.clone(),
                campaign: k.1.clone(),
                round: k.2,
                sent: u32::from(t.count),
                received: n as u32,
                owd_min_ns: t.owd_ns.first().copied(),
                owd_median_ns: median,
                clock_error_ns: t.err_ns,
            });
            self.done.insert(k);
        }
        // Forget reported trains after a while; rounds only move forward.
        if self.done.len() > 65_536 {
            self.done.clear();
        }
        out
    }

    pub fn pending(&self) -> usize {
        self.trains.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(seq: u16, send_ns: i64) -> Stamp {
        Stamp {
            campaign: "c1".into(),
            round: 3,
            seq,
            count: 4,
            send_ns,
            err_ns: 100,
        }
    }

    #[test]
    fn codec_round_trips_and_pads() {
        let s = stamp(2, 1_700_000_000_123_456_789);
        let b = s.encode(100);
        assert_eq!(b.len(), 100);
        assert_eq!(Stamp::decode(&b), Ok(s));
    }

    #[test]
    fn codec_refuses_what_is_not_a_train() {
        assert_eq!(Stamp::decode(b"TMD1"), Err(DecodeError::Short(4)));
        let mut b = stamp(0, 1).encode(0);
        b[0] = b'X';
        assert_eq!(Stamp::decode(&b), Err(DecodeError::Magic));
        let bad = Stamp {
            seq: 4,
            ..stamp(0, 1)
        }
        .encode(0);
        assert_eq!(
            Stamp::decode(&bad),
            Err(DecodeError::Seq { seq: 4, count: 4 })
        );
        let mut cut = stamp(0, 1).encode(0);
        cut.pop();
        assert!(matches!(Stamp::decode(&cut), Err(DecodeError::Short(_))));
    }

    #[test]
    fn a_train_becomes_least_median_loss_and_error() {
        let mut r = Receiver::default();
        r.expect("b", "c1", 3, 4, 10_000);
        // Three of four arrive, delays 5, 7, 6 ms; duplicates do not count twice.
        for (seq, owd) in [(0u16, 5_000_000i64), (1, 7_000_000), (2, 6_000_000)] {
            r.on_datagram("b", &stamp(seq, 1_000), 1_000 + owd, 50, 1_000_000_000);
        }
        r.on_datagram("b", &stamp(1, 1_000), 1_000 + 1, 50, 1_000_000_000);
        assert!(r.poll(9_999).is_empty(), "not complete, not due");
        let s = r.poll(10_000);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!((s.sent, s.received), (4, 3));
        assert_eq!(s.owd_min_ns, Some(5_000_000));
        assert_eq!(s.owd_median_ns, Some(6_000_000));
        assert_eq!(s.clock_error_ns, 150);
        assert!((s.loss() - 0.25).abs() < 1e-12);
        // A late datagram of a reported train is dropped.
        r.on_datagram("b", &stamp(3, 1_000), 20_000, 50, 1);
        assert!(r.poll(1_000_000_000).is_empty());
    }

    #[test]
    fn a_train_that_never_arrives_is_total_loss() {
        let mut r = Receiver::default();
        r.expect("b", "c1", 0, 10, 5);
        let s = r.poll(5);
        assert_eq!(s[0].received, 0);
        assert_eq!(s[0].owd_min_ns, None);
        assert_eq!(s[0].loss(), 1.0);
    }

    #[test]
    fn unexpected_trains_are_capped() {
        let mut r = Receiver::default();
        for round in 0..(MAX_TRAINS as u32 + 100) {
            let s = Stamp {
                round,
                ..stamp(0, 0)
            };
            r.on_datagram("b", &s, 10, 0, 1_000);
        }
        assert_eq!(r.pending(), MAX_TRAINS);
        assert_eq!(r.expire(2_000, 0), MAX_TRAINS);
    }

    #[test]
    fn a_complete_train_is_reported_at_once() {
        let mut r = Receiver::default();
        for seq in 0..4 {
            r.on_datagram("b", &stamp(seq, 0), 10, 0, 1_000_000_000);
        }
        assert_eq!(r.poll(11).len(), 1);
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Stamp::decode(&b);
        }

        #[test]
        fn decode_inverts_encode(round: u32, count in 1u16.., seq_frac in 0.0f64..1.0,
                                 send_ns: i64, err_ns in 0i64.., id in "[a-z0-9-]{0,40}",
                                 pad in 0usize..300) {
            let seq = ((f64::from(count) * seq_frac) as u16).min(count - 1);
            let s = Stamp { campaign: id, round, seq, count, send_ns, err_ns };
            prop_assert_eq!(Stamp::decode(&s.encode(pad)), Ok(s));
        }
    }
}
