#!/usr/bin/env bash
# Benchmark of issue #8's startup profile and chunk compression:
#   1. time to first exec and to the program's first output, cold (fresh L1
#      disk cache, page cache dropped), without and with the image's startup
#      profile (lode run --no-prefetch vs lode run), RUNS runs each, medians,
#      with the origin an S3 server (versitygw) behind an HTTP proxy that adds
#      DELAYS (default 2, 5, 10 ms, and 36 ms: the paper's S3 median) to
#      every request;
#   2. the same image built with --compress zstd (both --align=false, as in
#      issue #8's run; bench/startbytes.sh measures the defaults): stored bytes, bytes fetched
#      per start and start time (at 5 ms), without and with its profile;
#   3. heatmaps of the image (inspect --heatmap, and a cold run by tier).
# The start is python3 importing a few dozen stdlib modules (so it reads many
# chunks); the image is lode's demo sample with a 1 GiB payload it never reads.
# Usage: bench/profile.sh [WORKDIR] [RUNS] [DELAYS]
#        (root, FUSE, loop devices, runc, s3cmd; .ci/s3.sh builds versitygw)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/profile}
RUNS=${2:-5}
DELAYS=${3:-"2ms 5ms 10ms 36ms"}
mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode && go build -o "$W/latproxy" ./bench/latproxy)
(cd "$here" && .ci/s3.sh >/dev/null)
VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
L="$W/lode"
export LODE_HOME="$W/home"
export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GWPORT=$(free_port); PXPORT=$(free_port)
mkdir -p "$W/gw"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$VGW" --quiet --port "127.0.0.1:$GWPORT" posix "$W/gw" >"$W/gw.log" 2>&1 &
GW=$!
PX=
proxy() { # proxy DELAY: (re)start the latency proxy
  if [ -n "$PX" ]; then kill "$PX"; wait "$PX" 2>/dev/null || true; fi
  "$W/latproxy" -listen "127.0.0.1:$PXPORT" -target "http://127.0.0.1:$GWPORT" -delay "$1" 2>>"$W/proxy.log" &
  PX=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PXPORT/" && return; sleep 0.05; done
}
trap 'kill $PX $GW 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$GWPORT/" && break; sleep 0.05; done
mkdir -p "$W/gw/bench"   # versitygw's posix backend: a directory is a bucket
store() { echo "s3://bench/$1?endpoint=http://127.0.0.1:$PXPORT&path_style=true"; }
RAW=$(store raw); ZST=$(store zstd)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

proxy 0s
# lode demo writes the sample (and builds it with lode build's defaults into
# a scratch store); both images here are built in the layout of issue #8's
# run (--align=false), raw against zstd, whatever the defaults are.
if [ -z "$(ls -d "$LODE_HOME"/demo/sample-*/ 2>/dev/null)" ]; then
  "$L" --store "file://$W/demo-store" demo --no-run --payload $((1<<30)) >/dev/null
fi
SRC="oci:$(ls -d "$LODE_HOME"/demo/sample-*/ | head -1)"
build_demo() { # build_demo STORE COMPRESS
  if ! "$L" --store "$1" images 2>/dev/null | grep -q lode-demo; then
    "$L" --store "$1" build "${SRC%/}:sample" --name lode-demo --align=false --compress "$2" >/dev/null
  fi
}
build_demo "$RAW" none
build_demo "$ZST" zstd

# Two starts, each with its own profile (an image has one): python3
# importing ~40 stdlib modules (CPU-heavy), and a shell reading the Python
# stdlib's sources (I/O-heavy, like an app loading its code or a model).
PY='import json, email.parser, email.message, http.client, asyncio, argparse, logging, unittest, decimal, urllib.request, csv, difflib, tarfile, zipfile, configparser, dataclasses, typing, inspect, xml.etree.ElementTree, html.parser, pydoc, hashlib, socket, subprocess, threading, concurrent.futures, statistics, fractions, textwrap, string, shutil, tempfile, pathlib, pickle, base64, uuid, random, datetime, calendar; print("ready", flush=True)'
SH='cat /usr/lib/python3.11/*.py /usr/lib/python3.11/*/*.py /usr/lib/python3.11/*/*/*.py /usr/lib/python3.11/*/*/*/*.py >/dev/null 2>&1; echo ready'
workload() { # workload NAME: the run arguments of that start
  case $1 in
    python-imports) echo /usr/bin/python3; echo -c; echo "$PY" ;;
    read-sources) echo /bin/sh; echo -c; echo "$SH" ;;
  esac
}
WL=python-imports
start() { # start STORE [FLAGS...]: one cold start of $WL; prints "first_exec_ms first_output_ms fetched"
  local st=$1; shift
  local -a w; mapfile -t w < <(workload "$WL")
  rm -rf "$W/cache"; drop
  local out
  out=$("$L" --store "$st" run lode-demo --cache-dir "$W/cache" "$@" --entrypoint "${w[0]}" -- "${w[1]}" "${w[2]}" 2>&1 >/dev/null)
  echo "$out" >>"$W/runs.log"
  ms() { awk '{ v=$1; if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /µs$/) { sub(/µs$/,"",v); print v/1000 } else { sub(/s$/,"",v); print v*1000 } }'; }
  local fe fo fetched
  fe=$(echo "$out" | sed -n 's/.*first exec after \([^,]*\),.*/\1/p' | ms)
  fo=$(echo "$out" | sed -n 's/.*first output after \(.*\)$/\1/p' | ms)
  fetched=$(echo "$out" | sed -n 's/.*fetched \(.*\) in all.*/\1/p' | tr -d ' ')
  echo "$fe $fo $fetched"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { printf '%s\n' "${@:2}" | awk -v c="$1" '{print $c}' | median; }
record() { # record STORE: record $WL's profile (at the current latency); prints its size
  rm -rf "$W/cache"; drop
  local -a w; mapfile -t w < <(workload "$WL")
  "$L" --store "$1" run lode-demo --cache-dir "$W/cache" --record --no-prefetch --entrypoint "${w[0]}" -- "${w[1]}" "${w[2]}" 2>&1 >/dev/null |
    sed -n 's/.*recorded a startup profile of \([0-9]*\) chunks.*/\1/p'
}

size=$("$L" --store "$RAW" inspect lode-demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["image_size"])')
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg); image $((size>>20)) MiB ext4; $RUNS cold runs each, medians"
for WL in read-sources python-imports; do
  proxy 5ms
  hints=$(record "$RAW")
  echo
  echo "start: $WL (profile: $hints chunks)"
  echo
  echo "| origin latency per request | first exec, no profile | first exec, profile | first output, no profile | first output, profile | speed-up to first output | fetched (no profile / profile) |"
  echo "|---|---|---|---|---|---|---|"
  for d in $DELAYS; do
    proxy "$d"
    a=(); b=()
    for i in $(seq "$RUNS"); do
      a+=("$(start "$RAW" --no-prefetch)")
      b+=("$(start "$RAW")")
    done
    fea=$(col 1 "${a[@]}"); feb=$(col 1 "${b[@]}"); foa=$(col 2 "${a[@]}"); fob=$(col 2 "${b[@]}")
    fa=$(printf '%s\n' "${a[@]}" | tail -1 | awk '{print $3}'); fb=$(printf '%s\n' "${b[@]}" | tail -1 | awk '{print $3}')
    printf "| %s | %.0f ms | %.0f ms | %.0f ms | %.0f ms | %.2f× | %s / %s |\n" "$d" "$fea" "$feb" "$foa" "$fob" "$(echo "$foa / $fob" | bc -l)" "$fa" "$fb"
  done
done
echo
proxy 5ms
raw_bytes=$(du -sb "$W/gw/bench/raw" | cut -f1); zst_bytes=$(du -sb "$W/gw/bench/zstd" | cut -f1)
record "$ZST" >/dev/null
record "$RAW" >/dev/null
ra=(); rb=(); za=(); zb=()
for i in $(seq "$RUNS"); do
  ra+=("$(start "$RAW" --no-prefetch)")
  rb+=("$(start "$RAW")")
  za+=("$(start "$ZST" --no-prefetch)")
  zb+=("$(start "$ZST")")
done
echo
echo "start: $WL, 5 ms origin"
echo
echo "| image | stored (du of the store) | fetched per start | first output, no profile | first output, profile |"
echo "|---|---|---|---|---|"
printf "| raw | %s MiB | %s | %.0f ms | %.0f ms |\n" "$((raw_bytes>>20))" "$(printf '%s\n' "${ra[@]}" | tail -1 | awk '{print $3}')" "$(col 2 "${ra[@]}")" "$(col 2 "${rb[@]}")"
printf "| zstd | %s MiB | %s | %.0f ms | %.0f ms |\n" "$((zst_bytes>>20))" "$(printf '%s\n' "${za[@]}" | tail -1 | awk '{print $3}')" "$(col 2 "${za[@]}")" "$(col 2 "${zb[@]}")"

# Pictures.
"$L" --store "$RAW" inspect lode-demo --heatmap "$W/heatmap-state.svg" >/dev/null
rm -rf "$W/cache"; drop
"$L" --store "$RAW" run lode-demo --cache-dir "$W/cache" --no-prefetch --heatmap "$W/heatmap-run.svg" --entrypoint /usr/bin/python3 -- -c "$PY" >/dev/null 2>&1
echo
echo "heatmaps: $W/heatmap-state.svg $W/heatmap-run.svg"
