#!/usr/bin/env bash
# Benchmark of the cache fleet (issue #5), docs/fleet.md "Benchmark":
#   latency     5 `lode cache serve` processes on 127.0.0.2..6; Fetch latency of
#               512 KiB chunks healthy, with one node SIGSTOPped, healthy again;
#   throughput  one node against nginx serving the same shard files, wrk at
#               1/16/64 connections; node memory-resident and disk-demoted;
#   replay      skewed multi-image workload over simulated workers (in-process
#               fleet), hit shares per tier.
# Usage: bench/fleet.sh [all|latency|throughput|replay] [WORKDIR]   (root for drop_caches)
# BEFORE_LODE=path/to/lode adds, to throughput, a memory-resident and a
# disk-demoted node run by that binary (e.g. an older commit) in the same
# interleaved rounds.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
W=${2:-/var/tmp/lode-bench/fleet}
DUR=${DUR:-5s}
CHUNKS=${CHUNKS:-2000}
mkdir -p "$W"
cd "$here"

# The lode binary and the benchmark program; if the working tree does not
# build (someone's work in progress), build the last commit instead.
if ! { go build -o "$W/lode" ./cmd/lode && go build -o "$W/fleetbench" ./bench/fleet; } 2>"$W/build.log"; then
  echo "working tree does not build ($(head -1 "$W/build.log")); building HEAD $(git rev-parse --short HEAD)" >&2
  rm -rf "$W/src" && mkdir -p "$W/src"
  git archive HEAD | tar -x -C "$W/src"
  (cd "$W/src" && go build -o "$W/lode" ./cmd/lode && go build -o "$W/fleetbench" ./bench/fleet)
fi
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
  ROUNDS=${ROUNDS:-3}
  # Server CPU (user + system, in clock ticks) of the processes serving key:
  # a node, or nginx's workers.
  declare -A spid
  scpu() { local t=0 p ps=${spid[${1%-cold}]}; [[ ${1%-cold} == nginx ]] && ps=$(pgrep -P "$ps")
    for p in $ps; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
  one() { # key url conns -> appends "key conns req/s MB/s p50 p99 server-CPU-µs/request" to tput.txt
    local out rps tr c0 c1 n
    c0=$(scpu "$1")
    out=$(wrk -t$(($3 < 2 ? 1 : 2)) -c"$3" -d"$DUR" --latency -s "$W/paths.lua" "$2" -- "$www/paths.txt")
    c1=$(scpu "$1"); n=$(awk '/requests in/{print $1}' <<<"$out")
    echo "$out" >> "$W/wrk-$1-$3.txt"
    grep -qE 'Non-2xx|Socket errors' <<<"$out" && { echo "wrk errors against $2:" >&2; echo "$out" >&2; }
    rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
    tr=$(awk -v r="$rps" 'BEGIN{printf "%.0f", r*'"$shard"'/1e6}')
    echo "$1 $3 $rps $tr $(awk '$1=="50%"{print $2}' <<<"$out") $(awk '$1=="99%"{print $2}' <<<"$out") $(awk -v d=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')" >> "$W/tput.txt"
  }
  : > "$W/tput.txt"; rm -f "$W"/wrk-*.txt
  # Two nodes at once: one holding every shard in memory, one with 16 MiB of
  # memory so that almost every shard is demoted to its disk directory.
  "$L" cache serve --listen 127.0.0.1:7500 --mem 1GiB 2>"$W/node-mem.log" & pids+=($!); spid[mem]=$!
  "$L" cache serve --listen 127.0.0.1:7501 --mem 16MiB --disk "$W/nodedisk" --disk-size 2GiB 2>"$W/node-disk.log" & pids+=($!); spid[disk]=$!
  waitup 127.0.0.1:7500/healthz; waitup 127.0.0.1:7501/healthz
  "$B" -scenario=shards -nodes=127.0.0.1:7500 -chunks="${TPUT_CHUNKS:-400}" -www="$www"
  "$B" -scenario=shards -nodes=127.0.0.1:7501 -chunks="${TPUT_CHUNKS:-400}" -www="$W/www-copy" >/dev/null
  cmp -s "$www/paths.txt" "$W/www-copy/paths.txt" || { echo "the two nodes hold different shards" >&2; exit 1; }
  rm -rf "$W/www-copy"
  keys="mem nginx disk"
  if [[ -n ${BEFORE_LODE:-} ]]; then
    rm -rf "$W/nodedisk-before"
    "$BEFORE_LODE" cache serve --listen 127.0.0.1:7502 --mem 16MiB --disk "$W/nodedisk-before" --disk-size 2GiB 2>"$W/node-before.log" & pids+=($!); spid[disk-before]=$!
    "$BEFORE_LODE" cache serve --listen 127.0.0.1:7503 --mem 1GiB 2>"$W/node-mem-before.log" & pids+=($!); spid[mem-before]=$!
    waitup 127.0.0.1:7502/healthz; waitup 127.0.0.1:7503/healthz
    for port in 7502 7503; do
      "$B" -scenario=shards -nodes=127.0.0.1:$port -chunks="${TPUT_CHUNKS:-400}" -www="$W/www-copy" >/dev/null
      cmp -s "$www/paths.txt" "$W/www-copy/paths.txt" || { echo "the before node on $port holds different shards" >&2; exit 1; }
      rm -rf "$W/www-copy"
    done
    keys="mem mem-before nginx disk disk-before"
    echo "before: $BEFORE_LODE as a memory-resident node on 127.0.0.1:7503 and a disk-demoted one on 127.0.0.1:7502"
  fi
  nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" & pids+=($!); spid[nginx]=$!; waitup 127.0.0.1:7600/paths.txt
  shard=$(stat -c %s "$(find "$www/v1" -type f | head -1)")
  echo "$nshards shards of $shard bytes ($((nshards * shard >> 20)) MiB), a random one per request; $ROUNDS interleaved rounds of wrk -d $DUR per cell, median shown"
  for r in $(seq "$ROUNDS"); do
    for c in 1 16 64; do
      one mem http://127.0.0.1:7500 "$c"
      [[ -z ${BEFORE_LODE:-} ]] || one mem-before http://127.0.0.1:7503 "$c"
      one nginx http://127.0.0.1:7600 "$c"; one disk http://127.0.0.1:7501 "$c"
      [[ -z ${BEFORE_LODE:-} ]] || one disk-before http://127.0.0.1:7502 "$c"
    done
  done
  for c in 1 16 64; do
    drop; one nginx-cold http://127.0.0.1:7600 "$c"; drop; one disk-cold http://127.0.0.1:7501 "$c"
  done
  med() { awk -v k="$1" -v c="$2" -v f="$3" '$1==k && $2==c {print $f}' "$W/tput.txt" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  all() { awk -v k="$1" -v c="$2" '$1==k && $2==c {printf "%s%.0f", (n++ ? ", " : ""), $3}' "$W/tput.txt"; }
  # Ratios to nginx within each round (the machine's load changes between
  # rounds more than between neighbouring cells), and their median.
  rounds() { awk -v k="$1" -v c="$2" '$2==c && $1==k {a[++na]=$3} $2==c && $1=="nginx" {n[++nn]=$3}
    END {for (i = 1; i <= na && i <= nn; i++) printf "%s%.2f", (i > 1 ? ", " : ""), a[i]/n[i]}' "$W/tput.txt"; }
  rmed() { rounds "$1" "$2" | tr ',' '\n' | sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
  echo
  echo "| server | connections | req/s (median) | MB/s | p50 | p99 | all rounds req/s | ratio to nginx warm | per round | median per round | server CPU µs/request (median) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for k in $keys nginx-cold disk-cold; do
    case $k in
      disk-before) label="lode before, shards demoted to disk (page cache warm)";;
      mem-before) label="lode before, shards in memory";;
      mem) label="lode, shards in memory";; nginx) label="nginx, page cache warm";; disk) label="lode, shards demoted to disk (page cache warm)";;
      nginx-cold) label="nginx, page cache dropped before the run";; disk-cold) label="lode disk-demoted, page cache dropped before the run";;
    esac
    for c in 1 16 64; do
      rps=$(med "$k" "$c" 3); n=$(med nginx "$c" 3)
      printf '| %s | %s | %.0f | %s | %s | %s | %s | %.2f | %s | %s | %s |\n' "$label" "$c" "$rps" "$(med "$k" "$c" 4)" "$(med "$k" "$c" 5)" "$(med "$k" "$c" 6)" "$(all "$k" "$c")" "$(echo "$rps / $n" | bc -l)" "$(rounds "$k" "$c")" "$(rmed "$k" "$c")" "$(med "$k" "$c" 7)"
    done
  done
  cleanup
fi

if [[ $what == all || $what == replay ]]; then
  echo; echo "## replay: skewed workload over simulated workers"
  "$B" -scenario=replay ${REPLAY_FLAGS:-}
fi
