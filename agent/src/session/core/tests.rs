//! The session core on a simulated clock: no sockets, no files, no sleeping. Each test
//! plays the driver, feeding inputs and reading the effects.

use std::time::{Duration, Instant};

use prost::Message as _;
use tracemesh_proto::v1::agent_message::Msg as Up;
use tracemesh_proto::v1::coordinator_message::Msg as Down;
use tracemesh_proto::v1::{self as pb};

use super::*;
use crate::probe::{Proto, StopReason, TraceResult};

const MS: i64 = 1_000_000;
const S: i64 = 1_000_000_000;
/// Agent clock at the start of every test; a multiple of 1000 ns, so the backoff jitter
/// (the clock's sub-microsecond digits) starts at zero.
const T0: i64 = 1_800_000_000 * S;

fn t0() -> Now {
    Now {
        mono: Instant::now(),
        unix_ns: T0,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The last timer armed; every `handle` ends with one.
fn timer(effects: &[Effect]) -> Instant {
    match effects.last() {
        Some(Effect::ArmTimer(at)) => *at,
        other => panic!("no timer at the end: {other:?}"),
    }
}

fn sent(effects: &[Effect]) -> Vec<Up> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(pb::AgentMessage { msg: Some(m) }) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn batches(effects: &[Effect]) -> Vec<Vec<String>> {
    sent(effects)
        .into_iter()
        .filter_map(|m| match m {
            Up::TraceBatch(b) => Some(b.results.into_iter().map(|r| r.result_id).collect()),
            _ => None,
        })
        .collect()
}

fn heartbeats(effects: &[Effect]) -> Vec<pb::Heartbeat> {
    sent(effects)
        .into_iter()
        .filter_map(|m| match m {
            Up::Heartbeat(h) => Some(h),
            _ => None,
        })
        .collect()
}

/// Dials and opens a session at `now`; returns the effects of the open.
fn connect(core: &mut SessionCore, now: Now) -> Vec<Effect> {
    let fx = core.handle(now, Input::Timer);
    assert!(fx.contains(&Effect::Connect), "{fx:?}");
    open(core, now)
}

/// Completes a dial the core asked for.
fn open(core: &mut SessionCore, now: Now) -> Vec<Effect> {
    let fx = core.handle(now, Input::Dialled);
    assert!(
        matches!(fx[0], Effect::OpenSession { .. }),
        "Hello before anything else: {fx:?}"
    );
    core.handle(now, Input::Opened)
}

/// Advances to the next timer and fires it, like the driver's sleep.
fn tick(core: &mut SessionCore, now: Now) -> (Now, Vec<Effect>) {
    let at = core.poll_timeout();
    let now = now.after(at.saturating_duration_since(now.mono));
    (now, core.handle(now, Input::Timer))
}

fn campaign(id: &str, start_at_ns: i64, every_s: u32, rounds: u32) -> Input {
    Input::Message(Down::Campaign(pb::CampaignInstruction {
        id: id.into(),
        targets: vec!["192.0.2.1".into(), "192.0.2.2".into()],
        method: None,
        every_s,
        rounds,
        start_at_ns,
        alias: None,
        mesh_peers: vec![],
        mesh: None,
        mda: None,
    }))
}

/// The coordinator's answer to a sample sent at agent time `t1`, its clock `offset` ahead,
/// `out` and `back` ns on the way; to be handled at agent time `t1 + out + back`.
fn echo(t1: i64, offset: i64, out: i64, back: i64) -> (Input, i64) {
    let t2 = t1 + out + offset;
    let e = pb::ClockEcho {
        t1_ns: t1,
        t2_ns: t2,
        t3_ns: t2,
    };
    (Input::Message(Down::ClockEcho(e)), t1 + out + back)
}

fn at_unix(now: Now, unix_ns: i64) -> Now {
    now.after(Duration::from_nanos((unix_ns - now.unix_ns) as u64))
}

fn result(dst: &str) -> TraceResult {
    TraceResult {
        dst: dst.parse().unwrap(),
        src: None,
        proto: Proto::Icmp,
        stop_reason: StopReason::Completed,
        start: 1.5,
        hops: vec![],
        probes_sent: 1,
    }
}

fn spooled(effects: &[Effect]) -> Vec<Record> {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Spool { records, .. } => Some(records.clone()),
            _ => None,
        })
        .expect("a spool write")
}

#[test]
fn an_instruction_fires_its_rounds_at_the_corrected_instant() {
    let mut core = SessionCore::new(Held::default(), vec![], t0());
    let now = t0();
    connect(&mut core, now);
    // The coordinator's clock is 3 s ahead of the agent's; 5 ms each way.
    let (input, t4) = echo(T0, 3 * S, 5 * MS, 5 * MS);
    let now = at_unix(now, t4);
    let fx = core.handle(now, input);
    assert!(fx.contains(&Effect::ClockOffset(3 * S)), "{fx:?}");

    // Round 0 at coordinator time T0 + 3 s + 20 s, i.e. agent time T0 + 20 s.
    let start_at = T0 + 23 * S;
    let fx = core.handle(now, campaign("c1", start_at, 10, 2));
    assert!(matches!(fx[0], Effect::SaveCampaigns(ref h) if h.campaigns.contains_key("c1")));
    assert!(!fx.iter().any(|e| matches!(e, Effect::StartRound { .. })));

    let mut now = now;
    let mut fired = Vec::new();
    while fired.len() < 2 {
        let (next, fx) = tick(&mut core, now);
        now = next;
        assert!(now.unix_ns < T0 + 60 * S, "rounds never fired");
        for (i, e) in fx.iter().enumerate() {
            if let Effect::StartRound {
                campaign,
                round,
                start_ns,
            } = e
            {
                fired.push((campaign.id.clone(), *round, *start_ns, now.unix_ns));
                // The fired round is saved after the round is under way.
                assert!(
                    matches!(&fx[i + 1], Effect::SaveCampaigns(h) if h.campaigns.get("c1").is_none_or(|c| c.next_round == round + 1)),
                    "{fx:?}"
                );
            }
        }
    }
    // Woken 100 ms early on the agent's clock, to prepare; start instants in
    // coordinator time.
    assert_eq!(
        fired,
        [
            ("c1".into(), 0, start_at, T0 + 20 * S - 100 * MS),
            ("c1".into(), 1, start_at + 10 * S, T0 + 30 * S - 100 * MS),
        ]
    );
    assert!(core.held().campaigns.is_empty(), "both rounds fired");
}

#[test]
fn rounds_fire_without_a_session_and_a_late_round_fires_at_once() {
    let now = t0();
    let mut held = Held::default();
    held.upsert(HeldCampaign {
        id: "c".into(),
        targets: vec!["192.0.2.1".into()],
        proto: Proto::Icmp,
        attempts: 1,
        max_ttl: 30,
        wait_ms: 1000,
        every_s: 60,
        rounds: 3,
        // Round 0 began 0.5 s ago: within the grace, so it still fires, right away.
        start_at_ns: T0 - 500 * MS,
        next_round: 0,
        alias: None,
        mesh: None,
        mda: None,
    });
    let mut core = SessionCore::new(held, vec![], now);
    let fx = core.handle(now, Input::Timer);
    let starts: Vec<u32> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::StartRound { round, .. } => Some(*round),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [0]);
    assert!(fx.contains(&Effect::Connect));
    // No session comes up; round 1 fires on time anyway.
    let fx = core.handle(now, Input::Disconnected(Some("refused".into())));
    assert!(!fx.iter().any(|e| matches!(e, Effect::StartRound { .. })));
    let mut now = now;
    loop {
        let (next, fx) = tick(&mut core, now);
        now = next;
        if fx.contains(&Effect::Connect) {
            core.handle(now, Input::Disconnected(Some("refused".into())));
        }
        if fx
            .iter()
            .any(|e| matches!(e, Effect::StartRound { round: 1, .. }))
        {
            break;
        }
        assert!(now.unix_ns < T0 + 120 * S);
    }
    assert_eq!(now.unix_ns, T0 + 60 * S - 500 * MS - 100 * MS);
}

#[test]
fn results_are_spooled_before_they_are_sent_and_acks_delete_them() {
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    connect(&mut core, now);
    let fx = core.handle(
        now,
        Input::RoundDone {
            campaign_id: "c".into(),
            round: 0,
            results: vec![result("192.0.2.1"), result("192.0.2.2")],
        },
    );
    assert!(
        batches(&fx).is_empty(),
        "nothing is sent before the spool holds it"
    );
    let records = spooled(&fx);
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["c/0/192.0.2.1", "c/0/192.0.2.2"]);
    let wire = pb::TraceRecord::decode(records[0].payload.as_slice()).unwrap();
    assert_eq!((wire.round, wire.dst.as_str()), (0, "192.0.2.1"));

    let fx = core.handle(now, Input::Spooled(records));
    assert_eq!(batches(&fx), [["c/0/192.0.2.1", "c/0/192.0.2.2"]]);
    assert_eq!(core.pending(), 2);

    let fx = core.handle(
        now,
        Input::Message(Down::Ack(pb::Ack {
            result_ids: vec!["c/0/192.0.2.1".into(), "unknown".into()],
            ..Default::default()
        })),
    );
    assert_eq!(
        fx[0],
        Effect::SpoolAck(vec!["c/0/192.0.2.1".into(), "unknown".into()])
    );
    assert_eq!(core.pending(), 1);

    // The next heartbeat reports what is still waiting.
    let mut now = now;
    let hb = loop {
        let (next, fx) = tick(&mut core, now);
        now = next;
        if let Some(h) = heartbeats(&fx).pop() {
            break h;
        }
    };
    assert_eq!(hb.spooled_results, 1);
    assert_eq!(hb.sent_at_ns, T0 + 10 * S);

    // A new session announces and resends only what is unacknowledged.
    core.handle(now, Input::Disconnected(None));
    let (now, fx) = tick(&mut core, now);
    assert!(fx.contains(&Effect::Connect));
    let fx = core.handle(now, Input::Dialled);
    let Effect::OpenSession {
        hello: pb::AgentMessage {
            msg: Some(Up::Hello(hello)),
        },
    } = &fx[0]
    else {
        panic!("{fx:?}")
    };
    assert_eq!(hello.state.as_ref().unwrap().spooled_results, 1);
    let fx = core.handle(now, Input::Opened);
    assert_eq!(batches(&fx), [["c/0/192.0.2.2"]]);
}

/// Results the coordinator refuses (a campaign it never issued to this agent) come back
/// acknowledged with the refusal: they leave the spool and are not sent again.
#[test]
fn refused_results_leave_the_spool_and_are_not_resent() {
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    connect(&mut core, now);
    let fx = core.handle(
        now,
        Input::RoundDone {
            campaign_id: "gone".into(),
            round: 2,
            results: vec![result("192.0.2.3")],
        },
    );
    let fx = core.handle(now, Input::Spooled(spooled(&fx)));
    assert_eq!(batches(&fx), [["gone/2/192.0.2.3"]]);
    let fx = core.handle(
        now,
        Input::Message(Down::Ack(pb::Ack {
            result_ids: vec!["gone/2/192.0.2.3".into()],
            refused: vec![pb::Refusal {
                campaign_id: "gone".into(),
                reason: "campaign \"gone\" was never issued to this agent".into(),
                results: 1,
            }],
        })),
    );
    assert_eq!(fx[0], Effect::SpoolAck(vec!["gone/2/192.0.2.3".into()]));
    assert_eq!(core.pending(), 0);
    // A new session has nothing of it to send.
    core.handle(now, Input::Disconnected(None));
    let (now, fx) = tick(&mut core, now);
    assert!(fx.contains(&Effect::Connect));
    core.handle(now, Input::Dialled);
    let fx = core.handle(now, Input::Opened);
    assert!(batches(&fx).is_empty(), "{fx:?}");
}

#[test]
fn results_wait_for_a_session_and_go_in_batches_of_500() {
    let now = t0();
    // Two results were in the spool at start, oldest first.
    let waiting: Vec<Record> = ["c/0/192.0.2.9", "c/0/192.0.2.1"]
        .iter()
        .map(|id| {
            let dst = id.rsplit('/').next().unwrap();
            let rec = record_from_result("c", 0, &result(dst));
            Record {
                id: (*id).into(),
                kind: crate::session::spool::Kind::Trace,
                payload: rec.encode_to_vec(),
            }
        })
        .collect();
    let mut core = SessionCore::new(Held::default(), waiting, now);
    core.handle(now, Input::Timer);
    core.handle(now, Input::Disconnected(Some("no route".into())));
    let results: Vec<TraceResult> = (0..1200u32)
        .map(|i| result(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()))
        .collect();
    let fx = core.handle(
        now,
        Input::RoundDone {
            campaign_id: "c".into(),
            round: 1,
            results,
        },
    );
    let fx = core.handle(now, Input::Spooled(spooled(&fx)));
    assert!(batches(&fx).is_empty(), "no session: nothing sent");
    assert_eq!(core.pending(), 1202);

    let (now, fx) = tick(&mut core, now);
    assert!(fx.contains(&Effect::Connect));
    let fx = open(&mut core, now);
    let sizes: Vec<usize> = batches(&fx).iter().map(Vec::len).collect();
    assert_eq!(sizes, [500, 500, 202]);
    // The spool's order: the older batch first.
    assert_eq!(batches(&fx)[0][..2], ["c/0/192.0.2.9", "c/0/192.0.2.1"]);
}

#[test]
fn reconnect_backoff_doubles_to_a_cap_and_resets_after_a_healthy_session() {
    let mut now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    assert!(core.handle(now, Input::Timer).contains(&Effect::Connect));
    let mut waits = Vec::new();
    for _ in 0..10 {
        core.handle(now, Input::Disconnected(Some("refused".into())));
        let failed = now;
        // The rounds' idle check may tick in between; the dial is what counts.
        loop {
            let (next, fx) = tick(&mut core, now);
            now = next;
            if fx.contains(&Effect::Connect) {
                break;
            }
        }
        waits.push((now.unix_ns - failed.unix_ns) / MS);
    }
    // Jitter is zero at these instants (sub-microsecond digits 0): half the backoff.
    assert_eq!(
        waits,
        [125, 250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
    );

    // A session that stays up past 30 s was healthy: backoff starts again.
    core.handle(now, Input::Dialled);
    core.handle(now, Input::Opened);
    let later = now.after(Duration::from_secs(31));
    let fx = core.handle(later, Input::Disconnected(None));
    assert_eq!(timer(&fx), later.mono + ms(125));

    // Jitter comes from the clock's sub-microsecond digits: at 500, the whole backoff
    // (500 ms, doubled since the reset).
    let (now, fx) = tick(&mut core, later);
    assert!(fx.contains(&Effect::Connect));
    let odd = Now {
        unix_ns: now.unix_ns + 500,
        ..now
    };
    let fx = core.handle(odd, Input::Disconnected(None));
    assert_eq!(timer(&fx), odd.mono + ms(500));
}

#[test]
fn the_clock_offset_is_the_lowest_rtt_sample_of_the_last_16() {
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    connect(&mut core, now);
    let mut t = T0;
    let mut feed = |core: &mut SessionCore, offset: i64, out: i64, back: i64| {
        let (input, t4) = echo(t, offset, out, back);
        t = t4 + MS;
        let fx = core.handle(at_unix(now, t4), input);
        fx.iter().find_map(|e| match e {
            Effect::ClockOffset(o) => Some(*o),
            _ => None,
        })
    };
    // Asymmetric paths skew the estimate by half the asymmetry; the low-RTT sample wins.
    assert_eq!(
        feed(&mut core, 2 * S, 30 * MS, 10 * MS),
        Some(2 * S + 10 * MS)
    );
    assert_eq!(feed(&mut core, 2 * S, MS, MS), Some(2 * S));
    assert_eq!(feed(&mut core, 2 * S, 25 * MS, 5 * MS), None, "unchanged");
    assert_eq!(core.offset_ns(), 2 * S);
    for _ in 0..14 {
        assert_eq!(feed(&mut core, S, 5 * MS, 5 * MS), None);
    }
    // 18 samples so far: the 40 ms one and now the 2 ms one have left the window of 16.
    assert_eq!(feed(&mut core, S, 5 * MS, 5 * MS), Some(S));

    // Heartbeats report this session's best sample; a new session starts a new window
    // but rounds keep the offset meanwhile.
    let now = at_unix(now, t);
    core.handle(now, Input::Disconnected(None));
    assert_eq!(core.offset_ns(), S);
    let (now, fx) = tick(&mut core, now);
    assert!(fx.contains(&Effect::Connect));
    let fx = open(&mut core, now);
    let hb = heartbeats(&fx).pop().unwrap();
    assert_eq!((hb.clock_offset_ns, hb.clock_rtt_ns), (0, 0));
}

#[test]
fn a_session_opens_with_quick_samples_then_heartbeats_at_the_welcomed_period() {
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    let fx = connect(&mut core, now);
    let kinds = |fx: &[Effect]| -> Vec<&'static str> {
        sent(fx)
            .iter()
            .map(|m| match m {
                Up::ClockSample(_) => "sample",
                Up::Heartbeat(_) => "heartbeat",
                Up::TraceBatch(_) => "batch",
                Up::AliasBatch(_) => "alias batch",
                Up::MeshBatch(_) => "mesh batch",
                Up::MdaBatch(_) => "mda batch",
                Up::Hello(_) => "hello",
            })
            .collect()
    };
    assert_eq!(kinds(&fx), ["sample", "sample", "heartbeat"]);
    let mut now = now;
    let mut log = Vec::new();
    while now.unix_ns < T0 + 25 * S {
        let (next, fx) = tick(&mut core, now);
        now = next;
        for k in kinds(&fx) {
            log.push(((now.unix_ns - T0) / MS, k));
        }
    }
    assert_eq!(
        log,
        [
            (200, "sample"),
            (400, "sample"),
            (600, "sample"),
            (800, "sample"),
            (10_000, "sample"),
            (10_000, "heartbeat"),
            (20_000, "sample"),
            (20_000, "heartbeat"),
        ]
    );
    // The Welcome's period takes over at once.
    let fx = core.handle(
        now,
        Input::Message(Down::Welcome(pb::Welcome {
            agent_name: "ottawa-1".into(),
            server_time_ns: 0,
            heartbeat_interval_s: 3,
        })),
    );
    assert_eq!(kinds(&fx), ["sample", "heartbeat"]);
    let (next, fx) = tick(&mut core, now);
    assert_eq!(kinds(&fx), ["sample", "heartbeat"]);
    assert_eq!(next.unix_ns - now.unix_ns, 3 * S);
}

#[test]
fn a_cancelled_campaign_never_fires_and_a_refused_one_is_not_held() {
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    connect(&mut core, now);
    core.handle(now, campaign("c1", T0 + 2 * S, 1, 5));
    let fx = core.handle(
        now,
        Input::Message(Down::CancelCampaign(pb::CancelCampaign {
            campaign_id: "c1".into(),
        })),
    );
    assert!(matches!(&fx[0], Effect::SaveCampaigns(h) if h.campaigns.is_empty()));
    // Cancelling again changes nothing, so nothing is written.
    let fx = core.handle(
        now,
        Input::Message(Down::CancelCampaign(pb::CancelCampaign {
            campaign_id: "c1".into(),
        })),
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::SaveCampaigns(_))));
    let fx = core.handle(now, campaign("", T0, 1, 5));
    assert!(!fx.iter().any(|e| matches!(e, Effect::SaveCampaigns(_))));
    let mut now = now;
    while now.unix_ns < T0 + 10 * S {
        let (next, fx) = tick(&mut core, now);
        now = next;
        assert!(!fx.iter().any(|e| matches!(e, Effect::StartRound { .. })));
    }
}

#[test]
fn campaigns_long_past_are_dropped_at_start_and_the_hello_lists_the_rest() {
    let now = t0();
    let mut held = Held::default();
    for (id, start) in [("old", T0 - 3600 * S), ("next", T0 + 3600 * S)] {
        held.upsert(HeldCampaign {
            id: id.into(),
            targets: vec![],
            proto: Proto::Udp,
            attempts: 1,
            max_ttl: 8,
            wait_ms: 100,
            every_s: 10,
            rounds: 2,
            start_at_ns: start,
            next_round: 0,
            alias: None,
            mesh: None,
            mda: None,
        });
    }
    let mut core = SessionCore::new(held, vec![], now);
    core.handle(now, Input::Timer);
    let fx = core.handle(now, Input::Dialled);
    let Effect::OpenSession {
        hello: pb::AgentMessage {
            msg: Some(Up::Hello(hello)),
        },
    } = &fx[0]
    else {
        panic!("{fx:?}")
    };
    assert_eq!(hello.state.as_ref().unwrap().campaign_ids, ["next"]);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
}

fn alias_batches(effects: &[Effect]) -> Vec<Vec<String>> {
    sent(effects)
        .into_iter()
        .filter_map(|m| match m {
            Up::AliasBatch(b) => Some(b.results.into_iter().map(|r| r.result_id).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_alias_round_fires_on_time_and_its_result_is_spooled_sent_and_acked_like_traces() {
    use crate::probe::alias::Method;
    use crate::session::schedule::HeldAlias;
    use crate::session::spool::Kind;
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    connect(&mut core, now);
    let start = T0 + 2 * S;
    let fx = core.handle(
        now,
        Input::Message(Down::Campaign(pb::CampaignInstruction {
            id: "a1".into(),
            targets: vec!["10.0.0.2".into(), "10.9.0.2".into()],
            method: None,
            every_s: 0,
            rounds: 1,
            start_at_ns: start,
            alias: Some(pb::AliasSpec {
                method: pb::AliasMethod::Both as i32,
                rounds: 5,
            }),
            mesh_peers: vec![],
            mesh: None,
            mda: None,
        })),
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::SaveCampaigns(_))));
    // Nothing fires before the instant (less the preparation lead).
    let mut now = now;
    let (round, campaign) = loop {
        let (next, fx) = tick(&mut core, now);
        now = next;
        if let Some((c, r, s)) = fx.iter().find_map(|e| match e {
            Effect::StartRound {
                campaign,
                round,
                start_ns,
            } => Some((campaign.clone(), *round, *start_ns)),
            _ => None,
        }) {
            assert_eq!(s, start);
            break (r, c);
        }
        assert!(now.unix_ns < start, "the round never fired");
    };
    assert_eq!(
        now.unix_ns,
        start - PREPARE_NS,
        "fires its preparation lead early"
    );
    assert_eq!(round, 0);
    assert_eq!(
        campaign.alias,
        Some(HeldAlias {
            method: Method::Both,
            rounds: 5
        })
    );
    assert!(core.held().campaigns.is_empty(), "its only round fired");

    let result = pb::AliasResult {
        result_id: tracemesh_proto::alias_result_id("a1", 0),
        campaign_id: "a1".into(),
        round: 0,
        probes_sent: 12,
        ..Default::default()
    };
    let fx = core.handle(
        now,
        Input::AliasDone {
            campaign_id: "a1".into(),
            round: 0,
            result,
        },
    );
    assert!(
        alias_batches(&fx).is_empty(),
        "not sent before it is durable"
    );
    let records = spooled(&fx);
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].id.as_str(), records[0].kind),
        ("a1/0/alias", Kind::Alias)
    );
    let fx = core.handle(now, Input::Spooled(records));
    assert_eq!(alias_batches(&fx), [["a1/0/alias"]]);
    assert!(
        batches(&fx).is_empty(),
        "no trace batch for an alias result"
    );
    assert_eq!(core.pending(), 1);

    // Unacknowledged, it goes again on the next session; the ack then drops it.
    core.handle(now, Input::Disconnected(None));
    let (now, fx) = tick(&mut core, now);
    assert!(fx.contains(&Effect::Connect));
    let fx = open(&mut core, now);
    assert_eq!(alias_batches(&fx), [["a1/0/alias"]]);
    let fx = core.handle(
        now,
        Input::Message(Down::Ack(pb::Ack {
            result_ids: vec!["a1/0/alias".into()],
            ..Default::default()
        })),
    );
    assert_eq!(fx[0], Effect::SpoolAck(vec!["a1/0/alias".into()]));
    assert_eq!(core.pending(), 0);
}

fn mesh_batches(effects: &[Effect]) -> Vec<Vec<String>> {
    sent(effects)
        .into_iter()
        .filter_map(|m| match m {
            Up::MeshBatch(b) => Some(b.samples.into_iter().map(|s| s.result_id).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn mesh_samples_go_up_once_durable_and_again_until_acknowledged() {
    use crate::session::spool::Kind;
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    core.set_mesh_addr("192.0.2.7:7444".into());
    let fx = core.handle(now, Input::Timer);
    assert!(fx.contains(&Effect::Connect));
    let fx = core.handle(now, Input::Dialled);
    // The Hello says where the mesh endpoint listens.
    let hello = fx
        .iter()
        .find_map(|e| match e {
            Effect::OpenSession { hello } => match &hello.msg {
                Some(Up::Hello(h)) => Some(h.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("a hello");
    assert_eq!(hello.mesh_addr, "192.0.2.7:7444");
    core.handle(now, Input::Opened);
    let sample = |src: &str| pb::MeshSample {
        result_id: tracemesh_proto::mesh_result_id("m1", 2, src),
        campaign_id: "m1".into(),
        round: 2,
        src: src.into(),
        sent: 10,
        received: 9,
        owd_min_ns: Some(5_000_000),
        ..Default::default()
    };
    let fx = core.handle(
        now,
        Input::MeshDone {
            campaign_id: "m1".into(),
            round: 2,
            samples: vec![sample("a"), sample("b")],
        },
    );
    assert!(
        mesh_batches(&fx).is_empty(),
        "not sent before it is durable"
    );
    let records = spooled(&fx);
    assert!(records.iter().all(|r| r.kind == Kind::Mesh));
    let fx = core.handle(now, Input::Spooled(records));
    assert_eq!(mesh_batches(&fx), [["m1/2/mesh/a", "m1/2/mesh/b"]]);
    assert!(batches(&fx).is_empty() && alias_batches(&fx).is_empty());
    // A new session sends them again; the ack drops them.
    core.handle(now, Input::Disconnected(None));
    let (now, _) = tick(&mut core, now);
    let fx = open(&mut core, now);
    assert_eq!(mesh_batches(&fx), [["m1/2/mesh/a", "m1/2/mesh/b"]]);
    core.handle(
        now,
        Input::Message(Down::Ack(pb::Ack {
            result_ids: vec!["m1/2/mesh/a".into(), "m1/2/mesh/b".into()],
            ..Default::default()
        })),
    );
    assert_eq!(core.pending(), 0);
}

fn mda_batches(effects: &[Effect]) -> Vec<Vec<String>> {
    sent(effects)
        .into_iter()
        .filter_map(|m| match m {
            Up::MdaBatch(b) => Some(b.results.into_iter().map(|r| r.result_id).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn mda_results_go_up_once_durable_and_again_until_acknowledged() {
    use crate::session::spool::Kind;
    let now = t0();
    let mut core = SessionCore::new(Held::default(), vec![], now);
    connect(&mut core, now);
    let result = |dst: &str| pb::MdaResult {
        result_id: tracemesh_proto::mda_result_id("d1", 0, dst),
        campaign_id: "d1".into(),
        dst: dst.into(),
        probes_sent: 30,
        ..Default::default()
    };
    let fx = core.handle(
        now,
        Input::MdaDone {
            campaign_id: "d1".into(),
            round: 0,
            results: vec![result("192.0.2.1"), result("192.0.2.2")],
        },
    );
    assert!(mda_batches(&fx).is_empty(), "not sent before it is durable");
    let records = spooled(&fx);
    assert!(records.iter().all(|r| r.kind == Kind::Mda));
    let fx = core.handle(now, Input::Spooled(records));
    let want = [["d1/0/mda/192.0.2.1", "d1/0/mda/192.0.2.2"]];
    assert_eq!(mda_batches(&fx), want);
    assert!(batches(&fx).is_empty() && mesh_batches(&fx).is_empty());
    core.handle(now, Input::Disconnected(None));
    let (now, _) = tick(&mut core, now);
    let fx = open(&mut core, now);
    assert_eq!(mda_batches(&fx), want, "resent on the next session");
    core.handle(
        now,
        Input::Message(Down::Ack(pb::Ack {
            result_ids: want[0].iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    );
    assert_eq!(core.pending(), 0);
}
