#!/usr/bin/env bash
# Benchmark of the cache fleet (issue #5), docs/fleet.md "Benchmark":
#   latency     5 `lode cache serve` processes on 127.0.0.2..6; Fetch latency of
#               512 KiB chunks healthy, with one node SIGSTOPped, healthy again;
#   throughput  one node against nginx serving the same shard files, wrk at
#               1/16/64 connections; node memory-resident and disk-demoted;
#   replay      skewed multi-image workload over simulated workers (in-process
#               fleet), hit shares per tier.
# Usage: bench/fleet.sh [all|latency|throughput|replay] [WORKDIR]   (root for drop_caches)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
W=${2:-/var/tmp/lode-bench/fleet}
DUR=${DUR:-10s}
CHUNKS=${CHUNKS:-2000}
mkdir -p "$W"
cd "$here"

# The lode binary; if the working tree does not build (work in progress),
# build the last commit.
if ! go build -o "$W/lode" ./cmd/lode 2>"$W/build.log"; then
  echo "working tree does not build ($(head -1 "$W/build.log")); building HEAD $(git rev-parse --short HEAD)" >&2
  rm -rf "$W/src" && mkdir -p "$W/src"
  git archive HEAD | tar -x -C "$W/src"
  (cd "$W/src" && go build -o "$W/lode" ./cmd/lode)
fi
go build -o "$W/fleetbench" ./bench/fleet
L="$W/lode"; B="$W/fleetbench"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
waitup() { for _ in $(seq 100); do curl -sf "http://$1" >/dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; load $(cut -d' ' -f1-3 /proc/loadavg); $(go version | cut -d' ' -f3); commit $(git rev-parse --short HEAD)"

if [[ $what == all || $what == latency ]]; then
  echo; echo "## latency: 5 node processes, $CHUNKS chunks of 512 KiB (4+1)"
  nodes=()
  for i in 2 3 4 5 6; do
    "$L" cache serve --listen "127.0.0.$i:7431" --mem 1GiB 2>"$W/node$i.log" & pids+=($!)
    nodes+=("127.0.0.$i:7431")
  done
  for n in "${nodes[@]}"; do waitup "$n/healthz"; done
  "$B" -scenario=latency -nodes="$(IFS=,; echo "${nodes[*]}")" -chunks="$CHUNKS" -reads="${READS:-2000}" \
    -conc=1,8 -stop-pid="${pids[2]}" ${LATENCY_FLAGS:-}
  echo "(stopped node: 127.0.0.4, pid ${pids[2]})"
  cleanup
fi

if [[ $what == all || $what == throughput ]]; then
  echo; echo "## throughput: one node vs nginx, same shard files, wrk -d $DUR"
  www="$W/www"; rm -rf "$www" "$W/nodedisk"; mkdir -p "$www" "$W/nginx"
  cat > "$W/paths.lua" <<'LUA'
local n = 0
function setup(thread) n = n + 1; thread:set("id", n) end
function init(args)
  math.randomseed(id * 7919)
  paths = {}
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
function request() return wrk.format("GET", paths[math.random(#paths)]) end
LUA
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
  server { listen 127.0.0.1:7600; root $www; }
}
CONF
  nshards=$((${TPUT_CHUNKS:-400} * 5))
  bench() { # key label url
    local key=$1 label=$2 url=$3 c t out
    for c in 1 16 64; do
      t=$((c < 2 ? 1 : 2))
      out=$(wrk -t"$t" -c"$c" -d"$DUR" --latency -s "$W/paths.lua" "$url" -- "$www/paths.txt")
      echo "$out" > "$W/wrk-$label-$c.txt"
      rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
      tr=$(awk '/^Transfer\/sec/{print $2}' <<<"$out")
      p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
      errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd' ' || true)
      echo "| $label | $c | $rps | $tr | $p50 | $p99 | ${errs:-0} |"
      echo "$key $c $rps" >> "$W/tput.txt"
    done
  }
  : > "$W/tput.txt"
  "$L" cache serve --listen 127.0.0.1:7500 --mem 1GiB 2>"$W/node-tput.log" & pids+=($!); waitup 127.0.0.1:7500/healthz
  "$B" -scenario=shards -nodes=127.0.0.1:7500 -chunks="${TPUT_CHUNKS:-400}" -www="$www"
  nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & ngx=$!; pids+=($ngx); waitup 127.0.0.1:7600/paths.txt
  echo "$nshards shards of $(stat -c %s "$(find "$www/v1" -type f | head -1)") bytes, random path per request"
  echo
  echo "| server | connections | req/s | transfer/s | p50 | p99 | errors |"
  echo "|---|---|---|---|---|---|---|"
  bench mem "lode (memory)" "http://127.0.0.1:7500"
  bench nginx "nginx (page cache warm)" "http://127.0.0.1:7600"
  kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
  # The node again, with 16 MiB of memory: almost every shard is demoted to disk.
  "$L" cache serve --listen 127.0.0.1:7500 --mem 16MiB --disk "$W/nodedisk" --disk-size 2GiB 2>"$W/node-tput-disk.log" & pids[0]=$!; waitup 127.0.0.1:7500/healthz
  "$B" -scenario=shards -nodes=127.0.0.1:7500 -chunks="${TPUT_CHUNKS:-400}" -www="$www" >/dev/null
  bench disk "lode (disk-demoted, page cache warm)" "http://127.0.0.1:7500"
  for label in nginx lode; do
    url=http://127.0.0.1:7600; [[ $label == lode ]] && url=http://127.0.0.1:7500
    for c in 1 16 64; do
      drop
      out=$(wrk -t$((c < 2 ? 1 : 2)) -c"$c" -d"$DUR" --latency -s "$W/paths.lua" "$url" -- "$www/paths.txt")
      echo "| $label cold (drop_caches first) | $c | $(awk '/^Requests\/sec/{print $2}' <<<"$out") | $(awk '/^Transfer\/sec/{print $2}' <<<"$out") | $(awk '$1=="50%"{print $2}' <<<"$out") | $(awk '$1=="99%"{print $2}' <<<"$out") | |"
    done
  done
  echo
  for c in 1 16 64; do
    m=$(awk -v c=$c '$1=="mem" && $2==c {print $3}' "$W/tput.txt")
    d=$(awk -v c=$c '$1=="disk" && $2==c {print $3}' "$W/tput.txt")
    n=$(awk -v c=$c '$1=="nginx" && $2==c {print $3}' "$W/tput.txt")
    printf 'connections %s: lode memory / nginx = %.2f, lode disk-demoted / nginx = %.2f (goal >= 0.8)\n' "$c" "$(echo "$m / $n" | bc -l)" "$(echo "$d / $n" | bc -l)"
  done
  cleanup
fi

if [[ $what == all || $what == replay ]]; then
  echo; echo "## replay: skewed workload over simulated workers"
  "$B" -scenario=replay ${REPLAY_FLAGS:-}
fi
