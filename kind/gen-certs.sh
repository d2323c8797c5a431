#!/usr/bin/env bash
# Generates every certificate, key and secret the kind scenarios use (openssl),
# and with --apply creates the Kubernetes Secrets of the receivers from them.
#
#   kind/gen-certs.sh [--out DIR] [--force] [--apply [--context CONTEXT]]
#
# DIR (default kind/.run/certs) gets:
#   ca.crt ca.key                 CA of the receivers and the forwarder's client cert
#   receiver.crt receiver.key     server cert of `audit-forwarder receive`, with SANs for
#                                 both receiver Services (audit-system, audit-security),
#                                 their fixed ClusterIPs, and 127.0.0.1 (kind/validate.sh)
#   client.crt client.key         the forwarder's client certificate (mutual TLS)
#   proxy-ca.crt proxy-ca.key     a separate CA for the mTLS CONNECT proxy (scenario 3)
#   proxy-server.crt/.key         konnectivity-server (http-connect over mTLS) server cert
#   proxy-client.crt/.key         the forwarder's client certificate for that proxy
#   shared-key                    the Forward protocol shared key (random, hex)
# Existing files are kept (idempotent) unless --force is given.
#
# --apply (kubectl, current context or --context) creates or updates, in the
# namespaces audit-system and audit-security:
#   Secret audit-receiver-tls          (kubernetes.io/tls: tls.crt, tls.key, ca.crt)
#   Secret audit-receiver-shared-key   (shared-key)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="$here/.run/certs"
force=0
apply=0
context=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --apply) apply=1; shift ;;
    --context) context="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gen-certs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is required" >&2; exit 2; }
mkdir -p "$out"
chmod 700 "$out"
cd "$out"

days=825
namespaces=(audit-system audit-security)
# Fixed ClusterIPs of the receiver Services (kind's default service CIDR is
# 10.96.0.0/16); the forwarder in the apiserver's host network dials them directly.
cluster_ips=(10.96.100.100 10.96.100.101)

if [ "$force" = 1 ]; then
  rm -f ./*.crt ./*.key ./*.srl shared-key
fi

key() { # key FILE: an ECDSA P-256 key in PKCS#8
  [ -s "$1" ] || { (umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null); }
}

ca() { # ca NAME CN
  [ -s "$1.crt" ] && return 0
  key "$1.key"
  cat > "$1.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $2
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
  openssl req -x509 -new -key "$1.key" -sha256 -days "$days" -config "$1.cnf" -extensions v3_ca -out "$1.crt"
  rm -f "$1.cnf"
}

leaf() { # leaf NAME CA CN EKU [SAN...]  (SANs as DNS:x / IP:y)
  local name="$1" cafile="$2" cn="$3" eku="$4"; shift 4
  [ -s "$name.crt" ] && return 0
  key "$name.key"
  local san=""
  if [ $# -gt 0 ]; then
    san="subjectAltName = $(IFS=,; echo "$*")"
  fi
  cat > "$name.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $eku
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
$san
EXT
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA "$cafile.crt" -CAkey "$cafile.key" -CAcreateserial \
    -sha256 -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

ca ca "audit-forwarder kind demo CA"
receiver_sans=(DNS:localhost IP:127.0.0.1)
for ns in "${namespaces[@]}"; do
  receiver_sans+=("DNS:audit-receiver.$ns" "DNS:audit-receiver.$ns.svc" "DNS:audit-receiver.$ns.svc.cluster.local")
done
for ip in "${cluster_ips[@]}"; do receiver_sans+=("IP:$ip"); done
leaf receiver ca "audit-receiver" serverAuth "${receiver_sans[@]}"
leaf client ca "kube-apiserver-audit-forwarder" clientAuth

ca proxy-ca "audit-forwarder kind demo proxy CA"
leaf proxy-server proxy-ca "konnectivity-server-mtls" serverAuth \
  DNS:konnectivity-server-mtls DNS:localhost IP:127.0.0.1
leaf proxy-client proxy-ca "kube-apiserver-audit-forwarder" clientAuth

if [ ! -s shared-key ]; then
  (umask 077; openssl rand -hex 32 | tr -d '\n' > shared-key)
fi
rm -f ./*.srl

for c in ca receiver client proxy-ca proxy-server proxy-client; do
  openssl x509 -in "$c.crt" -noout >/dev/null
done
openssl verify -CAfile ca.crt receiver.crt client.crt >/dev/null
openssl verify -CAfile proxy-ca.crt proxy-server.crt proxy-client.crt >/dev/null
echo "gen-certs.sh: certificates and shared key in $out"

k() { kubectl ${context:+--context "$context"} "$@"; }
if [ "$apply" = 1 ]; then
  for ns in "${namespaces[@]}"; do
    k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
    k -n "$ns" create secret generic audit-receiver-tls --type=kubernetes.io/tls \
      --from-file=tls.crt=receiver.crt --from-file=tls.key=receiver.key --from-file=ca.crt=ca.crt \
      --dry-run=client -o yaml | k apply -f -
    k -n "$ns" create secret generic audit-receiver-shared-key \
      --from-file=shared-key=shared-key --dry-run=client -o yaml | k apply -f -
  done
fi
