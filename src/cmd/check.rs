//! `audit-forwarder check`: validates a configuration and everything it
//! names (policies, filters, certificates and keys, token files), printing
//! every problem found.

use super::cli::ConfigArgs;
use crate::{config, pipeline};
use std::process::ExitCode;

pub fn run(a: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(a.config.as_deref(), &a.set) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("configuration invalid: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut problems: Vec<String> = cfg
        .outputs
        .iter()
        .filter_map(|o| pipeline::load_policy(o).err().map(|e| e.to_string()))
        .collect();
    // Certificates and keys parse, and each key matches its certificate.
    // Filters load, pass the version check and accept their config.
    for o in &cfg.outputs {
        for f in &o.filters {
            if let Err(e) = crate::filter::wasm::WasmFilter::load(f.spec(None)) {
                problems.push(format!("output {:?}: {e}", o.name));
            }
        }
    }
    for o in &cfg.outputs {
        let proxy_tls = match o.proxy() {
            Ok(Some(crate::transport::proxy::Proxy {
                via: crate::transport::proxy::Via::Https { tls, .. },
                ..
            })) => Some(tls),
            _ => None,
        };
        for t in o.client_tls().into_iter().chain(proxy_tls) {
            if let Err(e) = t.config() {
                problems.push(format!("output {:?}: {e}", o.name));
            }
        }
    }
    let r = &cfg.receive;
    if let (Some(c), Some(k)) = (&r.tls_cert_file, &r.tls_key_file) {
        let t = crate::transport::tls::ServerTls {
            cert_file: c.clone(),
            key_file: k.clone(),
            client_ca_file: r.tls_client_ca_file.clone(),
        };
        if let Err(e) = t.config() {
            problems.push(format!("receive: {e}"));
        }
    }
    if let Some(t) = cfg.webhook.server_tls()
        && let Err(e) = t.config()
    {
        problems.push(format!("webhook: {e}"));
    }
    if let Some(t) = &cfg.webhook.bearer_token_file
        && let Err(e) = crate::source::webhook::TokenFile::new(t.clone()).current()
    {
        problems.push(format!("webhook: {e}"));
    }
    if problems.is_empty() {
        let sources: Vec<String> = cfg
            .sources()
            .iter()
            .map(|s| format!("{} {}", s.kind, s.path.display()))
            .collect();
        println!(
            "configuration OK: {} output(s), sources: {}",
            cfg.outputs.len(),
            sources.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in problems {
            eprintln!("configuration invalid: {p}");
        }
        Ok(ExitCode::from(2))
    }
}
