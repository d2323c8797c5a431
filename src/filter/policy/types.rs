//! Serde mirror of the `audit.k8s.io/v1` `Policy` document, exactly as written
//! in YAML. Nothing here is validated: see `load.rs` for that.
//!
//! [`Shape`] describes the same structure for the lenient-decoding fallback
//! and for locating type errors; `every_declared_field_decodes_strictly`
//! (tests) keeps the two in sync.
//!
//! Lists are `Option<Vec<_>>` because Kubernetes' YAML→JSON decoding treats
//! an explicit `null` (e.g. `verbs:` with no value) as an empty list, which a
//! plain `Vec` with `#[serde(default)]` would reject.

use serde::Deserialize;

/// The top-level `audit.k8s.io/v1` `Policy` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PolicyDoc {
    /// Checked on the raw document before decoding (see `load.rs`).
    #[expect(dead_code, reason = "checked on the raw YAML value")]
    pub api_version: Option<String>,
    #[expect(dead_code, reason = "checked on the raw YAML value")]
    pub kind: Option<String>,
    /// `ObjectMeta`; accepted but not interpreted (the checker ignores it).
    #[expect(dead_code, reason = "ObjectMeta is not used by the checker")]
    pub metadata: Option<serde_yaml::Value>,
    pub rules: Option<Vec<PolicyRuleDoc>>,
    pub omit_stages: Option<Vec<String>>,
    pub omit_managed_fields: Option<bool>,
    /// Extension (OpenShift's log forwarder): drop events with these
    /// `responseStatus.code`s.
    pub omit_response_codes: Option<Vec<i64>>,
}

/// One `PolicyRule`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PolicyRuleDoc {
    pub level: Option<String>,
    pub users: Option<Vec<String>>,
    pub user_groups: Option<Vec<String>>,
    pub verbs: Option<Vec<String>>,
    pub resources: Option<Vec<GroupResourcesDoc>>,
    pub namespaces: Option<Vec<String>>,
    #[serde(rename = "nonResourceURLs")]
    pub non_resource_urls: Option<Vec<String>>,
    pub omit_stages: Option<Vec<String>>,
    pub omit_managed_fields: Option<bool>,
    /// Extension: events this rule matches with these codes are dropped.
    pub omit_response_codes: Option<Vec<i64>>,
}

/// One `GroupResources` entry of a rule's `resources`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GroupResourcesDoc {
    /// `""` (or absent) is the core API group.
    pub group: Option<String>,
    pub resources: Option<Vec<String>>,
    pub resource_names: Option<Vec<String>>,
}

/// The expected shape of a YAML node. `null` is accepted everywhere (every
/// field is optional, as in the Go types).
#[derive(Debug)]
pub(crate) enum Shape {
    Str,
    Bool,
    StrList,
    IntList,
    /// Anything (`metadata`).
    Opaque,
    /// A mapping with these known fields; other keys are unknown fields.
    Map(&'static [(&'static str, Shape)]),
    List(&'static Shape),
}

/// Shape of [`GroupResourcesDoc`].
pub(crate) const GROUP_RESOURCES_SHAPE: Shape = Shape::Map(&[
    ("group", Shape::Str),
    ("resources", Shape::StrList),
    ("resourceNames", Shape::StrList),
]);

/// Shape of [`PolicyRuleDoc`].
pub(crate) const POLICY_RULE_SHAPE: Shape = Shape::Map(&[
    ("level", Shape::Str),
    ("users", Shape::StrList),
    ("userGroups", Shape::StrList),
    ("verbs", Shape::StrList),
    ("resources", Shape::List(&GROUP_RESOURCES_SHAPE)),
    ("namespaces", Shape::StrList),
    ("nonResourceURLs", Shape::StrList),
    ("omitStages", Shape::StrList),
    ("omitManagedFields", Shape::Bool),
    ("omitResponseCodes", Shape::IntList),
]);

/// Shape of [`PolicyDoc`].
pub(crate) const POLICY_SHAPE: Shape = Shape::Map(&[
    ("apiVersion", Shape::Str),
    ("kind", Shape::Str),
    ("metadata", Shape::Opaque),
    ("rules", Shape::List(&POLICY_RULE_SHAPE)),
    ("omitStages", Shape::StrList),
    ("omitManagedFields", Shape::Bool),
    ("omitResponseCodes", Shape::IntList),
]);
