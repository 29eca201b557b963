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
  (cd "$here" && go test ./internal/oci -run 'TestDebootstrapRootfsFlattens' -count=1 >/dev/null)
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
raw=$(skopeo inspect --raw --tls-verify=false "$ref")
layers=$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(sum(l["size"] for l in m["layers"]))' "$raw")
config=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["config"]["digest"])' "$raw")

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "image: $ref, compressed layers $layers bytes"
# Layer bytes the registry sent (access log: status and bytes are fields 9 and 10), config excluded.
blobbytes() { awk -v from="$1" -v cfg="$config" 'NR>from && /"GET \/v2\/debian\/blobs\/sha256:/ && index($0, cfg)==0 && $9==200 {s+=$10} END {print s+0}' registry.log; }

export LODE_KEYRING=$W/keyring.json
[ -f "$LODE_KEYRING" ] || "$LODE" keys create >/dev/null
direct=() two=() ratios=() dcpu=() scpu=()
direct_run() {
  rm -rf store1
  sync; echo 3 > /proc/sys/vm/drop_caches
  from=$(wc -l < registry.log)
  t0=$(now)
  /usr/bin/time -f '%U %S' -o direct.cpu "$LODE" build "$ref" --insecure-registry "$host" --name py --store "file://$W/store1" >direct.out 2>direct.err
  d=$(echo "$(now) - $t0" | bc -l)
  dc=$(awk '{print $1+$2}' direct.cpu)
  sent=$(blobbytes "$from")
}
two_run() {
  rm -rf store2 pulled
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(now)
  /usr/bin/time -f '%U %S' -o skopeo.cpu skopeo copy --quiet --src-tls-verify=false "$ref" oci:pulled:py
  /usr/bin/time -f '%U %S' -o two.cpu "$LODE" build oci:pulled:py --name py --store "file://$W/store2" >two.out 2>two.err
  s=$(echo "$(now) - $t0" | bc -l)
  sc=$(cat skopeo.cpu two.cpu | awk '{c+=$1+$2} END {print c}')
}
for i in $(seq "$RUNS"); do
  # Alternate the order so that neither side always runs first.
  if [ $((i % 2)) -eq 1 ]; then direct_run; two_run; else two_run; direct_run; fi
  direct+=("$d"); two+=("$s"); ratios+=("$(echo "$d / $s" | bc -l)"); dcpu+=("$dc"); scpu+=("$sc")
  printf 'run %d: lode build docker:// %.2fs (%.2f CPU s; registry sent %d layer bytes, layers are %d); skopeo copy + lode build oci: %.2fs (%.2f CPU s); ratio %.2f; load %s\n' \
    "$i" "$d" "$dc" "$sent" "$layers" "$s" "$sc" "$(echo "$d / $s" | bc -l)" "$(cut -d' ' -f1 /proc/loadavg)"
done
cat direct.out
grep -h notice direct.err || true
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
md=$(median "${direct[@]}"); ms=$(median "${two[@]}")
printf 'median: lode build docker:// %.2fs, skopeo copy + lode build oci: %.2fs, ratio of medians %.2f, median of per-run ratios %.2f\n' \
  "$md" "$ms" "$(echo "$md / $ms" | bc -l)" "$(median "${ratios[@]}")"
mdc=$(median "${dcpu[@]}"); msc=$(median "${scpu[@]}")
printf 'median CPU seconds (user+sys): lode build docker:// %.2f, skopeo copy + lode build oci: %.2f, ratio %.2f\n' "$mdc" "$msc" "$(echo "$mdc / $msc" | bc -l)"
# Both stores hold the same image: same chunks.
cmp <(ls store1/roots/*/chunks | sort) <(ls store2/roots/*/chunks | sort) && echo "same chunks in both stores"
