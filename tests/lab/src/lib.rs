//! The tracemesh lab: a small emulated internet answering real probes from real agents.
//!
//! - [`scenario`]: scenario format v1 and its routing semantics (pure).
//! - [`respond`]: the answers to one probe packet (pure).
//! - [`due`]: the queue that releases answers at their instant (pure).
//! - [`stats`]: the emulator's lateness histogram and rate timeline.
//! - [`net`]: namespaces, TUN devices and the emulator threads.
//! - [`run`]: `tracemesh-lab run`, the whole lab with the real coordinator and agents.

pub mod due;
pub mod faults;
pub mod late;
pub mod mesh;
pub mod net;
pub mod respond;
pub mod run;
pub mod scenario;
pub mod stats;
