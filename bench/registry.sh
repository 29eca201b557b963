#!/usr/bin/env bash
# Benchmark of `lode build docker://…` (issue #17), measured in one run:
#   lode build docker://HOST/debian:py          (registry → lode, one step)
# against the two-step path users take without registry support:
#   skopeo copy docker://HOST/debian:py oci:DIR:py && lode build oci:DIR:py
# for a real Debian image (debootstrap minbase + python3, its /dev device
# nodes included, as debootstrap leaves them), served by a local CNCF
# distribution registry (Debian's docker-registry) over plain HTTP. Also
# counts the compressed bytes the registry sent during the lode build (from
# its access log) against the image's layer sizes.
# Usage: bench/registry.sh [WORKDIR] [RUNS]  (default /var/cache/lode-bench-registry, 3 runs;
# needs root, docker-registry, skopeo, umoci; the Debian tar is the one the
# tests cache in ~/.cache/lode-tools, made with debootstrap if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench-registry}
RUNS=${2:-3}
mkdir -p "$W"
cd "$W"
now() { date +%s.%N; }

tools=${LODE_TOOLS:-$HOME/.cache/lode-tools}
deb="$tools/debian-bookworm-minbase-python3.tar"
if [ ! -f "$deb" ]; then
  echo "making $deb (debootstrap, via the test helper)"
  (cd "$here" && go test ./internal/build -run 'TestWildImages' -count=1 >/dev/null)
fi
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
LODE="$W/lode"

if [ ! -f oci/index.json ]; then
  echo "packing the Debian tree as an OCI image with umoci"
  rm -rf oci b
  umoci init --layout oci
  umoci new --image oci:py
  umoci unpack --image oci:py b >/dev/null
  tar -C b/rootfs --numeric-owner -xf "$deb"
  umoci config --image oci:py --config.cmd python3 --config.cmd=-c --config.cmd 'print("hi")'
  umoci repack --image oci:py b
  rm -rf b
fi

# The registry, on a free loopback port, with its access log.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
rm -rf storage registry.log
cat > registry.yml <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $W/storage
http:
  addr: $host
YML
env -u REGISTRY_AUTH_FILE docker-registry serve registry.yml >registry.log 2>&1 &
reg=$!
trap 'kill $reg 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://$host/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false oci:oci:py "docker://$host/debian:py"
ref="docker://$host/debian:py"
layers=$(skopeo inspect --raw --tls-verify=false "$ref" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]))')

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "image: $ref, compressed layers $layers bytes"
blobbytes() { awk -v from="$1" 'NR>from && /"GET \/v2\/debian\/blobs\/sha256:/ && $9==200 {s+=$10} END {print s+0}' registry.log; }

export LODE_KEYRING=$W/keyring.json
[ -f "$LODE_KEYRING" ] || "$LODE" keys create >/dev/null
direct=() two=()
for i in $(seq "$RUNS"); do
  rm -rf store1 store2 pulled
  sync; echo 3 > /proc/sys/vm/drop_caches
  from=$(wc -l < registry.log)
  t0=$(now)
  "$LODE" build "$ref" --insecure-registry "$host" --name py --store "file://$W/store1" >direct.out 2>direct.err
  t1=$(now)
  sent=$(blobbytes "$from")
  sync; echo 3 > /proc/sys/vm/drop_caches
  t2=$(now)
  skopeo copy --quiet --src-tls-verify=false "$ref" oci:pulled:py
  "$LODE" build oci:pulled:py --name py --store "file://$W/store2" >two.out 2>two.err
  t3=$(now)
  d=$(echo "$t1 - $t0" | bc -l); s=$(echo "$t3 - $t2" | bc -l)
  direct+=("$d"); two+=("$s")
  printf 'run %d: lode build docker:// %.2fs (registry sent %d blob bytes, layers %d); skopeo copy + lode build oci: %.2fs; ratio %.2f\n' \
    "$i" "$d" "$sent" "$layers" "$s" "$(echo "$d / $s" | bc -l)"
done
cat direct.out
grep -h notice direct.err || true
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
md=$(median "${direct[@]}"); ms=$(median "${two[@]}")
printf 'median: lode build docker:// %.2fs, skopeo copy + lode build oci: %.2fs, ratio %.2f\n' "$md" "$ms" "$(echo "$md / $ms" | bc -l)"
# Both stores hold the same image: same chunks.
cmp <(ls store1/roots/*/chunks | sort) <(ls store2/roots/*/chunks | sort) && echo "same chunks in both stores"
