//! Raw sockets and the few syscalls socket2 does not wrap: socket options for receive
//! timestamps and hop limits, and `recvmsg` with its control messages.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A socket that sends complete IP packets we built (`IPPROTO_RAW` implies `IP_HDRINCL`
/// on both families in Linux).
pub fn open_sender(v6: bool) -> io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    s.set_nonblocking(true)?;
    // Bursts of thousands of probes must not hit a full send buffer.
    let _ = s.set_send_buffer_size(4 << 20);
    Ok(s)
}

/// A socket receiving every ICMP/ICMPv6 or TCP packet that reaches the host, with kernel
/// receive timestamps (and, for IPv6, the hop limit, which the header would have told us).
pub fn open_receiver(v6: bool, proto: u8) -> io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(proto))))?;
    s.set_nonblocking(true)?;
    // Replies to a burst arrive in a burst; as root, exceed rmem_max rather than drop them.
    if setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20).is_err() {
        let _ = s.set_recv_buffer_size(8 << 20);
    }
    setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    if v6 {
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
    }
    Ok(s)
}

#[allow(unsafe_code)]
fn setsockopt_int(s: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the fd is a live socket owned by `s`; we pass a pointer to a local c_int
    // and its exact size, as setsockopt(2) requires for integer options.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn send_to(s: &Socket, packet: &[u8], dst: IpAddr) -> io::Result<usize> {
    s.send_to(packet, &SockAddr::from(SocketAddr::new(dst, 0)))
}

#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    pub len: usize,
    pub from: IpAddr,
    /// Kernel receive time (realtime clock).
    pub timestamp: Option<SystemTime>,
    pub hop_limit: Option<u8>,
}

/// One non-blocking `recvmsg`; `WouldBlock` when the queue is empty.
#[allow(unsafe_code)]
pub fn recv(s: &Socket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    // Room for a timespec and an int control message, with alignment slack.
    let mut control = [0u64; 16];
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: every pointer in `msg` refers to a live local buffer of the length given,
    // and they outlive the call.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = sockaddr_ip(&addr).ok_or_else(|| io::Error::other("reply from a non-IP address"))?;
    let mut meta = RecvMeta {
        len: n as usize,
        from,
        timestamp: None,
        hop_limit: None,
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in, bounded by
    // msg_controllen; each data read is of the type the (level, type) pair specifies.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                    meta.timestamp =
                        Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let h = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    meta.hop_limit = u8::try_from(h).ok();
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(meta)
}

#[allow(unsafe_code)]
fn sockaddr_ip(addr: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The source address the kernel would use toward `dst`: connecting a UDP socket picks
/// a route and an address without sending anything.
pub fn source_for(dst: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(dst, 33434))?;
    Ok(s.local_addr()?.ip())
}

/// Scratch space for a receive: large enough for any reply worth parsing.
pub fn recv_buffer() -> Vec<u8> {
    vec![0; 2048]
}
