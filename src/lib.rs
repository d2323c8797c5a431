//! audit-forwarder: ships Kubernetes audit logs from a hosted control plane
//! into the cluster over the Fluent Forward protocol, without loss.

pub mod cli;
pub mod config;
pub mod demo;
pub mod filter;
pub mod forward;
pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod source;
pub mod synth;
pub mod transport;

/// Resolves once `rx` reads `true` (or its sender is gone).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
