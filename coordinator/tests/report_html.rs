//! The HTML report (`tracemesh::report`) over the detector's real output: what the page
//! carries, that it names no outside resource, and (with Chromium) that a browser draws
//! one path per diverted pair and one ingress per incident without any request.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use common::annotator;
use serde_json::Value;
use tracemesh::detect::{Adversary, Detector, Trace, TraceHop, VantageInfo};
use tracemesh::geo::{Gazetteer, GeoPoint};
use tracemesh::report::render_html;

const T0: f64 = 1_700_000_000.0;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn trace(round: u64, vantage: &str, dst: IpAddr, hops: &[(&str, f64)]) -> Trace {
    let mut hops: Vec<TraceHop> = hops
        .iter()
        .enumerate()
        .map(|(i, (a, r))| TraceHop {
            ttl: i as u8 + 1,
            addr: Some(ip(a)),
            rtt_ms: Some(*r),
        })
        .collect();
    hops.push(TraceHop {
        ttl: hops.len() as u8 + 1,
        addr: Some(dst),
        rtt_ms: hops.last().and_then(|h| h.rtt_ms).map(|r| r + 0.4),
    });
    Trace {
        round,
        vantage: vantage.into(),
        dst,
        start: T0 + round as f64 * 60.0,
        hops,
    }
}

/// `vantages` vantages around Ottawa and Toronto tracing to `targets` Korean
/// destinations; rounds 0..3 take the normal path, rounds 3..6 are diverted through
/// China Telecom, entering at 202.97.10.1 right after the vantages' hand-off.
fn detector(vantages: usize, targets: u32) -> (Detector, usize) {
    let a = annotator();
    let mut det = Detector::new(Adversary::from_asns([4134]));
    let mut n = 0;
    for v in 0..vantages {
        let name = format!("v{v}");
        let base = if v % 2 == 0 {
            (45.42, -75.70)
        } else {
            (43.65, -79.38)
        };
        det.set_vantage(VantageInfo {
            name: name.clone(),
            loc: Some(GeoPoint::new(base.0 + v as f64 * 0.01, base.1)),
            country: Some("CA".into()),
            asn: Some(812),
        });
        for d in 0..targets {
            let dst = ip(&format!("211.192.{}.{}", d / 250 + 1, d % 250 + 1));
            for round in 0..6 {
                let hops: &[(&str, f64)] = if round < 3 {
                    &[
                        ("24.114.255.1", 0.4),
                        ("24.114.255.2", 5.7),
                        ("62.115.10.1", 13.0),
                        ("211.192.255.1", 150.0),
                    ]
                } else {
                    &[
                        ("24.114.255.1", 0.4),
                        ("24.114.255.2", 5.7),
                        ("202.97.10.1", 5.8),
                        ("202.97.10.5", 66.0),
                        ("202.97.33.1", 190.0),
                        ("211.192.255.1", 200.0),
                    ]
                };
                det.ingest(&trace(round, &name, dst, hops), &a);
                n += 1;
            }
        }
    }
    (det, n)
}

/// The JSON inside `<script id="ID" type="application/json">`.
fn embedded(html: &str, id: &str) -> Value {
    let open = format!("<script id=\"{id}\" type=\"application/json\">");
    let start = html.find(&open).unwrap() + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).unwrap()
}

#[test]
fn report_carries_paths_positions_and_timelines_and_names_no_outside_resource() {
    let a = annotator();
    let g = Gazetteer::builtin();
    let (det, n) = detector(3, 4);
    let report = det.report(&a, &g, T0 + 1e6);
    assert_eq!(report.diversions.len(), 12);
    assert_eq!(report.incidents.len(), 1);
    let view = det.map_view(&report, &a, &g, n, T0 + 1e6);
    let html = render_html(&view, "diversions <script>alert(1)</script> & co").unwrap();

    let data = embedded(&html, "tm-data");
    assert_eq!(data["traces"], 3 * 4 * 6);
    assert_eq!(data["diversions"].as_array().unwrap().len(), 12);
    assert_eq!(data["vantages"].as_array().unwrap().len(), 3);
    assert_eq!(data["vantages"][0]["loc"][0], 45.42);
    // The hand-off and the hops after it have RTT positions; AS labels for the tables.
    let located = data["located"].as_object().unwrap();
    for hop in ["24.114.255.2", "202.97.10.5"] {
        let h = &located[hop];
        assert!(
            h["loc"][0].is_f64() && h["radius_km"].as_f64().unwrap() > 0.0,
            "{hop}: {h}"
        );
    }
    assert_eq!(data["as_labels"]["4134"], "AS4134 CHINANET (CN)");
    let r = &data["diversions"][0];
    assert_eq!(r["ingress"]["addr"], "202.97.10.1");
    assert!(r["ingress"]["radius_km"].as_f64().unwrap() > 0.0);
    assert_eq!(r["handoff"]["addr"], "24.114.255.2");
    assert_eq!(
        (r["first_round"].as_u64(), r["last_round"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(r["evidence"]["diverted_path"].as_array().unwrap().len(), 6);
    let world = embedded(&html, "tm-world");
    assert_eq!(world["type"], "Topology");
    assert_eq!(
        world["objects"]["countries"]["geometries"]
            .as_array()
            .unwrap()
            .len(),
        177
    );

    // Offline: nothing to fetch, and a policy that forbids fetching anyway.
    let lower = html.to_ascii_lowercase();
    for attr in [" src=", " href=", "@import", "url("] {
        assert!(!lower.contains(attr), "the page has {attr}");
    }
    assert!(html.contains("default-src 'none'"));
    // The title is text, never markup.
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("diversions &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
    // Licences travel with the vendored code.
    assert!(html.contains("Copyright 2010-2026 Mike Bostock") && html.contains("Natural Earth"));
    assert!(html.contains("Copyright 2013-2019 Michael Bostock"));
}

#[test]
fn a_report_without_diversions_is_still_a_page() {
    let a = annotator();
    let g = Gazetteer::builtin();
    let (det, n) = detector(2, 0);
    let report = det.report(&a, &g, T0);
    let view = det.map_view(&report, &a, &g, n, T0);
    let html = render_html(&view, "quiet").unwrap();
    let data = embedded(&html, "tm-data");
    assert_eq!(data["diversions"], Value::Array(vec![]));
    assert_eq!(data["vantages"].as_array().unwrap().len(), 2);
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser"].into_iter().find_map(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| c.to_owned())
    })
}

/// 2,000 diverted pairs (50 vantages x 40 targets) drawn by a real browser: every pair a
/// path, the incident its ingress, no request, no console error (`check_report.py`).
#[test]
#[ignore = "needs chromium (apt-get install chromium) and python3"]
fn chromium_draws_two_thousand_diverted_pairs_offline() {
    assert!(
        chromium().is_some(),
        "this test needs chromium on the PATH (apt-get install chromium)"
    );
    let a = annotator();
    let g = Gazetteer::builtin();
    let (det, n) = detector(50, 40);
    let t = std::time::Instant::now();
    let report = det.report(&a, &g, T0 + 1e6);
    let view = det.map_view(&report, &a, &g, n, T0 + 1e6);
    let html = render_html(&view, "2,000 pairs").unwrap();
    let build = t.elapsed();
    assert_eq!(report.diversions.len(), 2000);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let json = dir.path().join("diversions.json");
    std::fs::write(&json, serde_json::to_string(&report).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/report/check_report.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&page)
        .arg("--diversions")
        .arg(&json)
        .arg("--screenshot")
        .arg(dir.path().join("shot.png"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "2000 pairs: report built in {build:?}, {} bytes; browser: {stdout}",
        html.len()
    );
    assert!(
        out.status.success(),
        "check_report failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(figures["diverted_paths"], 2000);
    assert_eq!(figures["ingress_markers"], 1);
    assert_eq!(figures["foreign_requests"], 0);
}

/// One vantage alone: the incident is marked not corroborated in the page's data, and a
/// real browser shows it so (`check_report.py` counts the marks against the incidents
/// seen by one vantage); two vantages: no mark.
#[test]
#[ignore = "needs chromium (apt-get install chromium) and python3"]
fn chromium_marks_single_vantage_incidents_not_corroborated() {
    assert!(
        chromium().is_some(),
        "this test needs chromium on the PATH (apt-get install chromium)"
    );
    let a = annotator();
    let g = Gazetteer::builtin();
    for (vantages, marks) in [(1, 1), (2, 0)] {
        let (det, n) = detector(vantages, 2);
        let report = det.report(&a, &g, T0 + 1e6);
        assert_eq!(report.incidents.len(), 1);
        let view = det.map_view(&report, &a, &g, n, T0 + 1e6);
        let html = render_html(&view, "corroboration").unwrap();
        let data = embedded(&html, "tm-data");
        assert_eq!(data["incidents"][0]["corroborated"], vantages > 1);
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("report.html");
        std::fs::write(&page, &html).unwrap();
        let json = dir.path().join("diversions.json");
        std::fs::write(&json, serde_json::to_string(&report).unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/report/check_report.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(&page)
            .arg("--diversions")
            .arg(&json)
            .output()
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "check_report failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let figures: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(figures["uncorroborated"], marks, "{vantages} vantage(s)");
    }
}

async fn http_get(addr: std::net::SocketAddr, target: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads from an event stream until `want` has arrived.
async fn read_until(s: &mut tokio::net::TcpStream, seen: &mut String, want: &str) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("event in time")
            .unwrap();
        assert!(n > 0, "stream closed; got {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_serves_the_page_and_announces_each_new_report() {
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt as _;
    use tracemesh::live_view::{LiveView, serve};
    let hub = Arc::new(LiveView::new());
    hub.enable();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        l,
        hub.clone(),
        Some("0123456789abcdef".into()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // Without the token nothing is served.
    let r = http_get(addr, "/", "").await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // Before live detection reports: a waiting page.
    let r = http_get(addr, "/?token=0123456789abcdef", "").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("has not reported yet"),
        "{r}"
    );

    let mut events = tokio::net::TcpStream::connect(addr).await.unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut events, &mut seen, "\"generation\":0").await;
    assert!(seen.contains("Content-Type: text/event-stream"), "{seen}");

    // Live detection reports: the stream announces it, the page is the new report.
    let a = annotator();
    let g = Gazetteer::builtin();
    let (det, _) = detector(2, 3);
    let report = det.report(&a, &g, T0 + 1e6);
    hub.publish(&det.map_view(&report, &a, &g, 0, T0 + 1e6));
    read_until(
        &mut events,
        &mut seen,
        "{\"generation\":1,\"diversions\":6,\"open\":6}",
    )
    .await;
    let page = http_get(addr, "/", "Authorization: Bearer 0123456789abcdef\r\n").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("{\"generation\":1}") && page.contains("connect-src 'self'"));
    let json = http_get(addr, "/view.json?token=0123456789abcdef", "").await;
    let body = json.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["diversions"].as_array().unwrap().len(), 6);
    // Read-only.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /?token=0123456789abcdef HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out)
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    // The same picture again is not re-rendered at once; a changed one is.
    hub.publish(&det.map_view(&report, &a, &g, 0, T0 + 2e6));
    assert_eq!(hub.current().generation, 1);
    let (det2, _) = detector(2, 4);
    let report2 = det2.report(&a, &g, T0 + 1e6);
    hub.publish(&det2.map_view(&report2, &a, &g, 0, T0 + 2e6));
    read_until(
        &mut events,
        &mut seen,
        "{\"generation\":2,\"diversions\":8,\"open\":8}",
    )
    .await;
    let _ = stop_tx.send(());
    server.await.unwrap();
}

/// `tracemesh` with `args`: (exit code, stderr).
fn tracemesh(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[test]
fn bad_report_and_live_view_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pfx = dir.path().join("pfx2as.txt");
    std::fs::write(&pfx, "202.97.0.0\t16\t4134\n").unwrap();
    let pfx = pfx.to_str().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let missing = dir.path().join("no/such/dir/r.html");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "report",
                "--html",
                missing.to_str().unwrap(),
                "--adversary",
                "4134",
                "--pfx2as",
                pfx,
            ],
            "does not exist",
        ),
        (
            vec![
                "report",
                "--html",
                dir.path().to_str().unwrap(),
                "--adversary",
                "4134",
                "--pfx2as",
                pfx,
            ],
            "is a directory",
        ),
        (
            vec!["report", "--adversary", "4134", "--pfx2as", pfx],
            "required arguments",
        ),
        (
            vec![
                "--data",
                data,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ],
            "--http shows live detection",
        ),
        (
            vec![
                "--data",
                data,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "0.0.0.0:0",
                "--adversary",
                "4134",
                "--pfx2as",
                pfx,
            ],
            "--http-token-file",
        ),
        (
            vec![
                "--data",
                data,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "not-an-address",
            ],
            "not-an-address",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = tracemesh(&args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(
            err.lines().count() == 1 && err.contains(want),
            "{args:?}: wanted one line naming {want}, got {err:?}"
        );
    }
    // A short token is refused before anything listens.
    let tok = dir.path().join("token");
    std::fs::write(&tok, "short\n").unwrap();
    let (code, err) = tracemesh(&[
        "--data",
        data,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "0.0.0.0:0",
        "--http-token-file",
        tok.to_str().unwrap(),
        "--adversary",
        "4134",
        "--pfx2as",
        pfx,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("shorter than 16"), "{err}");
}
