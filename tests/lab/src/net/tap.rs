//! The instant each probe entered its TUN, stamped by the kernel.
//!
//! The emulator learns of a probe when it reads it from the TUN, which is later than the
//! agent sent it by however long the emulator thread took to wake up: tens of
//! microseconds on an idle machine, a millisecond or more on a busy virtual one. Timing
//! an answer from the read would add that wait to the RTT the agent measures, and on a
//! 0.4 ms access hop it is most of the tolerance. A packet socket bound to the TUN sees
//! a copy of every packet the vantage transmits into it, stamped as it is handed to the
//! device (`dev_queue_xmit_nit`, before the TUN queues it); the emulator times its answer
//! from that stamp instead.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{NetError, io};

/// Bytes of each copy the tap keeps: enough to tell two probes apart (IP header, the
/// probe header and its identifiers), little to copy.
const SNAP: usize = 96;
/// Bytes compared between a TUN read and a tap copy.
const COMPARE: usize = 64;

/// A packet socket on one vantage's TUN that sees the packets the vantage sends (only
/// those: a classic BPF filter drops the answers written into the TUN).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// Copies already taken from the socket, oldest first, not yet matched.
    copies: Copies,
    /// Where one `recvmmsg` puts its copies and their control messages.
    slots: Box<[[u8; SNAP]; BATCH]>,
    controls: Box<[[u64; CONTROL_WORDS]; BATCH]>,
}

/// Copies taken from the socket per system call. A round's burst queues hundreds of
/// copies on a tap; taking them one `recvmsg` at a time was half the emulator's system
/// calls at scale (two per probe, one of them a peek).
const BATCH: usize = 32;
/// Room for one SCM_TIMESTAMPNS control message (a timespec), 8-byte aligned.
const CONTROL_WORDS: usize = 8;

/// One tap copy: its first [`SNAP`] bytes and the kernel's stamp (Unix ns).
#[derive(Debug, Clone)]
pub(crate) struct TapCopy {
    bytes: [u8; SNAP],
    len: usize,
    stamp: Option<u64>,
}

impl TapCopy {
    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len.min(SNAP)]
    }
}

/// The copies taken from a tap and not yet matched, and the matching of a TUN read
/// against them, apart from the socket (`refill` takes more from wherever they come).
#[derive(Debug, Default)]
pub(crate) struct Copies {
    queue: std::collections::VecDeque<TapCopy>,
}

impl Copies {
    /// The oldest copy, refilling first when none is held.
    fn front(&mut self, refill: &mut impl FnMut(&mut Self)) -> Option<&TapCopy> {
        if self.queue.is_empty() {
            refill(self);
        }
        self.queue.front()
    }

    /// See [`Tap::stamp_of`].
    pub(crate) fn stamp_of(
        &mut self,
        pkt: &[u8],
        mut refill: impl FnMut(&mut Self),
    ) -> Option<u64> {
        let mut stamp = loop {
            let matched = same_packet(self.front(&mut refill)?.bytes(), pkt);
            let c = self.queue.pop_front()?;
            if matched {
                break c.stamp;
            }
        };
        while self
            .front(&mut refill)
            .is_some_and(|c| same_packet(c.bytes(), pkt))
        {
            stamp = self.queue.pop_front().and_then(|c| c.stamp).or(stamp);
        }
        stamp
    }
}

/// Opens a tap on `ifname` inside namespace `ns` (the caller's namespace is untouched: a
/// short-lived thread enters `ns`).
pub fn open_tap_in(ns: &str, ifname: &str) -> Result<Tap, NetError> {
    let ns_path = format!("/run/netns/{ns}");
    let ifname = ifname.to_string();
    let what = format!("opening a packet socket on {ifname} in {ns}");
    std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        let target = File::open(&ns_path)?;
        super::tun::setns_net(&target)?;
        open_here(&ifname)
    })
    .join()
    .map_err(|_| NetError::Io {
        what: what.clone(),
        source: std::io::Error::other("thread panicked"),
    })?
    .map(|fd| Tap {
        fd,
        copies: Copies::default(),
        slots: Box::new([[0; SNAP]; BATCH]),
        controls: Box::new([[0; CONTROL_WORDS]; BATCH]),
    })
    .map_err(io(what))
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[allow(unsafe_code)]
fn open_here(ifname: &str) -> std::io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name, valid for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; a non-negative result is a descriptor
    // that we alone own from here.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    check(raw)?;
    // SAFETY: `raw` is open and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Keep only what the vantage transmits: ld the packet type; accept (SNAP bytes) when
    // it is PACKET_OUTGOING, drop otherwise. The filter is in place before the bind, so
    // no answer slips in between.
    let mut prog = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: u32::from(libc::PACKET_OUTGOING),
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SNAP as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    let one: libc::c_int = 1;
    // A round's burst from one vantage must fit while the emulator is busy elsewhere.
    let rcvbuf: libc::c_int = 4 << 20;
    // SAFETY: each setsockopt reads exactly the size given from a live local (the BPF
    // program array outlives the call; the kernel copies it).
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        ))?;
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        // SO_RCVBUFFORCE passes rmem_max (root); fall back to what is allowed.
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            check(libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ))?;
        }
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are plain integers.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind reads a sockaddr_ll of the size given, a live local.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Whether a tap copy (`copy`, cut at [`SNAP`] bytes) is the packet read from the TUN.
pub(crate) fn same_packet(copy: &[u8], read: &[u8]) -> bool {
    let n = COMPARE.min(read.len());
    copy.len() >= n && copy[..n] == read[..n]
}

impl Tap {
    /// The kernel's stamp (Unix ns) of `pkt`, just read from the TUN. The tap sees the
    /// packets in the order the TUN queued them, and before the TUN does, so its copy is
    /// already waiting; copies ahead of it are of packets the TUN dropped (queue full)
    /// and are discarded. A sender whose packet was dropped sends the same bytes again
    /// (the agent's driver does, after ENOBUFS): of a run of identical copies, the last
    /// is the one that got in. None when no copy matches (copies lost to a full socket
    /// buffer): the caller times that probe from its read.
    pub fn stamp_of(&mut self, pkt: &[u8]) -> Option<u64> {
        let (fd, slots, controls) = (&self.fd, &mut self.slots, &mut self.controls);
        self.copies
            .stamp_of(pkt, |c| recv_batch(fd, slots, controls, &mut c.queue))
    }

    /// Whether a copy is waiting.
    #[allow(unsafe_code)]
    pub fn has_copy(&self) -> bool {
        if !self.copies.queue.is_empty() {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: recv writes at most 1 byte into `byte`, live for the call; MSG_PEEK
        // leaves the copy queued.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n >= 0
    }
}

/// Takes the copies waiting on `fd` (up to one slot each) in one `recvmmsg`, and appends
/// them with their stamps to `out`. Nothing waiting (EAGAIN), or the device gone, appends
/// nothing.
#[allow(unsafe_code)]
fn recv_batch(
    fd: &OwnedFd,
    slots: &mut [[u8; SNAP]; BATCH],
    controls: &mut [[u64; CONTROL_WORDS]; BATCH],
    out: &mut std::collections::VecDeque<TapCopy>,
) {
    // On the stack, not in the Tap: they hold raw pointers (not Send) into its buffers.
    let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
        iov_base: slots[i].as_mut_ptr().cast(),
        iov_len: SNAP,
    });
    let mut msgs: [libc::mmsghdr; BATCH] = std::array::from_fn(|i| {
        // SAFETY: an all-zero msghdr is valid; its pointers are set to live buffers.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = controls[i].as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(&controls[i]);
        libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        }
    });
    // SAFETY: recvmmsg fills at most `msgs.len()` headers, each writing at most iov_len
    // bytes into its slot and msg_controllen bytes into its control buffer, all of which
    // (and `iovs`, which the headers point at) live until after the call.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    for (i, m) in msgs
        .iter()
        .enumerate()
        .take(usize::try_from(got).unwrap_or(0))
    {
        let mut stamp = None;
        // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen as the kernel
        // filled them; a timespec is read unaligned from a header of the right type.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
            }
        }
        out.push_back(TapCopy {
            bytes: slots[i],
            len: m.msg_len as usize,
            stamp,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_matches_its_packet_on_the_first_bytes_only() {
        let pkt: Vec<u8> = (0..200u8).collect();
        assert!(same_packet(&pkt[..SNAP], &pkt));
        let mut other = pkt.clone();
        other[COMPARE - 1] ^= 1;
        assert!(!same_packet(&other[..SNAP], &pkt));
        // Past the compared bytes (a payload) a difference does not matter.
        other[COMPARE - 1] ^= 1;
        other[COMPARE] ^= 1;
        assert!(same_packet(&other[..SNAP], &pkt));
        // A short packet is compared whole; a copy shorter than it never matches.
        assert!(same_packet(&pkt[..20], &pkt[..20]));
        assert!(!same_packet(&pkt[..10], &pkt[..20]));
    }

    fn copy(tag: u8, stamp: u64) -> TapCopy {
        let mut bytes = [0; SNAP];
        bytes[0] = tag;
        TapCopy {
            bytes,
            len: SNAP,
            stamp: Some(stamp),
        }
    }

    /// A socket that hands its copies over `per_call` at a time, counting the calls.
    fn socket(
        copies: Vec<TapCopy>,
        per_call: usize,
    ) -> (impl FnMut(&mut Copies), std::rc::Rc<std::cell::Cell<usize>>) {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = calls.clone();
        let mut left = std::collections::VecDeque::from(copies);
        let refill = move |c: &mut Copies| {
            seen.set(seen.get() + 1);
            for _ in 0..per_call {
                if let Some(x) = left.pop_front() {
                    c.queue.push_back(x);
                }
            }
        };
        (refill, calls)
    }

    fn pkt(tag: u8) -> Vec<u8> {
        let mut p = vec![0; 120];
        p[0] = tag;
        p
    }

    #[test]
    fn copies_of_dropped_packets_are_skipped_and_a_resent_packet_gets_its_last_stamp() {
        // 1 went in; 2 was dropped by the TUN; 3 was dropped, resent and got in; 4 follows.
        let all = vec![
            copy(1, 10),
            copy(2, 20),
            copy(3, 30),
            copy(3, 31),
            copy(4, 40),
        ];
        for per_call in [1, 2, 3, 32] {
            let (mut refill, _) = socket(all.clone(), per_call);
            let mut c = Copies::default();
            assert_eq!(c.stamp_of(&pkt(1), &mut refill), Some(10), "{per_call}");
            assert_eq!(c.stamp_of(&pkt(3), &mut refill), Some(31), "{per_call}");
            assert_eq!(c.stamp_of(&pkt(4), &mut refill), Some(40), "{per_call}");
            // A read with no copy left (lost to a full socket buffer): no stamp.
            assert_eq!(c.stamp_of(&pkt(5), &mut refill), None, "{per_call}");
        }
    }

    #[test]
    fn a_burst_is_taken_from_the_socket_in_few_calls() {
        let all: Vec<TapCopy> = (0..64).map(|i| copy(i, u64::from(i))).collect();
        let (mut refill, calls) = socket(all, BATCH);
        let mut c = Copies::default();
        for i in 0..64u8 {
            assert_eq!(c.stamp_of(&pkt(i), &mut refill), Some(u64::from(i)));
        }
        // Two full batches, and a look past each batch's last copy for a resend of it.
        assert!(calls.get() <= 4, "{} calls for 64 copies", calls.get());
    }
}
