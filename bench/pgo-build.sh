#!/usr/bin/env bash
# bench/pgo-build.sh -- builds target/release/weir with profile-guided
# optimization (PGO), the way the figures in the README's Performance
# section were measured.
#
#   bench/pgo-build.sh                  # from anywhere; ~12 min on 2 cores
#
# 1. An instrumented build (target/pgo/gen) records which code runs.
# 2. It serves a bounded training load on loopback: HTTP/1.1 with 64-byte
#    and 16 KiB responses, the same route with the governance policies on,
#    an h2c upstream, HTTPS, an access log with mirrored requests, and h2c
#    clients (when h2load is installed).
#    The origin is a second instrumented weir answering direct responses.
# 3. The release build is optimized with that profile and written where
#    `cargo build --release` writes it: target/release/weir.
#
# Why: weir's request path runs through much more distinct code than a
# minimal proxy (routing, policies, request ids, metrics). Without a
# profile the compiler lays hot and cold code out interleaved and most of
# what a request executes misses the instruction cache; with one, hot
# paths are laid out together (docs/architecture.md, "Profile-guided
# build", has the measurements).
#
# Needs: rustup (adds its llvm-tools component when missing), wrk, openssl,
# curl, python3; h2load (nghttp2-client) is optional.
# Settings (environment): SECS per training load (3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
secs=${SECS:-3}
log() { printf '[pgo-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in cargo rustc wrk openssl curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/pgo-build.sh: $tool not found" >&2; exit 2; }
done
host=$(rustc -vV | awk '/^host:/ {print $2}')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  log "adding rustup's llvm-tools component (for llvm-profdata)"
  rustup component add llvm-tools
fi
[ -x "$profdata" ] || { echo "bench/pgo-build.sh: no llvm-profdata at $profdata" >&2; exit 2; }

pgo="$root/target/pgo"
profiles="$pgo/profiles"
work=$(mktemp -d "${TMPDIR:-/tmp}/weir-pgo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

log "1/3 instrumented build"
RUSTFLAGS="-Cprofile-generate=$profiles" cargo build --release --bin weir \
  --target-dir "$pgo/gen"
# Build scripts ran instrumented too: only the training's profiles count.
rm -rf "$profiles"
mkdir -p "$profiles"
gen="$pgo/gen/release/weir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_url() {
  for _ in $(seq 1 100); do curl -sfk -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "bench/pgo-build.sh: $1 does not answer" >&2; return 1
}

log "2/3 training load"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$work/server.key" -out "$work/server.crt" 2>/dev/null

origin=$(free_port); plain=$(free_port); tls=$(free_port); logged=$(free_port)
big=$(head -c 16384 /dev/zero | tr '\0' 'x')
cat >"$work/origin.yaml" <<CONF
runtime: { threads: 1 }
listeners: [{ name: origin, address: 127.0.0.1:$origin, protocols: [http1, h2c] }]
routes:
  - name: small
    match: { path: /small }
    direct_response: { status: 200, body: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", headers: { content-type: text/plain } }
  - name: big
    match: { path: /16k }
    direct_response: { status: 200, body: "$big", headers: { content-type: text/plain } }
CONF
cat >"$work/proxy.yaml" <<CONF
runtime: { threads: 1 }
listeners:
  - name: plain
    address: 127.0.0.1:$plain
    protocols: [http1, h2c]
  - name: tls
    address: 127.0.0.1:$tls
    tls:
      certificates: [{ cert: $work/server.crt, key: $work/server.key }]
routes:
  - name: policies
    match: { path_prefix: /policies/ }
    rewrite: { path_prefix: / }
    upstream: guarded
    timeouts: { connect: 1s, request: 10s }
    retry: { attempts: 2, on: [connect_failure, reset, 502, 503], budget: { ratio: 0.2, min_per_second: 10 } }
    rate_limit: { requests: 100000000, per: 1s, burst: 10000000, key: client_ip }
  - name: h2
    match: { path_prefix: /h2/ }
    rewrite: { path_prefix: / }
    upstream: multiplexed
  - name: all
    match: { path_prefix: / }
    upstream: origin
upstreams:
  - name: origin
    targets: [{ address: 127.0.0.1:$origin }]
    keepalive: { max_idle: 256, idle_timeout: 60s }
  - name: guarded
    targets: [{ address: 127.0.0.1:$origin }]
    keepalive: { max_idle: 256, idle_timeout: 60s }
    health_check: { path: /small, interval: 1s, timeout: 1s }
    outlier_detection: { consecutive_5xx: 5 }
    circuit_breaker: { max_connections: 100000, max_pending: 100000, max_requests: 100000 }
  - name: multiplexed
    targets: [{ address: 127.0.0.1:$origin }]
    protocol: h2c
CONF
# The same proxying with an access log and a mirrored copy of some requests.
cat >"$work/logged.yaml" <<CONF
runtime: { threads: 1 }
access_log: { enabled: true, path: $work/access.log }
listeners: [{ name: logged, address: 127.0.0.1:$logged }]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
    mirror: { upstream: shadow, percent: 10 }
upstreams:
  - name: origin
    targets: [{ address: 127.0.0.1:$origin }]
  - name: shadow
    targets: [{ address: 127.0.0.1:$origin }]
CONF
# Each process writes its profile when it exits (SIGTERM: a clean stop).
LLVM_PROFILE_FILE="$profiles/origin-%p.profraw" "$gen" run --config "$work/origin.yaml" \
  >/dev/null 2>"$work/origin.log" &
pids+=($!)
LLVM_PROFILE_FILE="$profiles/proxy-%p.profraw" "$gen" run --config "$work/proxy.yaml" \
  >/dev/null 2>"$work/proxy.log" &
pids+=($!)
LLVM_PROFILE_FILE="$profiles/logged-%p.profraw" "$gen" run --config "$work/logged.yaml" \
  >/dev/null 2>"$work/logged.log" &
pids+=($!)
wait_url "http://127.0.0.1:$origin/small"
wait_url "http://127.0.0.1:$logged/small"
# Every path the training loads must answer 200, or the profile would
# record error paths instead of the ones worth optimizing.
for path in /small /16k /policies/small /policies/16k /h2/small; do
  wait_url "http://127.0.0.1:$plain$path"
done
wait_url "https://127.0.0.1:$tls/small"

load() {
  log "  wrk $*"
  out=$(wrk -t1 -d"${secs}s" "$@")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "bench/pgo-build.sh: error responses while training on $*" >&2
    return 1
  fi
}
for path in /small /16k /policies/small /policies/16k /h2/small; do
  load -c64 "http://127.0.0.1:$plain$path"
done
load -c256 "http://127.0.0.1:$plain/small"
load -c64 "http://127.0.0.1:$logged/small"
load -c64 "https://127.0.0.1:$tls/small"
load -c64 "https://127.0.0.1:$tls/16k"
if command -v h2load >/dev/null 2>&1; then
  log "  h2load (h2c clients)"
  h2load -c16 -m16 -n 50000 "http://127.0.0.1:$plain/small" >/dev/null
  h2load -c16 -m16 -n 20000 "http://127.0.0.1:$plain/policies/small" >/dev/null
else
  log "  no h2load: h2c clients not trained"
fi
for p in "${pids[@]}"; do kill -TERM "$p"; done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
ls "$profiles"/*.profraw >/dev/null 2>&1 || { echo "bench/pgo-build.sh: no profile was written" >&2; exit 1; }
"$profdata" merge -o "$pgo/merged.profdata" "$profiles"/*.profraw
# Named by its content: cargo sees a new profile as a change of flags and
# rebuilds, where the same file name would leave the old build in place.
sum=$(sha256sum "$pgo/merged.profdata" | cut -c1-16)
rm -f "$pgo"/weir-*.profdata
mv "$pgo/merged.profdata" "$pgo/weir-$sum.profdata"

log "3/3 optimized build"
RUSTFLAGS="-Cprofile-use=$pgo/weir-$sum.profdata" cargo build --release --bin weir
log "done: $root/target/release/weir (profile: $pgo/weir-$sum.profdata)"
