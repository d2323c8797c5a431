//! Applying a policy decision to an already-encoded record (docs/ARCHITECTURE.md, "Performance notes": the
//! decision is applied while the record is on its way, never by re-parsing
//! JSON): entries are copied from the spans the encoder recorded, bodies the
//! output level does not include are left out, `level` is rewritten, and
//! `managedFields` stripped when the policy says so.

use super::policy::{Attributes, Level, ObjectRefAttrs, Policy, Stage, checker_name};
use crate::record::encode::{Fields, TopEntry, TopKey};
use crate::record::reader::{Head, MsgReader, ReadError};
use crate::record::write::write_str;

/// What happens to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Level `None` or an omitted stage.
    Drop,
    /// Forward the encoded record unchanged.
    Keep,
    /// Forward the rewritten record in the output buffer.
    Rewritten,
}

/// The attributes the apiserver's policy checker saw for this event
/// (see `policy::checker_name` for the create-name rule).
pub fn attributes<'a>(f: &'a Fields<'_>) -> Attributes<'a> {
    let verb = f.verb.as_deref().unwrap_or("");
    let uri = f.request_uri.as_deref().unwrap_or("");
    Attributes {
        user: f.username.as_deref(),
        groups: f.groups.iter().map(|g| g.as_ref()).collect(),
        verb,
        stage: f.stage.as_deref().and_then(Stage::parse),
        request_uri: uri,
        object_ref: f.object_ref.as_ref().map(|o| ObjectRefAttrs {
            api_group: &o.api_group,
            resource: &o.resource,
            subresource: &o.subresource,
            namespace: &o.namespace,
            name: checker_name(verb, &o.name, &o.subresource, uri),
        }),
        response_code: f.response_code,
    }
}

/// Evaluates `policy` for the event and, when the record must change, writes
/// the new record into `out` and where each of its top-level entries
/// starts, then its end, into `out_top` (what [`crate::record::splice::set_fields`]
/// uses to skip parsing).
///
/// The output level is `min(policy level, event level)`: a policy can only
/// lower the level, because bodies that were not logged cannot be recovered.
pub fn apply(
    policy: &Policy,
    f: &Fields<'_>,
    top: &[TopEntry],
    rec: &[u8],
    out: &mut Vec<u8>,
    out_top: &mut Vec<u32>,
    room: impl FnOnce(&mut Vec<u8>, usize),
) -> Outcome {
    let d = policy.evaluate(&attributes(f));
    if d.level == Level::None || d.omit_stage {
        return Outcome::Drop;
    }
    let event_level = f
        .level
        .as_deref()
        .and_then(Level::parse)
        .unwrap_or(Level::RequestResponse);
    let level = d.level.min(event_level);
    let has_bodies = top
        .iter()
        .any(|e| matches!(e.key, TopKey::RequestObject | TopKey::ResponseObject));
    if level == event_level && !(d.omit_managed_fields && has_bodies) {
        return Outcome::Keep;
    }
    let patch = f.verb.as_deref() == Some("patch");
    let (mut kept, mut bytes) = (0, 0);
    for e in top.iter().filter(|e| match e.key {
        TopKey::RequestObject => level >= Level::Request,
        TopKey::ResponseObject => level >= Level::RequestResponse,
        _ => true,
    }) {
        kept += 1;
        bytes += e.span.len();
    }
    out.clear();
    // At most the kept entries (a new level string is at most a few bytes
    // longer): a record whose bodies are dropped gets a small buffer, not
    // one the size of the event.
    room(out, bytes + 256);
    let _ = rmp::encode::write_map_len(out, kept as u32);
    out_top.clear();
    for e in top {
        let key = &rec[e.span.start..e.value.start];
        let value = &rec[e.value.clone()];
        let at = out.len() as u32;
        match e.key {
            TopKey::Level => {
                out.extend_from_slice(key);
                write_str(out, level.as_str().as_bytes());
            }
            TopKey::RequestObject if level < Level::Request => {}
            TopKey::ResponseObject if level < Level::RequestResponse => {}
            // A patch body is a patch, not an object: leave it alone.
            TopKey::RequestObject if d.omit_managed_fields && !patch => {
                out.extend_from_slice(key);
                strip_object(value, out);
            }
            TopKey::ResponseObject if d.omit_managed_fields => {
                out.extend_from_slice(key);
                strip_object(value, out);
            }
            _ => out.extend_from_slice(&rec[e.span.clone()]),
        }
        if out.len() as u32 > at {
            out_top.push(at);
        }
    }
    out_top.push(out.len() as u32);
    Outcome::Rewritten
}

/// Copies an object without `metadata.managedFields`, also for each of its
/// `items[]` (lists). Anything that does not parse is copied unchanged.
fn strip_object(value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if strip_map(&mut MsgReader::new(value), out).is_err() {
        out.truncate(start);
        out.extend_from_slice(value);
    }
}

/// Reads the next value: a map gives a reader positioned at its entries and
/// their count; anything else is copied to `out` unchanged (`None`).
fn map_or_copy<'a>(
    r: &mut MsgReader<'a>,
    out: &mut Vec<u8>,
) -> Result<Option<(MsgReader<'a>, u32)>, ReadError> {
    let raw = r.read_raw()?;
    let mut m = MsgReader::new(raw);
    match m.read_head()? {
        (_, Head::Map(n)) => Ok(Some((m, n))),
        _ => {
            out.extend_from_slice(raw);
            Ok(None)
        }
    }
}

fn strip_map(r: &mut MsgReader<'_>, out: &mut Vec<u8>) -> Result<(), ReadError> {
    let Some((mut m, n)) = map_or_copy(r, out)? else {
        return Ok(());
    };
    let _ = rmp::encode::write_map_len(out, n);
    for _ in 0..n {
        let key_raw = m.read_raw()?;
        let key = MsgReader::new(key_raw).read_str_bytes().unwrap_or_default();
        out.extend_from_slice(key_raw);
        match key {
            b"metadata" => strip_metadata(&mut m, out)?,
            b"items" => {
                let items = m.read_raw()?;
                let mut ir = MsgReader::new(items);
                match ir.read_head()? {
                    (_, Head::Array(k)) => {
                        let _ = rmp::encode::write_array_len(out, k);
                        for _ in 0..k {
                            strip_map(&mut ir, out)?;
                        }
                    }
                    _ => out.extend_from_slice(items),
                }
            }
            _ => out.extend_from_slice(m.read_raw()?),
        }
    }
    Ok(())
}

fn strip_metadata(r: &mut MsgReader<'_>, out: &mut Vec<u8>) -> Result<(), ReadError> {
    let Some((mut m, n)) = map_or_copy(r, out)? else {
        return Ok(());
    };
    let mut keep = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = m.read_raw()?;
        let v = m.read_raw()?;
        if MsgReader::new(k).read_str_bytes().ok() != Some(&b"managedFields"[..]) {
            keep.push((k, v));
        }
    }
    let _ = rmp::encode::write_map_len(out, keep.len() as u32);
    for (k, v) in keep {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    Ok(())
}

/// One line of `audit-forwarder policy eval`: the decision for an event.
pub fn explain(policy: &Policy, line: &[u8]) -> serde_json::Value {
    let mut t = crate::record::encode::Transcoder::default();
    let mut rec = Vec::new();
    let f = match t.encode(line, &mut rec) {
        Ok(f) => f,
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let d = policy.evaluate(&attributes(&f));
    let event_level = f
        .level
        .as_deref()
        .and_then(Level::parse)
        .unwrap_or(Level::RequestResponse);
    let (level, action) = if d.level == Level::None {
        (Level::None, "drop")
    } else if d.omit_stage {
        (d.level.min(event_level), "drop (omitted stage)")
    } else if d.level < event_level {
        (d.level, "lower level")
    } else {
        (event_level, "keep")
    };
    serde_json::json!({
        "auditID": f.audit_id.as_deref(),
        "verb": f.verb.as_deref(),
        "stage": f.stage.as_deref(),
        "rule": d.rule,
        "level": level.as_str(),
        "action": action,
        "omitManagedFields": d.omit_managed_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode::Transcoder;
    use crate::record::json::write_value;

    fn run(policy: &str, event: &str) -> Option<serde_json::Value> {
        let p = Policy::from_yaml(policy, "test.yaml").unwrap();
        let mut t = Transcoder::default();
        let mut rec = Vec::new();
        let f = t.encode(event.as_bytes(), &mut rec).unwrap();
        let (mut out, mut out_top) = (Vec::new(), Vec::new());
        let bytes = match apply(
            &p,
            &f,
            &t.top,
            &rec,
            &mut out,
            &mut out_top,
            crate::record::buf::fresh_capacity,
        ) {
            Outcome::Drop => return None,
            Outcome::Keep => rec.clone(),
            Outcome::Rewritten => {
                // The entry positions are the record's: each starts a key,
                // the last is the end.
                let mut r = MsgReader::new(&out);
                let n = r.read_map_len().unwrap() as usize;
                assert_eq!(out_top.len(), n + 1);
                for &at in &out_top[..n] {
                    assert_eq!(r.pos(), at as usize);
                    r.read_str_bytes().unwrap();
                    r.skip_value().unwrap();
                }
                assert_eq!(out_top[n] as usize, out.len());
                out
            }
        };
        let mut json = Vec::new();
        write_value(&mut MsgReader::new(&bytes), &mut json).unwrap();
        Some(serde_json::from_slice(&json).unwrap())
    }

    const EV: &str = r#"{"kind":"Event","level":"RequestResponse","auditID":"1","stage":"ResponseComplete","verb":"update","requestURI":"/api/v1/namespaces/a/configmaps/c","user":{"username":"alice"},"objectRef":{"resource":"configmaps","namespace":"a","name":"c"},"requestObject":{"metadata":{"name":"c","managedFields":[{"m":1}]},"data":{"k":"v"}},"responseObject":{"kind":"List","items":[{"metadata":{"name":"x","managedFields":[1]}}],"metadata":{"managedFields":[2],"rv":"1"}}}"#;

    fn policy(level: &str, extra: &str) -> String {
        format!("apiVersion: audit.k8s.io/v1\nkind: Policy\n{extra}rules:\n- level: {level}\n")
    }

    #[test]
    fn metadata_removes_both_bodies_and_rewrites_level() {
        let v = run(&policy("Metadata", ""), EV).unwrap();
        assert_eq!(v["level"], "Metadata");
        assert!(v.get("requestObject").is_none() && v.get("responseObject").is_none());
        assert_eq!(v["auditID"], "1");
    }

    #[test]
    fn request_keeps_only_the_request_body() {
        let v = run(&policy("Request", ""), EV).unwrap();
        assert_eq!(v["level"], "Request");
        assert!(v.get("requestObject").is_some() && v.get("responseObject").is_none());
    }

    #[test]
    fn the_level_is_never_raised() {
        let ev = EV.replace("\"level\":\"RequestResponse\"", "\"level\":\"Metadata\"");
        let v = run(&policy("RequestResponse", ""), &ev).unwrap();
        assert_eq!(v["level"], "Metadata");
    }

    #[test]
    fn unchanged_when_the_level_matches() {
        let v = run(&policy("RequestResponse", ""), EV).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(EV).unwrap());
    }

    #[test]
    fn none_drops() {
        assert!(run(&policy("None", ""), EV).is_none());
    }

    #[test]
    fn omit_stages_drops() {
        assert!(run(&policy("Metadata", "omitStages: [ResponseComplete]\n"), EV).is_none());
    }

    #[test]
    fn omit_managed_fields_strips_request_response_and_list_items() {
        let v = run(&policy("RequestResponse", "omitManagedFields: true\n"), EV).unwrap();
        assert_eq!(
            v["requestObject"]["metadata"],
            serde_json::json!({"name": "c"})
        );
        assert_eq!(v["requestObject"]["data"]["k"], "v");
        assert_eq!(
            v["responseObject"]["items"][0]["metadata"],
            serde_json::json!({"name": "x"})
        );
        assert_eq!(
            v["responseObject"]["metadata"],
            serde_json::json!({"rv": "1"})
        );
    }

    #[test]
    fn omit_managed_fields_leaves_a_patch_body_alone() {
        let ev = EV.replace("\"verb\":\"update\"", "\"verb\":\"patch\"");
        let v = run(&policy("RequestResponse", "omitManagedFields: true\n"), &ev).unwrap();
        assert_eq!(v["requestObject"]["metadata"]["managedFields"][0]["m"], 1);
        assert!(
            v["responseObject"]["metadata"]
                .get("managedFields")
                .is_none()
        );
    }
}
