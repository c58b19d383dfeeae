//! Import and export through the real binary on loopback, without ../shared: Atlas
//! results written here go in with `tracemesh import` (plain, gzip on stdin), come out
//! with `tracemesh export` and with the `ExportTraces` gRPC stream (byte for byte the
//! same), and bad input gets one line and a non-zero exit without losing stored data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tracemesh::server::client;
use tracemesh_proto::v1;

const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");

fn atlas_result(prb: u32, ts: u64, dst: &str) -> String {
    serde_json::json!({
        "type": "traceroute", "msm_id": 5001, "prb_id": prb, "timestamp": ts, "af": 4,
        "proto": "ICMP", "dst_addr": dst, "src_addr": "192.168.1.2", "from": "203.0.113.7",
        "result": [
            {"hop": 1, "result": [{"from": "192.168.1.1", "ttl": 64, "rtt": 0.512},
                                  {"from": "192.168.1.1", "ttl": 64, "rtt": 0.498}]},
            {"hop": 2, "result": [{"x": "*"}, {"x": "*"}]},
            {"hop": 3, "result": [{"from": "198.51.100.9", "ttl": 252, "rtt": 12.25,
                "icmpext": {"version": 2, "rfc4884": 0, "obj": [{"class": 1, "type": 1,
                    "mpls": [{"label": 24001, "exp": 0, "s": 1, "ttl": 1}]}]}}]},
            {"hop": 4, "result": [{"from": dst, "ttl": 60, "rtt": 20.75}]},
        ],
    })
    .to_string()
}

fn tm(data: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TRACEMESH_DATA")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(b) = stdin {
        c.stdin.take().unwrap().write_all(b).unwrap();
    }
    c.wait_with_output().unwrap()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = tm(data, args, None);
    assert!(
        out.status.success(),
        "tracemesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data: &Path) -> (Serve, String) {
    let addr_file = data.join("coordinator.addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("TRACEMESH_DATA")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.trim().is_empty()
        {
            return (s, a.trim().to_string());
        }
        assert!(Instant::now() < deadline, "coordinator did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn import_export_and_the_export_stream_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("results.jsonl");
    let lines = [
        atlas_result(11, 1_700_000_000, "192.0.2.10"),
        atlas_result(11, 1_700_000_900, "192.0.2.10"),
        atlas_result(12, 1_700_000_000, "192.0.2.20"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = ok(
        &data,
        &[
            "import",
            "--format",
            "atlas",
            "--json",
            file.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["stored"].as_u64(), v["malformed"].as_u64()),
        (Some(3), Some(0))
    );
    // The same results again, gzipped on stdin: stored once.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(lines.join("\n").as_bytes()).unwrap();
    let out = tm(
        &data,
        &["import", "--format", "atlas", "--json", "-"],
        Some(&gz.finish().unwrap()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(3))
    );

    // Bad input: one line, non-zero, the rest imported and nothing stored lost.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"type\":\"traceroute\",\"prb_id\":\"x\"}}\n",
            atlas_result(13, 1_700_000_000, "192.0.2.30")
        ),
    )
    .unwrap();
    let out = tm(
        &data,
        &["import", "--format", "atlas", bad.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl: line 2: malformed record"), "{err}");
    assert!(err.contains("1 malformed records"), "{err}");
    let out = tm(
        &data,
        &["import", "--format", "warts", "/nonexistent.warts"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));

    let (_serve, addr) = serve(&data);
    // The store is the running coordinator's now: import says so instead of waiting.
    let out = tm(
        &data,
        &["import", "--format", "atlas", file.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let traces: Vec<serde_json::Value> = ok(
        &data,
        &["traces", "--since", "2023-01-01T00:00:00Z", "--json"],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(traces.len(), 4);
    assert!(traces.iter().all(|t| t["source"] == "atlas"));
    let t = traces.iter().find(|t| t["vantage"] == "atlas:12").unwrap();
    assert_eq!(t["hops"][2]["mpls"][0]["label"], 24001);
    assert_eq!(t["hops"][1]["addr"], serde_json::Value::Null);
    assert_eq!(t["hops"][3]["icmp_type"], 0);
    assert_eq!(t["stop_reason"], "completed");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bundle = std::fs::read_to_string(data.join("admin.pem")).unwrap();
    let mut c = rt.block_on(client::connect_admin(&addr, &bundle)).unwrap();
    for format in ["warts", "scamper-json", "atlas"] {
        let path = dir.path().join(format!("export.{format}"));
        ok(
            &data,
            &[
                "export",
                "--format",
                format,
                "--out",
                path.to_str().unwrap(),
            ],
        );
        let file = std::fs::read(&path).unwrap();
        let streamed = rt.block_on(async {
            let mut s = c
                .export_traces(v1::ExportTracesRequest {
                    query: Some(v1::QueryTracesRequest::default()),
                    format: format.into(),
                })
                .await
                .unwrap()
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = s.message().await.unwrap() {
                bytes.extend(chunk.data);
            }
            bytes
        });
        assert!(!file.is_empty());
        assert_eq!(streamed, file, "{format}: stream and file differ");
    }
    let e = rt
        .block_on(c.export_traces(v1::ExportTracesRequest {
            query: None,
            format: "csv".into(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = tm(&data, &["export", "--format", "warts", "--out", "-"], None);
    assert!(!e.status.success());
}
