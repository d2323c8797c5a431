//! `audit-forwarder receive`: the in-cluster receiver
//! (`kubernetes-audit-tailer`). Accepts Forward connections and writes each
//! event as one JSON line; acknowledges after the line is flushed.

use super::cli::{Cli, ReceiveArgs};
use super::{init_logging, signals};
use crate::config;
use crate::forward::server::{Output, Server, ServerConfig};
use crate::ops::http;
use crate::ops::metrics::Metrics;
use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;

pub async fn run(cli: &Cli, a: &ReceiveArgs) -> anyhow::Result<ExitCode> {
    let cfg = config::load(a.config.config.as_deref(), &a.sets())?;
    init_logging(cli, &cfg);
    let r = &cfg.receive;
    let output = match r.output.as_str() {
        "stdout" | "-" => Output::Stdout,
        "null" => Output::Null,
        p if r.output_max_bytes > 0 => Output::Rotating {
            path: p.into(),
            max_bytes: r.output_max_bytes,
            keep: r.output_keep_files,
        },
        p => Output::File(p.into()),
    };
    let metrics = Metrics::new();
    let server = Server::bind(
        ServerConfig {
            listen: r.listen.clone(),
            max_frame_bytes: r.max_frame_bytes,
            max_decompressed_bytes: r.max_decompressed_bytes,
            max_connections: r.max_connections,
            max_connections_per_address: r.max_connections_per_address,
            memory_budget_bytes: r.memory_budget_bytes,
            handshake_timeout: r.handshake_timeout,
            first_message_timeout: r.first_message_timeout,
            min_transfer_rate: r.min_transfer_rate,
            idle_timeout: r.idle_timeout,
            dedupe_window: r.dedupe_window,
            state_dir: r.state_dir.clone(),
            gap_timeout: r.gap_timeout,
            metadata_key: r.metadata_key.clone().filter(|k| !k.is_empty()),
            tag_key: r.tag_key.clone().filter(|k| !k.is_empty()),
            output,
            security: r
                .shared_key
                .as_ref()
                .map(|k| crate::forward::auth::ServerSecurity {
                    shared_key: k.clone(),
                    hostname: r.self_hostname.clone().unwrap_or_else(|| {
                        crate::forward::protocol::handshake::hostname("audit-forwarder-receiver")
                    }),
                    users: r
                        .users
                        .iter()
                        .map(|u| (u.username.clone(), u.password.clone()))
                        .collect(),
                }),
            tls: match (&r.tls_cert_file, &r.tls_key_file) {
                (Some(c), Some(k)) => Some(crate::transport::tls::ServerTls {
                    cert_file: c.clone(),
                    key_file: k.clone(),
                    client_ca_file: r.tls_client_ca_file.clone(),
                }),
                _ => None,
            },
        },
        metrics.receiver(),
    )
    .await
    .context("starting the receiver")?;
    let sd = signals(None);
    if let Some(addr) = &cfg.http_listen {
        let st = Arc::new(http::State {
            metrics: metrics.clone(),
            probe: std::sync::Mutex::new(http::Probe::Receive),
        });
        tokio::spawn(http::serve(http::bind(addr).await?, st, sd.clone()));
    }
    server.serve(sd).await;
    Ok(ExitCode::SUCCESS)
}
