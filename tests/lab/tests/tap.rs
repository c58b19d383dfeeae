#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The tap's stamp is a probe's transmission into its TUN, not its read: a real ping from
//! a vantage's namespace waits in the TUN for a while before this test reads it, and the
//! stamp the tap gives for it lies before the wait, within the ping's run.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tracemesh_lab::net::{Tap, Topology, open_tap_in, unix_ns};
use tracemesh_lab::scenario::World;

/// Both tests build the same scenario's namespaces: one at a time.
static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The small scenario's namespaces (kept up while the Topology lives, one test's at a
/// time while the guard lives), and vantage v's namespace, tap and TUN.
fn vantage_v() -> (
    std::sync::MutexGuard<'static, ()>,
    Topology,
    String,
    Tap,
    std::fs::File,
) {
    let lab = LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tracemesh_lab::net::require_lab();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/diamond-v2.toml");
    let w = Arc::new(World::load(&file).unwrap());
    let topo = Topology::build(&w).unwrap();
    let v = w.vantage("v").unwrap();
    let ns = topo.vantages[v].clone();
    let tap = open_tap_in(&ns, "tun0").unwrap();
    let tun = topo.tuns[v].try_clone().unwrap();
    (lab, topo, ns, tap, tun)
}

/// Reads packets from the TUN until an ICMP echo request (IPv4) turns up.
fn read_echo(tun: &mut std::fs::File) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    for _ in 0..64 {
        let n = tun.read(&mut buf).unwrap();
        let pkt = &buf[..n];
        if pkt.first().is_some_and(|b| b >> 4 == 4) {
            let ihl = usize::from(pkt[0] & 15) * 4;
            if pkt[9] == 1 && pkt.get(ihl) == Some(&8) {
                return pkt.to_vec();
            }
        }
    }
    panic!("no echo request came out of the TUN");
}

#[test]
#[ignore = "needs root, network namespaces and /dev/net/tun"]
fn the_tap_stamps_a_probe_when_it_enters_the_tun_not_when_it_is_read() {
    let (_lab, _topo, ns, mut tap, mut tun) = vantage_v();
    let ns = ns.as_str();

    for round in 0..2 {
        let before = unix_ns();
        // Nobody answers (no emulator runs): ping gives up after its 1 s wait.
        let st = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", "10.2.0.1",
            ])
            .output()
            .unwrap();
        assert!(
            !st.status.success(),
            "ping got an answer with no emulator running"
        );
        let after = unix_ns();
        std::thread::sleep(Duration::from_millis(200));
        let pkt = read_echo(&mut tun);
        let read = unix_ns();
        let stamp = tap
            .stamp_of(&pkt)
            .unwrap_or_else(|| panic!("round {round}: the tap has no copy of the echo"));
        assert!(
            (before..=after).contains(&stamp),
            "round {round}: stamp {stamp} outside the ping's run {before}..{after}"
        );
        assert!(
            read - stamp >= 200_000_000,
            "round {round}: the stamp ({stamp}) is not before the 200 ms wait ending {read}"
        );
        // What the emulator writes into the TUN (an answer) never reaches the tap.
        let mut answer = pkt.clone();
        answer[12..16].copy_from_slice(&pkt[16..20]);
        answer[16..20].copy_from_slice(&pkt[12..16]);
        // An echo reply (type 0, checksum adjusted): the kernel sends nothing back for it.
        let ihl = usize::from(pkt[0] & 15) * 4;
        answer[ihl] = 0;
        let sum = u16::from_be_bytes([answer[ihl + 2], answer[ihl + 3]]);
        let (s, carry) = sum.overflowing_add(0x0800);
        answer[ihl + 2..ihl + 4].copy_from_slice(&(s + u16::from(carry)).to_be_bytes());
        tun.write_all(&answer).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !tap.has_copy(),
            "round {round}: the tap saw a packet going in"
        );
    }
}

#[test]
#[ignore = "needs root, network namespaces and /dev/net/tun"]
fn a_burst_waiting_on_the_tap_gives_each_probe_its_own_stamp_in_order() {
    let (_lab, _topo, ns, mut tap, mut tun) = vantage_v();
    let ns = ns.as_str();

    // Five echoes 50 ms apart, all queued on the tap before the first is read: the tap
    // takes them in one batch, and each read must still get its own copy's stamp.
    let before = unix_ns();
    let st = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-c", "5", "-i", "0.05", "-W", "1", "10.2.0.1",
        ])
        .output()
        .unwrap();
    assert!(!st.status.success(), "ping got an answer with no emulator");
    let after = unix_ns();
    let mut last = before;
    for i in 0..5 {
        let pkt = read_echo(&mut tun);
        let stamp = tap
            .stamp_of(&pkt)
            .unwrap_or_else(|| panic!("echo {i}: the tap has no copy of it"));
        assert!(
            stamp <= after,
            "echo {i}: stamp {stamp} after the run's end {after}"
        );
        if i > 0 {
            // In sending order, each after the one before (ping paces them 50 ms apart;
            // a busy CI machine may stretch that, so no upper bound tighter than ping's).
            assert!(
                stamp > last && stamp - last < 1_000_000_000,
                "echo {i}: stamp {stamp} against {last} for the one before"
            );
        } else {
            assert!(
                stamp >= before,
                "echo 0: stamp {stamp} before the run {before}"
            );
        }
        last = stamp;
    }
}
