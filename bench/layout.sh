#!/usr/bin/env bash
# Benchmark of the chunk-aligned layout (issue #8): the share of an image's
# 512 KiB chunks found in a related image, built without and with
# `lode build --align`, all in one run on the same Debian tree (the one
# bench/build.sh makes: debootstrap minbase + python3):
#   (a) the image and the same image plus one extra layer (an app tree and
#       20 MB of data)                                        [build issue]
#   (b) the image and the same image with /etc/hostname changed, same size
#                                                             [build issue]
#   (c) the image and the same image with one early base-layer file grown
#       by 6 KB (/etc/hostname), which shifts every later byte
#   (d) reordered layers: the tree as two layers, "rest" then
#       /usr/lib/python3.11, against the same two layers the other way round
#   (e) the same app layer (python3.11's library, 40 MB) on two different
#       bases (the base of (c) and the original)
# Also reported: image bytes, stored bytes (new chunks) and build seconds.
# Usage: bench/layout.sh [WORKDIR]   (default /var/cache/lode-bench; root,
# debootstrap, umoci; the Debian tree is made once by bench/build.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench}
cd "$W"
if [ ! -x debian/usr/bin/python3 ]; then
  echo "no Debian tree in $W/debian: run bench/build.sh $W first" >&2
  exit 1
fi
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
LODE="$W/lode"
export LODE_HOME="$W/layout-home"
rm -rf "$LODE_HOME"
"$LODE" keys create >/dev/null

L=layout-oci
if [ ! -f "$L/index.json" ]; then
  echo "packing the layout images with umoci" >&2
  rm -rf "$L" u
  umoci init --layout "$L"
  pack() { # pack NAME SRC...: one layer per SRC (a directory copied to /)
    local name=$1; shift
    umoci new --image "$L:$name"
    for src in "$@"; do
      umoci unpack --image "$L:$name" u >/dev/null
      cp -a "$src"/. u/rootfs/
      umoci repack --image "$L:$name" u
      rm -rf u
    done
  }
  mkdir -p parts/py/usr/lib parts/rest parts/app/opt/app parts/grown/etc
  cp -a debian/. parts/rest/
  mv parts/rest/usr/lib/python3.11 parts/py/usr/lib/
  cp -a debian/usr/lib/python3.11/email debian/usr/lib/python3.11/json parts/app/opt/app/
  head -c 20000000 /dev/urandom > parts/app/opt/app/model.bin
  pack base debian
  pack plus debian parts/app
  mkdir -p parts/changed && cp -a debian/. parts/changed/
  # the same size, other bytes
  python3 -c 'import sys; p=sys.argv[1]; b=open(p,"rb").read(); open(p,"wb").write(bytes((x+1)%256 for x in b))' parts/changed/etc/hostname
  pack changed parts/changed
  mkdir -p parts/grownbase && cp -a debian/. parts/grownbase/
  head -c 6000 /dev/urandom >> parts/grownbase/etc/hostname
  pack grown parts/grownbase
  pack rest-py parts/rest parts/py
  pack py-rest parts/py parts/rest
  pack base-app debian parts/py
  pack grown-app parts/grownbase parts/py
  rm -rf parts
fi

# build STORE NAME REF [FLAGS]: prints the build's seconds
build() {
  local t0 t1
  t0=$(date +%s.%N)
  "$LODE" build "oci:$L:$3" --name "$2" --store "file://$W/layout-stores/$1" "${@:4}" >"$W/layout-build.log"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
info() { "$LODE" inspect "$2" --store "file://$W/layout-stores/$1" --json; }
# share STORE NAME: the share of NAME's distinct chunks also in another image of STORE
share() { info "$1" "$2" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.1f%% (%d of %d)" % (100*d["shared"]/d["distinct"], d["shared"], d["distinct"]))'; }
imgsize() { info "$1" "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image_size"])'; }
stored() { du -sb "$W/layout-stores/$1" | cut -f1; }

rm -rf "$W/layout-stores"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); commit $(cd "$here" && git rev-parse --short HEAD)"
echo
echo "| case | shared without --align | shared with --align | stored bytes without / with |"
echo "|---|---|---|---|"
declare -A secs
for c in "a base plus" "b base changed" "c base grown" "d rest-py py-rest" "e base-app grown-app"; do
  set -- $c
  row="| ($1) $2 vs $3 |"
  st=""
  for mode in plain align; do
    flags=(); [ "$mode" = align ] && flags=(--align)
    s="$1-$mode"
    secs[$s-1]=$(build "$s" "$2" "$2" "${flags[@]}")
    secs[$s-2]=$(build "$s" "$3" "$3" "${flags[@]}")
    row="$row $(share "$s" "$2") |"
    st="$st$(( $(stored "$s") / 1000000 )) MB / "
  done
  echo "$row ${st% / } |"
done
echo
b0=$(imgsize a-plain base); b1=$(imgsize a-align base)
printf "image bytes of base: %d without, %d with --align (%.2f×)\n" "$b0" "$b1" "$(echo "$b1 / $b0" | bc -l)"
printf "build seconds of base: %.2f without, %.2f with --align\n" "${secs[a-plain-1]}" "${secs[a-align-1]}"
