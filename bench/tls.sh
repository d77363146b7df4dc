#!/usr/bin/env bash
# bench/tls.sh -- HTTPS (TLS 1.3) reverse-proxy benchmark: weir against NGINX
# on this machine, in the same minutes, under the rules of ../shared/bench
# (which has no TLS scenario): one worker each, the same origin
# (../shared/bench/upstream), wrk with keep-alive connections, interleaved
# rounds, medians. Loopback only.
#
#   bench/tls.sh > tls-report.md        # from the repository root
#
# Settings (environment): ROUNDS (5), DURATION seconds (5), CONNS (64),
# PATHS ("/small /16k"), WEIR_BIN (target/release/weir), SHARED (../shared).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SHARED:-$(cd "$root/.." && pwd)/shared}
rounds=${ROUNDS:-5}; duration=${DURATION:-5}; conns=${CONNS:-64}
paths=${PATHS:-"/small /16k"}
weir_bin=${WEIR_BIN:-$root/target/release/weir}
nginx_bin=${NGINX:-/usr/sbin/nginx}
# shellcheck source=/dev/null
. "$shared/bench/lib.sh"

for tool in wrk openssl "$nginx_bin" "$weir_bin"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/tls.sh: $tool not found" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/weir-tls-bench.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 100); do port_in_use "$1" && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }
log() { printf '[tls-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A throwaway CA and a P-256 certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/server.crt" 2>/dev/null
chmod 644 "$work"/*

origin=$(free_port)
"$shared/bench/upstream" "$origin" >"$work/origin.log" 2>&1 &
pids+=($!)
wait_port "$origin"

# NGINX: one worker, TLS 1.3 only, upstream keep-alive pool.
nginx_port=$(free_port)
mkdir -p "$work/nginx/logs" "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<CONF
$(nginx_user_line)
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    upstream origin {
        server 127.0.0.1:$origin;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }
    server {
        listen 127.0.0.1:$nginx_port ssl;
        ssl_certificate $work/server.crt;
        ssl_certificate_key $work/server.key;
        ssl_protocols TLSv1.3;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"$nginx_bin" -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" &
pids+=($!); nginx_pid=$!

# weir: one worker thread, TLS 1.3 only, HTTP/1.1 by ALPN (as wrk speaks).
weir_port=$(free_port)
# Like NGINX's keepalive_requests above: neither side cuts a client
# connection after a number of requests (weir's default is 1000, NGINX's
# too), so a run measures requests, not TLS handshakes.
cat >"$work/weir.yaml" <<CONF
runtime: { threads: 1 }
limits: { max_requests_per_connection: 100000000 }
listeners:
  - name: bench
    address: 127.0.0.1:$weir_port
    tls:
      certificates: [{ cert: $work/server.crt, key: $work/server.key }]
      min_version: "1.3"
      alpn: [http/1.1]
routes: [{ name: all, match: { path_prefix: / }, upstream: origin }]
upstreams:
  - name: origin
    targets: [{ address: 127.0.0.1:$origin }]
    keepalive: { max_idle: 256, idle_timeout: 60s }
CONF
"$weir_bin" run --config "$work/weir.yaml" --upgrade-socket "$work/weir.sock" >/dev/null 2>"$work/weir.log" &
pids+=($!); weir_pid=$!
wait_port "$nginx_port"; wait_port "$weir_port"
for p in "$nginx_port" "$weir_port"; do
  curl -sf --tlsv1.3 --cacert "$work/ca.crt" -o /dev/null "https://127.0.0.1:$p/small" ||
    { echo "bench/tls.sh: https://127.0.0.1:$p/small does not answer" >&2; exit 2; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
results="$work/results.tsv"
for round in $(seq 1 "$rounds"); do
  for path in $paths; do
    order="nginx weir"; [ $((round % 2)) = 0 ] && order="weir nginx"
    for proxy in $order; do
      if [ "$proxy" = nginx ]; then port=$nginx_port; pid=$nginx_pid; else port=$weir_port; pid=$weir_pid; fi
      # nginx's worker is a child of the master; count the whole group.
      if [ "$proxy" = nginx ]; then pid=$(pgrep -P "$nginx_pid" | head -1); fi
      wrk -t1 -c"$conns" -d1s "https://127.0.0.1:$port$path" >/dev/null 2>&1 || true
      before=$(cpu_ticks "$pid")
      out=$(wrk -t1 -c"$conns" -d"${duration}s" --latency "https://127.0.0.1:$port$path" 2>&1)
      after=$(cpu_ticks "$pid")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      errors=$(awk '/Non-2xx|Socket errors/ {n++} END {print n+0}' <<<"$out")
      total=$(awk '/requests in/ {print $1}' <<<"$out")
      cpu=$(python3 -c "print(($after-$before)/$hz)")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$path" "$proxy" "$rps" "$p99" "$cpu" "$total" "$errors" >>"$results"
      log "r$round $path $proxy: $rps req/s, p99 $p99, cpu ${cpu}s"
    done
  done
done

python3 - "$results" "$rounds" "$duration" "$conns" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
rounds, duration, conns = sys.argv[2], sys.argv[3], sys.argv[4]
def ms(v):
    v = v.strip()
    for suffix, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * f
    return float("nan")
print(f"## HTTPS (TLS 1.3) benchmark: weir vs NGINX\n")
print(f"wrk -t1 -c{conns}, {duration}s per run after a 1s warm-up, {rounds} interleaved rounds; one worker each; "
      "origin ../shared/bench/upstream; ECDSA P-256 certificate; medians over rounds; "
      "vs nginx = median of per-round ratios.\n")
print("| proxy | path | req/s | p99 ms | CPU s /100k req | errors | vs nginx req/s | CPU/req vs nginx |")
print("|---|---|--:|--:|--:|--:|--:|--:|")
by = {}
for r, path, proxy, rps, p99, cpu, total, errors in rows:
    by.setdefault((path, proxy), []).append((int(r), float(rps), ms(p99), float(cpu) / max(int(total), 1) * 1e5, int(errors)))
for path in sorted({k[0] for k in by}):
    ng = {r: (rps, cpu) for r, rps, _, cpu, _ in by[(path, "nginx")]}
    for proxy in ("nginx", "weir"):
        v = by[(path, proxy)]
        rps = statistics.median(x[1] for x in v)
        p99 = statistics.median(x[2] for x in v)
        cpu = statistics.median(x[3] for x in v)
        err = sum(x[4] for x in v)
        ratio = statistics.median(x[1] / ng[x[0]][0] for x in v)
        cratio = statistics.median(x[3] / ng[x[0]][1] for x in v)
        print(f"| {proxy} | {path} | {rps:.0f} | {p99:.2f} | {cpu:.2f} | {err} | {ratio:.2f} | {cratio:.2f} |")
print("\nreq/s each round:")
for (path, proxy), v in sorted(by.items()):
    print(f"- {proxy} {path}: " + " ".join(f"{x[1]:.0f}" for x in sorted(v)))
PY
