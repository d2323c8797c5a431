//! Object keys from a template such as
//! `audit/{cluster}/{yyyy}/{mm}/{dd}/{hh}/{id}.jsonl.gz`.
//!
//! | placeholder | value |
//! |---|---|
//! | `{yyyy}` `{mm}` `{dd}` `{hh}` `{min}` | UTC time of the object's first event (`stageTimestamp`) |
//! | `{output}` | the output's label (`<output>` or `<source>-<output>`) |
//! | `{hostname}` | this machine's name |
//! | `{id}` | `<stream>-<source>-<start>-<end>`, see below |
//! | `{stream}` `{source}` `{start}` `{end}` | the parts of `{id}` |
//! | any name in `key_vars` | its value |
//!
//! `{id}` names what the object holds: bytes `start..end` (12 digits,
//! zero-padded so keys sort by offset) of the audit file whose content
//! hash begins with `source`, read by the output whose stream id begins
//! with `stream` (both 12 hex digits; `forward::protocol::identity`). Two
//! uploads of one key therefore carry the same events: a retry whose
//! confirmation was lost, or a span read again after a crash that ended
//! where the first upload did. With the times taken from the events, not
//! the clock, such a re-read maps to the same key.

use crate::record::time::EventTime;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Output,
    Hostname,
    Id,
    Stream,
    Source,
    Start,
    End,
}

/// A parsed key template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a key is made of.
#[derive(Debug, Clone)]
pub struct KeyInput<'a> {
    pub time: EventTime,
    pub output: &'a str,
    pub hostname: &'a str,
    pub stream: &'a str,
    pub source: &'a str,
    pub start: u64,
    pub end: u64,
}

/// Characters allowed in keys besides ASCII alphanumerics: those of AWS's
/// "safe characters" that `object_store` paths keep as they are, and `/`
/// between segments (in the template only, not in `key_vars` values).
const SAFE: &[u8] = b"-_.=/";

fn safe(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || SAFE.contains(&b))
}

impl Template {
    /// Parses `t`, substituting `vars` now. Errors name the problem.
    pub fn parse(t: &str, vars: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(i) = rest.find('{') {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_string()));
            }
            let close = rest[i..]
                .find('}')
                .ok_or_else(|| format!("{t:?}: '{{' without '}}'"))?;
            let name = &rest[i + 1..i + close];
            parts.push(match name {
                "yyyy" => Part::Year,
                "mm" => Part::Month,
                "dd" => Part::Day,
                "hh" => Part::Hour,
                "min" => Part::Minute,
                "output" => Part::Output,
                "hostname" => Part::Hostname,
                "id" => Part::Id,
                "stream" => Part::Stream,
                "source" => Part::Source,
                "start" => Part::Start,
                "end" => Part::End,
                v => match vars.get(v) {
                    Some(val) if !val.is_empty() && !val.contains('/') && safe(val) => {
                        Part::Text(val.clone())
                    }
                    Some(val) => {
                        return Err(format!(
                            "key_vars.{v}: {val:?} must be non-empty and use only A-Z a-z 0-9 and -_.="
                        ));
                    }
                    None => {
                        return Err(format!(
                            "{t:?}: unknown placeholder {{{v}}} (not built in, not in key_vars)"
                        ));
                    }
                },
            });
            rest = &rest[i + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let has = |p: &Part| parts.contains(p);
        let named_parts =
            has(&Part::Stream) && has(&Part::Source) && has(&Part::Start) && has(&Part::End);
        if !(has(&Part::Id) || named_parts) {
            return Err(format!(
                "{t:?}: must contain {{id}} (or all of {{stream}} {{source}} {{start}} {{end}}): keys must be unique"
            ));
        }
        for p in &parts {
            if let Part::Text(s) = p
                && !safe(s)
            {
                return Err(format!(
                    "{t:?}: {s:?} has characters outside A-Z a-z 0-9 and {}",
                    String::from_utf8_lossy(SAFE)
                ));
            }
        }
        if t.starts_with('/') || t.contains("//") {
            return Err(format!(
                "{t:?}: must not start with '/' or have empty segments"
            ));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, k: &KeyInput<'_>) -> String {
        use chrono::{Datelike, Timelike};
        let t = chrono::DateTime::from_timestamp(k.time.secs as i64, 0).unwrap_or_default();
        let short = |s: &str| s.get(..12).unwrap_or(s).to_string();
        let mut out = String::with_capacity(96);
        for p in &self.parts {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Year => out.push_str(&format!("{:04}", t.year())),
                Part::Month => out.push_str(&format!("{:02}", t.month())),
                Part::Day => out.push_str(&format!("{:02}", t.day())),
                Part::Hour => out.push_str(&format!("{:02}", t.hour())),
                Part::Minute => out.push_str(&format!("{:02}", t.minute())),
                Part::Output => out.push_str(k.output),
                Part::Hostname => out.push_str(k.hostname),
                Part::Id => out.push_str(&format!(
                    "{}-{}-{:012}-{:012}",
                    short(k.stream),
                    short(k.source),
                    k.start,
                    k.end
                )),
                Part::Stream => out.push_str(&short(k.stream)),
                Part::Source => out.push_str(&short(k.source)),
                Part::Start => out.push_str(&format!("{:012}", k.start)),
                Part::End => out.push_str(&format!("{:012}", k.end)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> KeyInput<'static> {
        KeyInput {
            // 2026-12-03T12:34:56Z
            time: EventTime::parse_rfc3339("2026-12-03T12:34:56.123456Z").unwrap(),
            output: "archive",
            hostname: "seed-1",
            stream: "0123456789abcdef0123456789abcdef",
            source: "fedcba9876543210fedcba9876543210",
            start: 0,
            end: 4096,
        }
    }

    #[test]
    fn renders_times_ids_and_vars() {
        let vars = BTreeMap::from([("cluster".to_string(), "shoot--a--b".to_string())]);
        let t = Template::parse(
            "audit/{cluster}/{yyyy}/{mm}/{dd}/{hh}/{min}/{output}-{id}.jsonl.gz",
            &vars,
        )
        .unwrap();
        assert_eq!(
            t.render(&input()),
            "audit/shoot--a--b/2026/12/03/12/34/archive-0123456789ab-fedcba987654-000000000000-000000004096.jsonl.gz"
        );
    }

    #[test]
    fn refuses_templates_that_cannot_be_unique_or_safe() {
        let none = BTreeMap::new();
        for (t, why) in [
            ("audit/{yyyy}/x.gz", "must contain {id}"),
            ("audit/{nope}/{id}", "unknown placeholder {nope}"),
            ("audit/{id", "without"),
            ("audit/ space/{id}", "characters outside"),
            ("/audit/{id}", "must not start"),
            ("audit//{id}", "empty segments"),
        ] {
            let e = Template::parse(t, &none).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
        for v in ["a b", "a/b", "a*b", ""] {
            let bad = BTreeMap::from([("c".to_string(), v.to_string())]);
            assert!(
                Template::parse("{c}/{id}", &bad)
                    .unwrap_err()
                    .contains("key_vars.c"),
                "{v:?}"
            );
        }
        assert!(Template::parse("{stream}/{source}/{start}-{end}", &none).is_ok());
    }
}
