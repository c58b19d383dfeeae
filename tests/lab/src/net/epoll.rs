//! An epoll instance for the emulator threads, with a nanosecond wait (epoll_pwait2).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An epoll instance, closed on drop.
#[derive(Debug)]
pub(super) struct Epoll(OwnedFd);

impl Epoll {
    #[allow(unsafe_code)]
    pub(super) fn new() -> std::io::Result<Epoll> {
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
    pub(super) fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
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
    pub(super) fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
    ) -> std::io::Result<usize> {
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
