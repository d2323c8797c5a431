//! Checker, `checker_name` and loader tests. The checker table follows the
//! scenarios of kube-apiserver's `pkg/audit/policy/checker_test.go`.

use super::*;

// ---------------------------------------------------------------------------
// Fixtures (checker_test.go `attrs`)
// ---------------------------------------------------------------------------

const TIM: &str = "tim@k8s.io";
const TIM_GROUPS: [&str; 2] = ["humans", "developers"];

fn fixture(name: &str) -> Attributes<'static> {
    let tim = |verb, uri, obj| Attributes {
        user: Some(TIM),
        groups: TIM_GROUPS.to_vec(),
        verb,
        stage: None,
        request_uri: uri,
        object_ref: obj,
        response_code: None,
    };
    let pod = |sub| ObjectRefAttrs {
        api_group: "",
        resource: "pods",
        subresource: sub,
        namespace: "default",
        name: "busybox".into(),
    };
    match name {
        "namespaced" => tim(
            "get",
            "/api/v1/namespaces/default/pods/busybox",
            Some(pod("")),
        ),
        "cluster" => tim(
            "get",
            "/apis/rbac.authorization.k8s.io/v1beta1/clusterroles/edit",
            Some(ObjectRefAttrs {
                api_group: "rbac.authorization.k8s.io",
                resource: "clusterroles",
                subresource: "",
                namespace: "",
                name: "edit".into(),
            }),
        ),
        "nonResource" => tim("get", "/logs/kubelet.log", None),
        "subresource" => tim(
            "get",
            "/api/v1/namespaces/default/pods/busybox/log",
            Some(pod("log")),
        ),
        "Unauthorized" => Attributes {
            user: None,
            groups: vec![],
            verb: "get",
            stage: None,
            request_uri: "/api/v1/namespaces/default/pods/busybox",
            object_ref: Some(pod("")),
            response_code: None,
        },
        other => panic!("unknown fixture {other}"),
    }
}

// checker_test.go `rules`, as YAML flow mappings.
fn rule_yaml(name: &str) -> &'static str {
    match name {
        "default" => "{level: Metadata}",
        "create" => "{level: Request, verbs: [create]}",
        "tims" => r#"{level: Metadata, users: ["tim@k8s.io"]}"#,
        "humans" => "{level: Metadata, userGroups: [humans]}",
        "serviceAccounts" => r#"{level: Request, userGroups: ["system:serviceaccounts"]}"#,
        "getPods" => "{level: RequestResponse, verbs: [get], resources: [{resources: [pods]}]}",
        "getPodLogs" => "{level: Request, verbs: [get], resources: [{resources: [pods/log]}]}",
        "getPodWildcardMatching" => {
            r#"{level: Request, verbs: [get], resources: [{resources: ["*"]}]}"#
        }
        "getPodResourceWildcardMatching" => {
            r#"{level: Request, verbs: [get], resources: [{resources: ["*/log"]}]}"#
        }
        "getPodSubResourceWildcardMatching" => {
            r#"{level: Request, verbs: [get], resources: [{resources: ["pods/*"]}]}"#
        }
        "getClusterRoles" => {
            r#"{level: RequestResponse, verbs: [get], namespaces: [""],
                resources: [{group: rbac.authorization.k8s.io, resources: [clusterroles]}]}"#
        }
        "getLogs" => r#"{level: RequestResponse, verbs: [get], nonResourceURLs: ["/logs*"]}"#,
        "getMetrics" => "{level: Request, verbs: [get], nonResourceURLs: [/metrics]}",
        "clusterRoleEdit" => {
            "{level: Request, resources: [{group: rbac.authorization.k8s.io,
                resources: [clusterroles], resourceNames: [edit]}]}"
        }
        "omit RequestReceived" => "{level: Request, omitStages: [RequestReceived]}",
        "only audit panic" => {
            "{level: Request, omitStages: [RequestReceived, ResponseStarted, ResponseComplete]}"
        }
        other => panic!("unknown rule {other}"),
    }
}

fn policy_yaml(policy_stages: &[Stage], rules: &[&str]) -> String {
    let mut y = String::from("apiVersion: audit.k8s.io/v1\nkind: Policy\n");
    if !policy_stages.is_empty() {
        let s: Vec<&str> = policy_stages.iter().map(|s| s.as_str()).collect();
        y.push_str(&format!("omitStages: [{}]\n", s.join(", ")));
    }
    y.push_str("rules:\n");
    for r in rules {
        y.push_str(&format!("- {r}\n"));
    }
    y
}

fn load(yaml: &str) -> Policy {
    match Policy::from_yaml(yaml, "test.yaml") {
        Ok(p) => p,
        Err(e) => panic!("policy failed to load: {e}\n{yaml}"),
    }
}

/// The checker's omitted-stage set, observed by evaluating at each stage.
fn omitted(p: &Policy, a: &Attributes) -> Vec<Stage> {
    Stage::ALL
        .into_iter()
        .filter(|s| {
            let mut a = a.clone();
            a.stage = Some(*s);
            p.evaluate(&a).omit_stage
        })
        .collect()
}

fn check(req: &str, exp: Level, policy_stages: &[Stage], exp_omit: &[Stage], rules: &[&str]) {
    let yamls: Vec<&str> = rules.iter().map(|r| rule_yaml(r)).collect();
    let p = load(&policy_yaml(policy_stages, &yamls));
    let a = fixture(req);
    let d = p.evaluate(&a);
    assert_eq!(d.level, exp, "request:{req} rules:{rules:?}");
    let mut want = exp_omit.to_vec();
    want.sort_by_key(|s| s.as_str());
    let mut got = omitted(&p, &a);
    got.sort_by_key(|s| s.as_str());
    assert_eq!(got, want, "omitted stages, request:{req} rules:{rules:?}");
}

type Row = (&'static str, Level, &'static [&'static str]);

/// checker_test.go `testAuditLevel`.
const LEVEL_TABLE: &[Row] = {
    use Level::*;
    &[
        ("namespaced", Metadata, &["default"]),
        ("namespaced", None, &["create"]),
        ("namespaced", Metadata, &["tims"]),
        ("namespaced", Metadata, &["humans"]),
        ("namespaced", None, &["serviceAccounts"]),
        ("namespaced", RequestResponse, &["getPods"]),
        ("namespaced", None, &["getClusterRoles"]),
        ("namespaced", None, &["getLogs"]),
        ("namespaced", None, &["getMetrics"]),
        (
            "namespaced",
            Metadata,
            &["getMetrics", "serviceAccounts", "default"],
        ),
        (
            "namespaced",
            RequestResponse,
            &["getMetrics", "getPods", "default"],
        ),
        ("namespaced", RequestResponse, &["getPodLogs", "getPods"]),
        ("cluster", Metadata, &["default"]),
        ("cluster", None, &["create"]),
        ("cluster", Metadata, &["tims"]),
        ("cluster", Metadata, &["humans"]),
        ("cluster", None, &["serviceAccounts"]),
        ("cluster", None, &["getPods"]),
        ("cluster", RequestResponse, &["getClusterRoles"]),
        ("cluster", Request, &["clusterRoleEdit", "getClusterRoles"]),
        ("cluster", None, &["getLogs"]),
        ("cluster", None, &["getMetrics"]),
        (
            "cluster",
            Metadata,
            &["getMetrics", "serviceAccounts", "default"],
        ),
        (
            "cluster",
            RequestResponse,
            &["getMetrics", "getClusterRoles", "default"],
        ),
        ("cluster", None, &["getPodLogs", "getPods"]),
        ("nonResource", Metadata, &["default"]),
        ("nonResource", None, &["create"]),
        ("nonResource", Metadata, &["tims"]),
        ("nonResource", Metadata, &["humans"]),
        ("nonResource", None, &["serviceAccounts"]),
        ("nonResource", None, &["getPods"]),
        ("nonResource", None, &["getClusterRoles"]),
        ("nonResource", RequestResponse, &["getLogs"]),
        ("nonResource", None, &["getMetrics"]),
        (
            "nonResource",
            Metadata,
            &["getMetrics", "serviceAccounts", "default"],
        ),
        (
            "nonResource",
            RequestResponse,
            &["getLogs", "getClusterRoles", "default"],
        ),
        ("nonResource", None, &["getPodLogs", "getPods"]),
        ("subresource", Request, &["getPodLogs", "getPods"]),
        ("subresource", Request, &["getPodWildcardMatching"]),
        ("subresource", Request, &["getPodResourceWildcardMatching"]),
        (
            "subresource",
            Request,
            &["getPodSubResourceWildcardMatching"],
        ),
        ("Unauthorized", None, &["tims"]),
        ("Unauthorized", Metadata, &["tims", "default"]),
        ("Unauthorized", None, &["humans"]),
        ("Unauthorized", Metadata, &["humans", "default"]),
    ]
};

#[test]
fn checker_table_without_policy_stages() {
    for (req, level, rules) in LEVEL_TABLE {
        check(req, *level, &[], &[], rules);
    }
}

#[test]
fn checker_table_with_policy_stages() {
    let ps = [Stage::RequestReceived, Stage::ResponseStarted];
    for (req, level, rules) in LEVEL_TABLE {
        check(req, *level, &ps, &ps, rules);
    }
}

#[test]
fn checker_omit_stages_per_rule() {
    use Stage::*;
    let panic_only = [RequestReceived, ResponseStarted, ResponseComplete];
    for req in ["namespaced", "cluster", "nonResource"] {
        let rules = ["omit RequestReceived", "getPods", "default"];
        check(req, Level::Request, &[], &[RequestReceived], &rules);
        let rules = ["only audit panic", "getPods", "default"];
        check(req, Level::Request, &[], &panic_only, &rules);
    }
}

#[test]
fn checker_omit_stages_union_with_policy() {
    use Stage::*;
    let ps = [RequestReceived, ResponseStarted];
    let panic_only = [RequestReceived, ResponseStarted, ResponseComplete];
    for req in ["namespaced", "cluster"] {
        check(
            req,
            Level::Request,
            &ps,
            &ps,
            &["omit RequestReceived", "getPods", "default"],
        );
        check(
            req,
            Level::Request,
            &ps,
            &panic_only,
            &["only audit panic", "getPods", "default"],
        );
    }
    check(
        "nonResource",
        Level::Metadata,
        &ps,
        &ps,
        &["default", "omit RequestReceived", "getPods"],
    );
    check(
        "nonResource",
        Level::Request,
        &ps,
        &panic_only,
        &["only audit panic", "getPods", "default"],
    );
    // No match: the policy-wide stages apply.
    check("nonResource", Level::None, &[Panic], &[Panic], &["getPods"]);
}

#[test]
fn unknown_stage_is_never_omitted() {
    let p = load(&policy_yaml(
        &[Stage::RequestReceived],
        &["{level: Metadata}"],
    ));
    let a = fixture("namespaced");
    assert!(!p.evaluate(&a).omit_stage);
}

#[test]
fn omit_managed_fields_override() {
    let a = Attributes {
        verb: "get",
        ..Default::default()
    };
    let cases = [
        ("false", "", false),
        ("true", "", true),
        ("true", ", omitManagedFields: false", false),
        ("false", ", omitManagedFields: true", true),
    ];
    for (global, rule, want) in cases {
        let y = format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitManagedFields: {global}\n\
             rules:\n- {{level: RequestResponse, verbs: [get]{rule}}}\n"
        );
        let d = load(&y).evaluate(&a);
        assert_eq!(d.omit_managed_fields, want, "global={global} rule={rule:?}");
        assert_eq!(d.rule, Some(0));
    }
    // No matching rule: the policy default.
    let y = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitManagedFields: true\n\
             rules:\n- {level: Request, verbs: [list], omitManagedFields: false}\n";
    let d = load(y).evaluate(&a);
    assert_eq!(
        d,
        Decision {
            level: Level::None,
            rule: None,
            omit_stage: false,
            omit_managed_fields: true
        }
    );
}

// ---------------------------------------------------------------------------
// Additional matching cases
// ---------------------------------------------------------------------------

fn level_of(rule: &str, a: &Attributes) -> Level {
    load(&policy_yaml(&[], &[rule])).evaluate(a).level
}

fn with_uri(mut a: Attributes<'static>, uri: &'static str) -> Attributes<'static> {
    a.request_uri = uri;
    a
}

#[test]
fn resource_wildcards() {
    let rr = |res: &str| format!(r#"{{level: Request, resources: [{{resources: ["{res}"]}}]}}"#);
    let plain = fixture("namespaced");
    let sub = fixture("subresource");
    let cases: &[(&str, bool, bool)] = &[
        // pattern, matches plain pods, matches pods/log
        ("pods", true, false),
        ("pods/log", false, true),
        ("*", true, true),
        ("*/log", false, true),
        ("*/exec", false, false),
        ("pods/*", true, true), // `<res>/*` also matches the bare resource
        ("services/*", false, false),
        ("*/*", false, false), // real checker: never matches
        ("pod", false, false),
    ];
    for (pat, want_plain, want_sub) in cases {
        let want = |m: bool| if m { Level::Request } else { Level::None };
        assert_eq!(
            level_of(&rr(pat), &plain),
            want(*want_plain),
            "{pat} vs pods"
        );
        assert_eq!(
            level_of(&rr(pat), &sub),
            want(*want_sub),
            "{pat} vs pods/log"
        );
    }
}

#[test]
fn groups_and_resource_names() {
    let ns = fixture("namespaced");
    let cl = fixture("cluster");
    let m = Level::Metadata;
    let n = Level::None;
    // Group must match exactly ("" = core).
    assert_eq!(
        level_of(
            "{level: Metadata, resources: [{group: apps, resources: [pods]}]}",
            &ns
        ),
        n
    );
    assert_eq!(
        level_of(
            r#"{level: Metadata, resources: [{group: "", resources: [pods]}]}"#,
            &ns
        ),
        m
    );
    // No resources: every resource of the group.
    let rbac = "{level: Metadata, resources: [{group: rbac.authorization.k8s.io}]}";
    assert_eq!(level_of(rbac, &cl), m);
    assert_eq!(level_of(rbac, &ns), n);
    // Several GroupResources entries: any may match.
    let two = "{level: Metadata, resources: [{group: apps}, {resources: [pods]}]}";
    assert_eq!(level_of(two, &ns), m);
    // resourceNames.
    let named = |name: &str| {
        format!("{{level: Metadata, resources: [{{resources: [pods], resourceNames: [{name}]}}]}}")
    };
    assert_eq!(level_of(&named("busybox"), &ns), m);
    assert_eq!(level_of(&named("other"), &ns), n);
    let mut list = fixture("namespaced");
    if let Some(o) = list.object_ref.as_mut() {
        o.name = "".into();
    }
    list.verb = "list";
    assert_eq!(level_of(&named("busybox"), &list), n);
}

#[test]
fn namespaces() {
    let ns = fixture("namespaced");
    let cl = fixture("cluster");
    let nr = fixture("nonResource");
    let core = r#"{level: Metadata, namespaces: [""]}"#;
    assert_eq!(level_of(core, &cl), Level::Metadata);
    assert_eq!(level_of(core, &ns), Level::None);
    assert_eq!(level_of(core, &nr), Level::None); // namespaces imply a resource request
    let def = "{level: Metadata, namespaces: [kube-system, default]}";
    assert_eq!(level_of(def, &ns), Level::Metadata);
    assert_eq!(level_of(def, &cl), Level::None);
    // Cross-namespace list: namespace "".
    let mut all = fixture("namespaced");
    all.verb = "list";
    all.request_uri = "/api/v1/pods";
    if let Some(o) = all.object_ref.as_mut() {
        o.namespace = "";
        o.name = "".into();
    }
    assert_eq!(level_of(core, &all), Level::Metadata);
}

#[test]
fn non_resource_urls() {
    let nr = fixture("nonResource");
    let logs = "{level: Request, nonResourceURLs: [/logs*]}";
    assert_eq!(
        level_of(logs, &with_uri(fixture("nonResource"), "/logsfoo")),
        Level::Request
    );
    assert_eq!(
        level_of(logs, &with_uri(fixture("nonResource"), "/logs")),
        Level::Request
    );
    assert_eq!(
        level_of(logs, &with_uri(fixture("nonResource"), "/log")),
        Level::None
    );
    let exact = "{level: Request, nonResourceURLs: [/logs/kubelet.log]}";
    assert_eq!(level_of(exact, &nr), Level::Request);
    let slash = "{level: Request, nonResourceURLs: [/logs/*]}";
    assert_eq!(level_of(slash, &nr), Level::Request);
    assert_eq!(
        level_of(slash, &with_uri(fixture("nonResource"), "/logs")),
        Level::None
    );
    // "*" matches every non-resource request but no resource request.
    let star = r#"{level: Request, nonResourceURLs: ["*"]}"#;
    assert_eq!(level_of(star, &nr), Level::Request);
    assert_eq!(level_of(star, &fixture("namespaced")), Level::None);
    // The path is the request URI without its query, percent-decoded.
    let metrics = "{level: Request, nonResourceURLs: [/metrics]}";
    let m = with_uri(fixture("nonResource"), "/metrics?format=json");
    assert_eq!(level_of(metrics, &m), Level::Request);
    let spaced = r#"{level: Request, nonResourceURLs: ["/logs/a b"]}"#;
    assert_eq!(
        level_of(spaced, &with_uri(fixture("nonResource"), "/logs/a%20b")),
        Level::Request
    );
}

#[test]
fn users_groups_verbs() {
    let ns = fixture("namespaced");
    let l = |r: &str| level_of(r, &ns);
    assert_eq!(l("{level: Metadata, users: [bob]}"), Level::None);
    assert_eq!(
        l("{level: Metadata, users: [bob, tim@k8s.io]}"),
        Level::Metadata
    );
    assert_eq!(
        l("{level: Metadata, userGroups: [admins, developers]}"),
        Level::Metadata
    );
    assert_eq!(
        l("{level: Metadata, users: [tim@k8s.io], userGroups: [admins]}"),
        Level::None
    );
    assert_eq!(l("{level: Metadata, verbs: [list, watch]}"), Level::None);
    assert_eq!(l("{level: Metadata, verbs: [GET]}"), Level::None); // exact, case-sensitive
    assert_eq!(l("{level: Metadata, verbs: [watch, get]}"), Level::Metadata);
    // No user: groups are not consulted even if present.
    let mut anon = fixture("Unauthorized");
    anon.groups = vec!["humans"];
    assert_eq!(
        level_of("{level: Metadata, userGroups: [humans]}", &anon),
        Level::None
    );
    // A rule with no selectors matches everything, even without a user.
    assert_eq!(level_of("{level: Request}", &anon), Level::Request);
}

#[test]
fn first_match_wins_and_reports_rule_index() {
    let p = load(&policy_yaml(
        &[],
        &[
            "{level: None, users: [bob]}",
            "{level: Request, verbs: [get]}",
            "{level: Metadata}",
        ],
    ));
    let d = p.evaluate(&fixture("namespaced"));
    assert_eq!((d.level, d.rule), (Level::Request, Some(1)));
    let mut bob = fixture("namespaced");
    bob.user = Some("bob");
    assert_eq!(p.evaluate(&bob).rule, Some(0));
    assert_eq!(p.evaluate(&bob).level, Level::None);
}

// ---------------------------------------------------------------------------
// checker_name
// ---------------------------------------------------------------------------

#[test]
fn checker_name_cases() {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        // verb, objectRef.name, subresource, requestURI, expected
        ("create", "", "", "/api/v1/namespaces/ns/pods", ""),
        (
            "create",
            "nginx",
            "",
            "/api/v1/namespaces/ns/pods?fieldManager=kubectl",
            "",
        ),
        ("get", "foo", "", "/api/v1/namespaces/ns/pods/foo", "foo"),
        (
            "create",
            "foo",
            "exec",
            "/api/v1/namespaces/ns/pods/foo/exec?command=ls",
            "foo",
        ),
        (
            "create",
            "web",
            "",
            "/apis/apps/v1/namespaces/ns/deployments",
            "",
        ),
        ("create", "ns1", "", "/api/v1/namespaces", ""),
        (
            "create",
            "c",
            "",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "",
        ),
        // A name in the URL is what RequestInfo (and so the checker) sees.
        ("create", "x", "", "/api/v1/namespaces/ns/pods/foo", "foo"),
        ("create", "x", "", "/api/v1/namespaces/ns", "ns"),
        (
            "create",
            "x",
            "",
            "/apis/apps/v1/watch/namespaces/ns/deployments/d",
            "d",
        ),
        ("create", "x", "", "/healthz", ""),
        ("create", "x", "", "/apis/apps/v1", ""),
        // More parts than the split keeps on the stack: the same answer.
        (
            "create",
            "x",
            "",
            "/api/v1/namespaces/ns/pods/foo/a/b/c/d/e/f/g/h",
            "foo",
        ),
        ("update", "foo", "", "/api/v1/namespaces/ns/pods/foo", "foo"),
        (
            "list",
            "foo",
            "",
            "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dfoo",
            "foo",
        ),
    ];
    for (verb, name, sub, uri, want) in cases {
        assert_eq!(checker_name(verb, name, sub, uri), *want, "{verb} {uri}");
    }
}

#[test]
fn create_name_does_not_match_resource_names() {
    let p = load(&policy_yaml(
        &[],
        &[
            "{level: RequestResponse, resources: [{resources: [secrets], resourceNames: [usersshkeys]}]}",
            "{level: Metadata}",
        ],
    ));
    let uri = "/api/v1/namespaces/ns/secrets";
    let mut a = Attributes {
        user: Some("admin"),
        verb: "create",
        request_uri: uri,
        object_ref: Some(ObjectRefAttrs {
            resource: "secrets",
            namespace: "ns",
            name: checker_name("create", "usersshkeys", "", uri),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(p.evaluate(&a).level, Level::Metadata);
    let uri = "/api/v1/namespaces/ns/secrets/usersshkeys";
    a.verb = "update";
    a.request_uri = uri;
    if let Some(o) = a.object_ref.as_mut() {
        o.name = checker_name("update", "usersshkeys", "", uri);
    }
    assert_eq!(p.evaluate(&a).level, Level::RequestResponse);
}

// ---------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------

const HEAD: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\n";

fn load_err(body: &str) -> (PolicyError, String) {
    let text = format!("{HEAD}{body}");
    match Policy::from_yaml(&text, "policy.yaml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}

fn assert_rejects(body: &str, field: &str, fragment: &str) {
    let (e, msg) = load_err(body);
    assert!(msg.starts_with("policy.yaml: "), "{msg}");
    assert!(
        e.field_errors()
            .iter()
            .any(|f| f.field == field && f.message.contains(fragment)),
        "want {field}: …{fragment}…, got: {msg}"
    );
    assert!(msg.contains(&format!("{field}: ")), "{msg}");
}

#[test]
fn rejects_zero_rules() {
    assert_rejects("rules: []\n", "rules", "at least one rule");
    assert_rejects("omitStages: [Panic]\n", "rules", "at least one rule");
    assert_rejects("rules:\n", "rules", "at least one rule");
}

#[test]
fn rejects_bad_levels_and_stages() {
    assert_rejects(
        "rules:\n- level: Metadata\n- level: Everything\n",
        "rules[1].level",
        "unsupported level \"Everything\"",
    );
    assert_rejects(
        "rules:\n- level: metadata\n",
        "rules[0].level",
        "unsupported level",
    );
    assert_rejects("rules:\n- verbs: [get]\n", "rules[0].level", "required");
    assert_rejects("rules:\n- level: \"\"\n", "rules[0].level", "required");
    assert_rejects(
        "rules:\n- level: None\n- level: Request\n  omitStages: [RequestReceived, Done]\n",
        "rules[1].omitStages[1]",
        "unsupported stage \"Done\"",
    );
    assert_rejects(
        "omitStages: [ResponseComplete, requestReceived]\nrules:\n- level: None\n",
        "omitStages[1]",
        "unsupported stage",
    );
}

#[test]
fn rejects_mixed_resource_and_non_resource() {
    assert_rejects(
        "rules:\n- level: None\n- level: Metadata\n  nonResourceURLs: [/healthz]\n  resources: [{resources: [pods]}]\n",
        "rules[1].nonResourceURLs",
        "both regular resources and non-resource URLs",
    );
    assert_rejects(
        "rules:\n- level: Metadata\n  nonResourceURLs: [/healthz]\n  namespaces: [default]\n",
        "rules[0].nonResourceURLs",
        "both regular resources and non-resource URLs",
    );
}

#[test]
fn rejects_bad_groups() {
    let body = "rules:\n- level: None\n- level: None\n- level: Metadata\n  resources:\n  - group: apps/v1\n    resources: [deployments]\n";
    let (_, msg) = load_err(body);
    assert_eq!(
        msg,
        r#"policy.yaml: rules[2].resources[0].group: "apps/v1" must not contain '/'"#
    );
    // Since Kubernetes 1.36 "*" is every group (validation.go
    // `validateResources`); other patterns are still no DNS subdomain.
    assert_rejects(
        "rules:\n- level: Metadata\n  resources: [{group: apps}, {group: \"*.k8s.io\"}]\n",
        "rules[0].resources[1].group",
        "RFC 1123",
    );
    assert_rejects(
        "rules:\n- level: Metadata\n  resources: [{group: Apps}]\n",
        "rules[0].resources[0].group",
        "RFC 1123",
    );
}

#[test]
fn rejects_resource_names_without_resources() {
    assert_rejects(
        "rules:\n- level: Metadata\n  resources:\n  - group: \"\"\n    resources: [pods]\n  - group: \"\"\n    resourceNames: [usersshkeys]\n",
        "rules[0].resources[1].resourceNames",
        "requires at least one resource",
    );
}

#[test]
fn rejects_bad_non_resource_urls() {
    let begin = "must begin with a '/'";
    let last = "must be the final character";
    assert_rejects(
        "rules:\n- level: Metadata\n  nonResourceURLs: [/ok, healthz]\n",
        "rules[0].nonResourceURLs[1]",
        begin,
    );
    assert_rejects(
        "rules:\n- level: Metadata\n  nonResourceURLs: [\"\"]\n",
        "rules[0].nonResourceURLs[0]",
        begin,
    );
    assert_rejects(
        "rules:\n- level: Metadata\n  nonResourceURLs: [\"/api/*/foo\"]\n",
        "rules[0].nonResourceURLs[0]",
        last,
    );
    assert_rejects(
        "rules:\n- level: Metadata\n  nonResourceURLs: [\"/api**\"]\n",
        "rules[0].nonResourceURLs[0]",
        last,
    );
    assert_rejects(
        "rules:\n- level: Metadata\n  nonResourceURLs: [\"*foo\"]\n",
        "rules[0].nonResourceURLs[0]",
        last,
    );
    // Accepted forms.
    load(&format!(
        "{HEAD}rules:\n- level: Metadata\n  nonResourceURLs: [\"*\", /healthz, \"/logs*\", \"/*\"]\n"
    ));
}

#[test]
fn rejects_wrong_type_meta() {
    let cases = [
        (
            "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules: [{level: None}]\n",
            "apiVersion",
        ),
        ("kind: Policy\nrules: [{level: None}]\n", "apiVersion"),
        (
            "apiVersion: audit.k8s.io/v1\nkind: Event\nrules: [{level: None}]\n",
            "kind",
        ),
        (
            "apiVersion: audit.k8s.io/v1\nrules: [{level: None}]\n",
            "kind",
        ),
    ];
    for (text, field) in cases {
        let err = match Policy::from_yaml(text, "policy.yaml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        };
        assert!(
            err.to_string()
                .starts_with(&format!("policy.yaml: {field}: ")),
            "{err}"
        );
    }
}

#[test]
fn rejects_undecodable_documents() {
    for text in ["", "- just\n- a list\n", "rules: [\n", "apiVersion: [\n"] {
        let err = match Policy::from_yaml(text, "policy.yaml") {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("policy.yaml: "), "{err}");
    }
    // A wrong type is a hard error (not a strict-decoding error), located.
    let (e, msg) = load_err("rules:\n- level: Metadata\n  verbs: get\n");
    assert!(matches!(e, PolicyError::Decode { .. }), "{msg}");
    assert!(msg.contains("rules[0].verbs"), "{msg}");
}

#[test]
fn reports_every_error() {
    let (e, msg) = load_err(
        "omitStages: [x]\nrules:\n- level: y\n- level: Metadata\n  resources: [{group: a/b}]\n",
    );
    let fields: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "omitStages[0]",
            "rules[0].level",
            "rules[1].resources[0].group"
        ],
        "{msg}"
    );
    assert_eq!(msg.matches("; ").count(), 2, "{msg}");
}

#[test]
fn lenient_fallback_on_unknown_fields() {
    let text = format!(
        "{HEAD}metadata: {{name: p}}\nextra: 1\nrules:\n\
         - level: Request\n  verb: [get]\n  resources:\n  - group: \"\"\n    resources: [pods]\n    bogus: true\n"
    );
    let p = match Policy::from_yaml(&text, "policy.yaml") {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let w = p.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    for field in [
        "\"extra\"",
        "\"rules[0].verb\"",
        "\"rules[0].resources[0].bogus\"",
    ] {
        assert!(
            w.iter().any(|m| m.starts_with("policy.yaml: ")
                && m.contains(field)
                && m.contains("lenient")),
            "{field} not in {w:?}"
        );
    }
    // The misspelt `verb` is ignored, so the rule applies to every verb.
    let mut a = fixture("namespaced");
    a.verb = "delete";
    assert_eq!(p.evaluate(&a).level, Level::Request);
    // Lenient decoding still fails on real errors.
    let (e, _) = load_err("unknown: 1\nrules:\n- level: Metadata\n  verbs: get\n");
    assert!(matches!(e, PolicyError::Decode { .. }));
    // Validation still applies after the fallback.
    assert_rejects("unknown: 1\nrules: []\n", "rules", "at least one rule");
}

#[test]
fn strict_policy_has_no_warnings_and_null_lists_are_empty() {
    let p = load(&format!(
        "{HEAD}omitStages:\nomitManagedFields:\nrules:\n- level: Metadata\n  users:\n  verbs: ~\n  resources:\n"
    ));
    assert!(p.warnings().is_empty());
    assert_eq!(p.evaluate(&fixture("nonResource")).level, Level::Metadata);
}

#[test]
fn warns_on_star_slash_star() {
    let p = load(&format!(
        "{HEAD}rules:\n- level: Metadata\n  resources: [{{resources: [\"*/*\"]}}]\n"
    ));
    assert_eq!(p.warnings().len(), 1);
    assert!(p.warnings()[0].contains("rules[0].resources[0].resources[0]"));
}

#[test]
fn every_declared_field_decodes_strictly() {
    // Guards the FIELDS lists used by the lenient fallback.
    let body = "metadata: {name: x}
omitStages: [Panic]
omitManagedFields: true
rules:
- level: Metadata
  users: [a]
  userGroups: [b]
  verbs: [get]
  namespaces: [c]
  resources: [{group: apps, resources: [deployments], resourceNames: [d]}]
  omitStages: [RequestReceived]
  omitManagedFields: false
- level: None
  nonResourceURLs: [/x]
";
    let p = load(&format!("{HEAD}{body}"));
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
}

#[test]
fn files_and_presets() {
    let dir = std::env::temp_dir().join(format!("audit-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, format!("{HEAD}rules:\n- level: Request\n")).expect("write");
    let spec = path.to_str().expect("utf-8 path");
    let p = Policy::load(spec).expect("load file");
    assert_eq!(p.source(), spec);
    assert_eq!(p.rule_count(), 1);
    std::fs::write(&path, format!("{HEAD}rules:\n- level: Loud\n")).expect("write");
    let msg = Policy::from_file(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        msg,
        format!(
            "{spec}: rules[0].level: unsupported level \"Loud\" (allowed: None, Metadata, Request, RequestResponse)"
        )
    );
    let missing = dir.join("missing.yaml");
    let err = Policy::load(missing.to_str().expect("utf-8")).err();
    assert!(matches!(err, Some(PolicyError::Read { .. })), "{err:?}");
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("missing.yaml")
    );
    std::fs::remove_dir_all(&dir).ok();

    for name in PRESET_NAMES {
        let p = Policy::load(name).expect("preset");
        assert!(p.warnings().is_empty(), "{name}: {:?}", p.warnings());
        assert_eq!(p.source(), format!("preset:{name}"));
    }
    let err = Policy::preset("verbose").err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "unknown audit policy preset \"verbose\" (expected one of: metadata, minimal, recommended)"
        )
    );
}

#[test]
fn level_and_stage_names() {
    for l in Level::ALL {
        assert_eq!(Level::parse(l.as_str()), Some(l));
    }
    for s in Stage::ALL {
        assert_eq!(Stage::parse(s.as_str()), Some(s));
    }
    assert_eq!(Level::parse("metadata"), None);
    assert_eq!(Stage::parse(""), None);
    assert!(Level::None < Level::Metadata && Level::Request < Level::RequestResponse);
    assert_eq!(Level::RequestResponse.to_string(), "RequestResponse");
}

// ---------------------------------------------------------------------------
// Kubernetes 1.36 parity (apiserver v0.36.0, commit 4275b138)
// ---------------------------------------------------------------------------

/// A resource request event, as JSON, evaluated through the encoder.
fn event(
    verb: &str,
    uri: &str,
    group: &str,
    resource: &str,
    sub: &str,
    name: &str,
    code: Option<i64>,
) -> String {
    let status = code.map_or(String::new(), |c| {
        format!(r#","responseStatus":{{"metadata":{{}},"code":{c}}}"#)
    });
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"x","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"u","groups":["g"]}},"objectRef":{{"resource":"{resource}","namespace":"ns","name":"{name}","apiGroup":"{group}","subresource":"{sub}"}}{status}}}"#
    )
}

fn decide(p: &Policy, line: &str) -> String {
    crate::filter::apply::explain(p, line.as_bytes())["level"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// checker.go `ruleMatchesResource`: `gr.Group == apiGroup || gr.Group ==
/// "*"` (PR #135262, first in 1.36.0): every group, the core group
/// included; resource requests only; `*/status` across groups.
#[test]
fn group_wildcard_matches_every_group() {
    let p = load(&format!(
        "{HEAD}rules:\n- level: None\n  resources: [{{group: \"*\", resources: [\"*/status\"]}}]\n\
         - level: Metadata\n  resources: [{{group: \"*\"}}]\n- level: Request\n"
    ));
    let core = event(
        "get",
        "/api/v1/namespaces/ns/pods/p",
        "",
        "pods",
        "",
        "p",
        None,
    );
    let apps = event(
        "get",
        "/apis/apps/v1/namespaces/ns/deployments/d",
        "apps",
        "deployments",
        "",
        "d",
        None,
    );
    let status = event(
        "update",
        "/apis/apps/v1/namespaces/ns/deployments/d/status",
        "apps",
        "deployments",
        "status",
        "d",
        None,
    );
    assert_eq!(decide(&p, &core), "Metadata");
    assert_eq!(decide(&p, &apps), "Metadata");
    assert_eq!(decide(&p, &status), "None");
    let nonres = r#"{"kind":"Event","level":"Request","auditID":"y","stage":"ResponseComplete","requestURI":"/healthz","verb":"get","user":{"username":"u"}}"#;
    assert_eq!(
        decide(&p, nonres),
        "Request",
        "a group rule never matches a non-resource request"
    );
}

/// requestinfo.go `NewRequestInfo` splits Go's decoded `req.URL.Path`:
/// `%3A` is `:`, `%2F` a separator, `+` literal, decoded once.
#[test]
fn names_from_the_url_are_percent_decoded() {
    let name = |uri| checker_name("create", "fromBody", "", uri).into_owned();
    assert_eq!(name("/api/v1/namespaces/ns/pods/foo%3Abar"), "foo:bar");
    assert_eq!(name("/api/v1/namespaces/ns/pods/foo%2Fbar"), "foo");
    assert_eq!(name("/api/v1/namespaces/ns/pods/a+b"), "a+b");
    assert_eq!(name("/api/v1/namespaces/ns/pods/x%252F"), "x%2F");
    assert_eq!(name("/api/v1/namespaces/ns/pods?dryRun=All"), "");
    let p = load(&format!(
        "{HEAD}rules:\n- level: None\n  resources: [{{group: \"\", resources: [pods], resourceNames: [\"foo:bar\"]}}]\n- level: Metadata\n"
    ));
    let create = event(
        "create",
        "/api/v1/namespaces/ns/pods/foo%3Abar",
        "",
        "pods",
        "",
        "foo:bar",
        None,
    );
    assert_eq!(decide(&p, &create), "None");
}

/// reader.go `LoadPolicyFromBytes` decodes through sigs.k8s.io/yaml over
/// go-yaml v2 (YAML 1.1 scalars, resolve.go): `yes`/`on`/`off` are
/// booleans, a null list item is `""`; strict decoding fails on duplicate
/// keys, and the lenient retry keeps the last one, with a warning.
#[test]
fn policy_files_decode_as_kube_apiserver_decodes_them() {
    let p = load(&format!(
        "{HEAD}omitManagedFields: yes\nrules:\n- level: Metadata\n  omitManagedFields: Off\n- level: Request\n"
    ));
    assert!(
        p.omit_managed_fields && !p.rules[0].omit_managed_fields && p.rules[1].omit_managed_fields
    );
    for (word, want) in [
        ("y", true),
        ("ON", true),
        ("True", true),
        ("n", false),
        ("NO", false),
        ("off", false),
    ] {
        let p = load(&format!(
            "{HEAD}omitManagedFields: {word}\nrules:\n- level: Metadata\n"
        ));
        assert_eq!(p.omit_managed_fields, want, "{word}");
    }
    // namespaces: [~] is [""]: cluster-scoped requests.
    let p = load(&format!(
        "{HEAD}rules:\n- level: None\n  namespaces: [~]\n- level: Metadata\n"
    ));
    let cluster = r#"{"kind":"Event","level":"Metadata","auditID":"z","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n","verb":"get","user":{"username":"u"},"objectRef":{"resource":"nodes","name":"n","apiVersion":"v1"}}"#;
    assert_eq!(decide(&p, cluster), "None");
    // Duplicate keys: the last wins, and a warning says so.
    let p = load(&format!("{HEAD}rules:\n- level: Metadata\n  level: None\n"));
    assert_eq!(p.rules[0].level, Level::None);
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("duplicate") && w.contains("lenient")),
        "{:?}",
        p.warnings()
    );
    // Still fatal there, still fatal here: a number where a string belongs.
    assert!(
        Policy::from_yaml(
            &format!("{HEAD}rules:\n- level: Metadata\n  users: [123]\n"),
            "p"
        )
        .is_err()
    );
}

/// The `omitResponseCodes` extension (OpenShift's ClusterLogForwarder
/// KubeAPIAudit filter, policy.vrl.tmpl): at policy level, checked after
/// `omitStages` and before the rules; per rule here too. Off unless set.
#[test]
fn omit_response_codes_drops_events_with_those_codes() {
    let p = load(&format!(
        "{HEAD}omitResponseCodes: [404, 409, 422, 429]\nrules:\n- level: RequestResponse\n  verbs: [create]\n  omitResponseCodes: [201]\n- level: Metadata\n"
    ));
    let get = |code| {
        event(
            "get",
            "/api/v1/namespaces/ns/pods/p",
            "",
            "pods",
            "",
            "p",
            code,
        )
    };
    let create = |code| {
        event(
            "create",
            "/api/v1/namespaces/ns/pods",
            "",
            "pods",
            "",
            "p",
            code,
        )
    };
    assert_eq!(decide(&p, &get(Some(404))), "None");
    assert_eq!(decide(&p, &get(Some(200))), "Metadata");
    assert_eq!(
        decide(&p, &get(None)),
        "Metadata",
        "no responseStatus (RequestReceived): kept"
    );
    assert_eq!(
        decide(&p, &create(Some(409))),
        "None",
        "policy level wins over the rules"
    );
    assert_eq!(
        decide(&p, &create(Some(201))),
        "None",
        "the matched rule's list"
    );
    assert_eq!(decide(&p, &create(Some(200))), "RequestResponse");
    // Without the key: upstream semantics.
    let plain = load(&format!("{HEAD}rules:\n- level: Metadata\n"));
    assert_eq!(decide(&plain, &get(Some(404))), "Metadata");
    assert_rejects(
        "omitResponseCodes: [99]\nrules:\n- level: Metadata\n",
        "omitResponseCodes[0]",
        "HTTP status code",
    );
    let (_, msg) = load_err("omitResponseCodes: [\"404\"]\nrules:\n- level: Metadata\n");
    assert!(
        msg.contains("omitResponseCodes[0]: invalid type: expected an integer"),
        "{msg}"
    );
}
