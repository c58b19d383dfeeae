//! The emulator threads: each reads the probes of its share of the vantages' TUNs,
//! answers them with the [`Responder`], and writes every answer at its instant; and the
//! counters they keep (lateness, rates, scheduler time).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::epoll::Epoll;
use super::tap::{Tap, open_tap_in};
use super::tun::set_nonblocking;
use super::{NetError, Topology, io, unix_ns};
use crate::due::DueQueue;
use crate::respond::{Dropped, Responder, Shared};
use crate::scenario::World;
use crate::stats::{Histogram, Timeline};

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

/// Counters the emulator keeps, readable while it runs.
#[derive(Debug)]
pub struct EmuStats {
    pub packets_in: AtomicU64,
    pub answers: AtomicU64,
    pub dropped: AtomicU64,
    /// Probes dropped beyond a vantage's first hop while its probe path was cut.
    pub cut: AtomicU64,
    /// How late each answer left against its intended instant (ns): the probe's
    /// transmission into its TUN, stamped by the kernel (`tap`), plus the modelled delay.
    /// So this is the emulator's whole error, including the time a probe waited in its
    /// TUN before an emulator thread woke up to read it (`read_wait`).
    pub late: Histogram,
    /// How long probes waited in their TUN before being read (ns).
    pub read_wait: Histogram,
    /// Probes timed from their read because no tap copy was found (none opened, or
    /// copies lost to a full socket buffer); the kernel's own link chatter is not
    /// counted (see [`is_probe`]).
    pub untapped: AtomicU64,
    /// Answers that left more than [`LATE_LOG_NS`] late, for the path check to judge the
    /// agent against what the emulator really did (capped at [`LATE_LOG_MAX`]).
    pub late_answers: std::sync::Mutex<Vec<LateAnswer>>,
    /// Probes read and answers sent per 100 ms since the emulator started (peaks).
    pub packets_timeline: Timeline,
    pub answers_timeline: Timeline,
    /// Kernel thread ids of the emulator threads, for their scheduler statistics.
    tids: std::sync::Mutex<Vec<libc::pid_t>>,
}

/// An answer that left late: to which probe (the probing vantage, the probe's
/// destination and TTL, its scenario time) and by how much.
#[derive(Debug, Clone, PartialEq)]
pub struct LateAnswer {
    pub vantage: usize,
    pub dst: std::net::IpAddr,
    pub ttl: u8,
    /// Scenario seconds at the probe's transmission.
    pub t_s: f64,
    pub late_ns: u64,
}

/// Answers later than this are logged one by one; below it the path check's tolerance
/// covers them.
pub const LATE_LOG_NS: u64 = 100_000;
/// At most this many logged (about 50 MB).
pub const LATE_LOG_MAX: usize = 1_000_000;

/// Timeline bins: 100 ms, for an hour (later events count in the last bin).
const TIMELINE_BIN_NS: u64 = 100_000_000;
const TIMELINE_BINS: usize = 36_000;

impl Default for EmuStats {
    fn default() -> Self {
        EmuStats {
            packets_in: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            late: Histogram::default(),
            read_wait: Histogram::default(),
            untapped: AtomicU64::new(0),
            late_answers: std::sync::Mutex::new(Vec::new()),
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
        let w = self.read_wait.summary();
        let us = |ns: u64| ns as f64 / 1e3;
        let logged = self.late_answers.lock().map_or(0, |v| v.len());
        let answers = self.answers.load(Ordering::Relaxed);
        serde_json::json!({
            "packets_in": self.packets_in.load(Ordering::Relaxed),
            "answers": answers,
            "dropped": self.dropped.load(Ordering::Relaxed),
            "cut": self.cut.load(Ordering::Relaxed),
            "mean_send_late_us": l.mean / 1e3,
            "p50_send_late_us": us(l.p50),
            "p90_send_late_us": us(l.p90),
            "p99_send_late_us": us(l.p99),
            "p999_send_late_us": us(l.p999),
            "max_send_late_us": us(l.max),
            "p50_read_wait_us": us(w.p50),
            "p99_read_wait_us": us(w.p99),
            "max_read_wait_us": us(w.max),
            "untapped": self.untapped.load(Ordering::Relaxed),
            "late_answers_logged": logged,
            "answers_per_s": answers as f64 / over_s.max(1e-9),
            "answers_per_s_peak_1s": self.answers_timeline.peak_per_s(10),
            "answers_per_s_peak_100ms": self.answers_timeline.peak_per_s(1),
            "packets_in_per_s_peak_1s": self.packets_timeline.peak_per_s(10),
        })
    }
}

/// How far apart two realtime reads around a monotonic one may be for the three to count
/// as one instant (reads take tens of nanoseconds).
const CLOCK_PAIR_SLACK_NS: u64 = 20_000;

/// The longest an emulator thread sleeps before it looks at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// Packets an emulator thread reads from one TUN before it sends what has come due and
/// turns to its other TUNs: a burst on one vantage must not hold up the others' answers.
const READ_BATCH: usize = 16;

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
    /// Their taps, in the same order (None where none could be opened).
    taps: Vec<Option<Tap>>,
    /// Every vantage's TUN, by vantage: an answer may be for a vantage another thread
    /// reads (a probe from one vantage to another), and a TUN may be written from any
    /// thread.
    writers: Arc<Vec<File>>,
    stop: Arc<AtomicBool>,
    stats: Arc<EmuStats>,
    t0_unix_ns: Arc<AtomicU64>,
    /// Per vantage: its probe path is cut beyond the first hop (a soak fault).
    cut: Arc<Vec<AtomicBool>>,
    /// Shared by all threads, so their timelines line up.
    origin: Instant,
}

impl Shard {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// This thread's clock (ns since `origin`) and Unix time (ns) at one instant, the
    /// monotonic read between two realtime reads. `false` when those stayed far apart
    /// (the thread lost its CPU between them) over three tries: a tap stamp, which is
    /// realtime, cannot then be placed on the monotonic clock to the microsecond.
    fn clock_pair(&self) -> (u64, u64, bool) {
        let mut last = (0, 0);
        for _ in 0..3 {
            let before = unix_ns();
            let mono = self.now_ns();
            let after = unix_ns();
            if after.saturating_sub(before) <= CLOCK_PAIR_SLACK_NS {
                return (mono, before + (after - before) / 2, true);
            }
            last = (mono, after);
        }
        (last.0, last.1, false)
    }

    #[allow(unsafe_code)]
    fn run(mut self) {
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

    fn serve(&mut self) -> Result<(), NetError> {
        let mut taps = std::mem::take(&mut self.taps);
        let ep = Epoll::new().map_err(io("creating an epoll instance"))?;
        for (i, (_, tun)) in self.tuns.iter().enumerate() {
            set_nonblocking(tun).map_err(io("making a TUN non-blocking"))?;
            ep.ctl(libc::EPOLL_CTL_ADD, tun.as_raw_fd(), i as u64)
                .map_err(io("watching a TUN"))?;
        }
        let responder = Responder::with_shared(&self.world, self.routers.clone());
        let mut queue: DueQueue<Pending> = DueQueue::default();
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
                    let (read, read_unix, paired) = self.clock_pair();
                    let pkt = &buf[..len];
                    let sent = taps.get_mut(i).and_then(Option::as_mut);
                    // A stamp from the future or from long ago is not this packet's.
                    let (at, at_unix) = match sent.and_then(|t| t.stamp_of(pkt)) {
                        Some(x) if paired && x <= read_unix && read_unix - x < 1_000_000_000 => {
                            let wait = read_unix - x;
                            self.stats.read_wait.record(wait);
                            (read.saturating_sub(wait), x)
                        }
                        _ => {
                            if is_probe(pkt) {
                                self.stats.untapped.fetch_add(1, Ordering::Relaxed);
                            }
                            (read, read_unix)
                        }
                    };
                    self.answer(&responder, &mut queue, *v, pkt, at, at_unix);
                    // Answers fall due while a burst is being read.
                    self.send_due(&mut queue);
                }
            }
        }
        Ok(())
    }

    /// Queues the answers to one probe that vantage `v` sent at `at` (ns since `origin`)
    /// = `at_unix` (Unix ns).
    fn answer(
        &self,
        responder: &Responder<'_>,
        queue: &mut DueQueue<Pending>,
        v: usize,
        pkt: &[u8],
        at: u64,
        at_unix: u64,
    ) {
        let s = &self.stats;
        s.packets_in.fetch_add(1, Ordering::Relaxed);
        s.packets_timeline.record(at);
        // Read once: the cut needs the TTL, the late log the destination and TTL.
        let (dst, ttl) = ip_dst_ttl(pkt).unwrap_or((std::net::Ipv4Addr::UNSPECIFIED.into(), 0));
        if self.cut.get(v).is_some_and(|c| c.load(Ordering::Relaxed)) && ttl > 1 {
            s.cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let t_s = (at_unix as f64 - self.t0_unix_ns.load(Ordering::Relaxed) as f64) / 1e9;
        match responder.handle(v, pkt, t_s) {
            Ok(emits) => {
                for e in emits {
                    let due = at + (e.delay_ms * 1e6) as u64;
                    queue.insert(
                        due,
                        Pending {
                            to: e.vantage,
                            packet: e.packet,
                            from: v,
                            dst,
                            ttl,
                            t_s,
                        },
                    );
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
    fn send_due(&self, queue: &mut DueQueue<Pending>) {
        let s = &self.stats;
        loop {
            let now = self.now_ns();
            let Some((due, p)) = queue.pop_due(now) else {
                return;
            };
            let late = now.saturating_sub(due);
            s.late.record(late);
            if late > LATE_LOG_NS
                && let Ok(mut log) = s.late_answers.lock()
                && log.len() < LATE_LOG_MAX
            {
                log.push(LateAnswer {
                    vantage: p.from,
                    dst: p.dst,
                    ttl: p.ttl,
                    t_s: p.t_s,
                    late_ns: late,
                });
            }
            let Some(w) = self.writers.get(p.to) else {
                continue;
            };
            if (&*w).write_all(&p.packet).is_ok() {
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
    cut: Arc<Vec<AtomicBool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// An answer waiting for its instant, and the probe it answers.
#[derive(Debug)]
struct Pending {
    /// The vantage whose TUN it goes into.
    to: usize,
    packet: Vec<u8>,
    /// The probing vantage, the probe's destination and TTL, its scenario time.
    from: usize,
    dst: std::net::IpAddr,
    ttl: u8,
    t_s: f64,
}

/// Whether a packet read from a vantage's TUN is traffic into the emulated internet
/// (a probe, a mesh datagram) rather than the kernel's own link chatter (router
/// solicitations and MLD reports to multicast or link-local addresses), which an
/// interface sends as it comes up, before its tap is open.
fn is_probe(pkt: &[u8]) -> bool {
    match ip_dst_ttl(pkt) {
        Some((std::net::IpAddr::V4(a), _)) => !(a.is_multicast() || a.is_broadcast()),
        Some((std::net::IpAddr::V6(a), _)) => {
            !(a.is_multicast() || a.is_unicast_link_local() || a.is_unspecified())
        }
        None => false,
    }
}

/// A packet's destination and TTL (IPv4) or hop limit (IPv6).
fn ip_dst_ttl(pkt: &[u8]) -> Option<(std::net::IpAddr, u8)> {
    match pkt.first()? >> 4 {
        4 => {
            let a: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            Some((a.into(), *pkt.get(8)?))
        }
        6 => {
            let a: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some((a.into(), *pkt.get(7)?))
        }
        _ => None,
    }
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
        let cut: Arc<Vec<AtomicBool>> =
            Arc::new(topo.tuns.iter().map(|_| AtomicBool::new(false)).collect());
        let writers = topo
            .tuns
            .iter()
            .map(|t| t.try_clone().map_err(io("cloning a TUN descriptor")))
            .collect::<Result<Vec<File>, NetError>>()?;
        let writers = Arc::new(writers);
        let mut shares: Vec<Vec<(usize, File)>> = (0..threads).map(|_| Vec::new()).collect();
        let mut tap_shares: Vec<Vec<Option<Tap>>> = (0..threads).map(|_| Vec::new()).collect();
        for (v, tun) in topo.tuns.iter().enumerate() {
            let reader = tun.try_clone().map_err(io("cloning a TUN descriptor"))?;
            shares[v % threads].push((v, reader));
            // Without a tap (no packet sockets here) probes are timed from their read.
            let tap = topo.vantages.get(v).and_then(|ns| {
                open_tap_in(ns, "tun0")
                    .map_err(|e| tracing::warn!(error = %e, "probes timed from their read"))
                    .ok()
            });
            tap_shares[v % threads].push(tap);
        }
        let origin = Instant::now();
        let mut handles = Vec::new();
        for (i, (tuns, taps)) in shares.into_iter().zip(tap_shares).enumerate() {
            let shard = Shard {
                world: world.clone(),
                routers: routers.clone(),
                tuns,
                taps,
                writers: writers.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                t0_unix_ns: t0_unix_ns.clone(),
                cut: cut.clone(),
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
            cut,
            threads: handles,
        })
    }

    /// Sets scenario second 0 (the campaign's start).
    pub fn set_t0(&self, unix_s: f64) {
        self.t0_unix_ns
            .store((unix_s * 1e9) as u64, Ordering::Relaxed);
    }

    /// Cuts vantage `v`'s probe path beyond its first hop (its access router still
    /// answers, as when the link behind it is down), or restores it.
    pub fn set_probe_path(&self, v: usize, up: bool) {
        if let Some(c) = self.cut.get(v) {
            c.store(!up, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_read_from_either_family() {
        let ip_ttl = |p: &[u8]| ip_dst_ttl(p).map(|(_, ttl)| ttl);
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[8] = 7;
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[7] = 3;
        assert_eq!(ip_ttl(&v4), Some(7));
        assert_eq!(ip_ttl(&v6), Some(3));
        assert_eq!(ip_ttl(&[0x45]), None);
        assert_eq!(ip_ttl(&[]), None);
        assert_eq!(ip_ttl(&[0x10; 40]), None);
    }

    #[test]
    fn link_chatter_is_not_a_probe() {
        let v6 = |dst: std::net::Ipv6Addr| {
            let mut p = [0u8; 40];
            p[0] = 0x60;
            p[24..40].copy_from_slice(&dst.octets());
            p
        };
        let v4 = |dst: std::net::Ipv4Addr| {
            let mut p = [0u8; 20];
            p[0] = 0x45;
            p[16..20].copy_from_slice(&dst.octets());
            p
        };
        assert!(is_probe(&v6("2001:db8::1".parse().unwrap())));
        assert!(is_probe(&v4("192.0.2.1".parse().unwrap())));
        // A router solicitation, an MLD report, a link-local neighbour.
        assert!(!is_probe(&v6("ff02::2".parse().unwrap())));
        assert!(!is_probe(&v6("ff02::16".parse().unwrap())));
        assert!(!is_probe(&v6("fe80::1".parse().unwrap())));
        assert!(!is_probe(&v4("224.0.0.22".parse().unwrap())));
        assert!(!is_probe(&[0x45]));
    }

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
