//! The agent's session with its coordinator (`tracemesh-agent run`).

mod client;
pub mod convert;
pub mod core;
pub mod schedule;
pub mod spool;
pub mod state;

pub use client::{RunConfig, SessionError, run};
