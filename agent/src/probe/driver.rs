//! The thin tokio driver around the sans-IO probers ([`Engine`] for traceroutes,
//! [`AliasProber`] for alias resolution): raw sockets, kernel timestamps, timers.
//!
//! One task per receiving socket parses replies and stamps them with the kernel's
//! receive time; the main loop feeds them to the prober, sends whatever the prober
//! allows, and sleeps until the prober's next deadline or the next reply.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use socket2::Socket;
use thiserror::Error;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::alias::AliasProber;
use super::engine::{Engine, EngineStats};
use super::model::{Proto, TraceResult};
use super::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, Reply, parse_v4_with_id, parse_v6};
use super::sys;

/// A reply as the receive tasks hand it over: parsed, with the IPv4 identification of
/// its header (`None` for IPv6) and the kernel's receive time.
type Received = (Reply, Option<u16>, Instant);

/// What the driver loop runs: a sans-IO prober that writes probes into a buffer, takes
/// replies and timeouts with `now`, and says when it wants to be called back.
pub trait Prober {
    /// The next probe to send at `now`, written into `buf`; its destination.
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<IpAddr>;
    /// The probe last handed out left at `at`, taken just before the send that took it
    /// (later than the `now` it was built at when the send waited): RTTs count from here.
    /// Alias probing times nothing but its waits, so it keeps the default.
    fn on_sent(&mut self, _at: Instant) {}
    /// When to call back even if no reply arrives.
    fn poll_timeout(&self, now: Instant) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    /// A reply, with its IPv4 identification when it came over IPv4.
    fn handle_reply(&mut self, reply: &Reply, ip_id: Option<u16>, rx: Instant);
    /// Nothing left to send, await or report.
    fn is_done(&self) -> bool;
}

impl Prober for Engine {
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<IpAddr> {
        Engine::poll_transmit(self, now, buf).map(|t| t.dst)
    }
    fn on_sent(&mut self, at: Instant) {
        Engine::on_sent(self, at);
    }
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        Engine::poll_timeout(self, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Engine::handle_timeout(self, now);
    }
    fn handle_reply(&mut self, reply: &Reply, _ip_id: Option<u16>, rx: Instant) {
        Engine::handle_reply(self, reply, rx);
    }
    fn is_done(&self) -> bool {
        self.is_idle()
    }
}

impl Prober for AliasProber {
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<IpAddr> {
        AliasProber::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        AliasProber::poll_timeout(self, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        AliasProber::handle_timeout(self, now);
    }
    fn handle_reply(&mut self, reply: &Reply, ip_id: Option<u16>, rx: Instant) {
        AliasProber::handle_reply(self, reply, ip_id, rx);
    }
    fn is_done(&self) -> bool {
        AliasProber::is_done(self)
    }
}

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("cannot open a raw {what} socket: {source} (tracing needs root or CAP_NET_RAW)")]
    Socket {
        what: &'static str,
        source: io::Error,
    },
    #[error("sending a probe to {dst}: {source}")]
    Send { dst: IpAddr, source: io::Error },
    #[error("result sink failed: {0}")]
    Sink(String),
}

/// Which families and methods the run needs sockets for.
#[derive(Debug, Default, Clone)]
pub struct Needs {
    pub v4: bool,
    pub v6: bool,
    pub protos: HashSet<Proto>,
}

impl Needs {
    pub fn add(&mut self, dst: IpAddr, proto: Proto) {
        if dst.is_ipv4() {
            self.v4 = true;
        } else {
            self.v6 = true;
        }
        self.protos.insert(proto);
    }
}

struct Senders {
    v4: Option<AsyncFd<Socket>>,
    v6: Option<AsyncFd<Socket>>,
}

#[allow(unsafe_code)]
fn open(what: &'static str, r: io::Result<Socket>) -> Result<AsyncFd<Socket>, DriverError> {
    let sock = r.map_err(|source| DriverError::Socket { what, source })?;
    // SAFETY: `Socket` owns its descriptor, keeps it open until dropped and always returns
    // the same one from `as_raw_fd`; the AsyncFd takes ownership of the Socket.
    unsafe { AsyncFd::register(sock) }.map_err(|e| DriverError::Socket {
        what,
        source: io::Error::other(e.to_string()),
    })
}

/// Raw sockets opened and listening, ready for [`Sockets::run`]. Opening ahead of time
/// lets a scheduled round start on its instant instead of after socket setup.
#[derive(Debug)]
pub struct Sockets {
    senders: Senders,
    rx: mpsc::Receiver<Received>,
    receivers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Senders")
            .field("v4", &self.v4.is_some())
            .field("v6", &self.v6.is_some())
            .finish()
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for r in &self.receivers {
            r.abort();
        }
    }
}

impl Sockets {
    /// Opens what `needs` asks for; must run inside a tokio runtime.
    pub fn open(needs: &Needs) -> Result<Sockets, DriverError> {
        let senders = Senders {
            v4: needs
                .v4
                .then(|| open("IPv4", sys::open_sender(false)))
                .transpose()?,
            v6: needs
                .v6
                .then(|| open("IPv6", sys::open_sender(true)))
                .transpose()?,
        };
        let (tx, rx) = mpsc::channel::<Received>(65536);
        let mut receivers: Vec<JoinHandle<()>> = Vec::new();
        let tcp = needs.protos.contains(&Proto::Tcp);
        let mut spawn = |v6: bool, proto: u8, what: &'static str| -> Result<(), DriverError> {
            let fd = open(what, sys::open_receiver(v6, proto))?;
            receivers.push(tokio::spawn(receive(fd, v6, proto, tx.clone())));
            Ok(())
        };
        // ICMP errors answer every method, so the ICMP socket is always needed.
        if needs.v4 {
            spawn(false, IPPROTO_ICMP, "ICMP")?;
            if tcp {
                spawn(false, IPPROTO_TCP, "TCP")?;
            }
        }
        if needs.v6 {
            spawn(true, IPPROTO_ICMPV6, "ICMPv6")?;
            if tcp {
                spawn(true, IPPROTO_TCP, "TCPv6")?;
            }
        }
        Ok(Sockets {
            senders,
            rx,
            receivers,
        })
    }

    /// Runs the engine until it is idle, handing each finished trace to `sink`.
    /// `progress` is called about once a second with the engine's counters.
    pub async fn run(
        self,
        engine: &mut Engine,
        mut sink: impl FnMut(TraceResult) -> Result<(), String>,
        mut progress: impl FnMut(&Engine, Duration),
    ) -> Result<EngineStats, DriverError> {
        let started = Instant::now();
        let mut next_progress = started + Duration::from_secs(1);
        self.drive(engine, |engine, now| {
            while let Some(r) = engine.poll_result() {
                sink(r).map_err(DriverError::Sink)?;
            }
            if now >= next_progress {
                progress(engine, now.duration_since(started));
                next_progress = now + Duration::from_secs(1);
            }
            Ok(())
        })
        .await?;
        Ok(engine.stats())
    }

    /// Runs the alias prober until it is done; its findings are in
    /// [`AliasProber::report`].
    pub async fn run_alias(self, prober: &mut AliasProber) -> Result<(), DriverError> {
        self.drive(prober, |_, _| Ok(())).await
    }

    /// Runs any prober until it is done; `after_send` is called on every turn of the
    /// loop, after sending, to collect results.
    pub async fn drive<P: Prober>(
        mut self,
        prober: &mut P,
        after_send: impl FnMut(&mut P, Instant) -> Result<(), DriverError>,
    ) -> Result<(), DriverError> {
        // Replies that arrived before the run belong to nobody in this prober.
        while self.rx.try_recv().is_ok() {}
        main_loop(prober, &self.senders, &mut self.rx, after_send).await
    }
}

/// Opens sockets for `needs` and runs the engine until it is idle.
pub async fn run(
    engine: &mut Engine,
    needs: &Needs,
    sink: impl FnMut(TraceResult) -> Result<(), String>,
    progress: impl FnMut(&Engine, Duration),
) -> Result<EngineStats, DriverError> {
    Sockets::open(needs)?.run(engine, sink, progress).await
}

/// Opens sockets for `needs` and runs the alias prober until it is done.
pub async fn run_alias(prober: &mut AliasProber, needs: &Needs) -> Result<(), DriverError> {
    Sockets::open(needs)?.run_alias(prober).await
}

async fn main_loop<P: Prober>(
    engine: &mut P,
    senders: &Senders,
    rx: &mut mpsc::Receiver<Received>,
    mut after_send: impl FnMut(&mut P, Instant) -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    let mut buf = Vec::with_capacity(128);
    // The measured rate: probes sent since the start of the current one-second window.
    let (mut window_start, mut window_sent) = (Instant::now(), 0u64);
    loop {
        let now = Instant::now();
        let window = now.duration_since(window_start);
        if window >= Duration::from_secs(1) {
            crate::metrics::RATE.set(window_sent as f64 / window.as_secs_f64());
            (window_start, window_sent) = (now, 0);
        }
        engine.handle_timeout(now);
        // A fresh instant per probe: the engine stamps the probe's send time with it, and
        // on a busy machine the sends of one burst can be far apart.
        while let Some(dst) = engine.poll_transmit(Instant::now(), &mut buf) {
            let sock = if dst.is_ipv4() {
                senders.v4.as_ref()
            } else {
                senders.v6.as_ref()
            };
            let Some(sock) = sock else {
                // `Needs` was built from the same requests; a miss is a caller bug.
                return Err(DriverError::Send {
                    dst,
                    source: io::Error::other("no socket opened for this family"),
                });
            };
            if let Some(at) = send(sock, &buf, dst).await? {
                engine.on_sent(at);
                crate::metrics::PROBES_SENT.inc();
                window_sent += 1;
            }
        }
        after_send(engine, now)?;
        if engine.is_done() {
            crate::metrics::RATE.set(0.0);
            return Ok(());
        }
        let deadline = engine
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_millis(100));
        tokio::select! {
            biased;
            got = rx.recv() => {
                let Some((reply, ip_id, at)) = got else {
                    // Every receiver died: nothing more can be matched, let timeouts run.
                    tokio::time::sleep_until(deadline.into()).await;
                    continue;
                };
                engine.handle_reply(&reply, ip_id, at);
                crate::metrics::REPLIES.inc();
                // Drain what else is queued so a burst is handled in one pass.
                for _ in 0..4096 {
                    match rx.try_recv() {
                        Ok((reply, ip_id, at)) => {
                            engine.handle_reply(&reply, ip_id, at);
                            crate::metrics::REPLIES.inc();
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

/// When the probe went out: the instant just before the send(2) that took it, so that
/// waits for room in a full queue (EAGAIN/ENOBUFS) or for the socket's readiness do not
/// count in its RTT. None when it could not go (no route, a queue that stays full): it
/// is lost like an unanswered one, counted in the drops.
async fn send(
    sock: &AsyncFd<Socket>,
    packet: &[u8],
    dst: IpAddr,
) -> Result<Option<Instant>, DriverError> {
    // A full queue (EAGAIN/ENOBUFS) waits for room; any other error is fatal, since it
    // would hit every probe alike (no permission, no route for the family).
    for _ in 0..100 {
        let mut at = Instant::now();
        // The closure runs when the socket is deemed writable, once per try.
        match sock
            .async_io(Interest::WRITABLE, |s| {
                at = Instant::now();
                sys::send_to(s, packet, dst)
            })
            .await
        {
            Ok(_) => return Ok(Some(at)),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            // The destination is unreachable from this host: the probe is lost like any
            // unanswered one and the trace's timeouts take it from there.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES)
                ) =>
            {
                tracing::debug!(%dst, error = %e, "probe not sent");
                crate::metrics::DROPS.inc("unreachable");
                return Ok(None);
            }
            Err(source) => return Err(DriverError::Send { dst, source }),
        }
    }
    tracing::warn!(%dst, "send queue stayed full; probe dropped");
    crate::metrics::DROPS.inc("send_queue_full");
    Ok(None)
}

async fn receive(fd: AsyncFd<Socket>, v6: bool, proto: u8, tx: mpsc::Sender<Received>) {
    let mut buf = sys::recv_buffer();
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        loop {
            match guard.try_io(|s| sys::recv(s.get_ref(), &mut buf)) {
                Ok(Ok(meta)) => {
                    let at = rx_instant(meta.timestamp);
                    let bytes = &buf[..meta.len];
                    let parsed = match (v6, meta.from) {
                        (false, _) => parse_v4_with_id(bytes).map(|(r, id)| (r, Some(id))),
                        (true, IpAddr::V6(from)) => {
                            parse_v6(from, meta.hop_limit.unwrap_or(0), proto, bytes)
                                .map(|r| (r, None))
                        }
                        (true, IpAddr::V4(_)) => continue,
                    };
                    match parsed {
                        Ok((reply, ip_id)) => {
                            if tx.send((reply, ip_id, at)).await.is_err() {
                                return;
                            }
                        }
                        // Other traffic shares these sockets; it is not an error.
                        Err(e) => tracing::trace!(error = %e, "ignored packet"),
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "receive failed");
                    break;
                }
                Err(_would_block) => break,
            }
        }
    }
}

/// Converts a kernel receive timestamp (realtime) to the monotonic clock the engine uses,
/// so an RTT does not include the time a reply sat in the socket queue.
fn rx_instant(ts: Option<SystemTime>) -> Instant {
    let Some(ts) = ts else {
        return Instant::now();
    };
    // The two clocks are read as a pair between two realtime reads; a pair the thread was
    // preempted in the middle of (the reads far apart) is read again, since the gap
    // would count as the reply's age and shorten the RTT, even to nothing.
    let mut fallback = None;
    for _ in 0..3 {
        let before = SystemTime::now();
        let mono = Instant::now();
        let after = SystemTime::now();
        match rx_from(ts, before, mono, after) {
            Some(at) => return at,
            None => fallback = Some(mono),
        }
    }
    fallback.unwrap_or_else(Instant::now)
}

/// The monotonic instant of realtime `ts`, given `mono` read between realtime `before`
/// and `after`: None when those are too far apart (more than [`CLOCK_PAIR_SLACK`]) to
/// pin `mono` down, or `ts` is in the future or over 10 s old.
fn rx_from(
    ts: SystemTime,
    before: SystemTime,
    mono: Instant,
    after: SystemTime,
) -> Option<Instant> {
    let span = after.duration_since(before).ok()?;
    if span > CLOCK_PAIR_SLACK {
        return None;
    }
    let mid = before + span / 2;
    let age = mid.duration_since(ts).ok()?;
    if age >= Duration::from_secs(10) {
        return None;
    }
    mono.checked_sub(age)
}

/// How far apart the two realtime reads around a monotonic one may be (reads take tens of
/// nanoseconds; more means the thread lost its CPU between them).
const CLOCK_PAIR_SLACK: Duration = Duration::from_micros(20);

/// The source address the kernel picks toward `dst` (nothing is sent).
pub fn source_for(dst: IpAddr) -> io::Result<IpAddr> {
    sys::source_for(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_stamp_maps_to_the_monotonic_clock_only_from_a_tight_clock_pair() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mono = Instant::now();
        // The reply was stamped 3 ms before the pair: 3 ms before `mono`.
        let ts = base - ms(3);
        let at = rx_from(ts, base - us(1), mono, base + us(1)).unwrap();
        assert_eq!(mono.duration_since(at), ms(3));
        // Preempted between the reads: the 2 ms gap would count as age. Refused.
        assert_eq!(rx_from(ts, base, mono, base + ms(2)), None);
        // A stamp from the future or from long ago is not this reply's.
        assert_eq!(rx_from(base + ms(1), base, mono, base + us(1)), None);
        assert_eq!(
            rx_from(base - Duration::from_secs(11), base, mono, base + us(1)),
            None
        );
    }
}
