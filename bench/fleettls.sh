#!/usr/bin/env bash
# Benchmark of fleet authentication (issue #19), docs/benchmarks.md "Cache
# node with mutual TLS": one cache node with TLS (worker client certificates
# required) against nginx serving the same shard files with TLS and
# ssl_verify_client on (equal strength), and the same node without TLS, at
# 1/16/64 keep-alive connections, in interleaved rounds of the same run. The
# load client is bench/tlsload (Go; wrk cannot present a client certificate):
# one client for all three servers.
# Usage: bench/fleettls.sh [WORKDIR]   (needs nginx: apt-get install nginx-light)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/tmp/lode-bench/fleettls}
DUR=${DUR:-5s}
ROUNDS=${ROUNDS:-3}
CHUNKS=${TPUT_CHUNKS:-400}
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx-light)" >&2; exit 1; }
mkdir -p "$W"; cd "$here"
go build -o "$W/lode" ./cmd/lode
go build -o "$W/fleetbench" ./bench/fleet
go build -o "$W/tlsload" ./bench/tlsload
L="$W/lode"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
waitport() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg); $(go version | cut -d' ' -f3); $(nginx -v 2>&1 | cut -d' ' -f3); commit $(git rev-parse --short HEAD)"
rm -rf "$W/pki" "$W/www"; mkdir -p "$W/www" "$W/nginx"
"$L" cache certs --dir "$W/pki" --node node --hosts 127.0.0.1 >/dev/null
"$L" cache certs --dir "$W/pki" --worker bench >/dev/null
P="$W/pki"
"$L" cache serve --listen 127.0.0.1:7510 --mem 1GiB 2>"$W/node-plain.log" & pids+=($!)
"$L" cache serve --listen 127.0.0.1:7511 --mem 1GiB --tls-cert "$P/node.crt" --tls-key "$P/node.key" --tls-ca "$P/ca.crt" 2>"$W/node-tls.log" & pids+=($!)
waitport 7510; waitport 7511
"$W/fleetbench" -scenario=shards -nodes=127.0.0.1:7510 -chunks="$CHUNKS" -www="$W/www"
"$W/tlsload" -fill -url https://127.0.0.1:7511 -paths "$W/www/paths.txt" -www "$W/www" -cert "$P/bench.crt" -key "$P/bench.key" -ca "$P/ca.crt"
cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
daemon off;
events { worker_connections 4096; }
http {
  sendfile on; tcp_nopush on; access_log off;
  keepalive_requests 1000000; keepalive_timeout 120s;
  types {} default_type application/octet-stream;
  server {
    listen 127.0.0.1:7611 ssl; root $W/www;
    ssl_certificate $P/node.crt; ssl_certificate_key $P/node.key;
    ssl_client_certificate $P/ca.crt; ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
  }
}
CONF
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & pids+=($!); waitport 7611
shard=$(stat -c %s "$(find "$W/www/v1" -type f | head -1)")
echo "$((CHUNKS * 5)) shards of $shard bytes, a random one per request; $ROUNDS interleaved rounds of $DUR per cell, median shown"
tls=(-cert "$P/bench.crt" -key "$P/bench.key" -ca "$P/ca.crt")
: > "$W/tput.txt"
for r in $(seq "$ROUNDS"); do
  for c in 1 16 64; do
    echo "node-tls $("$W/tlsload" -url https://127.0.0.1:7511 -paths "$W/www/paths.txt" -c "$c" -d "$DUR" "${tls[@]}")" >> "$W/tput.txt"
    echo "nginx-tls $("$W/tlsload" -url https://127.0.0.1:7611 -paths "$W/www/paths.txt" -c "$c" -d "$DUR" "${tls[@]}")" >> "$W/tput.txt"
    echo "node-plain $("$W/tlsload" -url http://127.0.0.1:7510 -paths "$W/www/paths.txt" -c "$c" -d "$DUR")" >> "$W/tput.txt"
  done
done
grep -E ' [1-9][0-9]*$' "$W/tput.txt" && { echo "errors above (last column)" >&2; }
# Per round ratios (node-tls / nginx-tls, node-tls / node-plain), then medians.
awk -v rounds="$ROUNDS" '
  { k=$1; c=$2; n[k,c]++; v[k,c,n[k,c]]=$3; p50[k,c,n[k,c]]=$5; p99[k,c,n[k,c]]=$6 }
  function med(a, k, c, m,   i, j, t, x) { m = n[k,c]; for (i = 1; i <= m; i++) x[i] = a[k,c,i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return x[int((m + 1) / 2)] }
  END {
    print "| connections | node TLS req/s | nginx TLS req/s | node plain req/s | node TLS / nginx TLS (per round; median) | node TLS / node plain (median) | p50 / p99 µs node TLS | p50 / p99 µs nginx TLS |"
    print "|---|---|---|---|---|---|---|---|"
    split("1 16 64", cs, " ")
    for (ci = 1; ci <= 3; ci++) { c = cs[ci]; r = ""; delete rr
      for (i = 1; i <= n["node-tls",c]; i++) { rr[i] = v["node-tls",c,i] / v["nginx-tls",c,i]; r = r (i > 1 ? ", " : "") sprintf("%.2f", rr[i]); qq["q",c,i] = v["node-tls",c,i] / v["node-plain",c,i] }
      m = n["node-tls",c]; for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (rr[j] < rr[i]) { t = rr[i]; rr[i] = rr[j]; rr[j] = t }
      n["q",c] = m
      printf "| %s | %.0f | %.0f | %.0f | %s; **%.2f** | %.2f | %d / %d | %d / %d |\n", c, med(v,"node-tls",c), med(v,"nginx-tls",c), med(v,"node-plain",c), r, rr[int((m+1)/2)], med(qq,"q",c), med(p50,"node-tls",c), med(p99,"node-tls",c), med(p50,"nginx-tls",c), med(p99,"nginx-tls",c)
    }
  }' "$W/tput.txt"
