#!/usr/bin/env bash
# Issue #21, the serial chain of an unprofiled cold start, measured from the
# fetch trace (lode run --trace, internal/trace, bench/serial):
#   1. S3 store (versitygw) behind bench/latproxy at DELAY (default 36ms) per
#      request: python3 -c 'print(6*7)' from the Debian bookworm minbase+python3
#      image, built without (--no-start-set) and with the build-time start set
#      (--start-file /usr/bin/python3); interleaved cold starts (fresh L1 cache,
#      page cache dropped): time to first output, fetches and serial fetches
#      before the output, bytes fetched;
#   2. local: file store on local disk, the same image: a loop mount of its
#      ext4 + chroot, lode mount --background + chroot (no start set, start
#      set, recorded profile), lode agent mount + chroot (start set, cold
#      daemon); mount and exec times, bytes the kernel read from the loop
#      image and bytes lode fetched.
# Usage: bench/serial.sh [WORKDIR] [RUNS] [DELAY]   (root, FUSE, loop, runc)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/serial}
RUNS=${2:-5}
DELAY=${3:-36ms}
mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode && go build -o "$W/latproxy" ./bench/latproxy && go build -o "$W/serial" ./bench/serial)
(cd "$here" && .ci/s3.sh >/dev/null)
VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
TAR=${LODE_TOOLS:-$HOME/.cache/lode-tools}/debian-bookworm-minbase-python3.tar # lodetest.DebianRootfs
L="$W/lode"
export LODE_HOME="$W/home"
export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GWPORT=$(free_port); PXPORT=$(free_port)
mkdir -p "$W/gw/bench"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$VGW" --quiet --port "127.0.0.1:$GWPORT" posix "$W/gw" >"$W/gw.log" 2>&1 &
GW=$!
"$W/latproxy" -listen "127.0.0.1:$PXPORT" -target "http://127.0.0.1:$GWPORT" -delay "$DELAY" 2>>"$W/proxy.log" &
PX=$!
trap 'kill $PX $GW 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PXPORT/" && break; sleep 0.05; done
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { awk '{ v=$1; if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /µs$/) { sub(/µs$/,"",v); print v/1000 } else { sub(/s$/,"",v); print v*1000 } }'; }
[ -f "$LODE_HOME/keyring.json" ] || "$L" keys create --tenant default >/dev/null
S3DIRECT="s3://bench/serial?endpoint=http://127.0.0.1:$GWPORT&path_style=true"
S3="s3://bench/serial?endpoint=http://127.0.0.1:$PXPORT&path_style=true"
FILE="$W/store"
for st in "$S3DIRECT" "$FILE"; do
  "$L" --store "$st" build "rootfs:$TAR" --name py-plain --no-start-set --keep-image "$W/image.ext4" >/dev/null 2>&1
  "$L" --store "$st" build "rootfs:$TAR" --name py-start --start-file /usr/bin/python3 >/dev/null 2>&1
done
# A profiled image: the start set, then replaced by a recorded read order (lode run --record).
"$L" --store "$FILE" build "rootfs:$TAR" --name py-prof --start-file /usr/bin/python3 >/dev/null 2>&1
"$L" --store "$FILE" run py-prof --allow-store-secret --cache-dir "$W/rcache" --record \
  --entrypoint /usr/bin/python3 -- -c 'print(6*7)' >/dev/null 2>&1; rm -rf "$W/rcache"
echo "load: $(uptime | sed 's/.*load/load/')"

echo "== S3 + $DELAY per request: cold python3 start, $RUNS runs each, interleaved"
declare -A out ser fet byt
for i in $(seq "$RUNS"); do
  for img in py-plain py-start; do
    rm -rf "$W/cache"; drop
    o=$("$L" --store "$S3" run "$img" --allow-store-secret --cache-dir "$W/cache" --trace "$W/trace-$img-$i.jsonl" \
        --entrypoint /usr/bin/python3 -- -c 'print(6*7)' 2>&1 >/dev/null)
    out[$img]+="$(echo "$o" | sed -n 's/.*first output after \(.*\)$/\1/p' | ms) "
    byt[$img]+="$(echo "$o" | sed -n 's/.*fetched \(.*\) MiB in all.*/\1/p') "
    j=$("$W/serial" -json "$W/trace-$img-$i.jsonl")
    ser[$img]+="$(echo "$j" | sed 's/.*"serial":\([0-9]*\).*/\1/') "
    fet[$img]+="$(echo "$j" | sed 's/.*"fetches":\([0-9]*\).*/\1/') "
  done
done
for img in py-plain py-start; do
  echo "$img: first output $(median ${out[$img]}) ms, fetches $(median ${fet[$img]}), serial $(median ${ser[$img]}), fetched $(median ${byt[$img]}) MiB   (runs: ${out[$img]}ms; serial ${ser[$img]})"
done
echo "trace of the last start of each: $W/trace-py-plain-$RUNS.jsonl, $W/trace-py-start-$RUNS.jsonl (go run ./bench/serial FILE)"

echo "== local: file store, cold L1, page cache dropped, $RUNS runs each, interleaved"
now() { date +%s%N; }
PY=(/usr/bin/python3 -c 'print(6*7)')
mkdir -p "$W/mnt"
declare -A mt et rd
for i in $(seq "$RUNS"); do
  drop; t0=$(now); dev=$(losetup -f --show -r "$W/image.ext4"); r0=$(awk '{print $3}' "/sys/block/${dev#/dev/}/stat")
  mount -o ro,noload "$dev" "$W/mnt"; t1=$(now); chroot "$W/mnt" "${PY[@]}" >/dev/null; t2=$(now)
  rd[loop]+="$(awk -v r0="$r0" '{printf "%.1f", ($3-r0)*512/1048576}' "/sys/block/${dev#/dev/}/stat") "
  umount "$W/mnt"; losetup -d "$dev"
  mt[loop]+="$(( (t1-t0)/1000000 )) "; et[loop]+="$(( (t2-t1)/1000000 )) "
  for img in py-plain py-start py-prof; do
    rm -rf "$W/lcache"; drop; t0=$(now)
    "$L" --store "$FILE" mount -d "$img" "$W/mnt" --allow-store-secret --cache-dir "$W/lcache" >/dev/null; t1=$(now)
    chroot "$W/mnt" "${PY[@]}" >/dev/null; t2=$(now)
    "$L" umount "$W/mnt" >/dev/null 2>&1
    mt[$img]+="$(( (t1-t0)/1000000 )) "; et[$img]+="$(( (t2-t1)/1000000 )) "; rd[$img]+="$(du -sm "$W/lcache" | cut -f1) "
  done
  # lode agent mount: a daemon started cold (empty L1) before the timed mount.
  rm -rf "$W/acache"; sock="$W/agent.sock"
  "$L" --store "$FILE" agent --socket "$sock" --allow-store-secret --cache-dir "$W/acache" --state-dir "$W/astate" >"$W/agent.log" 2>&1 &
  apid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
  drop; t0=$(now); "$L" agent --socket "$sock" mount py-start "$W/mnt" >/dev/null; t1=$(now)
  chroot "$W/mnt" "${PY[@]}" >/dev/null; t2=$(now)
  "$L" agent --socket "$sock" umount "$W/mnt" >/dev/null; kill "$apid"; wait "$apid" 2>/dev/null || true
  mt[agent]+="$(( (t1-t0)/1000000 )) "; et[agent]+="$(( (t2-t1)/1000000 )) "; rd[agent]+="$(du -sm "$W/acache" | cut -f1) "
done
for k in loop py-plain py-start py-prof agent; do
  m=$(median ${mt[$k]}); e=$(median ${et[$k]})
  echo "$k: mount $m ms + exec $e ms = $((m+e)) ms; read/fetched $(median ${rd[$k]}) MiB   (mount ${mt[$k]}; exec ${et[$k]})"
done
echo "load: $(uptime | sed 's/.*load/load/')"
