//! The lab's network: one namespace per vantage with a TUN device as its only way out to
//! the emulated internet, a control namespace (coordinator) bridged to every vantage, and
//! the emulator loop that reads probes from the TUNs and writes answers back on time.
//!
//! Each vantage gets its own TUN rather than a route through a shared namespace: a
//! forwarding Linux namespace would decrement TTLs and answer TTL-1 probes itself.

use std::fs::File;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::due::DueQueue;
use crate::respond::{Dropped, Responder, Shared};
use crate::scenario::World;
use crate::stats::{Histogram, Timeline};

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
                // Agents trace each other (mesh): a vantage's kernel answers like a
                // host of the emulated internet, without its own ICMP rate limit.
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv6.icmp.ratelimit=0",
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
#[derive(Debug)]
pub struct EmuStats {
    pub packets_in: AtomicU64,
    pub answers: AtomicU64,
    pub dropped: AtomicU64,
    /// How late each answer left against its intended instant (ns). The intended instant
    /// counts from when the emulator read the probe, so this is the emulator's own error;
    /// time a probe waits in its TUN's queue before being read is not in it (the lab's
    /// path check measures the whole, agent to agent).
    pub late: Histogram,
    /// Probes read and answers sent per 100 ms since the emulator started (peaks).
    pub packets_timeline: Timeline,
    pub answers_timeline: Timeline,
    /// Kernel thread ids of the emulator threads, for their scheduler statistics.
    tids: std::sync::Mutex<Vec<libc::pid_t>>,
}

/// Timeline bins: 100 ms, for an hour (later events count in the last bin).
const TIMELINE_BIN_NS: u64 = 100_000_000;
const TIMELINE_BINS: usize = 36_000;

impl Default for EmuStats {
    fn default() -> Self {
        EmuStats {
            packets_in: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            late: Histogram::default(),
            packets_timeline: Timeline::new(TIMELINE_BIN_NS, TIMELINE_BINS),
            answers_timeline: Timeline::new(TIMELINE_BIN_NS, TIMELINE_BINS),
            tids: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// CPU time and time spent runnable but waiting for a CPU, in ns, summed over the
/// emulator threads (from /proc/self/task/TID/schedstat; zeros where unavailable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedTimes {
    pub run_ns: u64,
    pub wait_ns: u64,
}

/// Parses a schedstat line: "run_ns wait_ns timeslices".
pub fn parse_schedstat(text: &str) -> Option<SchedTimes> {
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some(SchedTimes {
        run_ns: f.next()??,
        wait_ns: f.next()??,
    })
}

impl EmuStats {
    /// Where the emulator threads' time went: a thread that waits for a CPU (other
    /// real-time work, too few cores) sends late however fast it is.
    pub fn sched_times(&self) -> SchedTimes {
        let tids = self.tids.lock().map(|t| t.clone()).unwrap_or_default();
        let mut sum = SchedTimes::default();
        for tid in tids {
            let path = format!("/proc/self/task/{tid}/schedstat");
            if let Some(t) = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| parse_schedstat(&s))
            {
                sum.run_ns += t.run_ns;
                sum.wait_ns += t.wait_ns;
            }
        }
        sum
    }

    /// The figures `tracemesh-lab` reports (lab.json's `emulator` object, less CPU).
    pub fn report(&self, over_s: f64) -> serde_json::Value {
        let l = self.late.summary();
        let us = |ns: u64| ns as f64 / 1e3;
        let answers = self.answers.load(Ordering::Relaxed);
        serde_json::json!({
            "packets_in": self.packets_in.load(Ordering::Relaxed),
            "answers": answers,
            "dropped": self.dropped.load(Ordering::Relaxed),
            "mean_send_late_us": l.mean / 1e3,
            "p50_send_late_us": us(l.p50),
            "p90_send_late_us": us(l.p90),
            "p99_send_late_us": us(l.p99),
            "p999_send_late_us": us(l.p999),
            "max_send_late_us": us(l.max),
            "answers_per_s": answers as f64 / over_s.max(1e-9),
            "answers_per_s_peak_1s": self.answers_timeline.peak_per_s(10),
            "answers_per_s_peak_100ms": self.answers_timeline.peak_per_s(1),
            "packets_in_per_s_peak_1s": self.packets_timeline.peak_per_s(10),
        })
    }
}

/// The longest an emulator thread sleeps before it looks at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Packets an emulator thread reads from one TUN before it sends what has come due and
/// turns to its other TUNs: a burst on one vantage must not hold up the others' answers.
const READ_BATCH: usize = 16;

/// An epoll instance, closed on drop.
#[derive(Debug)]
struct Epoll(OwnedFd);

impl Epoll {
    #[allow(unsafe_code)]
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new
        // descriptor that we alone own from here.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is open and owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    #[allow(unsafe_code)]
    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; `ev` is valid for the call.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Waits up to `timeout` (to the nanosecond: epoll_pwait2) for readable descriptors;
    /// returns how many entries of `events` it filled. A signal counts as a timeout.
    #[allow(unsafe_code)]
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> std::io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `events` has room for `max` entries and `ts` outlives the call; a null
        // sigmask leaves the thread's mask alone.
        let n = unsafe {
            libc::epoll_pwait2(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                max,
                &ts,
                std::ptr::null(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        }
    }
}

#[allow(unsafe_code)]
fn set_nonblocking(f: &File) -> std::io::Result<()> {
    // SAFETY: fcntl on an open descriptor we hold, with integer arguments only.
    let rc = unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One emulator thread: it reads the probes of its share of the vantages, answers them,
/// and sends every answer it made at its instant. Reading, answering and sending in one
/// thread means no hand-off (no channel, no wake-up of another thread, no copy) between
/// a probe and its answer; the vantages are shared out over several such threads so that
/// the emulator can use every core in the bursts when all agents start a round at once.
struct Shard {
    world: Arc<World>,
    /// The routers' rate-limit buckets and IP-ID counters, common to every thread.
    routers: Arc<Shared>,
    /// The (vantage, TUN) pairs this thread reads.
    tuns: Vec<(usize, File)>,
    /// Every vantage's TUN, by vantage: an answer may be for a vantage another thread
    /// reads (a probe from one vantage to another), and a TUN may be written from any
    /// thread.
    writers: Arc<Vec<File>>,
    stop: Arc<AtomicBool>,
    stats: Arc<EmuStats>,
    t0_unix_ns: Arc<AtomicU64>,
    /// Shared by all threads, so their timelines line up.
    origin: Instant,
}

impl Shard {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    #[allow(unsafe_code)]
    fn run(self) {
        precise_timers();
        realtime_priority();
        // SAFETY: gettid(2) takes no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        if let Ok(mut tids) = self.stats.tids.lock() {
            tids.push(tid);
        }
        if let Err(e) = self.serve() {
            tracing::error!(error = %e, "an emulator thread stopped");
        }
    }

    fn serve(&self) -> Result<(), NetError> {
        let ep = Epoll::new().map_err(io("creating an epoll instance"))?;
        for (i, (_, tun)) in self.tuns.iter().enumerate() {
            set_nonblocking(tun).map_err(io("making a TUN non-blocking"))?;
            ep.ctl(libc::EPOLL_CTL_ADD, tun.as_raw_fd(), i as u64)
                .map_err(io("watching a TUN"))?;
        }
        let responder = Responder::with_shared(&self.world, self.routers.clone());
        let mut queue: DueQueue<(usize, Vec<u8>)> = DueQueue::default();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; self.tuns.len().max(1)];
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::Relaxed) {
            self.send_due(&mut queue);
            let wait = queue.next_due().map_or(MAX_WAIT, |d| {
                Duration::from_nanos(d.saturating_sub(self.now_ns())).min(MAX_WAIT)
            });
            let n = ep
                .wait(&mut events, wait)
                .map_err(io("waiting for probes"))?;
            for ev in &events[..n] {
                let i = ev.u64 as usize;
                let Some((v, tun)) = self.tuns.get(i) else {
                    continue;
                };
                for _ in 0..READ_BATCH {
                    let len = match (&*tun).read(&mut buf) {
                        Ok(len) if len > 0 => len,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => {
                            // The namespace (and its TUN) went away: the lab is ending.
                            tracing::debug!(vantage = v, ?other, "a TUN closed");
                            let _ = ep.ctl(libc::EPOLL_CTL_DEL, tun.as_raw_fd(), 0);
                            break;
                        }
                    };
                    let at = self.now_ns();
                    let at_unix = unix_ns();
                    self.answer(&responder, &mut queue, *v, &buf[..len], at, at_unix);
                    // Answers fall due while a burst is being read.
                    self.send_due(&mut queue);
                }
            }
        }
        Ok(())
    }

    /// Queues the answers to one probe that vantage `v` sent, read at `at` (ns since
    /// `origin`) = `at_unix` (Unix ns).
    fn answer(
        &self,
        responder: &Responder<'_>,
        queue: &mut DueQueue<(usize, Vec<u8>)>,
        v: usize,
        pkt: &[u8],
        at: u64,
        at_unix: u64,
    ) {
        let s = &self.stats;
        s.packets_in.fetch_add(1, Ordering::Relaxed);
        s.packets_timeline.record(at);
        let t_s = (at_unix as f64 - self.t0_unix_ns.load(Ordering::Relaxed) as f64) / 1e9;
        match responder.handle(v, pkt, t_s) {
            Ok(emits) => {
                for e in emits {
                    let due = at + (e.delay_ms * 1e6) as u64;
                    queue.insert(due, (e.vantage, e.packet));
                }
            }
            Err(
                Dropped::Malformed
                | Dropped::NoRoute
                | Dropped::Silent
                | Dropped::RateLimited
                | Dropped::NotAProbe,
            ) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends everything due by now.
    fn send_due(&self, queue: &mut DueQueue<(usize, Vec<u8>)>) {
        let s = &self.stats;
        loop {
            let now = self.now_ns();
            let Some((due, (v, pkt))) = queue.pop_due(now) else {
                return;
            };
            s.late.record(now.saturating_sub(due));
            let Some(w) = self.writers.get(v) else {
                continue;
            };
            if (&*w).write_all(&pkt).is_ok() {
                s.answers.fetch_add(1, Ordering::Relaxed);
                s.answers_timeline.record(now);
            }
        }
    }
}

/// The running emulator: a few threads, each serving a share of the vantages' TUNs.
#[derive(Debug)]
pub struct Emulator {
    stop: Arc<AtomicBool>,
    pub stats: Arc<EmuStats>,
    /// Unix time (ns) of scenario second 0; before it is set, time counts from start.
    t0_unix_ns: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Emulator threads by default: one per core (the bursts at round starts are what they
/// are sized for), never more than there are vantages.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Emulator {
    /// Starts answering on the topology's TUNs with [`default_threads`] threads.
    pub fn spawn(world: Arc<World>, topo: &Topology) -> Result<Emulator, NetError> {
        Self::spawn_with(world, topo, default_threads())
    }

    /// Starts answering on the topology's TUNs with `threads` threads (at least one, at
    /// most one per vantage). Least costs are computed when the scenario loads, so a
    /// probe's route is a walk of a few steps, never a search.
    pub fn spawn_with(
        world: Arc<World>,
        topo: &Topology,
        threads: usize,
    ) -> Result<Emulator, NetError> {
        let threads = threads.clamp(1, topo.tuns.len().max(1));
        let routers = Arc::new(Shared::new(&world));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EmuStats::default());
        let t0_unix_ns = Arc::new(AtomicU64::new(unix_ns()));
        let writers = topo
            .tuns
            .iter()
            .map(|t| t.try_clone().map_err(io("cloning a TUN descriptor")))
            .collect::<Result<Vec<File>, NetError>>()?;
        let writers = Arc::new(writers);
        let mut shares: Vec<Vec<(usize, File)>> = (0..threads).map(|_| Vec::new()).collect();
        for (v, tun) in topo.tuns.iter().enumerate() {
            let reader = tun.try_clone().map_err(io("cloning a TUN descriptor"))?;
            shares[v % threads].push((v, reader));
        }
        let origin = Instant::now();
        let mut handles = Vec::new();
        for (i, tuns) in shares.into_iter().enumerate() {
            let shard = Shard {
                world: world.clone(),
                routers: routers.clone(),
                tuns,
                writers: writers.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                t0_unix_ns: t0_unix_ns.clone(),
                origin,
            };
            let handle = std::thread::Builder::new()
                .name(format!("emulator-{i}"))
                .spawn(move || shard.run())
                .map_err(io("starting an emulator thread"))?;
            handles.push(handle);
        }
        Ok(Emulator {
            stop,
            stats,
            t0_unix_ns,
            threads: handles,
        })
    }

    /// Sets scenario second 0 (the campaign's start).
    pub fn set_t0(&self, unix_s: f64) {
        self.t0_unix_ns
            .store((unix_s * 1e9) as u64, Ordering::Relaxed);
    }

    /// Stops the threads and waits for them (each looks at its stop flag at least every
    /// 20 ms).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_lines_parse() {
        assert_eq!(
            parse_schedstat("123456 7890 42\n"),
            Some(SchedTimes {
                run_ns: 123_456,
                wait_ns: 7890
            })
        );
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat("x y z"), None);
    }
}
