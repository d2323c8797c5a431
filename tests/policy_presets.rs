//! The built-in presets against realistic audit-event fixtures, through the
//! public API only.

use audit_forwarder::filter::policy::{
    Attributes, Level, ObjectRefAttrs, Policy, Stage, checker_name,
};

const ADMIN: (&str, &[&str]) = (
    "kubernetes-admin",
    &["system:masters", "system:authenticated"],
);
const KUBELET: (&str, &[&str]) = (
    "system:node:node-1",
    &["system:nodes", "system:authenticated"],
);
const RS_CONTROLLER: (&str, &[&str]) = (
    "system:serviceaccount:kube-system:replicaset-controller",
    &[
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
        "system:authenticated",
    ],
);
const ANONYMOUS: (&str, &[&str]) = ("system:anonymous", &["system:unauthenticated"]);

/// An `objectRef`: (apiGroup, resource, subresource, namespace, name).
type Obj = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// A resource request; `name` is `objectRef.name` as written in the event
/// (for a create, filled in from the body), turned into the checker's name.
fn res(
    who: (&'static str, &'static [&'static str]),
    verb: &'static str,
    uri: &'static str,
    (api_group, resource, subresource, namespace, name): Obj,
) -> Attributes<'static> {
    Attributes {
        user: Some(who.0),
        groups: who.1.to_vec(),
        verb,
        stage: Some(Stage::ResponseComplete),
        request_uri: uri,
        object_ref: Some(ObjectRefAttrs {
            api_group,
            resource,
            subresource,
            namespace,
            name: checker_name(verb, name, subresource, uri),
        }),
        response_code: None,
    }
}

fn nonres(
    who: (&'static str, &'static [&'static str]),
    verb: &'static str,
    uri: &'static str,
) -> Attributes<'static> {
    Attributes {
        user: Some(who.0),
        groups: who.1.to_vec(),
        verb,
        stage: Some(Stage::ResponseComplete),
        request_uri: uri,
        object_ref: None,
        response_code: None,
    }
}

use Level::{Metadata as M, None as N, Request as Rq, RequestResponse as RR};

/// (description, event, expected level for metadata, minimal, recommended)
#[rustfmt::skip]
fn fixtures() -> Vec<(&'static str, Attributes<'static>, [Level; 3])> {
    let ns_pods = "/api/v1/namespaces/default/pods";
    let pod = "/api/v1/namespaces/default/pods/nginx";
    let deps = "/apis/apps/v1/namespaces/default/deployments";
    let dep = "/apis/apps/v1/namespaces/default/deployments/web";
    let secret = |n| match n {
        "usersshkeys" => "/api/v1/namespaces/kube-system/secrets/usersshkeys",
        _ => "/api/v1/namespaces/kube-system/secrets/db-password",
    };
    vec![
        // Pods.
        ("create pod", res(ADMIN, "create", ns_pods, ("", "pods", "", "default", "nginx")), [M, RR, RR]),
        ("patch pod", res(ADMIN, "patch", pod, ("", "pods", "", "default", "nginx")), [M, RR, RR]),
        ("update pod", res(ADMIN, "update", pod, ("", "pods", "", "default", "nginx")), [M, RR, RR]),
        ("delete pod", res(ADMIN, "delete", pod, ("", "pods", "", "default", "nginx")), [M, RR, RR]),
        ("get pod", res(ADMIN, "get", pod, ("", "pods", "", "default", "nginx")), [M, N, M]),
        ("list pods", res(ADMIN, "list", ns_pods, ("", "pods", "", "default", "")), [M, N, M]),
        ("watch all pods", res(KUBELET, "watch", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&watch=true", ("", "pods", "", "", "")), [M, N, M]),
        ("deletecollection pods", res(ADMIN, "deletecollection", ns_pods, ("", "pods", "", "default", "")), [M, N, M]),
        ("kubelet patches pod status", res(KUBELET, "patch", "/api/v1/namespaces/default/pods/nginx/status", ("", "pods", "status", "default", "nginx")), [M, N, M]),
        ("scheduler binds pod", res(ADMIN, "create", "/api/v1/namespaces/default/pods/nginx/binding", ("", "pods", "binding", "default", "nginx")), [M, N, M]),
        // Deployments and other workloads.
        ("create deployment", res(ADMIN, "create", deps, ("apps", "deployments", "", "default", "web")), [M, RR, RR]),
        ("patch deployment", res(ADMIN, "patch", dep, ("apps", "deployments", "", "default", "web")), [M, RR, RR]),
        ("delete deployment", res(ADMIN, "delete", dep, ("apps", "deployments", "", "default", "web")), [M, RR, RR]),
        ("get deployment", res(ADMIN, "get", dep, ("apps", "deployments", "", "default", "web")), [M, N, M]),
        ("scale deployment", res(ADMIN, "patch", "/apis/apps/v1/namespaces/default/deployments/web/scale", ("apps", "deployments", "scale", "default", "web")), [M, N, M]),
        ("controller updates replicaset", res(RS_CONTROLLER, "update", "/apis/apps/v1/namespaces/default/replicasets/web-5d9c", ("apps", "replicasets", "", "default", "web-5d9c")), [M, RR, RR]),
        ("update statefulset", res(ADMIN, "update", "/apis/apps/v1/namespaces/db/statefulsets/pg", ("apps", "statefulsets", "", "db", "pg")), [M, RR, RR]),
        ("patch daemonset", res(ADMIN, "patch", "/apis/apps/v1/namespaces/kube-system/daemonsets/proxy", ("apps", "daemonsets", "", "kube-system", "proxy")), [M, RR, RR]),
        ("create job (batch)", res(ADMIN, "create", "/apis/batch/v1/namespaces/default/jobs", ("batch", "jobs", "", "default", "pi")), [M, N, M]),
        // Cluster API machines and Gatekeeper templates.
        ("create machine", res(ADMIN, "create", "/apis/cluster.k8s.io/v1alpha1/namespaces/kube-system/machines", ("cluster.k8s.io", "machines", "", "kube-system", "m-1")), [M, RR, RR]),
        ("patch machinedeployment", res(ADMIN, "patch", "/apis/cluster.k8s.io/v1alpha1/namespaces/kube-system/machinedeployments/md", ("cluster.k8s.io", "machinedeployments", "", "kube-system", "md")), [M, RR, RR]),
        ("get machineset", res(ADMIN, "get", "/apis/cluster.k8s.io/v1alpha1/namespaces/kube-system/machinesets/ms", ("cluster.k8s.io", "machinesets", "", "kube-system", "ms")), [M, N, M]),
        ("create constrainttemplate", res(ADMIN, "create", "/apis/templates.gatekeeper.sh/v1/constrainttemplates", ("templates.gatekeeper.sh", "constrainttemplates", "", "", "k8srequiredlabels")), [M, RR, RR]),
        ("update constrainttemplate status", res(ADMIN, "update", "/apis/templates.gatekeeper.sh/v1/constrainttemplates/k8srequiredlabels/status", ("templates.gatekeeper.sh", "constrainttemplates", "status", "", "k8srequiredlabels")), [M, RR, RR]),
        ("list constrainttemplates", res(ADMIN, "list", "/apis/templates.gatekeeper.sh/v1/constrainttemplates", ("templates.gatekeeper.sh", "constrainttemplates", "", "", "")), [M, N, M]),
        // Interactive access.
        ("exec (POST)", res(ADMIN, "create", "/api/v1/namespaces/default/pods/nginx/exec?command=sh&stdin=true&tty=true", ("", "pods", "exec", "default", "nginx")), [M, Rq, RR]),
        ("exec (websocket GET)", res(ADMIN, "get", "/api/v1/namespaces/default/pods/nginx/exec?command=ls", ("", "pods", "exec", "default", "nginx")), [M, Rq, RR]),
        ("port-forward", res(ADMIN, "create", "/api/v1/namespaces/default/pods/nginx/portforward", ("", "pods", "portforward", "default", "nginx")), [M, Rq, RR]),
        ("pod proxy", res(ADMIN, "get", "/api/v1/namespaces/default/pods/nginx/proxy/metrics", ("", "pods", "proxy", "default", "nginx")), [M, Rq, RR]),
        ("service proxy", res(ADMIN, "get", "/api/v1/namespaces/kube-system/services/dashboard/proxy/", ("", "services", "proxy", "kube-system", "dashboard")), [M, Rq, RR]),
        ("attach (not listed)", res(ADMIN, "create", "/api/v1/namespaces/default/pods/nginx/attach", ("", "pods", "attach", "default", "nginx")), [M, N, M]),
        ("pod logs", res(ADMIN, "get", "/api/v1/namespaces/default/pods/nginx/log?follow=true", ("", "pods", "log", "default", "nginx")), [M, M, M]),
        // Secrets and config maps.
        ("get secret", res(ADMIN, "get", secret("db"), ("", "secrets", "", "kube-system", "db-password")), [M, M, M]),
        ("list secrets", res(RS_CONTROLLER, "list", "/api/v1/secrets", ("", "secrets", "", "", "")), [M, M, M]),
        ("patch other secret", res(ADMIN, "patch", secret("db"), ("", "secrets", "", "kube-system", "db-password")), [M, M, M]),
        ("update usersshkeys", res(ADMIN, "update", secret("usersshkeys"), ("", "secrets", "", "kube-system", "usersshkeys")), [M, RR, RR]),
        ("delete usersshkeys", res(ADMIN, "delete", secret("usersshkeys"), ("", "secrets", "", "kube-system", "usersshkeys")), [M, RR, RR]),
        ("get usersshkeys", res(ADMIN, "get", secret("usersshkeys"), ("", "secrets", "", "kube-system", "usersshkeys")), [M, M, M]),
        // The checker saw name "" for a create: falls to the secrets rule.
        ("create usersshkeys", res(ADMIN, "create", "/api/v1/namespaces/kube-system/secrets", ("", "secrets", "", "kube-system", "usersshkeys")), [M, M, M]),
        ("get configmap", res(ADMIN, "get", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config", ("", "configmaps", "", "kube-system", "kubeadm-config")), [M, M, M]),
        ("update configmap", res(ADMIN, "update", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config", ("", "configmaps", "", "kube-system", "kubeadm-config")), [M, M, M]),
        // Nodes and cluster chatter.
        ("get node", res(KUBELET, "get", "/api/v1/nodes/node-1", ("", "nodes", "", "", "node-1")), [M, N, M]),
        ("list nodes", res(ADMIN, "list", "/api/v1/nodes", ("", "nodes", "", "", "")), [M, N, M]),
        ("patch node status", res(KUBELET, "patch", "/api/v1/nodes/node-1/status?timeout=10s", ("", "nodes", "status", "", "node-1")), [M, N, M]),
        ("renew lease", res(KUBELET, "update", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-1", ("coordination.k8s.io", "leases", "", "kube-node-lease", "node-1")), [M, N, M]),
        ("create event", res(KUBELET, "create", "/api/v1/namespaces/default/events", ("", "events", "", "default", "nginx.17a")), [M, N, M]),
        // Non-resource requests.
        ("discovery /api", nonres(ADMIN, "get", "/api?timeout=32s"), [M, N, M]),
        ("discovery /apis/apps/v1", nonres(ADMIN, "get", "/apis/apps/v1"), [M, N, M]),
        ("openapi", nonres(ADMIN, "get", "/openapi/v3/apis/apps/v1?hash=abc"), [M, N, M]),
        ("healthz", nonres(ANONYMOUS, "get", "/healthz"), [M, N, M]),
        ("readyz verbose", nonres(ANONYMOUS, "get", "/readyz?verbose"), [M, N, M]),
        // Failed authentication: anonymous user, no objectRef.
        ("failed authentication", nonres(ANONYMOUS, "list", "/api/v1/namespaces/default/pods"), [M, N, M]),
    ]
}

#[test]
fn presets_against_fixtures() {
    let presets = ["metadata", "minimal", "recommended"].map(|name| match Policy::preset(name) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    });
    let mut failures = Vec::new();
    for (what, attrs, want) in fixtures() {
        for (p, want) in presets.iter().zip(want) {
            let got = p.evaluate(&attrs).level;
            if got != want {
                failures.push(format!("{}: {what}: got {got}, want {want}", p.source()));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn preset_stages_and_rules() {
    let load = |name| match Policy::preset(name) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let (metadata, minimal, recommended) = (load("metadata"), load("minimal"), load("recommended"));
    let mut get_pod = res(
        ADMIN,
        "get",
        "/api/v1/namespaces/default/pods/nginx",
        ("", "pods", "", "default", "nginx"),
    );
    for stage in Stage::ALL {
        get_pod.stage = Some(stage);
        let omitted = stage == Stage::RequestReceived;
        assert!(!metadata.evaluate(&get_pod).omit_stage);
        // minimal: no match, so the policy-wide omitStages decide.
        assert_eq!(minimal.evaluate(&get_pod).omit_stage, omitted, "{stage}");
        assert_eq!(
            recommended.evaluate(&get_pod).omit_stage,
            omitted,
            "{stage}"
        );
    }
    assert_eq!(metadata.evaluate(&get_pod).rule, Some(0));
    assert_eq!(minimal.evaluate(&get_pod).rule, None);
    assert_eq!(recommended.evaluate(&get_pod).rule, Some(3));
    assert_eq!(recommended.rule_count(), 4);
    let healthz = nonres(ANONYMOUS, "get", "/healthz");
    assert_eq!(recommended.evaluate(&healthz).rule, Some(3));
    assert!(!recommended.evaluate(&healthz).omit_managed_fields);
}
