//! placeholder until this crate lands
pub mod annotate;
pub mod ca;
pub mod campaign;
pub mod deploy;
pub mod detect;
pub mod geo;
pub mod live;
pub mod server;
pub mod store;
