#!/usr/bin/env bash
# Benchmark of the default layout against the old one (issues #8, #22): the
# share of an image's 512 KiB chunks found in a related image, the image and
# stored bytes and the build time, for each layout/compression MODE, all in
# one run on the same Debian tree (debootstrap minbase + python3: the tree of
# bench/build.sh, or lodetest.DebianRootfs's cached tar):
#   (a) the image and the same image plus one extra layer (an app tree and
#       20 MB of data)                                        [build issue]
#   (b) the image and the same image with /etc/hostname changed, same size
#                                                             [build issue]
#   (c) the image and the same image with one early base-layer file grown
#       by 10 KiB (/etc/debian_version, as a package update does), which
#       shifts every later byte
#   (d) reordered layers: the tree as two layers, "rest" then
#       /usr/lib/python3.11, against the same two layers the other way round
#   (e) the same app layer (python3.11's library, 40 MB) on two different
#       bases (the base of (c) and the original)
# MODES (default "old-raw old-zstd aligned-raw default"): old = the
# layout of `lode build --align=false` (file data packed in stream order),
# aligned = `--align` (files of at least one chunk start on a chunk
# boundary); raw = `--compress none`, zstd = `--compress zstd`; default =
# no flags (aligned-zstd since issue #22). Each mode
# but default passes its flags explicitly, so those measure the same thing
# whatever the defaults are.
# Usage: bench/layout.sh [WORKDIR] [MODES]   (default /var/cache/lode-bench;
# root, umoci; the Debian tree is made once by bench/build.sh or unpacked
# from ~/.cache/lode-tools/debian-bookworm-minbase-python3.tar).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench}
MODES=${2:-"old-raw old-zstd aligned-raw default"}
mkdir -p "$W"
cd "$W"
TAR=${LODE_TOOLS:-$HOME/.cache/lode-tools}/debian-bookworm-minbase-python3.tar
if [ ! -x debian/usr/bin/python3 ]; then
  if [ ! -f "$TAR" ]; then
    echo "no Debian tree in $W/debian and no $TAR: run bench/build.sh $W first" >&2
    exit 1
  fi
  rm -rf debian && mkdir debian && tar -xf "$TAR" -C debian
fi
find debian/dev -mindepth 1 -delete # images carry an empty /dev
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
LODE="$W/lode"
export LODE_HOME="$W/layout-home"
rm -rf "$LODE_HOME"
"$LODE" keys create >/dev/null

L=layout-oci
if [ ! -f "$L/index.json" ]; then
  echo "packing the layout images with umoci" >&2
  rm -rf "$L" u parts
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
  head -c 10240 /dev/urandom | base64 -w 76 | head -c 10240 >> parts/grownbase/etc/debian_version
  pack grown parts/grownbase
  pack rest-py parts/rest parts/py
  pack py-rest parts/py parts/rest
  pack base-app debian parts/py
  pack grown-app parts/grownbase parts/py
  rm -rf parts
fi

flags() { # flags MODE: the build flags of MODE
  case $1 in
    old-raw) echo --align=false --compress none ;;
    old-zstd) echo --align=false --compress zstd ;;
    aligned-raw) echo --align --compress none ;;
    aligned-zstd) echo --align --compress zstd ;;
    default) echo ;; # lode build's defaults (aligned, zstd since issue #22)
    *) echo "unknown mode $1" >&2; exit 1 ;;
  esac
}
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
median() { sort -n | awk '{ v[NR]=$1 } END { print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2) }'; }

rm -rf "$W/layout-stores"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); commit $(cd "$here" && git rev-parse --short HEAD)"
echo
hdr="| case |"; sep="|---|"
for m in $MODES; do hdr="$hdr $m: shared |"; sep="$sep---|"; done
echo "$hdr stored MB ($(echo $MODES | sed 's/ / \/ /g')) |"
echo "$sep---|"
declare -A secs
for c in "a base plus" "b base changed" "c base grown" "d rest-py py-rest" "e base-app grown-app"; do
  set -- $c
  row="| ($1) $2 vs $3 |"
  st=""
  for m in $MODES; do
    s="$1-$m"
    secs[$s-1]=$(build "$s" "$2" "$2" $(flags "$m"))
    secs[$s-2]=$(build "$s" "$3" "$3" $(flags "$m"))
    row="$row $(share "$s" "$2") |"
    st="$st$(( $(stored "$s") / 1000000 )) / "
  done
  echo "$row ${st% / } |"
done
echo
echo "| mode | flags | image bytes of base | stored bytes of base alone | build seconds (median of 10 builds) |"
echo "|---|---|---|---|---|"
for m in $MODES; do
  rm -rf "$W/layout-stores/one-$m"
  build "one-$m" base base $(flags "$m") >/dev/null
  one=$(stored "one-$m")
  med=$(for c in a b c d e; do echo "${secs[$c-$m-1]}"; echo "${secs[$c-$m-2]}"; done | median)
  printf "| %s | %s | %d | %d | %.2f |\n" "$m" "$(flags "$m")" "$(imgsize "a-$m" base)" "$one" "$med"
done
echo "# load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
