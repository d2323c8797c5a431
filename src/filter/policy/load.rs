//! Policy decoding and validation, mirroring `pkg/audit/policy/reader.go`
//! (`LoadPolicyFromBytes`) and `pkg/apis/audit/validation/validation.go`.

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::eval::{CompiledRule, GroupMatcher, PathPattern, ResourcePattern, StageSet, StrSet};
use super::types::{POLICY_SHAPE, PolicyDoc, PolicyRuleDoc, Shape};
use super::{FieldError, Level, Policy, PolicyError, Stage};

/// The only group/version the apiserver's policy reader accepts.
const API_VERSION: &str = "audit.k8s.io/v1";
const KIND: &str = "Policy";

/// Decodes, validates and compiles a policy.
///
/// Like `LoadPolicyFromBytes`: strict decoding first; if that fails because
/// of unknown fields, they are dropped (lenient decoding) and a warning is
/// recorded per field. Then `apiVersion`/`kind`, validation, and the "at
/// least one rule" check. Decoding goes through a YAML value so that, as in
/// the apiserver's YAML→JSON decoding, a number is not accepted as a string.
pub(crate) fn from_yaml(text: &str, source: &str) -> Result<Policy, PolicyError> {
    let mut warnings = Vec::new();
    // Duplicate keys fail strict decoding; kube-apiserver then decodes
    // leniently, where the last key wins (go-yaml v2), and warns.
    let mut value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("duplicate entry") => {
            let v = serde_yaml::Deserializer::from_str(text)
                .next()
                .map(LastWins::deserialize)
                .transpose()
                .map_err(|e| decode_error(source, format!("invalid YAML: {e}")))?
                .map_or(Value::Null, |v| v.0);
            warnings.push(format!(
                "{source}: {e}; strict decoding failed, fell back to lenient decoding where \
                 the last of duplicate keys wins (as kube-apiserver does)"
            ));
            v
        }
        Err(e) => return Err(decode_error(source, format!("invalid YAML: {e}"))),
    };
    value
        .apply_merge()
        .map_err(|e| decode_error(source, format!("invalid YAML: {e}")))?;
    check_type_meta(&value, source)?;
    yaml_1_1(&mut value, &POLICY_SHAPE);

    let doc = match PolicyDoc::deserialize(&value) {
        Ok(doc) => doc,
        Err(strict_err) => {
            let mut unknown = Vec::new();
            strip_unknown_fields(&mut value, &POLICY_SHAPE, "", &mut unknown);
            if let Some(err) = type_error(&value, &POLICY_SHAPE, "") {
                return Err(decode_error(source, err));
            }
            if unknown.is_empty() {
                return Err(decode_error(source, strict_err.to_string()));
            }
            let doc = PolicyDoc::deserialize(&value)
                .map_err(|e| decode_error(source, format!("failed lenient decoding: {e}")))?;
            warnings.extend(unknown.into_iter().map(|field| {
                format!(
                    "{source}: unknown field {field:?} ignored; \
                     strict decoding failed, fell back to lenient decoding (as kube-apiserver does)"
                )
            }));
            doc
        }
    };
    compile(doc, source, warnings)
}

/// What kube-apiserver's YAML→JSON step (sigs.k8s.io/yaml over go-yaml v2,
/// YAML 1.1 scalars; `resolve.go`) does to scalars of the policy's fields,
/// which serde_yaml (YAML 1.2) reads differently: `y`, `yes`, `on` (and
/// `n`, `no`, `off`) in their three spellings are booleans, and a null
/// item of a string list decodes to `""`.
///
/// serde_yaml does not say whether a scalar was quoted: a quoted `"yes"` in
/// a boolean field is taken as true here, where kube-apiserver refuses it.
fn yaml_1_1(value: &mut Value, shape: &Shape) {
    match (shape, value) {
        (Shape::Bool, v @ Value::String(_)) => {
            let b = match v.as_str().unwrap_or_default() {
                "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True"
                | "TRUE" => Some(true),
                "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
                | "FALSE" => Some(false),
                _ => None,
            };
            if let Some(b) = b {
                *v = Value::Bool(b);
            }
        }
        (Shape::StrList, Value::Sequence(items)) => {
            for it in items.iter_mut().filter(|it| it.is_null()) {
                *it = Value::String(String::new());
            }
        }
        (Shape::List(item), Value::Sequence(items)) => {
            items.iter_mut().for_each(|it| yaml_1_1(it, item));
        }
        (Shape::Map(fields), Value::Mapping(map)) => {
            for (name, child) in fields.iter() {
                if let Some(v) = map.get_mut(*name) {
                    yaml_1_1(v, child);
                }
            }
        }
        _ => {}
    }
}

/// A YAML value whose mappings keep the last of duplicate keys (go-yaml
/// v2's non-strict decoding), where serde_yaml's `Value` refuses them.
struct LastWins(Value);

impl<'de> Deserialize<'de> for LastWins {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LastWins;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<LastWins, E> {
                Ok(LastWins(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<LastWins, E> {
                Ok(LastWins(Value::Number(n.into())))
            }
            fn visit_u64<E>(self, n: u64) -> Result<LastWins, E> {
                Ok(LastWins(Value::Number(n.into())))
            }
            fn visit_f64<E>(self, n: f64) -> Result<LastWins, E> {
                Ok(LastWins(Value::Number(n.into())))
            }
            fn visit_str<E>(self, s: &str) -> Result<LastWins, E> {
                Ok(LastWins(Value::String(s.to_string())))
            }
            fn visit_unit<E>(self) -> Result<LastWins, E> {
                Ok(LastWins(Value::Null))
            }
            fn visit_none<E>(self) -> Result<LastWins, E> {
                Ok(LastWins(Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<LastWins, D::Error> {
                LastWins::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<LastWins, A::Error> {
                let mut v = Vec::new();
                while let Some(LastWins(x)) = a.next_element()? {
                    v.push(x);
                }
                Ok(LastWins(Value::Sequence(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<LastWins, A::Error> {
                let mut m = Mapping::new();
                while let Some((LastWins(k), LastWins(v))) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(LastWins(Value::Mapping(m)))
            }
        }
        d.deserialize_any(V)
    }
}

fn decode_error(source: &str, message: String) -> PolicyError {
    PolicyError::Decode {
        file: source.to_string(),
        message,
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The reader rejects anything but `audit.k8s.io/v1` `Policy`.
fn check_type_meta(value: &Value, source: &str) -> Result<(), PolicyError> {
    let Value::Mapping(map) = value else {
        return Err(decode_error(
            source,
            format!(
                "an audit policy must be a YAML mapping with apiVersion {API_VERSION:?} and kind {KIND:?}"
            ),
        ));
    };
    let mut errors = Vec::new();
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => errors.push(field_error(
            "apiVersion",
            format!("unsupported {v:?} (only {API_VERSION:?} is accepted)"),
        )),
        Some(_) => errors.push(field_error("apiVersion", "must be a string")),
        None => errors.push(field_error(
            "apiVersion",
            format!("required (must be {API_VERSION:?})"),
        )),
    }
    match map.get("kind") {
        Some(Value::String(k)) if k == KIND => {}
        Some(Value::String(k)) => {
            errors.push(field_error("kind", format!("must be {KIND:?}, not {k:?}")))
        }
        Some(_) => errors.push(field_error("kind", "must be a string")),
        None => errors.push(field_error("kind", format!("required (must be {KIND:?})"))),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Invalid {
            file: source.to_string(),
            errors,
        })
    }
}

fn child_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Removes every key that strict decoding would reject, collecting their
/// paths (e.g. `rules[0].foo`). Nodes of the wrong type are left alone for
/// [`type_error`] to report.
fn strip_unknown_fields(value: &mut Value, shape: &Shape, path: &str, unknown: &mut Vec<String>) {
    match (shape, value) {
        (Shape::Map(fields), Value::Mapping(map)) => {
            retain_known(map, fields, path, unknown);
            for (key, child) in map.iter_mut() {
                let Some(name) = key.as_str() else { continue };
                if let Some((_, child_shape)) = fields.iter().find(|(f, _)| *f == name) {
                    strip_unknown_fields(child, child_shape, &child_path(path, name), unknown);
                }
            }
        }
        (Shape::List(item), Value::Sequence(items)) => {
            for (i, child) in items.iter_mut().enumerate() {
                strip_unknown_fields(child, item, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

fn retain_known(
    map: &mut Mapping,
    fields: &[(&str, Shape)],
    path: &str,
    unknown: &mut Vec<String>,
) {
    map.retain(|key, _| {
        let name = match key {
            Value::String(s) if fields.iter().any(|(f, _)| f == s) => return true,
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .map(|s| s.trim_end().to_string())
                .unwrap_or_else(|_| format!("{other:?}")),
        };
        unknown.push(child_path(path, &name));
        false
    });
}

/// The first node (in document order) whose type does not fit `shape`, as
/// `path: message`; serde errors from a YAML value carry no location.
fn type_error(value: &Value, shape: &Shape, path: &str) -> Option<String> {
    let wrong = |expected: &str, v: &Value| {
        let at = if path.is_empty() { "document" } else { path };
        Some(format!(
            "{at}: invalid type: expected {expected}, found {}",
            describe(v)
        ))
    };
    match (shape, value) {
        (_, Value::Null) | (Shape::Opaque, _) | (Shape::Str, Value::String(_)) => None,
        (Shape::Bool, Value::Bool(_)) => None,
        (Shape::Str, v) => wrong("a string", v),
        (Shape::Bool, v) => wrong("a boolean", v),
        (Shape::StrList, Value::Sequence(items)) => items.iter().enumerate().find_map(|(i, v)| {
            (!v.is_string()).then(|| {
                format!(
                    "{path}[{i}]: invalid type: expected a string, found {}",
                    describe(v)
                )
            })
        }),
        (Shape::StrList, v) => wrong("a list of strings", v),
        (Shape::IntList, Value::Sequence(items)) => items.iter().enumerate().find_map(|(i, v)| {
            (!v.is_i64()).then(|| {
                format!(
                    "{path}[{i}]: invalid type: expected an integer, found {}",
                    describe(v)
                )
            })
        }),
        (Shape::IntList, v) => wrong("a list of integers", v),
        (Shape::List(item), Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| type_error(v, item, &format!("{path}[{i}]"))),
        (Shape::List(_), v) => wrong("a list", v),
        (Shape::Map(fields), Value::Mapping(map)) => fields.iter().find_map(|(name, child)| {
            map.get(*name)
                .and_then(|v| type_error(v, child, &child_path(path, name)))
        }),
        (Shape::Map(_), v) => wrong("a mapping", v),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

/// `ValidatePolicy` + the reader's zero-rule check, then compilation. All
/// problems are collected, like the apiserver's aggregated error list.
fn compile(doc: PolicyDoc, source: &str, mut warnings: Vec<String>) -> Result<Policy, PolicyError> {
    let mut errors = Vec::new();
    let omit_stages = parse_stages(
        doc.omit_stages.unwrap_or_default(),
        "omitStages",
        &mut errors,
    );
    let omit_managed_fields = doc.omit_managed_fields.unwrap_or(false);
    let omit_response_codes =
        response_codes(doc.omit_response_codes, "omitResponseCodes", &mut errors);
    let rule_docs = doc.rules.unwrap_or_default();
    if rule_docs.is_empty() {
        errors.push(field_error(
            "rules",
            "a policy must have at least one rule (kube-apiserver refuses a policy with 0 rules)",
        ));
    }

    let mut rules = Vec::with_capacity(rule_docs.len());
    for (i, rule) in rule_docs.into_iter().enumerate() {
        let path = format!("rules[{i}]");
        if let Some(rule) = compile_rule(
            rule,
            &path,
            omit_stages,
            omit_managed_fields,
            &mut errors,
            &mut warnings,
        ) {
            rules.push(rule);
        }
    }

    if !errors.is_empty() {
        return Err(PolicyError::Invalid {
            file: source.to_string(),
            errors,
        });
    }
    Ok(Policy {
        source: source.to_string(),
        rules,
        omit_stages,
        omit_managed_fields,
        omit_response_codes,
        warnings,
    })
}

/// The `omitResponseCodes` extension: HTTP status codes (100–599).
fn response_codes(codes: Option<Vec<i64>>, path: &str, errors: &mut Vec<FieldError>) -> Vec<i64> {
    let codes = codes.unwrap_or_default();
    for (i, c) in codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            errors.push(field_error(
                format!("{path}[{i}]"),
                format!("{c} is not an HTTP status code (100-599)"),
            ));
        }
    }
    codes
}

/// `validatePolicyRule` for one rule; `None` if it has errors.
fn compile_rule(
    rule: PolicyRuleDoc,
    path: &str,
    policy_stages: StageSet,
    policy_omit_managed_fields: bool,
    errors: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) -> Option<CompiledRule> {
    let errors_before = errors.len();

    let level = match rule.level.as_deref() {
        None | Some("") => {
            errors.push(field_error(format!("{path}.level"), "required"));
            None
        }
        Some(l) => {
            let level = Level::parse(l);
            if level.is_none() {
                errors.push(field_error(
                    format!("{path}.level"),
                    format!(
                        "unsupported level {l:?} (allowed: {})",
                        Level::ALL.map(Level::as_str).join(", ")
                    ),
                ));
            }
            level
        }
    };

    let urls = rule.non_resource_urls.unwrap_or_default();
    for (k, url) in urls.iter().enumerate() {
        if url == "*" {
            continue;
        }
        let field = format!("{path}.nonResourceURLs[{k}]");
        if !url.starts_with('/') {
            errors.push(field_error(
                &field,
                format!("{url:?}: non-resource URL rules must begin with a '/' character"),
            ));
        }
        if url
            .char_indices()
            .any(|(pos, c)| c == '*' && pos + 1 != url.len())
        {
            errors.push(field_error(
                &field,
                format!("{url:?}: non-resource URL wildcards '*' must be the final character of the rule"),
            ));
        }
    }

    let group_docs = rule.resources.unwrap_or_default();
    let mut resources = Vec::with_capacity(group_docs.len());
    for (j, gr) in group_docs.into_iter().enumerate() {
        let gr_path = format!("{path}.resources[{j}]");
        let group = gr.group.unwrap_or_default();
        if let Some(msg) = group_error(&group) {
            errors.push(field_error(format!("{gr_path}.group"), msg));
        }
        let names = gr.resource_names.unwrap_or_default();
        let res = gr.resources.unwrap_or_default();
        if !names.is_empty() && res.is_empty() {
            errors.push(field_error(
                format!("{gr_path}.resourceNames"),
                "using resourceNames requires at least one resource",
            ));
        }
        for (k, r) in res.iter().enumerate() {
            if r == "*/*" {
                warnings.push(format!(
                    "{path}.resources[{j}].resources[{k}]: \"*/*\" never matches in kube-apiserver's checker; \
                     use \"*\" for every resource and subresource"
                ));
            }
        }
        resources.push(GroupMatcher {
            group: group.into_boxed_str(),
            resources: res.into_iter().map(ResourcePattern::new).collect(),
            resource_names: StrSet::new(names),
        });
    }

    let rule_stages = parse_stages(
        rule.omit_stages.unwrap_or_default(),
        &format!("{path}.omitStages"),
        errors,
    );

    let omit_response_codes = response_codes(
        rule.omit_response_codes,
        &format!("{path}.omitResponseCodes"),
        errors,
    );
    let namespaces = rule.namespaces.unwrap_or_default();
    if !urls.is_empty() && (!resources.is_empty() || !namespaces.is_empty()) {
        errors.push(field_error(
            format!("{path}.nonResourceURLs"),
            "rules cannot apply to both regular resources and non-resource URLs \
             (nonResourceURLs cannot be combined with resources or namespaces)",
        ));
    }

    if errors.len() != errors_before {
        return None;
    }
    Some(CompiledRule {
        level: level?,
        users: StrSet::new(rule.users.unwrap_or_default()),
        user_groups: StrSet::new(rule.user_groups.unwrap_or_default()),
        verbs: StrSet::new(rule.verbs.unwrap_or_default()),
        namespaces: StrSet::new(namespaces),
        resources,
        non_resource_urls: urls.iter().map(|u| PathPattern::new(u)).collect(),
        omit_stages: policy_stages.union(rule_stages),
        omit_managed_fields: rule
            .omit_managed_fields
            .unwrap_or(policy_omit_managed_fields),
        omit_response_codes,
    })
}

/// `validateOmitStages`.
fn parse_stages(stages: Vec<String>, path: &str, errors: &mut Vec<FieldError>) -> StageSet {
    let mut set = StageSet::default();
    for (i, s) in stages.iter().enumerate() {
        match Stage::parse(s) {
            Some(stage) => set.insert(stage),
            None => errors.push(field_error(
                format!("{path}[{i}]"),
                format!(
                    "unsupported stage {s:?} (allowed: {})",
                    Stage::ALL.map(Stage::as_str).join(", ")
                ),
            )),
        }
    }
    set
}

/// `validateResources`' group check (validation.go, Kubernetes 1.36): `""`
/// is the core group and `"*"` every group; anything else must be a
/// DNS-1123 subdomain (so neither `apps/v1` nor `*.k8s.io`).
fn group_error(group: &str) -> Option<String> {
    if group.is_empty() || group == "*" {
        return None;
    }
    if group.contains('/') {
        return Some(format!("{group:?} must not contain '/'"));
    }
    if group.len() > 253 {
        return Some(format!(
            "{group:?} must be no more than 253 characters (DNS-1123 subdomain)"
        ));
    }
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    };
    if group.split('.').all(label_ok) {
        None
    } else {
        Some(format!(
            "{group:?} is not a valid API group: a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character"
        ))
    }
}
