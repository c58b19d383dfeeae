//! One real coordinator in the lab's control namespace and one real agent in vantage v's
//! namespace of diamond-v2, with the TUN emulator answering: what the campaign tests
//! (`alias_campaign.rs`, `mda_campaign.rs`) start from.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracemesh_lab::net::{COORDINATOR_ADDR, Emulator, Topology, in_netns, unix_ns};
use tracemesh_lab::scenario::World;

/// Kills its child when dropped.
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn output(mut c: Command) -> Result<String, String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The running diamond. Fields drop in order: the agent and the coordinator are killed
/// before the emulator stops and the namespaces go.
pub struct DiamondLab {
    _agent: Killed,
    _serve: Killed,
    _tmp: tempfile::TempDir,
    pub emu: Emulator,
    pub topo: Topology,
    coord: PathBuf,
    data: PathBuf,
}

impl DiamondLab {
    /// Starts both, with the agent probing at `rate` packets/s, and returns once the
    /// agent's session is up.
    pub fn start(rate: u32) -> DiamondLab {
        let (coord, agent) = (
            tracemesh_lab::net::require_lab_bin("tracemesh"),
            tracemesh_lab::net::require_lab_bin("tracemesh-agent"),
        );
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/diamond-v2.toml");
        let w = Arc::new(World::load(&file).unwrap());
        let topo = Topology::build(&w).unwrap();
        let emu = Emulator::spawn(w.clone(), &topo).unwrap();
        emu.set_t0(unix_ns() as f64 / 1e9);
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("coordinator");
        let listen = format!("{COORDINATOR_ADDR}:7443");
        let log = std::fs::File::create(tmp.path().join("coordinator.log")).unwrap();
        let mut serve = in_netns(&topo.control, &coord);
        serve
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", &listen])
            .stdout(Stdio::null())
            .stderr(log);
        let serve = Killed(serve.spawn().unwrap());
        let cli = |args: &[&str]| {
            let mut c = in_netns(&topo.control, &coord);
            c.arg("--data").arg(&data).args(args);
            c
        };
        wait_for("the coordinator", 30, || {
            output(cli(&["agents", "--json"])).ok()
        });
        let token = output(cli(&["token", "create", "--name", "v"]))
            .unwrap()
            .trim()
            .to_string();
        let ns = &topo.vantages[w.vantage("v").unwrap()];
        let alog = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
        let mut run = in_netns(ns, &agent);
        run.args(["run", "--state"])
            .arg(tmp.path().join("agent"))
            .args(["--token", &token, "--coordinator", &listen])
            .args(["--rate", &rate.to_string(), "--allow", "10.0.0.0/8"])
            .stdout(Stdio::null())
            .stderr(alog);
        let agent = Killed(run.spawn().unwrap());
        wait_for("the agent's session", 30, || {
            let v: Value = serde_json::from_str(&output(cli(&["agents", "--json"])).ok()?).ok()?;
            (v["agents"][0]["connected"] == true).then_some(())
        });
        DiamondLab {
            _agent: agent,
            _serve: serve,
            _tmp: tmp,
            emu,
            topo,
            coord,
            data,
        }
    }

    /// `tracemesh --data DIR ARGS` in the control namespace.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = in_netns(&self.topo.control, &self.coord);
        c.arg("--data").arg(&self.data).args(args);
        c
    }

    /// `tracemesh campaign create ARGS --json`; the campaign's id.
    pub fn create_campaign(&self, args: &[&str]) -> String {
        let mut all = vec!["campaign", "create"];
        all.extend_from_slice(args);
        all.push("--json");
        let created: Value = serde_json::from_str(&output(self.cli(&all)).unwrap()).unwrap();
        created["id"].as_str().unwrap().to_string()
    }
}
