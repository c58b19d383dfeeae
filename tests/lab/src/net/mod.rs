//! The lab's network: one namespace per vantage with a TUN device as its only way out to
//! the emulated internet, a control namespace (coordinator) bridged to every vantage, and
//! the emulator loop that reads probes from the TUNs and writes answers back on time.
//!
//! Each vantage gets its own TUN rather than a route through a shared namespace: a
//! forwarding Linux namespace would decrement TTLs and answer TTL-1 probes itself.

//!
//! - [`tun`]: TUN devices created inside a namespace (ioctls, non-blocking reads).
//! - [`topology`]: the namespaces, veths, bridge and routes of a lab.
//! - [`epoll`]: the readiness wait of the emulator threads.
//! - [`emulator`]: the threads that answer probes on time, and their counters.

use std::net::IpAddr;

use thiserror::Error;

mod emulator;
mod epoll;
mod topology;
mod tun;

pub use emulator::{EmuStats, Emulator, SchedTimes, default_threads, parse_schedstat};
pub use topology::Topology;
pub use tun::open_tun_in;

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

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

pub use tracemesh_testnet::{in_netns, ip};

/// The control network between the coordinator and the agents (RFC 2544 benchmarking
/// space, which no real scenario routes).
pub const CONTROL_NET: &str = "198.18.0.0/16";
pub const COORDINATOR_ADDR: &str = "198.18.0.1";

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
