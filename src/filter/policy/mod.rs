//! Kubernetes `audit.k8s.io/v1` audit `Policy`: loading, validation and
//! evaluation with the same semantics as kube-apiserver
//! (`k8s.io/apiserver/pkg/audit/policy/{reader,checker}.go` and
//! `pkg/apis/audit/validation`).
//!
//! The forwarder evaluates a policy against events that were already written
//! by an apiserver, so [`Attributes`] is built from an audit event rather
//! than from authorizer attributes. Use [`checker_name`] to recover the
//! object name the apiserver's checker actually saw.

mod eval;
mod load;
mod presets;
mod types;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

pub use eval::checker_name;
pub use presets::PRESET_NAMES;

/// Audit level, ordered from least to most verbose (`None < Metadata < …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    /// All levels, least verbose first.
    pub const ALL: [Level; 4] = [
        Level::None,
        Level::Metadata,
        Level::Request,
        Level::RequestResponse,
    ];

    /// Parses the exact (case-sensitive) API spelling, e.g. `"Metadata"`.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The API spelling of this level.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request-handling stage at which an audit event was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    /// All stages, in request-handling order.
    pub const ALL: [Stage; 4] = [
        Stage::RequestReceived,
        Stage::ResponseStarted,
        Stage::ResponseComplete,
        Stage::Panic,
    ];

    /// Parses the exact (case-sensitive) API spelling, e.g. `"ResponseComplete"`.
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The API spelling of this stage.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attributes of one already-written audit event, borrowed from it.
#[derive(Default, Debug, Clone)]
pub struct Attributes<'a> {
    /// `user.username`; `None` when the event has no user / an empty user
    /// object. Rules with `users` or `userGroups` never match `None`.
    pub user: Option<&'a str>,
    /// `user.groups` (ignored when `user` is `None`).
    pub groups: Vec<&'a str>,
    /// `verb` (e.g. `get`, `list`, `create`).
    pub verb: &'a str,
    /// `stage`; `None` means "unknown", which is never omitted.
    pub stage: Option<Stage>,
    /// Full `requestURI`, including the query string.
    pub request_uri: &'a str,
    /// `Some` iff the event is a resource request (it has an `objectRef`).
    pub object_ref: Option<ObjectRefAttrs<'a>>,
    /// `responseStatus.code`, for the `omitResponseCodes` extension.
    pub response_code: Option<i64>,
}

/// The resource coordinates of a resource request (from `objectRef`).
///
/// `name` should be the name the apiserver's checker saw, i.e. the result of
/// [`checker_name`], not necessarily `objectRef.name` as written.
#[derive(Default, Debug, Clone)]
pub struct ObjectRefAttrs<'a> {
    /// `""` is the core group.
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    /// `""` for cluster-scoped and cross-namespace requests.
    pub namespace: &'a str,
    /// As the checker saw it ([`checker_name`]): decoded from the URL.
    pub name: std::borrow::Cow<'a, str>,
}

/// The outcome of evaluating a policy against one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Level of the first matching rule, or [`Level::None`] if none matched.
    pub level: Level,
    /// Index into the policy's `rules` of the matching rule.
    pub rule: Option<usize>,
    /// The event's stage is in the omitted stages (policy ∪ matched rule).
    pub omit_stage: bool,
    /// Rule's `omitManagedFields` if set, else the policy's.
    pub omit_managed_fields: bool,
}

/// One validation problem, addressed by its field path (e.g.
/// `rules[2].resources[0].group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a policy could not be loaded. Every message starts with the source
/// (file name or `preset:<name>`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("{file}: cannot read audit policy: {error}")]
    Read {
        file: String,
        #[source]
        error: std::io::Error,
    },
    /// The text is not a decodable `Policy` document (YAML syntax, wrong
    /// types, duplicate keys, ...).
    #[error("{file}: {message}")]
    Decode { file: String, message: String },
    /// The document decoded but is not an acceptable policy. All problems
    /// found are listed, like the apiserver's aggregated validation error.
    #[error("{file}: {}", join_errors(.errors))]
    Invalid {
        file: String,
        errors: Vec<FieldError>,
    },
    /// [`Policy::preset`] was given an unknown name.
    #[error("unknown audit policy preset {name:?} (expected one of: {})", PRESET_NAMES.join(", "))]
    UnknownPreset { name: String },
}

impl PolicyError {
    /// The field errors of an [`PolicyError::Invalid`], else an empty slice.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            PolicyError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// A validated, compiled audit policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) source: String,
    pub(crate) rules: Vec<eval::CompiledRule>,
    pub(crate) omit_stages: eval::StageSet,
    pub(crate) omit_managed_fields: bool,
    /// Extension: events with these `responseStatus.code`s are dropped.
    pub(crate) omit_response_codes: Vec<i64>,
    pub(crate) warnings: Vec<String>,
}

impl Policy {
    /// Parses and validates a policy document; `source` names it in messages.
    pub fn from_yaml(text: &str, source: &str) -> Result<Policy, PolicyError> {
        load::from_yaml(text, source)
    }

    /// Reads, parses and validates a policy file.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            file: file.clone(),
            error,
        })?;
        load::from_yaml(&text, &file)
    }

    /// One of the built-in presets: `metadata`, `minimal` or `recommended`.
    pub fn preset(name: &str) -> Result<Policy, PolicyError> {
        presets::load(name)
    }

    /// A preset if `spec` is a preset name, otherwise a policy file path.
    pub fn load(spec: &str) -> Result<Policy, PolicyError> {
        if presets::is_preset(spec) {
            Policy::preset(spec)
        } else {
            Policy::from_file(Path::new(spec))
        }
    }

    /// Evaluates the rules in order, first match wins (checker.go
    /// `EvaluatePolicyRule`).
    pub fn evaluate(&self, a: &Attributes) -> Decision {
        eval::evaluate(self, a)
    }

    /// Non-fatal problems found while loading (e.g. unknown fields ignored by
    /// the lenient-decoding fallback).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The name given to the policy's source (file name or `preset:<name>`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of rules in the policy (always at least one).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}
