#!/usr/bin/env python3
"""Offline validation of the Kubernetes side of kind/ (run by kind/validate.sh).

1. Every manifest under kind/manifests/ (each document), strictly against the
   OpenAPI schemas bundled with kubernetes-validate: unknown fields, wrong
   types and unknown kinds/apiVersions fail.
2. Every kustomization under kind/manifests/, rendered with `kubectl kustomize`.
3. The kind cluster config (kind/cluster.yaml): known keys only (kind
   v1alpha4, kubeadm ClusterConfiguration.apiServer), audit flags present,
   extraMounts' host directories present.
4. The kube-apiserver static pod as kubeadm writes it with this config: a
   kubeadm manifest (tools/testdata/kube-apiserver.yaml) + apiServer
   extraArgs/extraVolumes of kind/cluster.yaml + the strategic-merge patches of
   the patches directory, validated as a v1 Pod, then: unique container and
   volume names, every volumeMount backed by a volume, static-pod-compatible
   volume types only, every file the containers' flags name lies under one
   of their mounts, and every path of every forwarder config
   (kind/config/forwarder/*.toml) lies under a mount of the audit-forwarder
   sidecar or in the image.
"""

import argparse
import glob
import os
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import yaml
import kubernetes_validate
from kubernetes_validate import utils as kv_utils

# Strategic merge keys of the Pod fields a kubeadm patch may touch.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
# Volume types a static pod can use (it cannot reference API objects).
STATIC_POD_VOLUMES = {"hostPath", "emptyDir"}
# Where the image keeps files of its own (Dockerfile).
IMAGE_PATHS = ("/usr/share/audit-forwarder/", "/usr/local/bin/")

KIND_CLUSTER_KEYS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
                     "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
                     "containerdConfigPatchesJSON6902"}
KIND_NODE_KEYS = {"role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                  "kubeadmConfigPatchesJSON6902"}
KIND_NETWORKING_KEYS = {"ipFamily", "apiServerPort", "apiServerAddress", "podSubnet", "serviceSubnet",
                        "disableDefaultCNI", "kubeProxyMode", "dnsSearch"}
KIND_MOUNT_KEYS = {"containerPath", "hostPath", "readOnly", "selinuxRelabel", "propagation"}
KIND_JSON6902_KEYS = {"group", "version", "kind", "patch"}
KUBEADM_APISERVER_KEYS = {"extraArgs", "extraVolumes", "extraEnvs", "certSANs", "timeoutForControlPlane"}
KUBEADM_VOLUME_KEYS = {"name", "hostPath", "mountPath", "readOnly", "pathType"}
AUDIT_FLAGS = ("audit-policy-file", "audit-log-path", "audit-log-maxsize", "audit-log-maxbackup")


class Report:
    def __init__(self, root):
        self.root = root
        self.ok = []
        self.failed = []

    def rel(self, path):
        return os.path.relpath(path, self.root) if os.path.isabs(path) else path

    def good(self, path, what):
        self.ok.append((self.rel(path), what))
        print("  ok    %s: %s" % (self.rel(path), what))

    def bad(self, path, msg):
        self.failed.append((self.rel(path), msg))
        print("  FAIL  %s: %s" % (self.rel(path), msg))


def validate_doc(doc, source, version, rep):
    name = "%s/%s" % (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kv_utils.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        rep.bad(source, "%s: %s: %s" % (name, path or "(top)", e.message))
        return False
    except (kv_utils.SchemaNotFoundError, kv_utils.InvalidSchemaError) as e:
        rep.bad(source, "%s: %s" % (name, e.message))
        return False
    except Exception as e:  # noqa: BLE001 - report anything else as a failure too
        rep.bad(source, "%s: %s" % (name, e))
        return False
    rep.good(source, "%s valid (Kubernetes %s, strict)" % (name, version))
    return True


def load_docs(path, rep):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        rep.bad(path, "YAML: %s" % e)
        return []


def check_manifests(kind_dir, version, rep):
    base = os.path.join(kind_dir, "manifests")
    for path in sorted(glob.glob(os.path.join(base, "**", "*.yaml"), recursive=True)):
        if os.path.basename(path) == "kustomization.yaml":
            continue
        docs = load_docs(path, rep)
        if not docs:
            rep.bad(path, "no Kubernetes object in the file")
        for doc in docs:
            validate_doc(doc, path, version, rep)
    for kfile in sorted(glob.glob(os.path.join(base, "**", "kustomization.yaml"), recursive=True)):
        d = os.path.dirname(kfile)
        p = subprocess.run(["kubectl", "kustomize", d], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            rep.bad(kfile, "kubectl kustomize: %s" % p.stderr.decode(errors="replace").strip())
            continue
        docs = [x for x in yaml.safe_load_all(p.stdout) if x]
        if not docs:
            rep.bad(kfile, "renders nothing")
        for doc in docs:
            validate_doc(doc, kfile + " (kustomize build)", version, rep)


def unknown_keys(d, allowed, where, path, rep):
    if not isinstance(d, dict):
        rep.bad(path, "%s: expected a mapping" % where)
        return True
    extra = sorted(set(d) - allowed)
    if extra:
        rep.bad(path, "%s: unknown field(s) %s" % (where, ", ".join(extra)))
    return bool(extra)


def load_kind_config(kind_dir, rep):
    """Checks kind/cluster.yaml; returns what the static pod is built from."""
    path = os.path.join(kind_dir, "cluster.yaml")
    root = os.path.dirname(kind_dir)
    docs = load_docs(path, rep)
    if len(docs) != 1:
        rep.bad(path, "expected one document")
        return None
    c = docs[0]
    bad = unknown_keys(c, KIND_CLUSTER_KEYS, "Cluster", path, rep)
    if c.get("kind") != "Cluster" or c.get("apiVersion") != "kind.x-k8s.io/v1alpha4":
        rep.bad(path, "kind/apiVersion must be Cluster / kind.x-k8s.io/v1alpha4")
        bad = True
    bad |= unknown_keys(c.get("networking") or {}, KIND_NETWORKING_KEYS, "networking", path, rep)
    nodes = c.get("nodes") or []
    cps = [n for n in nodes if isinstance(n, dict) and n.get("role") == "control-plane"]
    if len(cps) != 1:
        rep.bad(path, "expected exactly one control-plane node")
        return None
    mounts = {}
    for i, n in enumerate(nodes):
        bad |= unknown_keys(n, KIND_NODE_KEYS, "nodes[%d]" % i, path, rep)
        if n.get("role") not in ("control-plane", "worker"):
            rep.bad(path, "nodes[%d].role: %r" % (i, n.get("role")))
            bad = True
        for j, m in enumerate(n.get("extraMounts") or []):
            bad |= unknown_keys(m, KIND_MOUNT_KEYS, "nodes[%d].extraMounts[%d]" % (i, j), path, rep)
            host = m.get("hostPath", "")
            host_abs = host if os.path.isabs(host) else os.path.join(root, host)
            generated = os.path.relpath(host_abs, kind_dir).startswith(".run")
            if not generated and not os.path.isdir(host_abs):
                rep.bad(path, "nodes[%d].extraMounts[%d].hostPath %s: no such directory (relative paths are"
                        " resolved from the repository root)" % (i, j, host))
                bad = True
            if n is cps[0]:
                mounts[m.get("containerPath")] = host_abs
        for j, p in enumerate(n.get("kubeadmConfigPatchesJSON6902") or []):
            bad |= unknown_keys(p, KIND_JSON6902_KEYS, "nodes[%d].kubeadmConfigPatchesJSON6902[%d]" % (i, j),
                                path, rep)
            try:
                ops = yaml.safe_load(p.get("patch", ""))
                assert isinstance(ops, list) and all(isinstance(o, dict) and "op" in o and "path" in o for o in ops)
            except Exception:  # noqa: BLE001
                rep.bad(path, "nodes[%d].kubeadmConfigPatchesJSON6902[%d].patch: not a JSON patch" % (i, j))
                bad = True
    for j, p in enumerate(c.get("kubeadmConfigPatchesJSON6902") or []):
        bad |= unknown_keys(p, KIND_JSON6902_KEYS, "kubeadmConfigPatchesJSON6902[%d]" % j, path, rep)
    patches = []
    for src in (c.get("kubeadmConfigPatches") or []) + (cps[0].get("kubeadmConfigPatches") or []):
        try:
            patches.extend(d for d in yaml.safe_load_all(src) if d)
        except yaml.YAMLError as e:
            rep.bad(path, "a kubeadmConfigPatches entry is not YAML: %s" % e)
            bad = True
    extra_args, extra_volumes, patch_dir = {}, [], None
    for p in patches:
        if p.get("kind") == "ClusterConfiguration":
            api = p.get("apiServer") or {}
            bad |= unknown_keys(api, KUBEADM_APISERVER_KEYS, "ClusterConfiguration.apiServer", path, rep)
            args = api.get("extraArgs") or {}
            if not isinstance(args, dict):
                rep.bad(path, "apiServer.extraArgs: a map (kubeadm v1beta3) is expected")
                bad = True
                args = {}
            extra_args.update({str(k): str(v) for k, v in args.items()})
            for v in api.get("extraVolumes") or []:
                bad |= unknown_keys(v, KUBEADM_VOLUME_KEYS, "apiServer.extraVolumes[%s]" % v.get("name"), path, rep)
                extra_volumes.append(v)
        elif p.get("kind") == "InitConfiguration":
            patch_dir = (p.get("patches") or {}).get("directory")
    for flag in AUDIT_FLAGS:
        if flag not in extra_args:
            rep.bad(path, "apiServer.extraArgs: %s is missing" % flag)
            bad = True
    if not patch_dir:
        rep.bad(path, "InitConfiguration.patches.directory is not set")
        return None
    host_patch_dir = mounts.get(patch_dir)
    if not host_patch_dir:
        rep.bad(path, "patches directory %s is not an extraMount of the control-plane node" % patch_dir)
        return None
    policy = extra_args.get("audit-policy-file", "")
    policy_host = host_path_of(policy, extra_volumes, mounts)
    if not policy_host or not os.path.isfile(policy_host):
        rep.bad(path, "audit-policy-file %s does not come from a host file (extraVolumes + extraMounts)" % policy)
        bad = True
    if not bad:
        rep.good(path, "kind v1alpha4 config: known fields, audit flags %s, patches from %s, policy from %s"
                 % (", ".join(AUDIT_FLAGS), rep.rel(host_patch_dir), rep.rel(policy_host)))
    return {"extra_args": extra_args, "extra_volumes": extra_volumes, "patch_dir": host_patch_dir}


def host_path_of(container_path, extra_volumes, mounts):
    """A path in the apiserver container -> node path -> host path (kind extraMounts)."""
    for v in extra_volumes:
        mp = v.get("mountPath", "").rstrip("/")
        if container_path == mp or container_path.startswith(mp + "/"):
            node_path = v.get("hostPath", "").rstrip("/") + container_path[len(mp):]
            for cpath, host in mounts.items():
                cpath = (cpath or "").rstrip("/")
                if node_path == cpath or node_path.startswith(cpath + "/"):
                    return host + node_path[len(cpath):]
    return None


def strategic_merge(orig, patch, where):
    if not isinstance(orig, dict) or not isinstance(patch, dict):
        return patch
    out = dict(orig)
    for k, v in patch.items():
        if isinstance(k, str) and k.startswith("$"):
            raise ValueError("%s: directive %s is not supported by this check" % (where, k))
        if v is None:
            out.pop(k, None)
        elif k in out and isinstance(out[k], list) and isinstance(v, list) and k in MERGE_KEYS:
            mk = MERGE_KEYS[k]
            merged = list(out[k])
            for item in v:
                if not isinstance(item, dict) or mk not in item:
                    raise ValueError("%s.%s: every item needs its merge key %r" % (where, k, mk))
                idx = next((i for i, x in enumerate(merged) if x.get(mk) == item[mk]), None)
                if idx is None:
                    merged.append(item)
                else:
                    merged[idx] = strategic_merge(merged[idx], item, "%s.%s[%s]" % (where, k, item[mk]))
            out[k] = merged
        elif k in out:
            out[k] = strategic_merge(out[k], v, "%s.%s" % (where, k))
        else:
            out[k] = v
    return out


def under(path, mounts):
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def check_static_pod(kind_dir, cfg, version, rep):
    base_path = os.path.join(kind_dir, "tools", "testdata", "kube-apiserver.yaml")
    pod = load_docs(base_path, rep)[0]
    api = pod["spec"]["containers"][0]
    # kubeadm: extraArgs override or extend the command's flags.
    cmd = [a for a in api["command"] if a.split("=", 1)[0].lstrip("-") not in cfg["extra_args"]]
    cmd += ["--%s=%s" % (k, v) for k, v in sorted(cfg["extra_args"].items())]
    api["command"] = cmd
    for v in cfg["extra_volumes"]:
        vol = {"name": v["name"], "hostPath": {"path": v["hostPath"]}}
        if v.get("pathType"):
            vol["hostPath"]["type"] = v["pathType"]
        pod["spec"]["volumes"].append(vol)
        api["volumeMounts"].append({"name": v["name"], "mountPath": v["mountPath"],
                                    "readOnly": bool(v.get("readOnly", False))})
    names = sorted(os.listdir(cfg["patch_dir"]))
    patched = []
    for n in names:
        path = os.path.join(cfg["patch_dir"], n)
        m = re.match(r"^(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubeletconfiguration)"
                     r"\d*(\+(strategic|merge|json))?\.(yaml|yml|json)$", n)
        if not m:
            rep.bad(path, "not a kubeadm patch file name (<component>[suffix][+patchtype].yaml)")
            continue
        if m.group(1) != "kube-apiserver":
            continue
        if m.group(3) not in (None, "strategic"):
            rep.bad(path, "only strategic patches are checked here")
            continue
        docs = load_docs(path, rep)
        try:
            for d in docs:
                pod = strategic_merge(pod, d, n)
            patched.append(n)
        except ValueError as e:
            rep.bad(path, str(e))
            return None
    if not patched:
        rep.bad(cfg["patch_dir"], "no kube-apiserver patch found")
        return None
    source = "%s merged into %s" % ("+".join(patched), os.path.relpath(base_path, kind_dir))
    ok = validate_doc(pod, source, version, rep)
    spec = pod["spec"]
    problems = []
    cnames = [c.get("name") for c in spec.get("containers", [])]
    if len(set(cnames)) != len(cnames):
        problems.append("container names are not unique: %s" % cnames)
    vols = {}
    for v in spec.get("volumes", []):
        if v.get("name") in vols:
            problems.append("volume %s is defined twice" % v.get("name"))
        vols[v.get("name")] = v
        kinds = set(v) - {"name"}
        if not kinds <= STATIC_POD_VOLUMES:
            problems.append("volume %s: %s cannot be used in a static pod" % (v.get("name"), ", ".join(kinds)))
    if not spec.get("hostNetwork"):
        problems.append("hostNetwork is no longer true")
    mounts_of = {}
    for c in spec.get("containers", []):
        seen = set()
        for vm in c.get("volumeMounts", []):
            if vm.get("name") not in vols:
                problems.append("container %s mounts undefined volume %s" % (c["name"], vm.get("name")))
            if vm.get("mountPath") in seen:
                problems.append("container %s mounts %s twice" % (c["name"], vm.get("mountPath")))
            seen.add(vm.get("mountPath"))
        mounts_of[c["name"]] = sorted(seen)
        for a in (c.get("command") or []) + (c.get("args") or []):
            val = a.split("=", 1)[1] if a.startswith("--") and "=" in a else a
            if val.startswith("/etc/") or val.startswith("/var/"):
                if not under(val, seen):
                    problems.append("container %s: %s is not under any of its mounts" % (c["name"], val))
    for p in problems:
        rep.bad(source, p)
    if ok and not problems:
        rep.good(source, "containers %s; every mount backed by a volume, every path in flags mounted"
                 % ", ".join(cnames))
    return mounts_of


def toml_paths(cfg):
    """Absolute paths a forwarder config makes the sidecar read or write."""
    paths = []
    tail = cfg.get("tail") or {}
    if "path" in tail:
        paths.append(("tail.path", os.path.dirname(tail["path"]) + "/"))
    if "state_dir" in cfg:
        paths.append(("state_dir", cfg["state_dir"]))
    for i, o in enumerate(cfg.get("outputs") or []):
        for k in ("tls_ca_file", "tls_cert_file", "tls_key_file", "policy_file"):
            if k in o:
                paths.append(("outputs[%d].%s" % (i, k), o[k]))
        for k in ("uds", "ca_file", "cert_file", "key_file"):
            if k in (o.get("proxy") or {}):
                paths.append(("outputs[%d].proxy.%s" % (i, k), o["proxy"][k]))
        for j, f in enumerate(o.get("filters") or []):
            paths.append(("outputs[%d].filters[%d].wasm" % (i, j), f["wasm"]))
    return paths


def check_forwarder_paths(kind_dir, mounts_of, apiserver_args, rep):
    mounts = mounts_of.get("audit-forwarder")
    if mounts is None:
        rep.bad("kind/node/kubeadm-patches", "no audit-forwarder container in the kube-apiserver pod")
        return
    log_dir = os.path.dirname(apiserver_args.get("audit-log-path", "")) + "/"
    for path in sorted(glob.glob(os.path.join(kind_dir, "config", "forwarder", "*.toml"))):
        with open(path, "rb") as f:
            try:
                cfg = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                rep.bad(path, "TOML: %s" % e)
                continue
        problems = []
        for key, p in toml_paths(cfg):
            if not p.startswith("/"):
                problems.append("%s = %r is not absolute" % (key, p))
            elif not under(p, mounts) and not p.startswith(IMAGE_PATHS):
                problems.append("%s = %s is neither under a mount of the audit-forwarder container (%s) nor in the"
                                " image" % (key, p, ", ".join(mounts)))
        tail_dir = os.path.dirname((cfg.get("tail") or {}).get("path", "")) + "/"
        if tail_dir != log_dir:
            problems.append("tail.path is not in the apiserver's --audit-log-path directory %s" % log_dir)
        for p in problems:
            rep.bad(path, p)
        if not problems:
            rep.good(path, "every path it names is mounted in the audit-forwarder sidecar or ships in the image;"
                     " tails the apiserver's --audit-log-path")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubernetes-version", default="1.35.0")
    args = ap.parse_args()
    kind_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rep = Report(os.path.dirname(kind_dir))
    print("Kubernetes manifests (kubernetes-validate %s, strict, Kubernetes %s):"
          % (kubernetes_validate.__version__, args.kubernetes_version))
    check_manifests(kind_dir, args.kubernetes_version, rep)
    print("kind cluster config and the kube-apiserver static pod it produces:")
    cfg = load_kind_config(kind_dir, rep)
    if cfg:
        mounts_of = check_static_pod(kind_dir, cfg, args.kubernetes_version, rep)
        if mounts_of:
            check_forwarder_paths(kind_dir, mounts_of, cfg["extra_args"], rep)
    print("validate.py: %d check(s) passed, %d failed" % (len(rep.ok), len(rep.failed)))
    sys.exit(1 if rep.failed else 0)


if __name__ == "__main__":
    main()
