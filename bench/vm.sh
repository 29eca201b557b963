#!/usr/bin/env bash
# Benchmark of issue #10: a QEMU microvm (TCG) booting lode's demo image
# (Debian userland + python3, and a payload it never reads) and running
# python3, with the same kernel, the same initramfs (lode vm builds it) and the
# same command, its root disk served by:
#   file        QEMU reading the ext4 image from a local file (no server)
#   nbdkit      nbdkit's file plugin on the same local file (the NBD reference)
#   nbdkit+5ms  the same with nbdkit's delay filter adding 5 ms to each read
#   qsd         qemu-storage-daemon exporting the file as vhost-user-blk
#   lode vhost  lode serve-vhost (vhost-user-blk through the worker's tiers,
#               empty L1 cache, file store), booted with --disk vhost-user:
#   lode cold   lode vm: in-process NBD export of the image through the
#               worker's tiers, empty L1 cache, file store
#   lode warm   the same with the L1 disk cache holding what the boot reads
#               (page cache dropped: lode reads, verifies, decrypts from disk)
#   lode+5ms    cold, the origin an S3 server (versitygw) behind an HTTP proxy
#               adding 5 ms to each request (skipped without versitygw)
# Page caches are dropped before every boot. Reported: the median over RUNS of
# the time from QEMU's start to the guest's init and to the command's exit, the
# bytes the guest read (lode's export counts them; nbdkit's stats filter for
# nbdkit), and the bytes lode fetched from its tiers.
# Usage: bench/vm.sh [WORKDIR] [RUNS] [PAYLOAD_BYTES]
#        (root, qemu-system-x86, linux-image-cloud-amd64, busybox-static, nbdkit)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/vm}
RUNS=${2:-3}
PAYLOAD=${3:-$((1<<30))}
mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode && go build -o "$W/latproxy" ./bench/latproxy)
L="$W/lode"
export LODE_HOME="$W/home"
IMG="$W/image.ext4"
if ! "$L" images 2>/dev/null | grep -q lode-demo || [ ! -f "$IMG" ]; then
  rm -rf "$LODE_HOME"
  "$L" demo --no-run --payload "$PAYLOAD" --keep-image "$IMG" >/dev/null
fi
size=$(stat -c %s "$IMG")
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
PY='import json, sys; print(json.dumps({"python": sys.version.split()[0]}))'
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
waitsock() { for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))" "$W/report.json" "$1"; }
origin() { python3 -c "import json,sys; print((json.load(open(sys.argv[1])).get('tier_bytes') or {}).get('origin', 0))" "$W/report.json"; }

declare -A INIT EXIT READ FETCH ORIG
boot() { # boot LABEL [LODE VM FLAGS...]: one boot; records its figures under LABEL
  local label=$1; shift
  "$L" vm lode-demo --report "$W/report.json" "$@" --entrypoint /usr/bin/python3 -- -c "$PY" >>"$W/guest.log" 2>>"$W/runs.log"
  INIT[$label]+="$(field init_ms) "; EXIT[$label]+="$(field exit_ms) "
  READ[$label]=$(field guest_read_bytes); FETCH[$label]=$(field fetched_bytes); ORIG[$label]=$(origin)
}
nbdkit_boot() { # nbdkit_boot LABEL [--filter=F PARAM=VALUE]
  local label=$1 filter=${2:-} param=${3:-}
  rm -f "$W/nbdkit.sock" "$W/nbdkit.stats"
  # shellcheck disable=SC2086 # filter and param are one word or empty
  nbdkit --foreground --readonly --unix "$W/nbdkit.sock" --filter=stats $filter file "$IMG" statsfile="$W/nbdkit.stats" $param &
  local pid=$!; PIDS+=("$pid"); waitsock "$W/nbdkit.sock"
  boot "$label" --disk "nbd+unix:///?socket=$W/nbdkit.sock"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # "read: N ops, T s, 9.87 MiB, …"
  READ[$label]=$(awk '/^read:/ { u=$7; sub(",", "", u); m = u=="KiB" ? 1024 : u=="MiB" ? 1048576 : u=="GiB" ? 1073741824 : 1; printf "%d", $6*m; exit }' "$W/nbdkit.stats")
}
qsd_boot() {
  rm -f "$W/qsd.sock"
  qemu-storage-daemon --blockdev "driver=file,node-name=file,filename=$IMG,read-only=on" \
    --export "type=vhost-user-blk,id=exp,node-name=file,addr.type=unix,addr.path=$W/qsd.sock,writable=off" &
  local pid=$!; PIDS+=("$pid"); waitsock "$W/qsd.sock"
  boot qsd --disk "vhost-user:$W/qsd.sock"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
lode_vhost_boot() { # lode_vhost_boot LABEL CACHEDIR [SERVE-VHOST FLAGS...]
  local label=$1 cache=$2; shift 2
  rm -f "$W/lode.vhost"
  "$L" serve-vhost lode-demo --socket "$W/lode.vhost" --cache-dir "$cache" --report "$W/vhost.json" "$@" 2>>"$W/runs.log" &
  local pid=$!; PIDS+=("$pid"); waitsock "$W/lode.vhost"
  boot "$label" --disk "vhost-user:$W/lode.vhost"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  # serve-vhost, not the VM, knows what the export read and fetched.
  READ[$label]=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('guest_read_bytes', 0))" "$W/vhost.json")
  FETCH[$label]=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('fetched_bytes', 0))" "$W/vhost.json")
  ORIG[$label]=$(python3 -c "import json,sys; print((json.load(open(sys.argv[1])).get('tier_bytes') or {}).get('origin', 0))" "$W/vhost.json")
}

# The 5 ms origin: the image built into versitygw's S3, behind latproxy.
VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
S3=
if [ -x "$VGW" ]; then
  export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  GWPORT=$(free_port); PXPORT=$(free_port)
  mkdir -p "$W/gw/bench"
  ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    "$VGW" --quiet --port "127.0.0.1:$GWPORT" posix "$W/gw" >"$W/gw.log" 2>&1 &
  PIDS+=($!)
  "$W/latproxy" -listen "127.0.0.1:$PXPORT" -target "http://127.0.0.1:$GWPORT" -delay 5ms 2>>"$W/proxy.log" &
  PIDS+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PXPORT/" && break; sleep 0.05; done
  S3="s3://bench/vm?endpoint=http://127.0.0.1:$PXPORT&path_style=true"
  if ! "$L" --store "$S3" images 2>/dev/null | grep -q lode-demo; then
    SRC="oci:$(ls -d "$LODE_HOME"/demo/sample-*/ | head -1)"
    "$L" --store "$S3" build "$SRC" --name lode-demo >/dev/null 2>&1 ||
      "$L" --store "$S3" build "${SRC%/}:latest" --name lode-demo >/dev/null
  fi
fi

: >"$W/runs.log"; : >"$W/guest.log"
for i in $(seq "$RUNS"); do
  drop; boot file --disk "file:$IMG"
  drop; nbdkit_boot nbdkit
  drop; nbdkit_boot nbdkit+5ms --filter=delay rdelay=5ms
  drop; qsd_boot
  rm -rf "$W/cachev"; drop; lode_vhost_boot "lode vhost cold" "$W/cachev"
  drop; lode_vhost_boot "lode vhost warm" "$W/cachev"
  rm -rf "$W/cache"; drop; boot "lode cold" --cache-dir "$W/cache"
  drop; boot "lode warm" --cache-dir "$W/cache"
  if [ -n "$S3" ]; then
    rm -rf "$W/cache5"; drop; boot "lode+5ms" --store "$S3" --cache-dir "$W/cache5"
    rm -rf "$W/cachev5"; drop; lode_vhost_boot "lode vhost+5ms" "$W/cachev5" --store "$S3"
  fi
done
grep -q '"python": "3' "$W/guest.log" || { echo "the guest did not print python's version" >&2; exit 1; }

median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mib() { if [ -n "$1" ] && [ "$1" != 0 ]; then echo "$1" | awk '{printf "%.1f MiB", $1/1048576}'; else echo "–"; fi; }
ref=$(median "${EXIT[nbdkit]}")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') TCG, kernel $(basename "$(ls /boot/vmlinuz-*-cloud-amd64 | tail -1)"); image $((size>>20)) MiB ext4"
echo
echo "| root disk served by (median of $RUNS) | guest init | command exit | vs nbdkit | guest read | lode fetched (all tiers) | of which origin | fetched / read |"
echo "|---|---|---|---|---|---|---|---|"
for label in file nbdkit nbdkit+5ms qsd "lode cold" "lode warm" "lode+5ms" "lode vhost cold" "lode vhost warm" "lode vhost+5ms"; do
  [ -n "${EXIT[$label]:-}" ] || continue
  e=$(median "${EXIT[$label]}"); n=$(median "${INIT[$label]}")
  r=${READ[$label]:-}; f=${FETCH[$label]:-}
  ratio="–"; if [ -n "$f" ] && [ "$f" != 0 ] && [ -n "$r" ] && [ "$r" != 0 ]; then ratio=$(echo "$f / $r" | bc -l | xargs printf '%.2f×'); fi
  o="–"; if [ -n "$f" ] && [ "$f" != 0 ]; then o=$(mib "${ORIG[$label]}"); [ "${ORIG[$label]}" = 0 ] && o="0"; fi
  printf "| %s | %.0f ms | %.0f ms | %.2f× | %s | %s | %s | %s |\n" "$label" "$n" "$e" "$(echo "$e / $ref" | bc -l)" "$(mib "$r")" "$(mib "$f")" "$o" "$ratio"
done
