//! The operational parts: Prometheus [`metrics`], the [`http`] endpoint
//! (metrics, health and readiness), [`logging`], [`memory`] tuning, and the
//! modes of the [`files`] holding audit content.

pub mod files;
pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
