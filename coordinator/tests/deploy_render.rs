//! `tracemesh deploy render` against a real coordinator on loopback: the issue's inventory
//! becomes user-data with a fresh, valid token per agent, and every file passes Debian's
//! own validator (`cloud-init schema --config-file`) when cloud-init is installed.

// Helpers outside #[test] functions panic on purpose: a panic is how a test reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tracemesh_proto::token::EnrolToken;

const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");

/// The inventory the issue requires to be accepted as it stands.
const ISSUE_INVENTORY: &str = include_str!("../../deploy/examples/inventory.toml");

struct Coordinator {
    data: PathBuf,
    child: Child,
}

impl Coordinator {
    fn start(data: &Path) -> Coordinator {
        let addr_file = data.join("coordinator.addr");
        let child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env_remove("TRACEMESH_DATA")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracemesh serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&addr_file).map_or(true, |a| a.trim().is_empty()) {
            assert!(Instant::now() < deadline, "coordinator did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Coordinator {
            data: data.to_path_buf(),
            child,
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracemesh(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("TRACEMESH_DATA")
        .output()
        .expect("run tracemesh")
}

fn render(data: &Path, inventory: &Path, out: &Path, source: &[&str]) -> Output {
    let mut args = vec![
        "deploy",
        "render",
        "--inventory",
        inventory.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(source);
    tracemesh(data, &args)
}

fn token_in(doc: &str) -> EnrolToken {
    let line = doc
        .lines()
        .find(|l| l.trim_start().starts_with("token = "))
        .expect("token line in the agent config");
    let t = line.trim().trim_start_matches("token = ").trim_matches('"');
    EnrolToken::decode(t).expect("a valid enrolment token")
}

/// Debian's validator, when present; `None` (after saying so) when it is not installed.
fn cloud_init_schema(file: &Path) -> Option<Output> {
    match Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
    {
        Ok(o) => Some(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIP cloud-init schema for {}: cloud-init is not installed (apt-get install cloud-init)",
                file.display()
            );
            None
        }
        Err(e) => panic!("running cloud-init: {e}"),
    }
}

fn assert_schema_valid(file: &Path) {
    if let Some(o) = cloud_init_schema(file) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success() && text.contains("Valid cloud-config"),
            "cloud-init schema rejects {}:\n{text}",
            file.display()
        );
        eprintln!("cloud-init schema {}: {}", file.display(), text.trim());
    }
}

#[test]
fn issue_inventory_renders_valid_user_data_with_fresh_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coord = Coordinator::start(&data);
    let inv = dir.path().join("inventory.toml");
    std::fs::write(&inv, ISSUE_INVENTORY).unwrap();

    // Download flavour.
    let out_url = dir.path().join("out-url");
    let sha = "0123456789abcdef".repeat(4);
    let o = render(
        &coord.data,
        &inv,
        &out_url,
        &[
            "--binary-url",
            "https://downloads.example.net/tracemesh-agent-0.1.0-x86_64",
            "--binary-sha256",
            &sha,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = out_url.join("toronto-1.yaml");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        file.display().to_string()
    );
    let doc = std::fs::read_to_string(&file).unwrap();
    assert!(doc.starts_with("#cloud-config\n"));
    assert!(doc.contains(&sha));
    assert!(doc.contains("coordinator = \"203.0.113.10:7443\""));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "user-data holds a token: {mode:o}");
    }
    let t1 = token_in(&doc);
    assert_eq!(t1.name, "toronto-1");
    assert_schema_valid(&file);

    // Embedded flavour, with a stand-in binary; every render mints a new token.
    let fake_agent = dir.path().join("tracemesh-agent");
    let payload: Vec<u8> = (0..200_000u32).map(|n| (n * 7 % 256) as u8).collect();
    std::fs::write(&fake_agent, &payload).unwrap();
    let out_emb = dir.path().join("out-embedded");
    let o = render(
        &coord.data,
        &inv,
        &out_emb,
        &["--embed-binary", fake_agent.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = out_emb.join("toronto-1.yaml");
    let doc = std::fs::read_to_string(&file).unwrap();
    assert!(doc.contains("encoding: gz+b64"));
    let t2 = token_in(&doc);
    assert_eq!(t2.name, "toronto-1");
    assert_ne!(t1.secret, t2.secret, "each render mints a fresh token");
    assert_eq!(t1.ca_pem, t2.ca_pem);
    assert_schema_valid(&file);
}

#[test]
fn several_agents_and_providers_all_validate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coord = Coordinator::start(&data);
    let inv = dir.path().join("inventory.toml");
    let mut text = ISSUE_INVENTORY.to_string();
    for (name, provider) in [
        ("virginia-1", "aws"),
        ("frankfurt-1", "gcp"),
        ("seoul-1", "azure"),
        ("amsterdam-1", "digitalocean"),
        ("helsinki-1", "hetzner"),
        ("tokyo-1", "vultr"),
    ] {
        text.push_str(&format!(
            "[[agent]]\nname = \"{name}\"\nprovider = \"{provider}\"\nrate = 200\nallow = [\"10.0.0.0/8\"]\n"
        ));
    }
    std::fs::write(&inv, text).unwrap();
    let out = dir.path().join("out");
    let sha = "ab".repeat(32);
    let o = render(
        &coord.data,
        &inv,
        &out,
        &[
            "--binary-url",
            "https://x.example/agent",
            "--binary-sha256",
            &sha,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files: Vec<_> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(files.len(), 7);
    let mut secrets = std::collections::HashSet::new();
    for f in &files {
        let doc = std::fs::read_to_string(f).unwrap();
        assert!(secrets.insert(token_in(&doc).secret));
        assert_schema_valid(f);
    }
}

#[test]
fn bad_inventory_is_one_line_nonzero_and_checked_before_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    // No coordinator runs here: the inventory must be refused before any connection.
    let data = dir.path().join("data");
    let inv = dir.path().join("inventory.toml");
    let out = dir.path().join("out");
    let sha = "ab".repeat(32);
    let src = [
        "--binary-url",
        "https://x.example/agent",
        "--binary-sha256",
        sha.as_str(),
    ];
    for (bad, expect) in [
        (ISSUE_INVENTORY.replace("city =", "citty ="), "citty"),
        (ISSUE_INVENTORY.replace("\"CA\"", "\"CAN\""), "country"),
        (ISSUE_INVENTORY.replace(":7443", ""), "coordinator"),
        (ISSUE_INVENTORY.replace("[43.65, -79.38]", "[43.65]"), "loc"),
        (ISSUE_INVENTORY.replace("generic", "ovh"), "ovh"),
        ("coordinator = \"h:1\"\n".to_string(), "agent"),
    ] {
        std::fs::write(&inv, &bad).unwrap();
        let o = render(&data, &inv, &out, &src);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "accepted:\n{bad}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(expect), "{expect:?} not in {err}");
        assert!(err.contains("inventory.toml"), "{err}");
        assert!(!out.exists(), "nothing is written for a bad inventory");
    }
    std::fs::write(&inv, ISSUE_INVENTORY).unwrap();
    let o = render(
        &data,
        &inv,
        &out,
        &[
            "--binary-url",
            "https://x.example/a",
            "--binary-sha256",
            "xyz",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("sha256"), "{err}");
    let o = render(&data, &inv, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--embed-binary"),
        "{err}"
    );
}
