//! The lab's network: one namespace per vantage with a TUN device as its only way out to
//! the emulated internet, a control namespace (coordinator) bridged to every vantage, and
//! the emulator loop that reads probes from the TUNs and writes answers back on time.
//!
//! Each vantage gets its own TUN rather than a route through a shared namespace: a
//! forwarding Linux namespace would decrement TTLs and answer TTL-1 probes itself.

use std::fs::File;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::respond::{Dropped, Responder};
use crate::scenario::World;
use crate::wheel::Wheel;

#[derive(Debug, Error)]
pub enum NetError {
    #[error(transparent)]
    Shell(#[from] tracemesh_testnet::NetError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("scenario address {addr} collides with the lab's control network {net}")]
    Collision { addr: String, net: &'static str },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

pub use tracemesh_testnet::{in_netns, ip};

/// The control network between the coordinator and the agents (RFC 2544 benchmarking
/// space, which no real scenario routes).
pub const CONTROL_NET: &str = "198.18.0.0/16";
pub const COORDINATOR_ADDR: &str = "198.18.0.1";

const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a new TUN device named `ifname` inside namespace `ns`. The caller's own
/// namespace never changes: a short-lived thread enters `ns`, creates the device there
/// and hands the descriptor back.
pub fn open_tun_in(ns: &str, ifname: &str) -> Result<File, NetError> {
    let ns_path = format!("/run/netns/{ns}");
    let ifname = ifname.to_string();
    let what = format!("creating TUN {ifname} in {ns}");
    std::thread::spawn(move || -> std::io::Result<File> {
        let target = File::open(&ns_path)?;
        setns_net(&target)?;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        tunsetiff(&tun, &ifname)?;
        Ok(tun)
    })
    .join()
    .map_err(|_| NetError::Io {
        what: what.clone(),
        source: std::io::Error::other("thread panicked"),
    })?
    .map_err(io(what))
}

#[allow(unsafe_code)]
fn setns_net(f: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a descriptor we own, for this thread only; the thread ends
    // right after it has created the TUN device.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn tunsetiff(tun: &File, name: &str) -> std::io::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.len() > 15 {
        return Err(std::io::Error::other("interface name longer than 15 bytes"));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes, laid out as above)
    // through the pointer, which stays valid for the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn precise_timers() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack (default
    // 50 µs), so its sleeps end within microseconds of the due time.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

/// Answers are only as punctual as the thread that sends them: on a loaded machine (the
/// lab shares its cores with the agents and the coordinator, and CI with builds) a normal
/// thread may wait milliseconds for a core, which would show up as RTT error. The
/// emulator's threads block between packets, so a modest real-time priority costs the
/// rest of the system nothing. Unprivileged runs keep the normal policy.
#[allow(unsafe_code)]
fn realtime_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pthread_setschedparam on the calling thread with a valid, initialised
    // sched_param that outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(errno = rc, "no real-time priority for an emulator thread");
    }
}

/// The namespaces of a lab, deleted on drop (also when building fails halfway).
#[derive(Debug)]
pub struct Topology {
    pub control: String,
    /// One per scenario vantage, in scenario order.
    pub vantages: Vec<String>,
    pub tuns: Vec<File>,
    created: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

fn sysctl(ns: &str, kv: &str) -> Result<(), NetError> {
    Ok(ip(&["netns", "exec", ns, "sysctl", "-q", "-w", kv])?)
}

impl Topology {
    pub fn build(world: &World) -> Result<Topology, NetError> {
        let control_net: ipnet::IpNet = CONTROL_NET.parse().map_err(|_| NetError::Collision {
            addr: CONTROL_NET.into(),
            net: CONTROL_NET,
        })?;
        for a in world.s.ases.iter().flat_map(|a| a.prefixes.iter()) {
            if control_net.contains(&a.network()) || a.contains(&control_net.network()) {
                return Err(NetError::Collision {
                    addr: a.to_string(),
                    net: CONTROL_NET,
                });
            }
        }
        tracemesh_testnet::sweep_stale_with("tml");
        let base = format!("tml{}", std::process::id());
        let mut topo = Topology {
            control: format!("{base}-ctl"),
            vantages: Vec::new(),
            tuns: Vec::new(),
            created: Vec::new(),
        };
        ip(&["netns", "add", &topo.control])?;
        topo.created.push(topo.control.clone());
        let ctl = topo.control.clone();
        ip(&["-n", &ctl, "link", "set", "lo", "up"])?;
        ip(&["-n", &ctl, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ctl,
            "addr",
            "add",
            &format!("{COORDINATOR_ADDR}/16"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &ctl, "link", "set", "br0", "up"])?;
        let pid = std::process::id() % 100_000;
        for (i, v) in world.s.vantages.iter().enumerate() {
            let ns = format!("{base}-v{i}");
            ip(&["netns", "add", &ns])?;
            topo.created.push(ns.clone());
            topo.vantages.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for kv in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ] {
                sysctl(&ns, kv)?;
            }
            // Control link: the vantage's end in its namespace, the other on the bridge.
            let (a, b) = (format!("c{pid}v{i}"), format!("b{pid}v{i}"));
            ip(&[
                "link", "add", &a, "netns", &ns, "type", "veth", "peer", "name", &b, "netns", &ctl,
            ])?;
            let caddr = format!("198.18.{}.{}/16", 1 + i / 250, 2 + i % 250);
            ip(&["-n", &ns, "addr", "add", &caddr, "dev", &a])?;
            ip(&["-n", &ns, "link", "set", &a, "up"])?;
            ip(&["-n", &ctl, "link", "set", &b, "master", "br0"])?;
            ip(&["-n", &ctl, "link", "set", &b, "up"])?;
            // The emulated internet: everything else goes into the TUN.
            let tun = open_tun_in(&ns, "tun0")?;
            topo.tuns.push(tun);
            ip(&["-n", &ns, "link", "set", "tun0", "up"])?;
            for a in [Some(v.addr), v.addr6].into_iter().flatten() {
                let (family, host) = if a.is_ipv6() {
                    ("-6", "128")
                } else {
                    ("-4", "32")
                };
                let cidr = format!("{a}/{host}");
                let mut add = vec!["-n", ns.as_str(), family, "addr", "add", cidr.as_str()];
                add.extend(["dev", "tun0"]);
                if a.is_ipv6() {
                    add.push("nodad");
                }
                ip(&add)?;
                let src = a.to_string();
                ip(&[
                    "-n", &ns, family, "route", "add", "default", "dev", "tun0", "src", &src,
                ])?;
            }
        }
        Ok(topo)
    }
}

/// Counters the emulator keeps, readable while it runs.
#[derive(Debug, Default)]
pub struct EmuStats {
    pub packets_in: AtomicU64,
    pub answers: AtomicU64,
    pub dropped: AtomicU64,
    /// Sum and max of |actual − intended| send time, in ns.
    pub late_ns_sum: AtomicU64,
    pub late_ns_max: AtomicU64,
}

/// The running emulator: reader threads per TUN, one scheduler thread.
#[derive(Debug)]
pub struct Emulator {
    stop: Arc<AtomicBool>,
    pub stats: Arc<EmuStats>,
    /// Unix time (ns) of scenario second 0; before it is set, time counts from start.
    t0_unix_ns: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Emulator {
    /// Starts answering on the topology's TUNs. The world must outlive the emulator.
    pub fn spawn(world: Arc<World>, topo: &Topology) -> Result<Emulator, NetError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EmuStats::default());
        let t0_unix_ns = Arc::new(AtomicU64::new(unix_ns()));
        let (tx, rx) = mpsc::channel::<(usize, Vec<u8>, Instant)>();
        let mut writers = Vec::new();
        let mut threads = Vec::new();
        for (v, tun) in topo.tuns.iter().enumerate() {
            let mut reader = tun.try_clone().map_err(io("cloning a TUN descriptor"))?;
            writers.push(tun.try_clone().map_err(io("cloning a TUN descriptor"))?);
            let tx = tx.clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                realtime_priority();
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match reader.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            if tx.send((v, buf[..n].to_vec(), Instant::now())).is_err() {
                                return;
                            }
                        }
                        // The namespace (and its TUN) went away: the lab is over.
                        _ => return,
                    }
                }
            }));
        }
        drop(tx);
        let (s2, stop2, t0) = (stats.clone(), stop.clone(), t0_unix_ns.clone());
        let writers = Mutex::new(writers);
        threads.push(std::thread::spawn(move || {
            precise_timers();
            realtime_priority();
            let responder = Responder::new(&world);
            let origin = Instant::now();
            let ns_since = |t: Instant| t.duration_since(origin).as_nanos() as u64;
            let mut wheel: Wheel<(usize, Vec<u8>, u64)> = Wheel::new(20_000, 65_536, 0);
            let Ok(mut writers) = writers.lock() else {
                return;
            };
            while !stop2.load(Ordering::Relaxed) {
                let now = ns_since(Instant::now());
                for (v, pkt, due) in wheel.poll(now) {
                    let late = ns_since(Instant::now()).saturating_sub(due);
                    s2.late_ns_sum.fetch_add(late, Ordering::Relaxed);
                    s2.late_ns_max.fetch_max(late, Ordering::Relaxed);
                    if writers[v].write_all(&pkt).is_ok() {
                        s2.answers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let wait = wheel
                    .next_due()
                    .map_or(Duration::from_millis(20), |d| {
                        Duration::from_nanos(d.saturating_sub(ns_since(Instant::now())))
                    })
                    .min(Duration::from_millis(20));
                match rx.recv_timeout(wait) {
                    Ok((v, pkt, at)) => {
                        s2.packets_in.fetch_add(1, Ordering::Relaxed);
                        let rx_unix = unix_ns()
                            .saturating_sub(Instant::now().duration_since(at).as_nanos() as u64);
                        let t_s = (rx_unix as f64 - t0.load(Ordering::Relaxed) as f64) / 1e9;
                        match responder.handle(v, &pkt, t_s) {
                            Ok(emits) => {
                                for e in emits {
                                    let due = ns_since(at) + (e.delay_ms * 1e6) as u64;
                                    wheel.insert(due, (e.vantage, e.packet, due));
                                }
                            }
                            Err(
                                Dropped::Malformed
                                | Dropped::NoRoute
                                | Dropped::Silent
                                | Dropped::NotAProbe,
                            ) => {
                                s2.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }));
        Ok(Emulator {
            stop,
            stats,
            t0_unix_ns,
            threads,
        })
    }

    /// Sets scenario second 0 (the campaign's start).
    pub fn set_t0(&self, unix_s: f64) {
        self.t0_unix_ns
            .store((unix_s * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Readers block in read(2) until their TUN goes away with the topology; only the
        // scheduler is joined here.
        if let Some(last) = self.threads.pop() {
            let _ = last.join();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether the address is inside the control network.
pub fn is_control(a: IpAddr) -> bool {
    CONTROL_NET
        .parse::<ipnet::IpNet>()
        .is_ok_and(|n| n.contains(&a))
}
