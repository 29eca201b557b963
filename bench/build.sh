#!/usr/bin/env bash
# Benchmark of `lode build` (issues #2, #22), measured in one run on this
# machine: build time of a real Debian root filesystem (debootstrap minbase +
# python3, the tar lodetest.DebianRootfs caches) against the baseline of
# `mkfs.ext4 -d` of the same tree followed by `sha256sum` of the result.
# ROUNDS rounds (default 5) interleave the baseline and lode's four build
# configurations (raw or zstd chunks, default or --align layout), page caches
# dropped before every timed step; the table gives medians and the ratio
# baseline / lode of the medians. lode builds into a fresh file store that
# already has its root (a store's first build creates the root only after its
# flatten and so seals after it; every later build seals during it).
# DEDUP=1 also packs OCI images with umoci and reports the shared-chunk
# counts of issue #2 (an added layer, one small file changed).
# Usage: bench/build.sh [WORKDIR]   (default /var/cache/lode-bench; root,
# e2fsprogs, bc, the cached tar; umoci for DEDUP=1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench}
ROUNDS=${ROUNDS:-5}
TAR=${LODE_DEBIAN_TAR:-$HOME/.cache/lode-tools/debian-bookworm-minbase-python3.tar}
mkdir -p "$W"
cd "$W"
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

if [ ! -f "$TAR" ]; then
  echo "no $TAR: run a test that uses lodetest.DebianRootfs (LODE_TEST_NO_SKIP=1 go test -run Debian ./internal/oci/) or set LODE_DEBIAN_TAR" >&2
  exit 1
fi
if [ ! -x debian/usr/bin/python3 ]; then
  rm -rf debian && mkdir debian
  tar -xf "$TAR" -C debian
fi
# Container images carry an empty /dev (the runtime mounts one).
find debian/dev -mindepth 1 -delete
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$W/lode" ./cmd/lode) # as it ships (docs/operations.md)
LODE="$W/lode"
export LODE_HOME="$W/home"
rm -rf "$LODE_HOME"
"$LODE" keys create >/dev/null
: > seed.tar

tree_bytes=$(du -sb debian | cut -f1)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg); commit $(cd "$here" && git rev-parse --short HEAD)"
echo "# tree: debian minbase + python3, $((tree_bytes/1000000)) MB; lode reads rootfs:$TAR"

configs=("raw" "zstd" "align" "align+zstd")
flags() {
  case $1 in
    raw) echo "--align=false --compress none" ;;
    zstd) echo "--align=false --compress zstd" ;;
    align) echo "--align --compress none" ;;
    align+zstd) echo "--align --compress zstd" ;; # lode build's default since 2026-12
  esac
}
declare -A times cpus
size=$(( tree_bytes * 14 / 10 / 1048576 + 64 ))M
for r in $(seq "$ROUNDS"); do
  drop
  rm -f base.ext4
  t0=$(now)
  /usr/bin/time -f "%U %S" -o cpu.txt sh -c "mkfs.ext4 -q -F -d debian base.ext4 $size >/dev/null 2>&1 && sha256sum base.ext4 >/dev/null"
  t1=$(now)
  b=$(secs "$t0" "$t1")
  times[base]+="$b "
  cpus[base]+="$(awk '{print $1+$2}' cpu.txt) "
  for c in "${configs[@]}"; do
    rm -rf store
    "$LODE" build "rootfs:$W/seed.tar" --name seed --store "file://$W/store" >/dev/null 2>&1
    drop
    t0=$(now)
    # shellcheck disable=SC2046
    /usr/bin/time -f "%U %S" -o cpu.txt "$LODE" build "rootfs:$TAR" --name base --store "file://$W/store" $(flags "$c") >"build-$c.txt" 2>/dev/null
    t1=$(now)
    l=$(secs "$t0" "$t1")
    times[$c]+="$l "
    cpus[$c]+="$(awk '{print $1+$2}' cpu.txt) "
    b+=" $c $l"
  done
  echo "# round $r: base $b; load $(cut -d' ' -f1 /proc/loadavg)"
done
base_med=$(echo "${times[base]}" | tr ' ' '\n' | grep . | median)
echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
base_cpu=$(echo "${cpus[base]}" | tr ' ' '\n' | grep . | median)
echo "| build | median s ($ROUNDS rounds) | all rounds s | baseline / lode | median CPU s (user+sys) | baseline / lode, CPU |"
echo "|---|---|---|---|---|---|"
printf "| mkfs.ext4 -d + sha256sum (baseline) | %.2f | %s | 1 | %.2f | 1 |\n" "$base_med" "${times[base]}" "$base_cpu"
for c in "${configs[@]}"; do
  m=$(echo "${times[$c]}" | tr ' ' '\n' | grep . | median)
  mc=$(echo "${cpus[$c]}" | tr ' ' '\n' | grep . | median)
  printf "| lode build (%s) | %.2f | %s | %.2f× | %.2f | %.2f× |\n" "$c" "$m" "${times[$c]}" "$(echo "$base_med / $m" | bc -l)" "$mc" "$(echo "$base_cpu / $mc" | bc -l)"
done
echo
for c in "${configs[@]}"; do echo "$c: $(head -1 "build-$c.txt")"; done

[ "${DEDUP:-0}" = 1 ] || exit 0
if [ ! -f oci/index.json ]; then
  echo "packing OCI images with umoci"
  rm -rf oci b1 b2 b3
  umoci init --layout oci
  umoci new --image oci:base
  umoci unpack --image oci:base b1 >/dev/null
  cp -a debian/. b1/rootfs/
  umoci repack --image oci:base b1
  # (a) the same image plus one extra layer: an application tree.
  umoci unpack --image oci:base b2 >/dev/null
  mkdir -p b2/rootfs/opt/app
  cp -a debian/usr/lib/python3.11/email debian/usr/lib/python3.11/json b2/rootfs/opt/app/
  head -c 20000000 /dev/urandom > b2/rootfs/opt/app/model.bin
  umoci repack --image oci:plus b2
  # (b) the base layer with one small file changed (a new single-layer image).
  umoci new --image oci:changed
  umoci unpack --image oci:changed b3 >/dev/null
  cp -a debian/. b3/rootfs/
  echo "changed-$(date +%s)" > b3/rootfs/etc/hostname
  umoci repack --image oci:changed b3
  rm -rf b1 b2 b3
fi
rm -rf store-a store-b
"$LODE" build oci:oci:base --name base --store "file://$W/store-a" >/dev/null
"$LODE" build oci:oci:plus --name plus --store "file://$W/store-a" >/dev/null
"$LODE" build oci:oci:base --name base --store "file://$W/store-b" >/dev/null
"$LODE" build oci:oci:changed --name changed --store "file://$W/store-b" >/dev/null
share() { "$LODE" inspect base --store "file://$W/$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f%% (%d of %d distinct chunks)" % (100*d["shared"]/d["distinct"], d["shared"], d["distinct"]))'; }
echo "(a) base chunks shared with base + one extra layer: $(share store-a)"
echo "(b) base chunks shared with base with one small file changed: $(share store-b)"
