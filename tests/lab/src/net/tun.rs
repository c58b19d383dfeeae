//! TUN devices: created from inside a vantage's namespace, read without blocking.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{NetError, io};

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
pub(super) fn setns_net(f: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a descriptor we own, for this thread only; the callers' threads
    // end right after they have opened their device or socket there.
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
pub(super) fn set_nonblocking(f: &File) -> std::io::Result<()> {
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
