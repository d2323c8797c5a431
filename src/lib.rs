//! audit-forwarder: ships Kubernetes audit logs from a hosted control plane
//! into the cluster over the Fluent Forward protocol, without loss.
//!
//! The modules follow the data flow (docs/ARCHITECTURE.md); dependencies
//! point one way, commands → pipeline → stages → record, and
//! `tests/layers.rs` keeps it so.

pub mod cmd;
pub mod config;
pub mod filter;
pub mod forward;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod sink;
pub mod source;
pub mod synth;
pub mod transport;

/// Resolves once `rx` reads `true` (or its sender is gone).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
