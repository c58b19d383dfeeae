//! Agents measuring each other over QUIC: `train.rs` (one-way delay trains, sans I/O),
//! `tls.rs` (both ends authenticated by the coordinator's CA, agents only), `node.rs` (the
//! quinn endpoint and a round's exchange).

pub mod node;
pub mod tls;
pub mod train;

pub use node::{MeshClock, MeshError, MeshNode, Peer, UdpTotals};
pub use tls::MeshCredentials;
pub use train::{Receiver, Sample, Stamp, TrainSpec};

/// The mesh port agents listen on unless told otherwise (UDP).
pub const DEFAULT_PORT: u16 = 7444;
