//! tracemesh agent: a traceroute engine that matches scamper hop for hop, and (later) the
//! session that runs coordinated campaigns for a coordinator.

pub mod mesh;
pub mod metrics;
pub mod probe;
pub mod session;
