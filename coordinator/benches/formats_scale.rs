//! Import and export throughput over ≥ 1,000,000 traces, in traces/s, through the same
//! code paths as `tracemesh import` and `tracemesh export`: Atlas JSON lines encoded,
//! then read (`formats::read_items`, line by line) and ingested into a real sled store
//! in the import's batches; the store
//! read back and written as warts, scamper JSON, Atlas JSON and Parquet. Then the peer:
//! scamper's own `sc_warts2json` converting our warts file to JSON, against our
//! warts → scamper JSON conversion of the same file (same input, same kind of output;
//! theirs is written to a pipe and counted, ours to a byte counter). JSON exports are
//! counted, not written to disk; warts and Parquet are written to `TM_BENCH_DIR`.
//!
//! Traces are synthetic and shaped like a mesh's: 200 vantages, 12 TTLs, routers shared
//! between paths, one silent TTL in six, MPLS labels on some hops. Every stage checks
//! its count, so a stage that drops traces cannot pass for a fast one.
//!
//! Size: `TM_BENCH_TRACES` (default 1,000,000). Run:
//! `cargo bench -p tracemesh --bench formats_scale`.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use tracemesh::formats::{self, Item, atlas, parquet, scamper_json, warts};
use tracemesh::store::{SledStore, Store as _};
use tracemesh_proto::v1;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 4096;

fn trace(i: u64) -> v1::TraceRecord {
    let vantage = i % 200;
    let round = (i / 200 / 500) as u32;
    let dst_n = (i / 200) % 500 + 1000 * u64::from(round);
    let dst = format!(
        "198.{}.{}.{}",
        18 + (dst_n >> 16) % 2,
        (dst_n >> 8) & 255,
        dst_n & 255
    );
    let hops = (1..=12u32)
        .map(|ttl| {
            let silent = (i + u64::from(ttl)).is_multiple_of(6);
            let router = (vantage * 7 + u64::from(ttl) * 131 + dst_n % 17) % 4000;
            v1::Hop {
                ttl,
                addr: (!silent).then(|| format!("10.{}.{}.{}", ttl, router >> 8, router & 255)),
                rtt_ms: (!silent).then(|| f64::from(ttl) * 7.25 + (i % 1000) as f64 / 1000.0),
                icmp_type: (!silent).then_some(11),
                icmp_code: (!silent).then_some(0),
                reply_ttl: (!silent).then_some(255 - ttl),
                quoted_ttl: None,
                tcp_flags: None,
                mpls: if !silent && (4..7).contains(&ttl) {
                    vec![v1::MplsLabel {
                        label: 16000 + router as u32,
                        tc: 0,
                        s: true,
                        ttl: 1,
                    }]
                } else {
                    Vec::new()
                },
                probes: 3,
            }
        })
        .collect();
    v1::TraceRecord {
        result_id: String::new(),
        campaign_id: "c1".into(),
        round,
        vantage: format!("v{vantage}"),
        dst,
        src: Some(format!("100.64.{}.{}", vantage >> 8, vantage & 255)),
        proto: v1::ProbeProtocol::Icmp as i32,
        stop_reason: v1::StopReason::Completed as i32,
        start: 1_750_000_000.0 + f64::from(round) * 600.0 + (i % 200) as f64 * 0.25,
        probes_sent: 36,
        hops,
        received_at_ns: 0,
    }
}

/// Where JSON exports go: counted, not kept (they would take gigabytes at 1M traces).
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn rate(what: &str, n: u64, t: Instant, bytes: Option<u64>) -> f64 {
    let s = t.elapsed().as_secs_f64();
    let r = n as f64 / s;
    match bytes {
        Some(b) => println!(
            "{what:<46} {n:>9} traces in {s:>7.2} s: {r:>10.0} traces/s ({:.1} MB)",
            b as f64 / 1e6
        ),
        None => println!("{what:<46} {n:>9} traces in {s:>7.2} s: {r:>10.0} traces/s"),
    }
    r
}

fn check(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got} traces, expected {want}"))
    }
}

fn run() -> Result<(), String> {
    let n: u64 = std::env::var("TM_BENCH_TRACES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // TM_BENCH_DIR: where the input, the store and the warts file go (about 5 GB at
    // 1M traces; a tmpfs such as /dev/shm keeps a small disk out of it).
    let dir = match std::env::var_os("TM_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .map_err(|e| e.to_string())?;
    // The whole chain: a store error's cause is in its source.
    let e = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        s
    };
    println!("formats_scale: {n} traces of 12 TTLs, 200 vantages");

    // Export side without the store: encoding alone.
    let atlas_path = dir.path().join("in.atlas.jsonl");
    let t = Instant::now();
    let mut w = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&atlas_path).map_err(|x| e(&x))?,
    );
    for i in 0..n {
        let mut tr = trace(i);
        tr.vantage = format!("atlas:{}", i % 200 + 1);
        serde_json::to_writer(&mut w, &atlas::result(&tr, 1, (i % 200 + 1) as u32))
            .map_err(|x| e(&x))?;
        w.write_all(b"\n").map_err(|x| e(&x))?;
    }
    w.flush().map_err(|x| e(&x))?;
    drop(w);
    let size = std::fs::metadata(&atlas_path).map_err(|x| e(&x))?.len();
    rate("encode Atlas JSON lines (no store)", n, t, Some(size));

    // Import: decode + ingest, as `tracemesh import` does.
    let store = SledStore::open(&dir.path().join("db")).map_err(|x| e(&x))?;
    let t = Instant::now();
    let r = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(&atlas_path).map_err(|x| e(&x))?,
    );
    let mut batch = Vec::with_capacity(BATCH);
    let mut stored = 0u64;
    let flush = |batch: &mut Vec<v1::TraceRecord>, stored: &mut u64| -> Result<(), String> {
        for o in store.ingest_many(batch).map_err(|x| e(&x))? {
            if o.map_err(|x| e(&x))? == tracemesh::store::IngestOutcome::Stored {
                *stored += 1;
            }
        }
        batch.clear();
        Ok(())
    };
    formats::read_items("atlas", r, &mut |item| -> Result<(), String> {
        match item {
            Item::Trace(t) => batch.push(*t),
            other => return Err(format!("import: {other:?}")),
        }
        if batch.len() == BATCH {
            flush(&mut batch, &mut stored)?;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut stored)?;
    store.flush().map_err(|x| e(&x))?;
    let import_rate = rate("import Atlas JSON -> sled store", stored, t, None);
    check("import", stored, n)?;

    // Export: the store read back, each format written to a file.
    let export = |name: &str,
                  f: &mut dyn FnMut(v1::TraceRecord) -> Result<(), String>|
     -> Result<f64, String> {
        let t = Instant::now();
        let mut k = 0u64;
        let mut err = None;
        store
            .for_each_trace_any_order(&mut |tr| match f(tr) {
                Ok(()) => {
                    k += 1;
                    true
                }
                Err(x) => {
                    err = Some(x);
                    false
                }
            })
            .map_err(|x| e(&x))?;
        if let Some(x) = err {
            return Err(x);
        }
        check(name, k, n)?;
        Ok(rate(name, k, t, None))
    };
    let warts_path = dir.path().join("out.warts");
    {
        let file = BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&warts_path).map_err(|x| e(&x))?,
        );
        let mut ww = warts::Writer::new(file).map_err(|x| e(&x))?;
        export("export sled store -> warts", &mut |tr| {
            ww.write(&tr).map_err(|x| e(&x))
        })?;
        ww.finish().map_err(|x| e(&x))?;
    }
    {
        let mut out = BufWriter::with_capacity(1 << 20, Counter(0));
        export("export sled store -> scamper JSON", &mut |tr| {
            serde_json::to_writer(&mut out, &scamper_json::trace(&tr)).map_err(|x| e(&x))?;
            out.write_all(b"\n").map_err(|x| e(&x))
        })?;
        out.flush().map_err(|x| e(&x))?;
    }
    {
        let mut out = BufWriter::with_capacity(1 << 20, Counter(0));
        export("export sled store -> Atlas JSON", &mut |tr| {
            serde_json::to_writer(
                &mut out,
                &atlas::result(&tr, 1, formats::prb_id(&tr.vantage)),
            )
            .map_err(|x| e(&x))?;
            out.write_all(b"\n").map_err(|x| e(&x))
        })?;
        out.flush().map_err(|x| e(&x))?;
    }
    {
        let no_asn = |_: &str| None;
        let mut pw = parquet::Writer::new(&dir.path().join("pq"), &no_asn).map_err(|x| e(&x))?;
        export("export sled store -> Parquet", &mut |tr| {
            pw.write(tr).map_err(|x| e(&x))
        })?;
        pw.finish().map_err(|x| e(&x))?;
    }
    let wsize = std::fs::metadata(&warts_path).map_err(|x| e(&x))?.len();

    // The peer: warts -> scamper JSON, by scamper and by us, same file.
    let t = Instant::now();
    let data = std::fs::read(&warts_path).map_err(|x| e(&x))?;
    let mut out = BufWriter::with_capacity(1 << 20, Counter(0));
    let mut k = 0u64;
    for item in warts::decode(&data) {
        if let Item::Trace(tr) = item {
            serde_json::to_writer(&mut out, &scamper_json::trace(&tr)).map_err(|x| e(&x))?;
            out.write_all(b"\n").map_err(|x| e(&x))?;
            k += 1;
        }
    }
    out.flush().map_err(|x| e(&x))?;
    check("warts -> JSON (tracemesh)", k, n)?;
    let ours = rate(
        "warts -> scamper JSON (tracemesh codecs)",
        k,
        t,
        Some(wsize),
    );
    let t = Instant::now();
    let peer = Command::new("sc_warts2json")
        .arg(&warts_path)
        .stdout(Stdio::piped())
        .spawn();
    match peer {
        Err(x) if std::env::var_os("CI").is_none() => {
            println!("sc_warts2json not run ({x}): no peer figure");
        }
        Err(x) => return Err(format!("sc_warts2json: {x}")),
        Ok(mut child) => {
            let stdout = child.stdout.take().ok_or("sc_warts2json: no stdout")?;
            let mut traces = 0u64;
            for l in BufReader::with_capacity(1 << 20, stdout).split(b'\n') {
                let l = l.map_err(|x| e(&x))?;
                if l.starts_with(b"{\"type\":\"trace\"") {
                    traces += 1;
                }
            }
            let st = child.wait().map_err(|x| e(&x))?;
            if !st.success() {
                return Err(format!("sc_warts2json failed: {st}"));
            }
            check("sc_warts2json", traces, n)?;
            let theirs = rate(
                "warts -> scamper JSON (scamper's sc_warts2json)",
                traces,
                t,
                Some(wsize),
            );
            println!("ratio tracemesh / sc_warts2json: {:.2}", ours / theirs);
        }
    }
    println!("import rate {import_rate:.0} traces/s");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(x) => {
            eprintln!("formats_scale: {x}");
            ExitCode::FAILURE
        }
    }
}
