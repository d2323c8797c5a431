//! `audit-forwarder filter test`: runs events through WASM filters and shows
//! each filter's decision per event; with `--config FILE --output NAME`,
//! exactly that output's policy and filter chain. `filter compile`
//! (hidden): compiles a component in a child process for the forwarder's
//! cache.

use super::cli::{Cli, FilterCommand};
use super::{init_tool_logging, input, write_line};
use crate::config::{self, FilterSection};
use crate::filter::apply::{self, Outcome};
use crate::filter::chain::Chain;
use crate::filter::item::Item;
use crate::filter::on_error::{OnError, Stop};
use crate::filter::policy::Policy;
use crate::filter::wasm;
use crate::ops::metrics::OutputMetrics;
use crate::record::buf::fresh_capacity;
use crate::record::encode::Transcoder;
use crate::record::json::record_json;
use anyhow::{Context, bail};
use std::process::ExitCode;

/// What runs: the policy (with `--output`) and one chain per filter, so
/// each filter's decision can be shown.
struct Run {
    policy: Option<Policy>,
    filters: Vec<(String, Chain)>,
}

pub fn run(cli: &Cli, c: &FilterCommand) -> anyhow::Result<ExitCode> {
    let (wasm, config, output, batch, timeout, file) = match c {
        FilterCommand::Compile { wasm, out } => {
            wasm::compile_to(wasm, out)?;
            return Ok(ExitCode::SUCCESS);
        }
        FilterCommand::Test {
            wasm,
            config,
            output,
            batch,
            timeout,
            file,
        } => (wasm, config, output, batch, timeout, file),
    };
    init_tool_logging(cli, "info");
    let mut run = match output {
        Some(name) => from_config(config, name)?,
        None => from_flags(wasm, config, *timeout)?,
    };
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
        let results = match try_lines(&mut run, first, &batch_lines) {
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

/// `--config FILE --output NAME`: that output's policy and filters, each
/// with its own `config`, as the forwarder would load them.
fn from_config(config: &[String], name: &str) -> anyhow::Result<Run> {
    let [path] = config else {
        bail!("with --output, give the configuration file once: --config FILE");
    };
    let cfg = config::load(Some(std::path::Path::new(path)), &[])?;
    let Some(o) = cfg.outputs.iter().find(|o| o.name == name) else {
        let names: Vec<&str> = cfg.outputs.iter().map(|o| o.name.as_str()).collect();
        bail!(
            "{path}: no output named {name:?} (outputs: {})",
            names.join(", ")
        );
    };
    let policy = crate::pipeline::load_policy(o)?;
    let filters = o
        .filters
        .iter()
        .map(|f| load(f, OnError::Stop))
        .collect::<anyhow::Result<_>>()?;
    Ok(Run { policy, filters })
}

/// `--wasm A --wasm B --config [N:]KEY=VALUE`: each filter gets the values
/// without `N:` and those for its own number.
fn from_flags(
    wasm: &[std::path::PathBuf],
    config: &[String],
    timeout: std::time::Duration,
) -> anyhow::Result<Run> {
    let mut tables = vec![serde_json::Map::new(); wasm.len()];
    for kv in config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--config {kv:?}: expected [N:]KEY=VALUE"))?;
        let (which, k) = match k.split_once(':') {
            Some((n, k)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                let n: usize = n.parse().unwrap_or(0);
                if n == 0 || n > wasm.len() {
                    bail!("--config {kv:?}: there is no --wasm number {n}");
                }
                (Some(n - 1), k)
            }
            _ => (None, k),
        };
        let v = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or_else(|| serde_json::Value::from(v));
        for (i, t) in tables.iter_mut().enumerate() {
            if which.is_none_or(|w| w == i) {
                t.insert(k.trim().to_string(), v.clone());
            }
        }
    }
    let filters = wasm
        .iter()
        .zip(tables)
        .map(|(p, t)| {
            let f = FilterSection {
                wasm: p.clone(),
                name: None,
                config: serde_json::Value::Object(t),
                on_error: OnError::Stop,
                timeout,
                max_memory_bytes: 256 << 20,
            };
            load(&f, OnError::Stop)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Run {
        policy: None,
        filters,
    })
}

fn load(f: &FilterSection, on_error: OnError) -> anyhow::Result<(String, Chain)> {
    let spec = f.spec(None);
    let name = spec.name.clone();
    let chain = Chain::load(vec![(spec, on_error)], OutputMetrics::default())?;
    Ok((name, chain))
}

/// One input line: `Ok((item index, record before the filters))`, or
/// `Err` with the policy's decision that dropped it (`None`: invalid).
type Slot = Result<(usize, Vec<u8>), Option<serde_json::Value>>;

/// Runs `lines` (JSON events) through the policy and then each filter as
/// one batch, and describes each outcome as a JSON object: `line`
/// (1-based), `auditID`, `policy` (its action, with `--output`), `filters`
/// (each filter's `keep`, `changed` or `drop`), `result` (`keep`,
/// `changed`, `drop`, `invalid`) and `event` (what would be forwarded).
fn try_lines(
    run: &mut Run,
    first_line: usize,
    lines: &[Vec<u8>],
) -> Result<Vec<serde_json::Value>, Stop> {
    let mut tc = Transcoder::default();
    let mut items = Vec::new();
    // Per item: the policy's decision and each filter's result.
    let mut seen: Vec<(Option<serde_json::Value>, Vec<serde_json::Value>)> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    for l in lines {
        let mut rec = Vec::new();
        let f = match tc.encode(l, &mut rec) {
            Ok(f) => f,
            Err(e) => {
                slots.push(Err(None));
                tracing::warn!(line = first_line + slots.len() - 1, error = %e, "not a JSON object; skipped");
                continue;
            }
        };
        let (mut rewritten, mut top) = (Vec::new(), Vec::new());
        let outcome = match &run.policy {
            Some(p) => apply::apply(p, &f, &tc.top, &rec, &mut rewritten, &mut top, |v, n| {
                fresh_capacity(v, n)
            }),
            None => Outcome::Keep,
        };
        let decision = run.policy.as_ref().map(|p| apply::explain(p, l));
        let rec = match outcome {
            Outcome::Drop => {
                slots.push(Err(decision));
                continue;
            }
            Outcome::Keep => rec,
            Outcome::Rewritten => rewritten,
        };
        let json = record_json(&rec).unwrap_or_default();
        slots.push(Ok((items.len(), rec.clone())));
        items.push(Item::new(rec, &json, &f));
        seen.push((decision, Vec::new()));
    }
    for (name, chain) in &mut run.filters {
        let before: Vec<(bool, Vec<u8>)> = items
            .iter()
            .map(|it| (it.dropped, it.rec.clone()))
            .collect();
        chain.run(&mut items)?;
        for ((it, (_, results)), (was_dropped, rec)) in
            items.iter().zip(seen.iter_mut()).zip(before)
        {
            if was_dropped {
                continue;
            }
            let result = if it.dropped {
                "drop"
            } else if it.rec != rec {
                "changed"
            } else {
                "keep"
            };
            results.push(serde_json::json!({ "filter": name, "result": result }));
        }
    }
    Ok(slots
        .into_iter()
        .enumerate()
        .map(|(k, slot)| {
            let line = first_line + k;
            let (i, original) = match slot {
                Err(None) => return serde_json::json!({ "line": line, "result": "invalid" }),
                Err(Some(d)) => {
                    return serde_json::json!({
                        "line": line,
                        "auditID": d["auditID"],
                        "policy": d["action"],
                        "filters": [],
                        "result": "drop",
                        "event": null,
                    });
                }
                Ok(x) => x,
            };
            let (it, (decision, filters)) = (&items[i], &seen[i]);
            let ev: serde_json::Value = record_json(&it.rec)
                .ok()
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            let result = if it.dropped {
                "drop"
            } else if it.rec == original {
                "keep"
            } else {
                "changed"
            };
            let mut v = serde_json::json!({
                "line": line,
                "auditID": ev.get("auditID").cloned().unwrap_or_default(),
                "filters": filters,
                "result": result,
                "event": if it.dropped { serde_json::Value::Null } else { ev },
            });
            if let Some(d) = decision {
                v["policy"] = d["action"].clone();
            }
            v
        })
        .collect())
}
