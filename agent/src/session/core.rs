//! The agent's session with its coordinator as a state machine, sans I/O like the probe
//! engine: the driver (`client.rs`) tells it what happened — a coordinator message, a
//! round that finished, a spool write that completed, a dial that worked, a session that
//! broke, a timer — together with `now`, and performs the effects it returns, in order.
//!
//! It owns every decision the session makes: when to dial again (backoff with jitter),
//! what goes up the stream and when (Hello, clock samples, heartbeats, results), the
//! clock-offset sample window, which round of which campaign fires when on the corrected
//! clock, and which results still wait for an ack. It never sleeps, locks or touches the
//! disk, so tests drive it on a simulated clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use prost::Message as _;
use tracemesh_proto::clock::{self, ClockEstimate};
use tracemesh_proto::v1::agent_message::Msg as Up;
use tracemesh_proto::v1::coordinator_message::Msg as Down;
use tracemesh_proto::v1::{self as pb};

use super::convert::{held_from_instruction, record_from_result};
use super::schedule::{Held, HeldCampaign};
use super::spool::{Kind, Record};
use crate::probe::TraceResult;

/// Quick clock samples at the start of a session, so that the first round already fires
/// on a corrected clock.
const QUICK_SAMPLES: u32 = 5;
const QUICK_SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Until the coordinator's Welcome says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Clock samples kept: enough for one low-RTT sample to survive a burst of queueing.
const SAMPLE_WINDOW: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long was healthy: the next failure starts backoff afresh.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Rounds start this early (ns): the round task prepares its sockets and engine, then
/// waits for the instant itself.
const PREPARE_NS: i64 = 100_000_000;
/// With nothing scheduled, look again this often anyway.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// Records per TraceBatch message.
const BATCH_MAX: usize = 500;
/// Results per AliasBatch message (each carries every sample of a run).
const ALIAS_BATCH_MAX: usize = 16;
/// Multipath traces per MdaBatch message (each is a whole diamond).
const MDA_BATCH_MAX: usize = 64;

/// The two clocks the core reads, both sampled by the driver at the same moment: the
/// monotonic one for timers, the agent's own Unix time (ns) for clock samples and, once
/// corrected by the offset, for round instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ns: i64,
}

impl Now {
    /// `d` later on both clocks (a simulated clock's tick).
    pub fn after(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            unix_ns: self.unix_ns + d.as_nanos() as i64,
        }
    }
}

#[derive(Debug)]
pub enum Input {
    /// A message from the coordinator on the open session.
    Message(Down),
    /// A round the driver ran, with every result (refused targets included).
    RoundDone {
        campaign_id: String,
        round: u32,
        results: Vec<TraceResult>,
    },
    /// An alias campaign's round the driver ran: its one result.
    AliasDone {
        campaign_id: String,
        round: u32,
        result: pb::AliasResult,
    },
    /// A mesh round's samples: the trains peers sent this agent.
    MeshDone {
        campaign_id: String,
        round: u32,
        samples: Vec<pb::MeshSample>,
    },
    /// An MDA round's multipath traces (they follow the round's Paris traces).
    MdaDone {
        campaign_id: String,
        round: u32,
        results: Vec<pb::MdaResult>,
    },
    /// The spool now durably holds this batch (the driver performed [`Effect::Spool`]).
    Spooled(Vec<Record>),
    /// The channel asked for by [`Effect::Connect`] is up.
    Dialled,
    /// The session stream asked for by [`Effect::OpenSession`] is open.
    Opened,
    /// A dial or a session failed (`Some(reason)`), or the coordinator closed the
    /// session (`None`).
    Disconnected(Option<String>),
    /// The timer armed by [`Effect::ArmTimer`] fired.
    Timer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Dial the coordinator; answer with [`Input::Dialled`] or [`Input::Disconnected`].
    Connect,
    /// Open the session stream on the dialled channel with `hello` as its first message;
    /// answer with [`Input::Opened`] or [`Input::Disconnected`].
    OpenSession { hello: pb::AgentMessage },
    /// Send up the open session (dropped if it has gone meanwhile: it is resent).
    Send(pb::AgentMessage),
    /// Write the campaigns held to disk.
    SaveCampaigns(Held),
    /// Write a round's results to the spool durably, then report [`Input::Spooled`].
    Spool {
        campaign_id: String,
        round: u32,
        records: Vec<Record>,
    },
    /// Delete acknowledged results from the spool.
    SpoolAck(Vec<String>),
    /// Prepare round `round` of `campaign` now and start probing at `start_ns` on the
    /// corrected clock; report [`Input::RoundDone`].
    StartRound {
        campaign: HeldCampaign,
        round: u32,
        start_ns: i64,
    },
    /// The offset (coordinator clock − agent clock, ns) rounds in progress correct by.
    ClockOffset(i64),
    /// The bound on that offset's error (half the best sample's round trip, ns).
    ClockBound(i64),
    /// Deliver [`Input::Timer`] at this instant (replaces the previous timer).
    ArmTimer(Instant),
}

/// The session's link to the coordinator.
#[derive(Debug)]
enum Link {
    /// Disconnected; dial again at this instant.
    Waiting {
        dial_at: Instant,
    },
    Dialling,
    Opening,
    Up(Live),
}

#[derive(Debug)]
struct Live {
    heartbeat_every: Duration,
    heartbeat_at: Instant,
    quick_left: u32,
    sample_at: Instant,
    /// This session's clock samples: a new path may have another delay, so samples from
    /// an earlier session are not compared with these.
    samples: VecDeque<ClockEstimate>,
}

/// The round the runner waits for, as planned.
#[derive(Debug)]
struct Armed {
    campaign: HeldCampaign,
    round: u32,
    start_ns: i64,
}

/// Results spooled and not yet acknowledged, in spool order (batch, then id), as the
/// spool itself keeps them.
#[derive(Debug, Default)]
struct Unacked {
    next_batch: u64,
    by_order: BTreeMap<(u64, String), (Kind, Vec<u8>)>,
    batch_of: HashMap<String, u64>,
}

impl Unacked {
    fn add(&mut self, records: Vec<Record>) {
        let batch = self.next_batch;
        self.next_batch += 1;
        for r in records {
            // A result spooled again supersedes its older copy, as in the spool.
            if let Some(old) = self.batch_of.insert(r.id.clone(), batch) {
                self.by_order.remove(&(old, r.id.clone()));
            }
            self.by_order.insert((batch, r.id), (r.kind, r.payload));
        }
    }

    fn ack(&mut self, id: &str) {
        if let Some(batch) = self.batch_of.remove(id) {
            self.by_order.remove(&(batch, id.to_string()));
        }
    }

    fn len(&self) -> usize {
        self.batch_of.len()
    }

    /// Every unacknowledged result as upload messages: traces in `TraceBatch`es, alias
    /// results in `AliasBatch`es, each kind in spool order.
    fn batches(&self) -> Vec<pb::AgentMessage> {
        let of_kind = |k: Kind| -> Vec<&Vec<u8>> {
            self.by_order
                .values()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, p)| p)
                .collect()
        };
        let mut out: Vec<pb::AgentMessage> = of_kind(Kind::Trace)
            .chunks(BATCH_MAX)
            .map(|chunk| {
                let results = chunk
                    .iter()
                    .filter_map(|p| pb::TraceRecord::decode(p.as_slice()).ok())
                    .collect();
                up(Up::TraceBatch(pb::TraceBatch { results }))
            })
            .collect();
        out.extend(of_kind(Kind::Alias).chunks(ALIAS_BATCH_MAX).map(|chunk| {
            let results = chunk
                .iter()
                .filter_map(|p| pb::AliasResult::decode(p.as_slice()).ok())
                .collect();
            up(Up::AliasBatch(pb::AliasBatch { results }))
        }));
        out.extend(of_kind(Kind::Mesh).chunks(BATCH_MAX).map(|chunk| {
            let samples = chunk
                .iter()
                .filter_map(|p| pb::MeshSample::decode(p.as_slice()).ok())
                .collect();
            up(Up::MeshBatch(pb::MeshBatch { samples }))
        }));
        out.extend(of_kind(Kind::Mda).chunks(MDA_BATCH_MAX).map(|chunk| {
            let results = chunk
                .iter()
                .filter_map(|p| pb::MdaResult::decode(p.as_slice()).ok())
                .collect();
            up(Up::MdaBatch(pb::MdaBatch { results }))
        }));
        out
    }
}

fn up(msg: Up) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

#[derive(Debug)]
pub struct SessionCore {
    held: Held,
    unacked: Unacked,
    /// coordinator clock − agent clock, ns; kept across sessions.
    offset_ns: i64,
    /// Half the round trip of the sample that offset came from, ns.
    offset_bound_ns: i64,
    /// Where this agent's mesh endpoint listens, for the Hello (empty: no mesh).
    mesh_addr: String,
    link: Link,
    backoff: Duration,
    /// When the current (or last) dial began.
    attempt_started: Instant,
    /// When the runner looks at the schedule next.
    round_wake: Instant,
    armed: Option<Armed>,
}

impl SessionCore {
    /// `held` as loaded from disk, `unacked` what the spool still holds (oldest first).
    /// Feed [`Input::Timer`] first: that dials and plans the first round.
    pub fn new(mut held: Held, unacked: Vec<Record>, now: Now) -> SessionCore {
        held.prune(now.unix_ns);
        let mut pending = Unacked::default();
        // One batch each keeps the spool's order.
        for r in unacked {
            pending.add(vec![r]);
        }
        SessionCore {
            held,
            unacked: pending,
            offset_ns: 0,
            offset_bound_ns: 0,
            mesh_addr: String::new(),
            link: Link::Waiting { dial_at: now.mono },
            backoff: BACKOFF_MIN,
            attempt_started: now.mono,
            round_wake: now.mono,
            armed: None,
        }
    }

    /// Advertise a mesh endpoint (`IP:PORT`, or `:PORT` for the address the coordinator
    /// sees the session come from) in every Hello.
    pub fn set_mesh_addr(&mut self, addr: String) {
        self.mesh_addr = addr;
    }

    /// The link's state, as the metrics name it.
    pub fn link_state(&self) -> &'static str {
        match self.link {
            Link::Waiting { .. } => "waiting",
            Link::Dialling => "dialling",
            Link::Opening => "opening",
            Link::Up(_) => "up",
        }
    }

    pub fn held(&self) -> &Held {
        &self.held
    }

    /// Results spooled and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.unacked.len()
    }

    pub fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    /// The instant the next [`Input::Timer`] is due (also in the last [`Effect::ArmTimer`]).
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.round_wake;
        match &self.link {
            Link::Waiting { dial_at } => t = t.min(*dial_at),
            Link::Up(live) => {
                t = t.min(live.heartbeat_at);
                if live.quick_left > 0 {
                    t = t.min(live.sample_at);
                }
            }
            Link::Dialling | Link::Opening => {}
        }
        t
    }

    /// Takes one input; returns what to do, in order. The last effect is always the
    /// timer to arm.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Message(msg) => self.on_message(now, msg, &mut out),
            Input::RoundDone {
                campaign_id,
                round,
                results,
            } => {
                let records: Vec<Record> = results
                    .iter()
                    .map(|r| {
                        let rec = record_from_result(&campaign_id, round, r);
                        Record {
                            id: rec.result_id.clone(),
                            kind: Kind::Trace,
                            payload: rec.encode_to_vec(),
                        }
                    })
                    .collect();
                tracing::info!(campaign = %campaign_id, round, traces = records.len(), "round done");
                // Sent only once durable: were the agent to die between a send and the
                // spool write, results the coordinator had not yet stored would be lost.
                out.push(Effect::Spool {
                    campaign_id,
                    round,
                    records,
                });
            }
            Input::AliasDone {
                campaign_id,
                round,
                result,
            } => {
                tracing::info!(
                    campaign = %campaign_id,
                    round,
                    addrs = result.addrs.len(),
                    groups = result.groups.len(),
                    probes = result.probes_sent,
                    "alias round done"
                );
                // Like traces: sent only once durable.
                out.push(Effect::Spool {
                    campaign_id,
                    round,
                    records: vec![Record {
                        id: result.result_id.clone(),
                        kind: Kind::Alias,
                        payload: result.encode_to_vec(),
                    }],
                });
            }
            Input::MeshDone {
                campaign_id,
                round,
                samples,
            } => {
                tracing::info!(campaign = %campaign_id, round, samples = samples.len(), "mesh round done");
                out.push(Effect::Spool {
                    campaign_id,
                    round,
                    records: samples
                        .iter()
                        .map(|m| Record {
                            id: m.result_id.clone(),
                            kind: Kind::Mesh,
                            payload: m.encode_to_vec(),
                        })
                        .collect(),
                });
            }
            Input::MdaDone {
                campaign_id,
                round,
                results,
            } => {
                tracing::info!(campaign = %campaign_id, round, traces = results.len(), "mda round done");
                // Like traces: sent only once durable.
                out.push(Effect::Spool {
                    campaign_id,
                    round,
                    records: results
                        .iter()
                        .map(|r| Record {
                            id: r.result_id.clone(),
                            kind: Kind::Mda,
                            payload: r.encode_to_vec(),
                        })
                        .collect(),
                });
            }
            Input::Spooled(records) => {
                self.unacked.add(records);
                if matches!(self.link, Link::Up(_)) {
                    // Everything unacknowledged goes again; ingest is idempotent.
                    out.extend(self.unacked.batches().into_iter().map(Effect::Send));
                }
            }
            Input::Dialled => {
                if matches!(self.link, Link::Dialling) {
                    self.link = Link::Opening;
                    let hello = pb::Hello {
                        agent_version: env!("CARGO_PKG_VERSION").into(),
                        state: Some(pb::AgentState {
                            campaign_ids: self.held.ids(),
                            spooled_results: self.unacked.len() as u64,
                        }),
                        mesh_addr: self.mesh_addr.clone(),
                    };
                    out.push(Effect::OpenSession {
                        hello: up(Up::Hello(hello)),
                    });
                }
            }
            Input::Opened => {
                if matches!(self.link, Link::Opening) {
                    self.link = Link::Up(Live {
                        heartbeat_every: DEFAULT_HEARTBEAT,
                        heartbeat_at: now.mono,
                        quick_left: QUICK_SAMPLES,
                        sample_at: now.mono,
                        samples: VecDeque::new(),
                    });
                    // Whatever the last session left unacknowledged goes out again.
                    out.extend(self.unacked.batches().into_iter().map(Effect::Send));
                }
            }
            Input::Disconnected(reason) => self.on_disconnected(now, reason),
            Input::Timer => {}
        }
        self.on_timers(now, &mut out);
        out.push(Effect::ArmTimer(self.poll_timeout()));
        out
    }

    fn on_message(&mut self, now: Now, msg: Down, out: &mut Vec<Effect>) {
        let Link::Up(live) = &mut self.link else {
            return;
        };
        match msg {
            Down::Welcome(w) => {
                tracing::info!(agent = %w.agent_name, "session established");
                if w.heartbeat_interval_s > 0 {
                    live.heartbeat_every = Duration::from_secs(u64::from(w.heartbeat_interval_s));
                    live.heartbeat_at = now.mono;
                }
            }
            Down::Campaign(c) => match held_from_instruction(&c) {
                Ok(h) => {
                    tracing::info!(campaign = %h.id, rounds = h.rounds, targets = h.targets.len(), "campaign received");
                    self.held.upsert(h);
                    out.push(Effect::SaveCampaigns(self.held.clone()));
                    self.plan_rounds(now, out);
                }
                Err(e) => tracing::error!(campaign = %c.id, error = %e, "campaign refused"),
            },
            Down::CancelCampaign(c) => {
                if self.held.cancel(&c.campaign_id) {
                    out.push(Effect::SaveCampaigns(self.held.clone()));
                    tracing::info!(campaign = %c.campaign_id, "campaign cancelled");
                }
                self.plan_rounds(now, out);
            }
            Down::Ack(a) => {
                // Refused results are acknowledged too: the coordinator will never store
                // them, so they leave the spool, with a line saying what was lost and why.
                for r in &a.refused {
                    tracing::warn!(campaign = %r.campaign_id, results = r.results, reason = %r.reason, "coordinator refused results; dropped from the spool");
                }
                for id in &a.result_ids {
                    self.unacked.ack(id);
                }
                out.push(Effect::SpoolAck(a.result_ids));
            }
            Down::ClockEcho(e) => {
                live.samples
                    .push_back(clock::estimate(e.t1_ns, e.t2_ns, e.t3_ns, now.unix_ns));
                if live.samples.len() > SAMPLE_WINDOW {
                    live.samples.pop_front();
                }
                if let Some(best) = clock::best(live.samples.iter().copied()) {
                    if best.offset_ns != self.offset_ns {
                        self.offset_ns = best.offset_ns;
                        out.push(Effect::ClockOffset(best.offset_ns));
                    }
                    if best.rtt_ns / 2 != self.offset_bound_ns {
                        self.offset_bound_ns = best.rtt_ns / 2;
                        out.push(Effect::ClockBound(self.offset_bound_ns));
                    }
                }
            }
        }
    }

    fn on_disconnected(&mut self, now: Now, reason: Option<String>) {
        if matches!(self.link, Link::Waiting { .. }) {
            return;
        }
        match reason {
            None => tracing::warn!("session closed by the coordinator"),
            Some(e) => tracing::warn!(error = %e, "session failed"),
        }
        if now.mono.saturating_duration_since(self.attempt_started) > STABLE_SESSION {
            self.backoff = BACKOFF_MIN;
        }
        // Full jitter: a coordinator restart must not see every agent return at once.
        let jitter = (now.unix_ns as u64 % 1000) as f64 / 1000.0;
        let wait = self.backoff.mul_f64(0.5 + jitter);
        tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting");
        self.link = Link::Waiting {
            dial_at: now.mono + wait,
        };
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Everything due at `now`: a dial, clock samples, a heartbeat, rounds.
    fn on_timers(&mut self, now: Now, out: &mut Vec<Effect>) {
        match &mut self.link {
            Link::Waiting { dial_at } if *dial_at <= now.mono => {
                self.link = Link::Dialling;
                self.attempt_started = now.mono;
                out.push(Effect::Connect);
            }
            Link::Up(live) => {
                let sample = || up(Up::ClockSample(pb::ClockSample { t1_ns: now.unix_ns }));
                if live.quick_left > 0 && live.sample_at <= now.mono {
                    live.quick_left -= 1;
                    live.sample_at += QUICK_SAMPLE_EVERY;
                    out.push(Effect::Send(sample()));
                }
                if live.heartbeat_at <= now.mono {
                    live.heartbeat_at += live.heartbeat_every;
                    let best = clock::best(live.samples.iter().copied());
                    out.push(Effect::Send(sample()));
                    out.push(Effect::Send(up(Up::Heartbeat(pb::Heartbeat {
                        sent_at_ns: now.unix_ns,
                        clock_offset_ns: best.map_or(0, |b| b.offset_ns),
                        clock_rtt_ns: best.map_or(0, |b| b.rtt_ns),
                        spooled_results: self.unacked.len() as u64,
                    }))));
                }
            }
            _ => {}
        }
        if self.round_wake <= now.mono {
            if let Some(armed) = self.armed.take() {
                self.fire(armed, out);
            }
            self.plan_rounds(now, out);
        }
    }

    /// Fires every round already due and arms the wake-up for the next one.
    fn plan_rounds(&mut self, now: Now, out: &mut Vec<Effect>) {
        self.armed = None;
        loop {
            let corrected = now.unix_ns + self.offset_ns;
            let Some(due) = self.held.next_due(corrected) else {
                self.round_wake = now.mono + IDLE_RECHECK;
                return;
            };
            let armed = Armed {
                campaign: due.campaign.clone(),
                round: due.round,
                start_ns: due.start_ns,
            };
            let wait_ns = armed.start_ns - corrected - PREPARE_NS;
            if wait_ns > 0 {
                self.round_wake = now.mono + Duration::from_nanos(wait_ns as u64);
                self.armed = Some(armed);
                return;
            }
            self.fire(armed, out);
        }
    }

    fn fire(&mut self, armed: Armed, out: &mut Vec<Effect>) {
        let Armed {
            campaign,
            round,
            start_ns,
        } = armed;
        self.held.fired(&campaign.id, round);
        out.push(Effect::StartRound {
            campaign,
            round,
            start_ns,
        });
        // After the round is under way: an fsync must not delay the probes.
        out.push(Effect::SaveCampaigns(self.held.clone()));
    }
}

#[cfg(test)]
mod tests;
