//! The tracemesh coordinator as a library; the `tracemesh` binary (`main.rs`, `cli/`) is
//! a thin command line around it, and benches and tests use it directly.
//!
//! - [`server`]: the gRPC services, the session registry and the ingest writer.
//! - [`store`]: persistence (sled) behind the `Store` trait.
//! - [`ca`]: the coordinator's certificate authority and roles.
//! - [`campaign`]: target and vantage selection, expansion, push decisions.
//! - [`annotate`]: prefix→AS, AS names, IXP LANs, MRT dumps.
//! - [`geo`]: distances, RTT-constrained multilateration, the gazetteer.
//! - [`detect`]: diversion detection and triangulation (pure: no I/O, no clock).
//! - [`report`]: the self-contained HTML report (map, timelines, hop tables).
//! - [`live`]: live detection inside `tracemesh serve --adversary`.
//! - [`deploy`]: inventory → cloud-init user-data.
//! - [`formats`]: RIPE Atlas, scamper JSON and warts codecs (import and export).
pub mod alias;
pub mod annotate;
pub mod archive;
pub mod ca;
pub mod campaign;
pub mod deploy;
pub mod detect;
pub mod formats;
pub mod geo;
pub mod live;
pub mod live_checkpoint;
pub mod live_view;
pub mod mesh;
pub mod metrics;
pub mod report;
pub mod retention;
pub mod server;
pub mod store;
pub mod stored_records;
