//! `audit-forwarder check`: validates a configuration and everything it
//! names (policies, filters, certificates and keys, token files), printing
//! every problem found, each once, as `FILE:LINE: key: problem`.
//!
//! The file is checked key by key (each key of each section decoded on its
//! own, so one mistake does not hide the next), with messages in TOML terms
//! and a did-you-mean for unknown keys, values and presets; then the whole
//! configuration (file, `AUDIT_*` variables, `--set`) and the files it names.

use super::cli::ConfigArgs;
use crate::config::{self, Config};
use crate::filter::policy::PRESET_NAMES;
use crate::pipeline;
use std::path::Path;
use std::process::ExitCode;
use toml::de::{DeTable, DeValue};

/// One problem: where (a line of the file, when known), which key, what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

pub fn run(a: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let file = a.config.as_deref();
    let name = file.map_or("(no file)".to_string(), |f| f.display().to_string());
    let problems = check(file, &a.set);
    if problems.is_empty() {
        // `check` found nothing, so this loads.
        if let Ok(cfg) = config::load(file, &a.set) {
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
        }
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        let at = p.line.map_or(name.clone(), |l| format!("{name}:{l}"));
        if p.key.is_empty() {
            eprintln!("{at}: {}", p.message);
        } else {
            eprintln!("{at}: {}: {}", p.key, p.message);
        }
    }
    eprintln!(
        "configuration invalid: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    Ok(ExitCode::from(2))
}

/// Every problem of the configuration `file` with `sets` applied, sorted,
/// each once.
pub fn check(file: Option<&Path>, sets: &[String]) -> Vec<Problem> {
    let text = match file.map(std::fs::read_to_string) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            return vec![Problem {
                line: None,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }];
        }
        None => None,
    };
    let (mut problems, repaired) = match text.as_deref().map(lint) {
        Some((p, r)) => (p, r),
        None => (Vec::new(), None),
    };
    // The rest is checked on the file without the keys found wrong, so
    // one mistake does not hide the others.
    if text.is_none() || repaired.is_some() {
        let lines = text.as_deref().map(Lines::new);
        let at = |key: &str| lines.as_ref().and_then(|l| l.of(key));
        match config::load_unvalidated(repaired.as_deref(), sets) {
            Ok(cfg) => {
                for p in semantic(&cfg) {
                    let (key, message) = split_key(&p);
                    problems.push(Problem {
                        line: at(&key),
                        key,
                        message,
                    });
                }
            }
            // From the environment or --set: no line.
            Err(e) => {
                for p in e.to_string().split("; ") {
                    let (key, message) = split_key(p);
                    problems.push(Problem {
                        line: at(&key),
                        key,
                        message: plain(&message),
                    });
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

/// `key: message` → (key, message); a message without a key keeps it all.
fn split_key(p: &str) -> (String, String) {
    match p.split_once(": ") {
        Some((k, m)) if !k.contains(' ') && !k.is_empty() => (k.to_string(), m.to_string()),
        _ => (String::new(), p.to_string()),
    }
}

/// What `config::validate` does not see: the files and presets the
/// configuration names (policies, filters, certificates, token files).
fn semantic(cfg: &Config) -> Vec<String> {
    let mut problems = config::problems(cfg);
    for (i, o) in cfg.outputs.iter().enumerate() {
        let key = if o.policy_file.is_some() {
            format!("outputs[{i}].policy_file")
        } else {
            format!("outputs[{i}].policy")
        };
        if let Some(p) = &o.policy
            && !p.contains('/')
            && !Path::new(p).exists()
            && !PRESET_NAMES.contains(&p.as_str())
        {
            problems.push(format!(
                "{key}: {p:?} is neither a preset nor a file{}",
                did_you_mean(p, PRESET_NAMES.iter().copied())
                    .map(|m| format!("; did you mean the preset {m:?}?"))
                    .unwrap_or_else(|| format!(" (presets: {})", PRESET_NAMES.join(", ")))
            ));
        } else if let Err(e) = pipeline::load_policy(o) {
            problems.push(format!("{key}: {e}"));
        }
        for (j, f) in o.filters.iter().enumerate() {
            if let Err(e) = crate::filter::wasm::WasmFilter::load(f.spec(None)) {
                problems.push(format!("outputs[{i}].filters[{j}]: {e}"));
            }
        }
        let proxy_tls = match o.proxy() {
            Ok(Some(crate::transport::proxy::Proxy {
                via: crate::transport::proxy::Via::Https { tls, .. },
                ..
            })) => Some(tls),
            _ => None,
        };
        for t in o.client_tls().into_iter().chain(proxy_tls) {
            if let Err(e) = t.config() {
                problems.push(format!("outputs[{i}]: {e}"));
            }
        }
        if let Some(s) = &o.s3 {
            problems.extend(
                crate::sink::s3::store::check_files(s)
                    .into_iter()
                    .map(|e| format!("outputs[{i}].{e}")),
            );
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
            problems.push(format!("receive.tls_cert_file: {e}"));
        }
    }
    if let Some(t) = cfg.webhook.server_tls()
        && let Err(e) = t.config()
    {
        problems.push(format!("webhook.tls_cert_file: {e}"));
    }
    if let Some(t) = &cfg.webhook.bearer_token_file
        && let Err(e) = crate::source::webhook::TokenFile::new(t.clone()).current()
    {
        problems.push(format!("webhook.bearer_token_file: {e}"));
    }
    problems
}

/// The problems of a configuration file's text alone: TOML syntax, unknown
/// keys, wrong types (not the files it names).
pub fn lint_text(text: &str) -> Vec<Problem> {
    lint(text).0
}

/// TOML syntax, then each key of the file decoded on its own. Returns the
/// problems and the file without the wrong keys (`None`: not TOML).
fn lint(text: &str) -> (Vec<Problem>, Option<String>) {
    let lines = Lines::new(text);
    let (_, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let p = errors
            .iter()
            .map(|e| Problem {
                line: e.span().map(|s| lines.line_at(s.start)),
                key: String::new(),
                message: format!("invalid TOML: {}", e.message()),
            })
            .collect();
        return (p, None);
    }
    let Ok(mut root) = toml::from_str::<toml::Table>(text) else {
        return (Vec::new(), None);
    };
    let mut out = Vec::new();
    let mut wrong: Vec<(String, Option<usize>, String)> = Vec::new();
    let mut probe = |path: String, doc: toml::Table| {
        if let Err(e) = Config::deserialize_from(doc) {
            out.push(Problem {
                line: lines.of(&path),
                message: plain(&e),
                key: path.clone(),
            });
            // Section, output index, key: to leave out of the repaired file.
            let (sec, key) = path.split_once('.').unwrap_or((&path, ""));
            let (sec, idx) = match sec.split_once('[') {
                Some((s, i)) => (s, i.trim_end_matches(']').parse().ok()),
                None => (sec, None),
            };
            wrong.push((sec.to_string(), idx, key.to_string()));
        }
    };
    for (k, v) in &root {
        match (k.as_str(), v) {
            ("tail" | "receive" | "webhook" | "output", toml::Value::Table(t)) => {
                for (k2, v2) in t {
                    let mut inner = toml::Table::new();
                    inner.insert(k2.clone(), v2.clone());
                    let mut doc = toml::Table::new();
                    doc.insert(k.clone(), toml::Value::Table(inner));
                    probe(format!("{k}.{k2}"), doc);
                }
            }
            ("outputs", toml::Value::Array(list)) => {
                for (i, o) in list.iter().enumerate() {
                    let toml::Value::Table(t) = o else {
                        probe(
                            format!("outputs[{i}]"),
                            one(k, toml::Value::Array(vec![o.clone()])),
                        );
                        continue;
                    };
                    for (k2, v2) in t {
                        let mut inner = toml::Table::new();
                        inner.insert(k2.clone(), v2.clone());
                        let arr = toml::Value::Array(vec![toml::Value::Table(inner)]);
                        probe(format!("outputs[{i}].{k2}"), one(k, arr));
                    }
                }
            }
            _ => probe(k.clone(), one(k, v.clone())),
        }
    }
    for (sec, idx, key) in wrong {
        let target = match (root.get_mut(&sec), idx) {
            (Some(toml::Value::Array(a)), Some(i)) => a.get_mut(i),
            (Some(v), None) if !key.is_empty() => Some(v),
            _ => {
                root.remove(&sec);
                continue;
            }
        };
        if let Some(toml::Value::Table(t)) = target {
            t.remove(&key);
        }
    }
    (out, toml::to_string(&root).ok())
}

fn one(k: &str, v: toml::Value) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert(k.to_string(), v);
    t
}

impl Config {
    /// Decodes a configuration from a TOML table alone (no environment).
    fn deserialize_from(t: toml::Table) -> Result<Config, String> {
        serde::Deserialize::deserialize(toml::Value::Table(t))
            .map_err(|e: toml::de::Error| e.message().to_string())
    }
}

/// A serde message in TOML terms: `u16` is "an integer from 0 to 65535",
/// `struct X` "a table", an unknown key or value gets a did-you-mean.
fn plain(msg: &str) -> String {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(expected);
        return match did_you_mean(name, known.iter().map(String::as_str)) {
            Some(m) => format!("unknown key `{name}`; did you mean `{m}`?"),
            None if known.is_empty() => format!("unknown key `{name}`"),
            None => format!("unknown key `{name}` (known keys: {})", known.join(", ")),
        };
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(expected);
        return match did_you_mean(name, known.iter().map(String::as_str)) {
            Some(m) => format!("unknown value {name:?}; did you mean {m:?}?"),
            None => format!("unknown value {name:?} (one of: {})", known.join(", ")),
        };
    }
    let mut m = msg.to_string();
    for (rust, toml) in [
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("invalid type: sequence", "invalid type: an array"),
        ("invalid type: map", "invalid type: a table"),
        ("invalid type: string", "invalid type: the string"),
        ("invalid type: integer", "invalid type: the integer"),
        ("invalid type: boolean", "invalid type: the boolean"),
        ("invalid type: floating point", "invalid type: the number"),
    ] {
        m = m.replace(rust, toml);
    }
    if let Some(i) = m.find("expected struct ") {
        let end = m[i..].find([',', ')']).map_or(m.len(), |e| i + e);
        m.replace_range(i..end, "expected a table");
    }
    m
}

/// The names between backticks in a serde "expected one of" list.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// The closest of `known` to `word`, if close enough to be a typo.
fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    known
        .map(|k| (distance(word, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment): `paht` is one edit from `path`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Line numbers of the file's keys, from the parser's spans.
struct Lines<'a> {
    text: &'a str,
    doc: Option<toml::Spanned<DeTable<'a>>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            text,
            doc: DeTable::parse(text).ok(),
        }
    }

    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// The line of `key` (`tail.path`, `outputs[1].port`, `output.host`).
    fn of(&self, key: &str) -> Option<usize> {
        let mut table = self.doc.as_ref()?.get_ref();
        let mut found = None;
        for part in key.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let (k, v) = table.get_key_value(name)?;
            found = Some(k.span().start);
            let mut v = v;
            if let (Some(i), DeValue::Array(a)) = (index, v.get_ref()) {
                v = a.get(i)?;
                found = Some(v.span().start);
            }
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        found.map(|o| self.line_at(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_words_become_toml_words_with_did_you_mean() {
        assert_eq!(
            plain("unknown field `paht`, expected one of `enabled`, `path`, `start_at`"),
            "unknown key `paht`; did you mean `path`?"
        );
        assert_eq!(
            plain("invalid type: string \"x\", expected u16"),
            "invalid type: the string \"x\", expected an integer from 0 to 65535"
        );
        assert_eq!(
            plain("unknown variant `stdot`, expected one of `forward`, `stdout`, `file`"),
            "unknown value \"stdot\"; did you mean \"stdout\"?"
        );
        assert_eq!(
            did_you_mean("minmal", PRESET_NAMES.iter().copied()),
            Some("minimal")
        );
        assert_eq!(did_you_mean("xyz", PRESET_NAMES.iter().copied()), None);
    }

    #[test]
    fn lines_of_keys() {
        let l = Lines::new(
            "a = 1\n[tail]\npath = \"x\"\n\n[[outputs]]\nname = \"a\"\n[[outputs]]\nport = 5\n",
        );
        assert_eq!(l.of("tail.path"), Some(3));
        assert_eq!(l.of("outputs[1].port"), Some(8));
        assert_eq!(l.of("outputs[0]"), Some(5));
        assert_eq!(l.of("nope"), None);
    }
}
