#!/usr/bin/env bash
# Reproducible, cached build of fluent-bit 1.8.15 for interop tests.
#
# Sources: the npm package fluent-bit@0.0.3 (package/src/fluent-bit), fetched
# with `npm pack` (the npm registry is the only network source needed).
# Output:  target/fluent-bit/bin/fluent-bit (relative to the repo root).
#
# Env: JOBS (default 2; 1 while a rustc process is running), FLB_FORCE=1 to
# rebuild even if the cached binary works.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
OUT="$ROOT/target/fluent-bit"
BIN="$OUT/bin/fluent-bit"
NPM_PKG="fluent-bit@0.0.3"
FLB_VERSION="1.8.15"
# sha256 of the npm tarball (npm dist.shasum defc48a6a5344a0ced00b2541d2d1fa136e5856a)
TGZ_SHA256="0827e9dee7f83efa92939956e264f73afebc2da704cd15ea6eef0da8aa219a78"

t0=$(date +%s)
stamp() { echo "[build.sh +$(( $(date +%s) - t0 ))s] $*"; }

# ---- cache ---------------------------------------------------------------
if [[ "${FLB_FORCE:-0}" != 1 && -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then
  stamp "cached: $("$BIN" --version | head -1) at $BIN"
  exit 0
fi

# ---- Debian build deps ----------------------------------------------------
# cmake/make/gcc/g++: build; flex/bison: record accessor + stream processor
# parsers; libssl-dev: TLS (OpenSSL backend); libonig-dev: regex engine in
# place of the bundled Onigmo, which the npm tarball does not contain.
DEPS=(cmake make gcc g++ flex bison libssl-dev libonig-dev)
missing=()
for p in "${DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  stamp "installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  fi
else
  stamp "build deps present: ${DEPS[*]}"
fi

# ---- sources -----------------------------------------------------------------
mkdir -p "$OUT/dl"
TGZ="$OUT/dl/fluent-bit-0.0.3.tgz"
if [[ ! -s "$TGZ" ]]; then
  stamp "npm pack $NPM_PKG"
  (cd "$OUT/dl" && npm pack --silent "$NPM_PKG" >/dev/null)
fi
echo "$TGZ_SHA256  $TGZ" | sha256sum -c --quiet - \
  || { echo "checksum mismatch for $TGZ (delete it to re-fetch)" >&2; exit 1; }
SRC="$OUT/src"
if [[ ! -f "$SRC/CMakeLists.txt" || ! -f "$SRC/.unpacked" ]]; then
  stamp "unpacking into $SRC"
  rm -rf "$SRC" "$OUT/dl/unpack"
  mkdir -p "$OUT/dl/unpack"
  tar xzf "$TGZ" -C "$OUT/dl/unpack" package/src/fluent-bit
  mv "$OUT/dl/unpack/package/src/fluent-bit" "$SRC"
  rm -rf "$OUT/dl/unpack"
  grep -q "FLB_VERSION_PATCH  *${FLB_VERSION##*.})" "$SRC/CMakeLists.txt" || { echo "unexpected fluent-bit version in $TGZ" >&2; exit 1; }
  touch "$SRC/.unpacked"
fi

# ---- Onigmo shim ------------------------------------------------------------------
# lib/onigmo is missing from the tarball. Replace cmake/onigmo.cmake (which
# runs onigmo's ./configure) with an imported target on Debian's libonig
# (Oniguruma: same onig_* API) and an <onigmo.h> that includes <oniguruma.h>.
cat > "$SRC/cmake/onigmo.cmake" <<'EOF'
# Shim (tests/interop/fluent-bit/build.sh): system Oniguruma instead of Onigmo.
find_library(ONIG_SYSTEM_LIB NAMES onig REQUIRED)
find_path(ONIG_SYSTEM_INCLUDE oniguruma.h REQUIRED)
add_library(libonigmo UNKNOWN IMPORTED GLOBAL)
set_target_properties(libonigmo PROPERTIES IMPORTED_LOCATION "${ONIG_SYSTEM_LIB}")
set(ONIGMO_SHIM_DIR "${CMAKE_CURRENT_BINARY_DIR}/onigmo-shim/include")
file(WRITE "${ONIGMO_SHIM_DIR}/onigmo.h" "#include <oniguruma.h>\n")
include_directories("${ONIGMO_SHIM_DIR}" "${ONIG_SYSTEM_INCLUDE}")
EOF

# ---- configure -------------------------------------------------------------------
KEEP=" FLB_IN_TAIL FLB_IN_FORWARD FLB_IN_DUMMY FLB_IN_LIB FLB_IN_EMITTER FLB_IN_STORAGE_BACKLOG
       FLB_OUT_FORWARD FLB_OUT_STDOUT FLB_OUT_FILE FLB_OUT_NULL FLB_OUT_LIB
       FLB_FILTER_RECORD_MODIFIER FLB_FILTER_MODIFY FLB_FILTER_GREP "
PLUGIN_OPTS=()
for o in $(grep -o 'option(FLB_\(IN\|OUT\|FILTER\|CUSTOM\)_[A-Z0-9_]*' "$SRC/CMakeLists.txt" | sed 's/option(//' | sort -u); do
  if [[ " $(echo $KEEP) " == *" $o "* ]]; then PLUGIN_OPTS+=("-D$o=On"); else PLUGIN_OPTS+=("-D$o=Off"); fi
done

BUILD="$OUT/build"
mkdir -p "$BUILD"
stamp "cmake configure"
cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFLB_RELEASE=On -DFLB_DEBUG=Off \
  -DFLB_SHARED_LIB=Off -DFLB_EXAMPLES=Off -DFLB_LUAJIT=Off \
  -DFLB_TLS=On -DFLB_REGEX=On -DFLB_RECORD_ACCESSOR=On -DFLB_PARSER=On \
  -DFLB_BACKTRACE=Off -DFLB_JEMALLOC=Off -DFLB_HTTP_SERVER=Off \
  -DFLB_SQLDB=Off -DFLB_STREAM_PROCESSOR=Off -DFLB_PROXY_GO=Off \
  -DFLB_AWS=Off -DFLB_SIGNV4=Off -DFLB_AVRO_ENCODER=Off -DFLB_INOTIFY=On \
  -DFLB_TESTS_RUNTIME=Off -DFLB_TESTS_INTERNAL=Off \
  "${PLUGIN_OPTS[@]}" > "$BUILD/cmake-configure.log" 2>&1 \
  || { tail -40 "$BUILD/cmake-configure.log" >&2; exit 1; }
t_conf=$(date +%s)

# ---- build ---------------------------------------------------------------------------
if [[ -z "${JOBS:-}" ]]; then
  if pgrep -f rustc >/dev/null 2>&1; then JOBS=1; else JOBS=2; fi
fi
stamp "make -j$JOBS (log: $BUILD/make.log)"
make -C "$BUILD" -j"$JOBS" fluent-bit-bin > "$BUILD/make.log" 2>&1 \
  || { tail -40 "$BUILD/make.log" >&2; exit 1; }
t_make=$(date +%s)

mkdir -p "$OUT/bin"
install -m 0755 "$BUILD/bin/fluent-bit" "$BIN"
"$BIN" --version
stamp "done: configure $((t_conf - t0))s (incl. deps/fetch), make $((t_make - t_conf))s, total $(( $(date +%s) - t0 ))s"
echo "$BIN"
