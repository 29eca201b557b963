#!/usr/bin/env bash
# Benchmark of the worker path (issue #4), all measured in one run:
#   1. time to first exec of a program in a >= 1 GiB image with a cold L1,
#      lazily (lode run) against "download every chunk, then mount"
#      (lode run --prefetch-all) on the same store;
#   2. bytes fetched for that start, against the image size;
#   3. warm sequential read through the mount against the same ext4 image
#      read from a local file through a loop mount (page cache dropped before
#      each read; lode's L1 holds every chunk);
#   4. 4 KiB random read latency through the mount, warm L1, p50/p99 (fio),
#      next to the loop mount of the local file.
# Usage: bench/start.sh [WORKDIR] [RUNS]  (root, FUSE, loop devices, runc, fio)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/start}
RUNS=${2:-5}
mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
L="$W/lode"
export LODE_HOME="$W/home"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
if ! "$L" images 2>/dev/null | grep -q lode-demo; then
  rm -rf "$LODE_HOME"
  "$L" demo --no-run --payload $((1<<30)) --keep-image "$W/image.ext4" >/dev/null
fi
size=$(stat -c %s "$W/image.ext4")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; image $((size>>20)) MiB (ext4), file store"

first_exec() { sed -n 's/.*first exec after \([0-9.]*\)\(m\?s\).*/\1 \2/p' | awk '{ if ($2=="s") print $1*1000; else print $1 }'; }
fetched() { sed -n 's/.*fetched \(.*\) in all.*/\1/p'; }
lazy=(); full=()
for i in $(seq "$RUNS"); do
  rm -rf "$W/cache"; drop
  out=$("$L" run lode-demo --cache-dir "$W/cache" -- 2>&1 >/dev/null)
  lazy+=("$(echo "$out" | first_exec)"); lazy_fetch=$(echo "$out" | fetched)
  rm -rf "$W/cache"; drop
  out=$("$L" run lode-demo --prefetch-all --cache-dir "$W/cache" -- 2>&1 >/dev/null)
  full+=("$(echo "$out" | first_exec)"); full_fetch=$(echo "$out" | fetched)
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ml=$(median "${lazy[@]}"); mf=$(median "${full[@]}")
echo
echo "| start (median of $RUNS, cold L1, page cache dropped) | lazy (lode run) | download all, then mount | ratio |"
echo "|---|---|---|---|"
printf "| time to first exec | %.0f ms | %.0f ms | %.1f× faster |\n" "$ml" "$mf" "$(echo "$mf / $ml" | bc -l)"
echo "| bytes fetched | $lazy_fetch | $full_fetch | image $((size>>20)) MiB |"

# 3 and 4: mount lazily with a warm L1, and the local file through a loop device.
# "Warm" is measured two ways: (i) every chunk in the L1 disk cache and all page
# caches dropped (lode reads, verifies and decrypts from its disk cache; the loop
# mount reads the local file from disk); (ii) everything in memory (lode's L1
# memory cache sized to hold the image; the local file in the page cache).
rm -rf "$W/cache"
"$L" run lode-demo --prefetch-all --cache-dir "$W/cache" -- >/dev/null 2>&1
mkdir -p "$W/mnt-lode" "$W/mnt-loop"
"$L" mount lode-demo "$W/mnt-lode" --background --cache-dir "$W/cache" --mem-cache-size $((2<<30)) >/dev/null
mount -o ro,loop,noload "$W/image.ext4" "$W/mnt-loop"
trap '"$L" umount "$W/mnt-lode" >/dev/null 2>&1 || true; umount "$W/mnt-loop" 2>/dev/null || true' EXIT
rate() { local t0 t1; t0=$(date +%s.%N); cat "$1/data/model.bin" > /dev/null; t1=$(date +%s.%N); echo "$(stat -c %s "$1/data/model.bin") / ($t1 - $t0) / 1000000" | bc -l; }
cold() { drop; rate "$1"; }
# (i): the first read through lode fills its memory cache, so measure the loop
# mount first, then lode once, then drop lode's memory by remounting.
sf=$(cold "$W/mnt-loop"); sl=$(cold "$W/mnt-lode")
# (iii): the read above filled lode's L1 memory; read again with all page
# caches dropped: lode from its L1 memory against the local file from disk.
sm=$(cold "$W/mnt-lode")
# (ii): O_DIRECT reads of the payload skip ext4's page cache on both mounts, so
# each read goes down through the loop device: for the local file to its page
# cache (warmed first), for lode to its L1 memory (warm from the read above).
direct() { local t0 t1; t0=$(date +%s.%N); dd if="$1/data/model.bin" of=/dev/null bs=4M iflag=direct status=none; t1=$(date +%s.%N); echo "$(stat -c %s "$1/data/model.bin") / ($t1 - $t0) / 1000000" | bc -l; }
cat "$W/image.ext4" > /dev/null
wf=$(direct "$W/mnt-loop"); wl=$(direct "$W/mnt-lode")
echo
echo "| sequential read of the 1 GiB payload | lode mount | loop mount of local file | ratio |"
echo "|---|---|---|---|"
printf "| (i) warm L1 on disk, page cache dropped | %.0f MB/s | %.0f MB/s | %.2f× |\n" "$sl" "$sf" "$(echo "$sl / $sf" | bc -l)"
printf "| (iii) warm L1 in memory vs local file from disk, page cache dropped | %.0f MB/s | %.0f MB/s | %.2f× |\n" "$sm" "$sf" "$(echo "$sm / $sf" | bc -l)"
printf "| (ii) O_DIRECT: warm L1 in memory vs local file in page cache | %.0f MB/s | %.0f MB/s | %.2f× |\n" "$wl" "$wf" "$(echo "$wl / $wf" | bc -l)"

rr() { drop; fio --name=rr --filename="$1/data/model.bin" --rw=randread --bs=4k --direct=1 --ioengine=psync --runtime=10 --time_based --readonly --output-format=json 2>/dev/null |
  python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["read"]; p=j["clat_ns"]["percentile"]; print("%.0f %.0f %.0f" % (p["50.000000"]/1000, p["99.000000"]/1000, j["iops"]))'; }
read -r l50 l99 liops < <(rr "$W/mnt-lode")
read -r f50 f99 fiops < <(rr "$W/mnt-loop")
echo
echo "| 4 KiB random reads, O_DIRECT, 1 thread, 10 s | lode mount, warm L1 | loop mount of local file |"
echo "|---|---|---|"
echo "| p50 latency | ${l50} µs | ${f50} µs |"
echo "| p99 latency | ${l99} µs | ${f99} µs |"
echo "| IOPS | ${liops} | ${fiops} |"
