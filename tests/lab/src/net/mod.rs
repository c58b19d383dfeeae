//! The lab's network: one namespace per vantage with a TUN device as its only way out to
//! the emulated internet, a control namespace (coordinator) bridged to every vantage, and
//! the emulator loop that reads probes from the TUNs and writes answers back on time.
//!
//! Each vantage gets its own TUN rather than a route through a shared namespace: a
//! forwarding Linux namespace would decrement TTLs and answer TTL-1 probes itself.

//!
//! - [`tun`]: TUN devices created inside a namespace (ioctls, non-blocking reads).
//! - [`topology`]: the namespaces, veths, bridge and routes of a lab.
//! - [`tap`]: packet sockets on the TUNs: the kernel's stamp of each probe's transmission.
//! - [`epoll`]: the readiness wait of the emulator threads.
//! - [`emulator`]: the threads that answer probes on time, and their counters.

use std::net::IpAddr;

use thiserror::Error;

mod emulator;
mod epoll;
mod tap;
mod topology;
mod tun;

pub use emulator::{
    EmuStats, Emulator, LATE_LOG_NS, LateAnswer, SchedTimes, default_threads, parse_schedstat,
};
pub use tap::{Tap, open_tap_in};
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

/// Panics with the missing prerequisite of a test that builds a lab: root and network
/// namespaces (`tracemesh_testnet::require`) and a TUN device. Such tests are
/// `#[ignore]`d and run where their environment is promised, so a gap is a failure.
pub fn require_lab() {
    tracemesh_testnet::require();
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun (a TUN device for the emulator)"
    );
}

/// [`require_lab`], and the workspace binary `name` beside this test (or in
/// `$TRACEMESH_BIN_DIR`), whose path it returns.
pub fn require_lab_bin(name: &str) -> std::path::PathBuf {
    require_lab();
    let bin = crate::run::bin_dir()
        .map(|d| d.join(name))
        .unwrap_or_else(|e| panic!("cannot locate the workspace binaries: {e:#}"));
    assert!(
        bin.exists(),
        "this test needs {} (cargo build --workspace, or set TRACEMESH_BIN_DIR)",
        bin.display()
    );
    bin
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
