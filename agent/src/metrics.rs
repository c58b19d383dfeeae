//! The agent's Prometheus metrics (`tracemesh-agent run --metrics ADDR`). The probe
//! driver counts what goes out and comes in (`probe/driver.rs`), rounds add what only
//! the engine knows (unmatched replies), the session driver sets spool depth, clock
//! offset and session state (`session/client.rs`).

use tracemesh_proto::metrics::{
    self, Counter, Gauge, Histogram, LATENCY_BUCKETS, LabeledCounter, Metric, StateGauge,
};

pub static PROBES_SENT: Counter = Counter::new(
    "tracemesh_agent_probes_sent_total",
    "Probe packets written to the raw socket (traces and alias probes).",
);
pub static REPLIES: Counter = Counter::new(
    "tracemesh_agent_replies_total",
    "Replies received on the raw sockets and handed to a prober.",
);
pub static DROPS: LabeledCounter = LabeledCounter::new(
    "tracemesh_agent_drops_total",
    "Probes not sent and replies not used, by reason: unreachable (no route from this host), \
     send_queue_full (the socket stayed full), unmatched_reply (quoting no probe of a running \
     trace), denied (target refused by the deny-list).",
    "reason",
);
pub static RATE: Gauge = Gauge::new(
    "tracemesh_agent_probe_rate_pps",
    "Probes per second sent over the last second of probing (0 when idle).",
);
pub static RATE_LIMIT: Gauge = Gauge::new(
    "tracemesh_agent_rate_limit_pps",
    "The configured global probe rate cap.",
);
pub static TRACES_DONE: Counter =
    Counter::new("tracemesh_agent_traces_done_total", "Traceroutes finished.");
pub static ROUND_LATE: Histogram<12> = Histogram::new(
    "tracemesh_agent_round_late_seconds",
    "How late rounds started after their scheduled instant (corrected clock).",
    LATENCY_BUCKETS,
);
pub static SPOOL_DEPTH: Gauge = Gauge::new(
    "tracemesh_agent_spool_depth",
    "Results spooled on disk and not yet acknowledged by the coordinator.",
);
pub static CLOCK_OFFSET: Gauge = Gauge::new(
    "tracemesh_agent_clock_offset_seconds",
    "Coordinator clock minus this agent's clock, as the session estimates it.",
);
pub static SESSION_STATE: StateGauge = StateGauge::new(
    "tracemesh_agent_session_state",
    "The session's link to the coordinator: 1 for the current state.",
    "state",
    &["waiting", "dialling", "opening", "up"],
);

/// The exposition as of now.
pub fn render() -> String {
    let all: [&dyn Metric; 11] = [
        &PROBES_SENT,
        &REPLIES,
        &DROPS,
        &RATE,
        &RATE_LIMIT,
        &TRACES_DONE,
        &ROUND_LATE,
        &SPOOL_DEPTH,
        &CLOCK_OFFSET,
        &SESSION_STATE,
        &SESSION_STATE_CHANGES,
    ];
    metrics::render(&all)
}

pub static SESSION_STATE_CHANGES: Counter = Counter::new(
    "tracemesh_agent_session_state_changes_total",
    "Changes of the session state (reconnects show here).",
);

/// Records the session's state, counting changes.
pub fn session_state(state: &'static str) {
    if SESSION_STATE.get() != state {
        SESSION_STATE.set(state);
        SESSION_STATE_CHANGES.inc();
    }
}
