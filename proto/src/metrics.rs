//! Prometheus metrics for both binaries: counters, gauges and histograms that the
//! component owning an event updates (lock-free, usable as `static`s), rendered in the
//! text exposition format (version 0.0.4), and a minimal HTTP endpoint serving them
//! (`GET /metrics`) for `--metrics ADDR`.
//!
//! Hand-written rather than a client crate: the format is a few lines of text, and
//! neither binary needs more than these three kinds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Anything that can write its samples in the exposition format.
pub trait Metric: Sync {
    fn render(&self, out: &mut String);
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

/// A sample value as the format writes it (`+Inf`, `NaN`, shortest round-trip decimal).
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// A monotonically increasing count. `name` ends in `_total`.
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    help: &'static str,
    v: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Counter {
            name,
            help,
            v: AtomicU64::new(0),
        }
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.v.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.v.load(Ordering::Relaxed)
    }
}

impl Metric for Counter {
    fn render(&self, out: &mut String) {
        // The family is named without the suffix; its sample carries it.
        let family = self.name.strip_suffix("_total").unwrap_or(self.name);
        header(out, family, self.help, "counter");
        let _ = writeln!(out, "{family}_total {}", self.get());
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    bits: AtomicU64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Gauge {
            name,
            help,
            // 0.0_f64's bits are all zero.
            bits: AtomicU64::new(0),
        }
    }
    pub fn set(&self, v: f64) {
        self.bits.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
}

impl Metric for Gauge {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        let _ = writeln!(out, "{} {}", self.name, value(self.get()));
    }
}

/// Counters split by one label (e.g. drops by `reason`).
#[derive(Debug)]
pub struct LabeledCounter {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Mutex<BTreeMap<&'static str, u64>>,
}

impl LabeledCounter {
    pub const fn new(name: &'static str, help: &'static str, label: &'static str) -> Self {
        LabeledCounter {
            name,
            help,
            label,
            values: Mutex::new(BTreeMap::new()),
        }
    }
    pub fn add(&self, label_value: &'static str, n: u64) {
        let mut m = self.values.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(label_value).or_insert(0) += n;
    }
    pub fn inc(&self, label_value: &'static str) {
        self.add(label_value, 1);
    }
    pub fn get(&self, label_value: &str) -> u64 {
        let m = self.values.lock().unwrap_or_else(|p| p.into_inner());
        m.get(label_value).copied().unwrap_or(0)
    }
}

impl Metric for LabeledCounter {
    fn render(&self, out: &mut String) {
        let family = self.name.strip_suffix("_total").unwrap_or(self.name);
        header(out, family, self.help, "counter");
        let m = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (v, n) in m.iter() {
            let _ = writeln!(
                out,
                "{family}_total{{{}=\"{}\"}} {n}",
                self.label,
                escape_label(v)
            );
        }
    }
}

/// One gauge per value of a label, exactly one of them 1: a state machine's state.
#[derive(Debug)]
pub struct StateGauge {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    states: &'static [&'static str],
    current: AtomicU64,
}

impl StateGauge {
    /// `states[0]` is the initial state.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        states: &'static [&'static str],
    ) -> Self {
        StateGauge {
            name,
            help,
            label,
            states,
            current: AtomicU64::new(0),
        }
    }
    /// Unknown states are ignored (the set is fixed so that dashboards can rely on it).
    pub fn set(&self, state: &str) {
        if let Some(i) = self.states.iter().position(|s| *s == state) {
            self.current.store(i as u64, Ordering::Relaxed);
        }
    }
    pub fn get(&self) -> &'static str {
        let i = self.current.load(Ordering::Relaxed) as usize;
        self.states.get(i).copied().unwrap_or("")
    }
}

impl Metric for StateGauge {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        let now = self.get();
        for s in self.states {
            let _ = writeln!(
                out,
                "{}{{{}=\"{}\"}} {}",
                self.name,
                self.label,
                escape_label(s),
                u8::from(*s == now)
            );
        }
    }
}

/// Observations in `N` fixed buckets (upper bounds, ascending) plus `+Inf`.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    name: &'static str,
    help: &'static str,
    bounds: [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_bits: AtomicU64,
}

/// Seconds, from a millisecond to a minute: ingest, dispatch and round latencies.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
];

impl<const N: usize> Histogram<N> {
    pub const fn new(name: &'static str, help: &'static str, bounds: [f64; N]) -> Self {
        Histogram {
            name,
            help,
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        // A float sum with compare-and-swap: observers never block each other.
        let mut cur = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self.sum_bits.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }
}

impl<const N: usize> Metric for Histogram<N> {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let count = self.count();
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{}_bucket{{le=\"{}\"}} {cumulative}",
                self.name,
                value(*b)
            );
        }
        // Read separately from the buckets: under concurrent observation `+Inf` may lag
        // or lead by the observations in flight, never by more.
        let _ = writeln!(
            out,
            "{}_bucket{{le=\"+Inf\"}} {}",
            self.name,
            count.max(cumulative)
        );
        let _ = writeln!(out, "{}_sum {}", self.name, value(self.sum()));
        let _ = writeln!(out, "{}_count {}", self.name, count.max(cumulative));
    }
}

/// The exposition text of `metrics`, in order.
pub fn render(metrics: &[&dyn Metric]) -> String {
    let mut out = String::new();
    for m in metrics {
        m.render(&mut out);
    }
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint answers to the first line of an HTTP request: `GET /metrics`
/// (and `/`) gets the exposition, anything else a 404 or 405. Pure, for testing.
pub fn respond(request_line: &str, body: impl FnOnce() -> String) -> String {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics" | "/") => ("200 OK", CONTENT_TYPE, body()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".into(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `body` renders the
/// current exposition on each scrape. One short-lived connection per scrape, as
/// Prometheus makes them; a slow or silent client is cut off after a few seconds.
pub async fn serve<F>(listener: tokio::net::TcpListener, body: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = std::sync::Arc::new(body);
    loop {
        let (mut sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                // The request line is all we need; stop at the end of the headers.
                while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                tracing::debug!(%peer, "metrics endpoint: request not read");
                return;
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.lines().next().unwrap_or("");
            let reply = respond(line, || body());
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static C: Counter = Counter::new("t_things_total", "Things.\nCounted.");
    static G: Gauge = Gauge::new("t_depth", "Depth.");
    static L: LabeledCounter = LabeledCounter::new("t_drops_total", "Drops.", "reason");
    static S: StateGauge = StateGauge::new("t_state", "State.", "state", &["down", "up"]);
    static H: Histogram<3> = Histogram::new("t_latency_seconds", "Latency.", [0.1, 1.0, 10.0]);

    #[test]
    fn renders_the_text_exposition_format() {
        C.add(3);
        G.set(-2.5);
        L.inc("queue \"full\"");
        L.add("unreachable", 2);
        S.set("up");
        S.set("sideways");
        for v in [0.05, 0.5, 0.7, 100.0] {
            H.observe(v);
        }
        let text = render(&[&C, &G, &L, &S, &H]);
        let want = "\
# HELP t_things Things.\\nCounted.
# TYPE t_things counter
t_things_total 3
# HELP t_depth Depth.
# TYPE t_depth gauge
t_depth -2.5
# HELP t_drops Drops.
# TYPE t_drops counter
t_drops_total{reason=\"queue \\\"full\\\"\"} 1
t_drops_total{reason=\"unreachable\"} 2
# HELP t_state State.
# TYPE t_state gauge
t_state{state=\"down\"} 0
t_state{state=\"up\"} 1
# HELP t_latency_seconds Latency.
# TYPE t_latency_seconds histogram
t_latency_seconds_bucket{le=\"0.1\"} 1
t_latency_seconds_bucket{le=\"1\"} 3
t_latency_seconds_bucket{le=\"10\"} 3
t_latency_seconds_bucket{le=\"+Inf\"} 4
t_latency_seconds_sum 101.25
t_latency_seconds_count 4
";
        assert_eq!(text, want);
    }

    #[test]
    fn answers_only_get_metrics() {
        let ok = respond("GET /metrics HTTP/1.1", || "x 1\n".into());
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE) && ok.ends_with("\r\n\r\nx 1\n"));
        assert!(respond("GET /other HTTP/1.1", String::new).starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1", String::new).starts_with("HTTP/1.1 405"));
        assert!(respond("", String::new).starts_with("HTTP/1.1 405"));
    }

    proptest::proptest! {
        // Whatever a client sends, the answer is one well-formed response whose length
        // header matches its body, and only `GET /metrics` (or `/`) gets the metrics.
        #[test]
        fn any_request_line_gets_one_well_formed_answer(line in ".{0,200}") {
            let r = respond(&line, || "secret 1\n".into());
            let (head, body) = r.split_once("\r\n\r\n").unwrap_or_default();
            proptest::prop_assert!(head.starts_with("HTTP/1.1 "));
            let len = format!("Content-Length: {}", body.len());
            proptest::prop_assert!(head.contains(&len));
            if body.contains("secret") {
                let mut p = line.split_whitespace();
                proptest::prop_assert_eq!(p.next(), Some("GET"));
                let path = p.next().unwrap_or("").split('?').next().unwrap_or("");
                proptest::prop_assert!(path == "/metrics" || path == "/");
            }
        }
    }
}
