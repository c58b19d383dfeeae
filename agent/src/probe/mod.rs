//! The probe engine: packet codecs, the per-trace state machine, the multi-trace engine
//! with its rate caps and deny-list (all pure), and the raw-socket driver.

pub mod alias;
pub mod bucket;
pub mod checksum;
pub mod denylist;
pub mod driver;
pub mod engine;
pub mod mda;
pub mod mda_engine;
pub mod mda_text;
pub mod model;
mod pacer;
pub mod packet;
mod sys;
pub mod trace;

pub use engine::{Engine, EngineConfig, TraceRequest};
pub use model::{Hop, MplsLabel, Proto, StopReason, TraceResult};
pub use trace::TraceParams;
