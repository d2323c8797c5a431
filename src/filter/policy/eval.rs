//! Policy evaluation, mirroring `k8s.io/apiserver/pkg/audit/policy/checker.go`
//! (`EvaluatePolicyRule`, `ruleMatches`, `ruleMatchesResource`,
//! `ruleMatchesNonResource`, `pathMatches`).

use std::borrow::Cow;
use std::cell::OnceCell;

use super::{Attributes, Decision, Level, Policy, Stage};

/// A small set of exact strings. Empty means "any" for rule selectors, as in
/// checker.go where every condition is skipped when its list is empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct StrSet(Vec<Box<str>>);

impl StrSet {
    pub(crate) fn new(items: Vec<String>) -> StrSet {
        let mut v: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        v.sort_unstable();
        v.dedup();
        StrSet(v)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Exact, case-sensitive membership (checker.go `hasString`).
    pub(crate) fn contains(&self, s: &str) -> bool {
        self.0.binary_search_by(|x| (**x).cmp(s)).is_ok()
    }
}

/// A set of [`Stage`]s as a bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StageSet(u8);

impl StageSet {
    fn bit(s: Stage) -> u8 {
        match s {
            Stage::RequestReceived => 1,
            Stage::ResponseStarted => 2,
            Stage::ResponseComplete => 4,
            Stage::Panic => 8,
        }
    }

    pub(crate) fn insert(&mut self, s: Stage) {
        self.0 |= Self::bit(s);
    }

    /// checker.go `unionStages`.
    pub(crate) fn union(self, other: StageSet) -> StageSet {
        StageSet(self.0 | other.0)
    }

    /// An unknown stage (`None`) is never omitted.
    pub(crate) fn contains(self, s: Option<Stage>) -> bool {
        s.is_some_and(|s| self.0 & Self::bit(s) != 0)
    }
}

/// One entry of `GroupResources.resources`, with its wildcard forms
/// precomputed. All three checker.go tests are kept (they can overlap for
/// odd literal values), so matching is exactly `ruleMatchesResource`.
#[derive(Debug, Clone)]
pub(crate) struct ResourcePattern {
    raw: Box<str>,
    /// `"*"`: every resource and subresource.
    any: bool,
    /// `"*/<sub>"`: `Some(sub)`.
    any_resource_with_sub: Option<Box<str>>,
    /// `"<res>/*"`: `Some(res)`; also matches `<res>` without subresource.
    resource_any_sub: Option<Box<str>>,
}

impl ResourcePattern {
    pub(crate) fn new(raw: String) -> ResourcePattern {
        let any = raw == "*";
        let any_resource_with_sub = raw.strip_prefix("*/").map(Box::from);
        let resource_any_sub = raw.strip_suffix("/*").map(Box::from);
        ResourcePattern {
            raw: raw.into_boxed_str(),
            any,
            any_resource_with_sub,
            resource_any_sub,
        }
    }

    fn matches(&self, resource: &str, subresource: &str) -> bool {
        // `res == combinedResource || res == "*"`
        if self.any || combined_eq(&self.raw, resource, subresource) {
            return true;
        }
        // `len(subresource) > 0 && HasPrefix(res, "*/") && subresource == TrimPrefix(res, "*/")`
        if !subresource.is_empty() && self.any_resource_with_sub.as_deref() == Some(subresource) {
            return true;
        }
        // `HasSuffix(res, "/*") && resource == TrimSuffix(res, "/*")`
        self.resource_any_sub.as_deref() == Some(resource)
    }
}

/// String equality without a call to libc's `bcmp`: the strings compared
/// here are short (API groups, resources) and most often empty or of
/// different lengths (profile of the `recommended` policy: 5 % of the
/// forwarder's CPU was `memcmp` under `matches_resource`).
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// `pattern == resource + "/" + subresource` (or `== resource` without a
/// subresource), without allocating.
fn combined_eq(pattern: &str, resource: &str, subresource: &str) -> bool {
    if subresource.is_empty() {
        return same(pattern, resource);
    }
    pattern.len() == resource.len() + 1 + subresource.len()
        && pattern.starts_with(resource)
        && pattern.as_bytes().get(resource.len()) == Some(&b'/')
        && pattern.ends_with(subresource)
}

/// One `GroupResources` entry.
#[derive(Debug, Clone)]
pub(crate) struct GroupMatcher {
    pub(crate) group: Box<str>,
    /// Empty: every resource of the group.
    pub(crate) resources: Vec<ResourcePattern>,
    /// Empty: any name.
    pub(crate) resource_names: StrSet,
}

/// One `nonResourceURLs` entry (checker.go `pathMatches`). Validation
/// guarantees `*` only appears last, so a trailing-`*` spec is a plain
/// prefix (`"*"` being the empty prefix), and anything else is exact.
#[derive(Debug, Clone)]
pub(crate) enum PathPattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl PathPattern {
    pub(crate) fn new(spec: &str) -> PathPattern {
        if spec.ends_with('*') {
            PathPattern::Prefix(spec.trim_end_matches('*').into())
        } else {
            PathPattern::Exact(spec.into())
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(s) => **s == *path,
            PathPattern::Prefix(p) => path.starts_with(&**p),
        }
    }
}

/// A validated `PolicyRule` in matching form.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) level: Level,
    pub(crate) users: StrSet,
    pub(crate) user_groups: StrSet,
    pub(crate) verbs: StrSet,
    pub(crate) namespaces: StrSet,
    pub(crate) resources: Vec<GroupMatcher>,
    pub(crate) non_resource_urls: Vec<PathPattern>,
    /// Already united with the policy's `omitStages` (as `NewPolicyRuleEvaluator` does).
    pub(crate) omit_stages: StageSet,
    /// Already resolved against the policy default (`isOmitManagedFields`).
    pub(crate) omit_managed_fields: bool,
    /// Extension: a matched event with one of these codes is dropped.
    pub(crate) omit_response_codes: Vec<i64>,
}

/// Per-evaluation request view; the decoded path is computed at most once,
/// and only if a `nonResourceURLs` rule is reached.
struct Request<'r, 'a> {
    attrs: &'r Attributes<'a>,
    path: OnceCell<Cow<'a, str>>,
}

impl<'a> Request<'_, 'a> {
    fn path(&self) -> &str {
        self.path
            .get_or_init(|| request_path(self.attrs.request_uri))
    }
}

impl CompiledRule {
    /// checker.go `ruleMatches`.
    fn matches(&self, req: &Request<'_, '_>) -> bool {
        let a = req.attrs;
        if !self.users.is_empty() && !a.user.is_some_and(|u| self.users.contains(u)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && (a.user.is_none() || !a.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(a.verb) {
            return false;
        }
        // Namespaces/resources take precedence: nonResourceURLs are then not
        // consulted at all (validation forbids mixing them anyway).
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(a);
        }
        if !self.non_resource_urls.is_empty() {
            // ruleMatchesNonResource: resource requests never match.
            return a.object_ref.is_none()
                && self.non_resource_urls.iter().any(|p| p.matches(req.path()));
        }
        true
    }

    /// checker.go `ruleMatchesResource`.
    fn matches_resource(&self, a: &Attributes<'_>) -> bool {
        let Some(obj) = &a.object_ref else {
            return false;
        };
        // Cluster-scoped and cross-namespace requests have namespace "".
        if !self.namespaces.is_empty() && !self.namespaces.contains(obj.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        self.resources.iter().any(|gr| {
            // checker.go `ruleMatchesResource` (Kubernetes 1.36): the group
            // matches exactly, or the rule's group is "*" (every group,
            // the core group "" included).
            if &*gr.group != "*" && !same(&gr.group, obj.api_group) {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.contains(&obj.name) {
                return false;
            }
            gr.resources
                .iter()
                .any(|p| p.matches(obj.resource, obj.subresource))
        })
    }
}

/// checker.go `EvaluatePolicyRule`: first matching rule wins; otherwise
/// level `None` with the policy-wide `omitStages`/`omitManagedFields`.
pub(crate) fn evaluate(policy: &Policy, attrs: &Attributes<'_>) -> Decision {
    let req = Request {
        attrs,
        path: OnceCell::new(),
    };
    // The `omitResponseCodes` extension, where OpenShift's log forwarder
    // applies it: after the policy's `omitStages`, before any rule.
    let code_in = |codes: &[i64]| attrs.response_code.is_some_and(|c| codes.contains(&c));
    if code_in(&policy.omit_response_codes) {
        return Decision {
            level: Level::None,
            rule: None,
            omit_stage: policy.omit_stages.contains(attrs.stage),
            omit_managed_fields: policy.omit_managed_fields,
        };
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        if rule.matches(&req) {
            return Decision {
                level: if code_in(&rule.omit_response_codes) {
                    Level::None
                } else {
                    rule.level
                },
                rule: Some(i),
                omit_stage: rule.omit_stages.contains(attrs.stage),
                omit_managed_fields: rule.omit_managed_fields,
            };
        }
    }
    Decision {
        level: Level::None,
        rule: None,
        omit_stage: policy.omit_stages.contains(attrs.stage),
        omit_managed_fields: policy.omit_managed_fields,
    }
}

/// The authorizer's `GetPath()` (Go's `req.URL.Path`): the request URI
/// before `?`, percent-decoded. Undecodable input is used as is.
pub(crate) fn request_path(request_uri: &str) -> Cow<'_, str> {
    let raw = request_uri
        .split_once('?')
        .map_or(request_uri, |(path, _)| path);
    if raw.contains('%')
        && let Some(decoded) = percent_decode(raw)
    {
        return Cow::Owned(decoded);
    }
    Cow::Borrowed(raw)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The name the apiserver's checker saw for a request.
///
/// The checker runs before the request body is decoded, with the name that
/// `RequestInfo` parsed from the URL. For a `create` without subresource the
/// URL has no name (`POST …/pods`), so the checker saw `""`; the apiserver
/// fills `objectRef.name` from the body only afterwards (`LogRequestObject`).
/// For that case the name is re-derived from `request_uri` exactly as
/// `RequestInfoFactory.NewRequestInfo` does (`""` for a collection URL);
/// otherwise `objectRef.name` is what the checker saw (including a name from
/// a `metadata.name` field selector on list/watch) and is returned as is.
///
/// The path is percent-decoded first, as Go decodes `req.URL.Path` before
/// `NewRequestInfo` splits it (requestinfo.go, Kubernetes 1.36): `%3A` is
/// `:`, and `%2F` becomes a separator; `+` stays literal.
pub fn checker_name<'a>(
    verb: &str,
    object_ref_name: &'a str,
    subresource: &str,
    request_uri: &'a str,
) -> Cow<'a, str> {
    if verb == "create" && subresource.is_empty() {
        match request_path(request_uri) {
            Cow::Borrowed(path) => Cow::Borrowed(request_info_name(path)),
            Cow::Owned(path) => Cow::Owned(request_info_name(&path).to_string()),
        }
    } else {
        Cow::Borrowed(object_ref_name)
    }
}

/// `RequestInfo.Name` for a resource-request path (`""` if there is none or
/// the path is not a resource request). Follows `NewRequestInfo`: API
/// prefixes `api` (groupless) and `apis`, the `proxy`/`watch` verb prefixes,
/// and the `namespaces/{ns}` prefix unless followed by a namespace
/// subresource (`status`, `finalize`).
fn request_info_name(path: &str) -> &str {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "";
    }
    // Split without allocating for the usual depth (this runs per create).
    let mut short = [""; 12];
    let mut n = 0;
    let mut split = trimmed.split('/');
    for (slot, s) in short.iter_mut().zip(&mut split) {
        *slot = s;
        n += 1;
    }
    let long: Vec<&str>;
    let parts: &[&str] = if split.next().is_some() {
        long = trimmed.split('/').collect();
        &long
    } else {
        &short[..n]
    };
    if parts.len() < 3 {
        return "";
    }
    let mut p: &[&str] = match parts[0] {
        "api" => &parts[1..],
        // `/apis/{group}/{version}/...` needs four parts to be a resource request.
        "apis" if parts.len() >= 4 => &parts[2..],
        _ => return "",
    };
    // Skip the API version.
    p = &p[1..];
    if matches!(p.first(), Some(&"proxy" | &"watch")) {
        if p.len() < 2 {
            return "";
        }
        p = &p[1..];
    }
    if p.first() == Some(&"namespaces") && p.len() > 2 && !matches!(p[2], "status" | "finalize") {
        p = &p[2..];
    }
    p.get(1).copied().unwrap_or("")
}
