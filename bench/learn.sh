#!/usr/bin/env bash
# Benchmark of issue #21's learned startup profiles: is a profile the workers
# learned by themselves as good as one `lode run --record` wrote?
# Cold starts of `python3 -c 'print(6*7)'` on the Debian bookworm minbase +
# python3 image (lodetest.DebianRootfs), from nothing local to the output:
# fresh worker cache, page cache dropped, S3 origin (versitygw) behind
# bench/latproxy adding DELAY to every request. Three kinds, interleaved,
# RUNS each, medians:
#   none     lode run --no-prefetch (no profile at all)
#   record   an image whose manifest hints came from one lode run --record
#   learned  an image whose learned profile came from LEARN cold starts
#            (--learn-profile, the default), published through the store
# The timed runs use --learn-profile=false so that the profile is fixed.
# Usage: bench/learn.sh [WORKDIR] [RUNS] [DELAY] [LEARN]
#        (root, FUSE, loop devices, runc; .ci/s3.sh builds versitygw)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/learn}
RUNS=${2:-5}
DELAY=${3:-36ms}
LEARN=${4:-3}
TAR=${LODE_DEBIAN_TAR:-$HOME/.cache/lode-tools/debian-bookworm-minbase-python3.tar}
mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode && go build -o "$W/latproxy" ./bench/latproxy)
(cd "$here" && .ci/s3.sh >/dev/null)
VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
L="$W/lode"
export LODE_HOME="$W/home"
export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GWPORT=$(free_port); PXPORT=$(free_port)
rm -rf "$W/gw" "$LODE_HOME"; mkdir -p "$W/gw/bench"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$VGW" --quiet --port "127.0.0.1:$GWPORT" posix "$W/gw" >"$W/gw.log" 2>&1 &
GW=$!
"$W/latproxy" -listen "127.0.0.1:$PXPORT" -target "http://127.0.0.1:$GWPORT" -delay "$DELAY" 2>>"$W/proxy.log" &
PX=$!
trap 'kill $PX $GW 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for p in $GWPORT $PXPORT; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
done
ST="s3://bench/learn?endpoint=http://127.0.0.1:$PXPORT&path_style=true"
lode() { "$L" --store "$ST" "$@"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

lode keys create >/dev/null
lode build "rootfs:$TAR" --name py-learned >/dev/null
lode build "rootfs:$TAR" --name py-record >/dev/null
RUN=(--allow-store-secret --entrypoint /usr/bin/python3 -- -c 'print(6*7)')
start() { # start IMAGE [FLAGS...]: one cold start; prints "first_output_ms prefetched"
  local im=$1; shift
  rm -rf "$W/cache"; drop
  local out
  out=$(lode run "$im" --cache-dir "$W/cache" "$@" "${RUN[@]}" 2>&1 >/dev/null)
  echo "$out" >>"$W/runs.log"
  local fo pf
  fo=$(echo "$out" | sed -n 's/.*first output after \(.*\)$/\1/p' |
    awk '{ v=$1; if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /µs$/) { sub(/µs$/,"",v); print v/1000 } else { sub(/s$/,"",v); print v*1000 } }')
  pf=$(echo "$out" | sed -n 's/.*; \([0-9]*\) prefetched$/\1/p')
  echo "$fo ${pf:-0}"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { printf '%s\n' "${@:2}" | awk -v c="$1" '{print $c}' | median; }

start py-record --record --no-prefetch --learn-profile=false >/dev/null
for _ in $(seq "$LEARN"); do start py-learned --no-prefetch >/dev/null; done
rec=$(lode inspect py-record --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["start_set_chunks"])')
lrn=$(lode inspect py-learned | sed -n 's/^learned profile: *//p')
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $DELAY per request; $RUNS cold runs each, interleaved, medians"
echo "record profile: $rec chunks; learned profile: $lrn"
a=(); b=(); c=()
for _ in $(seq "$RUNS"); do
  a+=("$(start py-learned --no-prefetch --learn-profile=false)")
  b+=("$(start py-record --learn-profile=false)")
  c+=("$(start py-learned --learn-profile=false)")
done
n=$(col 1 "${a[@]}"); r=$(col 1 "${b[@]}"); l=$(col 1 "${c[@]}")
echo
echo "| delay | no profile | --record profile | learned profile | learned / record | no profile / learned |"
echo "|---|---|---|---|---|---|"
printf "| %s | %.0f ms | %.0f ms (%s prefetched) | %.0f ms (%s prefetched) | %.2f | %.2f× |\n" "$DELAY" "$n" "$r" "$(col 2 "${b[@]}")" "$l" "$(col 2 "${c[@]}")" "$(echo "$l / $r" | bc -l)" "$(echo "$n / $l" | bc -l)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
