//! The operational parts: Prometheus [`metrics`], the [`http`] endpoint
//! (metrics, health and readiness), [`logging`], and [`memory`] tuning.

pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
