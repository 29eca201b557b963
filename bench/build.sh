#!/usr/bin/env bash
# Benchmark of `lode build` (issue #2), all measured in one run on this machine:
#   1. build throughput of a real Debian root filesystem (debootstrap minbase +
#      python3) packed by umoci as an OCI image, against the baseline of
#      `mkfs.ext4 -d` of the same tree followed by `sha256sum` of the result;
#   2. the share of 512 KiB chunks deduplicated between
#      (a) the image and the same image plus one extra layer,
#      (b) the image and the same image with one small base-layer file changed.
# Usage: bench/build.sh [WORKDIR]   (default /var/cache/lode-bench; needs root,
# debootstrap, umoci, e2fsprogs; the Debian tree is made once and reused).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench}
mkdir -p "$W"
cd "$W"
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

if [ ! -x debian/usr/bin/python3 ]; then
  mirror=$(grep -hoE 'https?://[^ ]+' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | head -1)
  echo "making the Debian tree with debootstrap from $mirror"
  rm -rf debian
  debootstrap --variant=minbase --include=python3 bookworm debian "$mirror" >debootstrap.log
fi
# Container images carry an empty /dev (the runtime mounts one); debootstrap
# leaves device nodes there, which lode build refuses by default.
find debian/dev -mindepth 1 -delete
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
LODE="$W/lode"

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

tree_bytes=$(du -sb debian | cut -f1)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "tree: debian minbase + python3, $((tree_bytes/1000000)) MB"

# Baseline: mkfs.ext4 -d + sha256sum, same tree, same run.
sync; echo 3 > /proc/sys/vm/drop_caches
rm -f base.ext4
size=$(( tree_bytes * 14 / 10 / 1048576 + 64 ))M
t0=$(now)
mkfs.ext4 -q -F -d debian base.ext4 "$size"
sha256sum base.ext4 >/dev/null
t1=$(now)
base_s=$(secs "$t0" "$t1")
base_img=$(stat -c %s base.ext4)

# lode build of the same tree from the OCI image, into a fresh store.
export LODE_HOME="$W/home"
rm -rf "$LODE_HOME"
"$LODE" keys create >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now)
"$LODE" build oci:oci:base --name base --store "file://$W/store-a" > build-base.txt
t1=$(now)
lode_s=$(secs "$t0" "$t1")
cat build-base.txt
lode_img=$("$LODE" inspect base --store "file://$W/store-a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["image_size"])')

"$LODE" build oci:oci:plus --name plus --store "file://$W/store-a" >/dev/null
"$LODE" build oci:oci:base --name base --store "file://$W/store-b" >/dev/null
"$LODE" build oci:oci:changed --name changed --store "file://$W/store-b" >/dev/null
share() { "$LODE" inspect base --store "file://$W/$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f%% (%d of %d distinct chunks)" % (100*d["shared"]/d["distinct"], d["shared"], d["distinct"]))'; }
echo
echo "| measure | lode | baseline (mkfs.ext4 -d + sha256sum) | ratio |"
echo "|---|---|---|---|"
printf "| seconds | %.2f | %.2f | %.2f× faster |\n" "$lode_s" "$base_s" "$(echo "$base_s / $lode_s" | bc -l)"
printf "| MB/s of tree bytes | %.0f | %.0f | |\n" "$(echo "$tree_bytes/1000000/$lode_s" | bc -l)" "$(echo "$tree_bytes/1000000/$base_s" | bc -l)"
printf "| image bytes | %d | %d | |\n" "$lode_img" "$base_img"
echo
echo "(a) base chunks shared with base + one extra layer: $(share store-a)"
echo "(b) base chunks shared with base with one small file changed: $(share store-b)"
