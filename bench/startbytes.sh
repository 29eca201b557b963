#!/usr/bin/env bash
# Bytes per start (issue #22): the bytes a cold `lode run` fetches for
# `python3 -c 'print(6*7)'` on the Debian bookworm minbase + python3 rootfs
# (lodetest.DebianRootfs's cached tar), for each build MODE, over a file
# store and over S3 (versitygw on 127.0.0.1, no added latency), all in one
# run, the modes and stores interleaved; every start cold (new cache dir,
# page cache dropped). Also: the image's stored bytes, its build (wall and
# CPU seconds of lode build into a new file store, the modes interleaved)
# and the CPU seconds of one start (user+sys of lode run and the container,
# /usr/bin/time), medians of RUNS.
# MODES (default "old-raw old-zstd aligned-raw default"): old = `lode
# build --align=false`, aligned = `--align`; raw = `--compress none`, zstd =
# `--compress zstd`; default = no flags (aligned-zstd since issue #22);
# chunk256 = aligned-zstd at --chunk-size 262144. The other modes' flags
# are explicit, so the script measures the same whatever the defaults are.
# The cold start's reads include lode run's read-ahead (default 4) and any
# startup profile the build wrote (as a user's start would).
# Usage: bench/startbytes.sh [WORKDIR] [RUNS] [MODES]
#        (root, FUSE, runc; .ci/s3.sh builds versitygw)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/startbytes}
RUNS=${2:-5}
MODES=${3:-"old-raw old-zstd aligned-raw default"}
TAR=${LODE_TOOLS:-$HOME/.cache/lode-tools}/debian-bookworm-minbase-python3.tar
[ -f "$TAR" ] || { echo "no $TAR: go test ./internal/build -run Debian makes it (lodetest.DebianRootfs)" >&2; exit 1; }
rm -rf "$W" && mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
(cd "$here" && .ci/s3.sh >/dev/null)
VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
L="$W/lode"
export LODE_HOME="$W/home"
export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
"$L" keys create >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GWPORT=$(free_port)
mkdir -p "$W/gw/bench" # versitygw's posix backend: a directory is a bucket
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$VGW" --quiet --port "127.0.0.1:$GWPORT" posix "$W/gw" >"$W/gw.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$GWPORT/" && break; sleep 0.05; done
store() { # store KIND MODE
  case $1 in
    file) echo "file://$W/st-$2" ;;
    s3) echo "s3://bench/$2?endpoint=http://127.0.0.1:$GWPORT&path_style=true" ;;
  esac
}
flags() {
  case $1 in
    old-raw) echo --align=false --compress none ;;
    old-zstd) echo --align=false --compress zstd ;;
    aligned-raw) echo --align --compress none ;;
    aligned-zstd) echo --align --compress zstd ;;
    default) echo ;; # lode build's defaults (aligned, zstd since issue #22)
    chunk256) echo --align --compress zstd --chunk-size 262144 ;;
    *) echo "unknown mode $1" >&2; exit 1 ;;
  esac
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -n | awk '{ v[NR]=$1 } END { print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2) }'; }
mib() { awk '{ v=$1; u=$2; m=(u=="B")?1/1048576:(u=="KiB")?1/1024:(u=="MiB")?1:(u=="GiB")?1024:0; printf "%.1f\n", v*m }'; }
ms() { awk '{ v=$1; if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /µs$/) { sub(/µs$/,"",v); print v/1000 } else { sub(/s$/,"",v); print v*1000 } }'; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); commit $(cd "$here" && git rev-parse --short HEAD); $RUNS cold starts per cell, medians"
declare -A bsecs bcpu bytes outms cpu
for m in $MODES; do
  for k in file s3; do
    "$L" --store "$(store $k "$m")" build "rootfs:$TAR" --name deb $(flags "$m") >"$W/build-$m-$k.log" 2>&1
  done
done
for i in $(seq "$RUNS"); do
  for m in $MODES; do
    rm -rf "$W/st-build"; drop
    t0=$(date +%s.%N)
    /usr/bin/time -f 'cpu %U %S' -o "$W/time" "$L" --store "file://$W/st-build" build "rootfs:$TAR" --name deb $(flags "$m") >/dev/null 2>&1
    bsecs[$m]+="$(echo "$(date +%s.%N) - $t0" | bc -l) "
    bcpu[$m]+="$(awk '/^cpu/ { print $2+$3 }' "$W/time") "
  done
done
rm -rf "$W/st-build"
for i in $(seq "$RUNS"); do
  for m in $MODES; do
    for k in file s3; do
      rm -rf "$W/cache"; drop
      /usr/bin/time -f 'cpu %U %S' -o "$W/time" "$L" --store "$(store $k "$m")" run deb --cache-dir "$W/cache" --allow-store-secret \
        --entrypoint /usr/bin/python3 -- -c 'print(6*7)' >"$W/out" 2>"$W/err"
      grep -qx 42 "$W/out" || { echo "start $m $k printed $(cat "$W/out")" >&2; cat "$W/err" >&2; exit 1; }
      cat "$W/err" >>"$W/runs.log"
      bytes[$m-$k]+="$(sed -n 's/.*fetched \([0-9.]*\) \([KMG]*i*B\) in all.*/\1 \2/p' "$W/err" | mib) "
      outms[$m-$k]+="$(sed -n 's/.*first output after \(.*\)$/\1/p' "$W/err" | ms) "
      cpu[$m-$k]+="$(awk '/^cpu/ { print $2+$3 }' "$W/time") "
    done
  done
done
med() { printf '%s\n' $1 | median; }
echo
echo "| mode | flags | stored MiB | build s (wall / CPU) | fetched MiB before exit, file store | fetched MiB, S3 | first output ms (file / s3) | CPU s per start (file / s3) |"
echo "|---|---|---|---|---|---|---|---|"
for m in $MODES; do
  stored=$(du -sb "$W/st-$m" | awk '{ printf "%.1f", $1/1048576 }')
  printf "| %s | %s | %s | %.2f / %.2f | %s | %s | %.0f / %.0f | %.2f / %.2f |\n" "$m" "$(flags "$m")" "$stored" \
    "$(med "${bsecs[$m]}")" "$(med "${bcpu[$m]}")" "$(med "${bytes[$m-file]}")" "$(med "${bytes[$m-s3]}")" \
    "$(med "${outms[$m-file]}")" "$(med "${outms[$m-s3]}")" "$(med "${cpu[$m-file]}")" "$(med "${cpu[$m-s3]}")"
done
echo "# load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
