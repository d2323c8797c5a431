//! Realistic synthetic kube-apiserver audit events, deterministic for a seed.
//! Used by the demo, the benchmark and the tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Size mix of generated events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Only Metadata-level events of about 1–3 KB.
    Metadata,
    /// Like real logs: mostly 1–3 KB metadata events, ~4 % RequestResponse
    /// events of 10–200 KB, and one event over 1 MB per ~20,000.
    Realistic,
}

pub struct Generator {
    rng: StdRng,
    mix: Mix,
    seq: u64,
    base_secs: i64,
}

const USERS: &[(&str, &[&str])] = &[
    ("system:kube-controller-manager", &["system:authenticated"]),
    ("system:kube-scheduler", &["system:authenticated"]),
    (
        "system:serviceaccount:kube-system:replicaset-controller",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ],
    ),
    (
        "system:node:worker-1",
        &["system:nodes", "system:authenticated"],
    ),
    ("alice@example.com", &["developers", "system:authenticated"]),
    ("system:apiserver", &["system:masters"]),
];

const RESOURCES: &[(&str, &str, &str)] = &[
    ("", "v1", "pods"),
    ("", "v1", "configmaps"),
    ("", "v1", "secrets"),
    ("", "v1", "nodes"),
    ("", "v1", "endpoints"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "replicasets"),
    ("coordination.k8s.io", "v1", "leases"),
];

const VERBS: &[&str] = &[
    "get", "list", "watch", "update", "patch", "create", "delete",
];

impl Generator {
    pub fn new(seed: u64, mix: Mix) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            mix,
            seq: 0,
            base_secs: 1_795_000_000,
        }
    }

    fn uuid(&mut self) -> String {
        let b: [u8; 16] = self.rng.random();
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// One event as a JSON line without the newline, escaped as Go does.
    pub fn event(&mut self) -> String {
        self.seq += 1;
        let big = match self.mix {
            Mix::Metadata => 0,
            Mix::Realistic => {
                if self.seq % 20_000 == 7 {
                    1_200_000
                } else if self.rng.random_bool(0.04) {
                    self.rng.random_range(10_000..200_000)
                } else {
                    0
                }
            }
        };
        let (user, groups) = USERS[self.rng.random_range(0..USERS.len())];
        let (group, version, resource) = RESOURCES[self.rng.random_range(0..RESOURCES.len())];
        let verb = VERBS[self.rng.random_range(0..VERBS.len())];
        let ns =
            ["kube-system", "default", "shoot--prod--a", "monitoring"][self.rng.random_range(0..4)];
        let name = format!(
            "{}-{}",
            resource.trim_end_matches('s'),
            self.rng.random_range(0..1000)
        );
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let uri = match verb {
            "list" | "watch" => {
                format!("{prefix}/namespaces/{ns}/{resource}?limit=500&resourceVersion=0")
            }
            "create" => format!("{prefix}/namespaces/{ns}/{resource}"),
            _ => format!("{prefix}/namespaces/{ns}/{resource}/{name}"),
        };
        let secs = self.base_secs + (self.seq / 1000) as i64;
        let micros = (self.seq % 1000) * 1000 + self.rng.random_range(0..1000);
        let ts = |extra: u64| {
            let dt = chrono::DateTime::from_timestamp(
                secs,
                ((micros + extra) % 1_000_000) as u32 * 1000,
            )
            .unwrap_or_default();
            dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        };
        let level = if big > 0 {
            "RequestResponse"
        } else {
            "Metadata"
        };
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level,
            "auditID": self.uuid(),
            "stage": "ResponseComplete",
            "requestURI": uri,
            "verb": verb,
            "user": {"username": user, "uid": self.uuid(), "groups": groups},
            "sourceIPs": [format!("10.250.{}.{}", self.rng.random_range(0..255), self.rng.random_range(1..255))],
            "userAgent": "kube-controller-manager/v1.32.1 (linux/amd64) kubernetes/abcdef0/system:serviceaccount:kube-system:generic-garbage-collector",
            "objectRef": {"resource": resource, "namespace": ns, "name": name, "apiGroup": group, "apiVersion": version},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": ts(0),
            "stageTimestamp": ts(850),
            "annotations": {
                "authorization.k8s.io/decision": "allow",
                "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding \"system:kube-controller-manager\" of ClusterRole \"system:kube-controller-manager\" to User \"system:kube-controller-manager\""
            }
        });
        if group.is_empty()
            && let Some(o) = ev.get_mut("objectRef").and_then(Value::as_object_mut)
        {
            o.remove("apiGroup");
        }
        // Pad metadata events to the 1–3 KB typical of real logs.
        let pad = self.rng.random_range(200..1600);
        if let Some(a) = ev.get_mut("annotations").and_then(Value::as_object_mut) {
            a.insert("example.com/trace".into(), Value::String("x".repeat(pad)));
        }
        if big > 0 {
            let body = json!({
                "kind": "ConfigMap", "apiVersion": "v1",
                "metadata": {"name": name, "namespace": ns, "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
                "data": {"blob": "y".repeat(big)}
            });
            ev["requestObject"] = body.clone();
            ev["responseObject"] = body;
        }
        go_escape(&ev.to_string())
    }
}

/// Escapes `<`, `>` and `&` as Go's encoding/json does (they only occur
/// inside strings in JSON text).
pub fn go_escape(s: &str) -> String {
    s.replace('&', "\\u0026")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
}
