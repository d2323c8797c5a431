//! `audit-forwarder filter test`: runs events through a chain of WASM
//! filters and shows each outcome; `filter compile` (hidden): compiles a
//! component in a child process for the forwarder's cache.

use super::cli::{Cli, FilterCommand};
use super::{init_tool_logging, input, write_line};
use crate::config;
use crate::filter::chain::Chain;
use crate::filter::item::Item;
use crate::filter::on_error::{OnError, Stop};
use crate::filter::wasm;
use crate::ops::metrics::OutputMetrics;
use crate::record::encode::Transcoder;
use crate::record::json::record_json;
use anyhow::Context;
use std::process::ExitCode;

pub fn run(cli: &Cli, c: &FilterCommand) -> anyhow::Result<ExitCode> {
    let (wasm, config, batch, timeout, file) = match c {
        FilterCommand::Compile { wasm, out } => {
            wasm::compile_to(wasm, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        FilterCommand::Test {
            wasm,
            config,
            batch,
            timeout,
            file,
        } => (wasm, config, batch, timeout, file),
    };
    init_tool_logging(cli, "info");
    let mut table = serde_json::Map::new();
    for kv in config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--config {kv:?}: expected KEY=VALUE"))?;
        let v = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or_else(|| serde_json::Value::from(v));
        table.insert(k.trim().to_string(), v);
    }
    let config = serde_json::Value::Object(table);
    let specs = wasm
        .iter()
        .map(|p| {
            let f = config::FilterSection {
                wasm: p.clone(),
                name: None,
                config: config.clone(),
                on_error: OnError::Stop,
                timeout: *timeout,
                max_memory_bytes: 256 << 20,
            };
            (f.spec(None), f.on_error)
        })
        .collect();
    let mut chain = Chain::load(specs, OutputMetrics::default())?;
    let mut out = std::io::stdout().lock();
    let mut lines = std::io::BufRead::split(input(file.as_deref())?, b'\n')
        .enumerate()
        .peekable();
    while lines.peek().is_some() {
        let mut batch_lines = Vec::new();
        let mut first = 0;
        for (n, l) in lines.by_ref() {
            let l = l?;
            if l.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if batch_lines.is_empty() {
                first = n + 1;
            }
            batch_lines.push(l);
            if batch_lines.len() >= (*batch).max(1) {
                break;
            }
        }
        if batch_lines.is_empty() {
            break;
        }
        let results = match try_lines(&mut chain, first, &batch_lines) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("filter failed: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        for r in results {
            if !write_line(&mut out, &r.to_string())? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `filter test`: runs `lines` (JSON events) through the chain as one
/// batch and describes each outcome as a JSON object: `line` (1-based),
/// `auditID`, `result` (`keep`, `changed`, `drop`, `invalid`) and `event`
/// (what would be forwarded).
fn try_lines(
    chain: &mut Chain,
    first_line: usize,
    lines: &[Vec<u8>],
) -> Result<Vec<serde_json::Value>, Stop> {
    let mut tc = Transcoder::default();
    let mut items = Vec::new();
    let mut slots = Vec::new();
    for l in lines {
        let mut rec = Vec::new();
        match tc.encode(l, &mut rec) {
            Ok(f) => {
                let json = String::from_utf8_lossy(l);
                slots.push(Some((items.len(), rec.clone())));
                items.push(Item::new(rec, &json, &f));
            }
            Err(e) => {
                slots.push(None);
                tracing::warn!(line = first_line + slots.len() - 1, error = %e, "not a JSON object; skipped");
            }
        }
    }
    chain.run(&mut items)?;
    Ok(slots
        .into_iter()
        .enumerate()
        .map(|(k, slot)| {
            let line = first_line + k;
            let Some((i, before)) = slot else {
                return serde_json::json!({ "line": line, "result": "invalid" });
            };
            let it = &items[i];
            let ev: serde_json::Value = record_json(&it.rec)
                .ok()
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            let result = if it.dropped {
                "drop"
            } else if it.rec == before {
                "keep"
            } else {
                "changed"
            };
            serde_json::json!({
                "line": line,
                "auditID": ev.get("auditID").cloned().unwrap_or_default(),
                "result": result,
                "event": if it.dropped { serde_json::Value::Null } else { ev },
            })
        })
        .collect())
}
