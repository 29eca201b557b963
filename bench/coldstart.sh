#!/usr/bin/env bash
# Cold starts (issue #21), all measured in one run: the time from nothing
# local to the output "42" of `python3 -u -c 'print(6*7)'` on the Debian
# bookworm minbase + python3 image (-u: the line leaves python when printed,
# not at exit), medians of RUNS cold tries (page cache dropped before each),
# with the bytes, requests and serial requests before that output:
#
#   local table (file store on local disk, no network; mount + chroot exec):
#     a loop mount of the same ext4 file, one-shot `lode mount --background`,
#     `lode agent mount` cold (fresh agent, its --warm-memory reserve written,
#     empty cache) and warm (memory cache warm from the try before), the same
#     with a recorded profile, and the cold mount asked for on the agent's
#     API with curl (no lode client process);
#   latency table, at each of DELAYS added to every request by bench/latproxy:
#     `lode run` from an S3 store (versitygw) without and with a profile,
#     containerd 1.6 with its overlayfs snapshotter (full pull), with the
#     stargz snapshotter on eStargz, and on eStargz "optimized" (prioritized
#     files + prefetch landmark), the images served by docker-registry.
#
# Requests, bytes and serial requests are counted at the proxy (latproxy -log;
# serial = the longest chain of requests each starting after the previous one
# ended), the same way for lode and containerd. Local rows have no proxy:
# their bytes and requests are lode's origin-tier metrics (the loop row's
# bytes are what the kernel read from the loop device).
#
# Usage: bench/coldstart.sh [WORKDIR] [RUNS] [DELAYS]
#   WORKDIR default /var/cache/lode-bench/coldstart, RUNS default 5,
#   DELAYS default "0ms 10ms 36ms". Needs root, /dev/fuse, loop devices, runc,
#   containerd + ctr, docker-registry, skopeo, umoci (scripts/setup.sh), and
#   the Go module proxy once (versitygw via .ci/s3.sh, bench/stargz's module).
#   ONLY=local or ONLY=latency runs one table.
set -euo pipefail
usage() { sed -n '/^# Usage:/,/^[^#]/ s/^# \{0,1\}//p' "$0" >&2; exit 2; }
case "${1:-}" in -h | --help) usage ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/coldstart}
RUNS=${2:-5}
DELAYS=${3:-"0ms 10ms 36ms"}
[[ $RUNS =~ ^[0-9]+$ ]] && [ "$RUNS" -ge 1 ] || usage

fail() { echo "coldstart.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (mount, chroot, containerd, drop_caches)"
[ -c /dev/fuse ] || fail "needs /dev/fuse (modprobe fuse)"
losetup -f >/dev/null 2>&1 || fail "needs a free loop device (modprobe loop)"
for t in go runc containerd ctr docker-registry skopeo umoci curl python3 chroot findmnt; do
  command -v "$t" >/dev/null || fail "needs $t on PATH (scripts/setup.sh installs it)"
done
[ "$RUNS" -ge 5 ] || echo "note: RUNS=$RUNS; the issue asks for medians of >= 5" >&2
tools=${LODE_TOOLS:-$HOME/.cache/lode-tools}
DEB=$tools/debian-bookworm-minbase-python3.tar
if [ ! -f "$DEB" ]; then
  echo "making $DEB (debootstrap, via the test helper, about a minute)" >&2
  (cd "$here" && go test ./internal/oci -run 'TestDebootstrapRootfsFlattens' -count=1 >/dev/null)
fi

mkdir -p "$W"
W=$(cd "$W" && pwd)
B=$W/bin
mkdir -p "$B"
echo "building lode, latproxy, bench/stargz" >&2
# lode as it ships (docs/operations.md): static and stripped, which starts a
# few ms sooner than a default (dynamically linked) build.
(cd "$here" && CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags='-s -w' -o "$B/lode" ./cmd/lode && nice -n 10 go build -o "$B/latproxy" ./bench/latproxy)
(cd "$here/bench/stargz" && nice -n 10 go build -o "$B/stargz" .)
(cd "$here" && .ci/s3.sh >/dev/null)
VGW=${LODE_VERSITYGW:-$tools/versitygw}
L=$B/lode
export LODE_HOME=$W/home
export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
PY=(/usr/bin/python3 -u -c 'print(6*7)')

# Everything this script starts in the background is listed (by pid) in
# $W/pids, also from subshells, and stopped on exit; then its mounts go.
MNT=$W/mnt
: >"$W/pids"
started() { echo "$1" >>"$W/pids"; }
cleanup() {
  set +e
  for m in $(findmnt -rn -o TARGET | grep "^$W/" | sort -r); do umount -l "$m" 2>/dev/null; done
  for p in $(tac "$W/pids"); do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in $(cat "$W/pids"); do kill -9 "$p" 2>/dev/null; done
  for m in $(findmnt -rn -o TARGET | grep "^$W/" | sort -r); do umount -l "$m" 2>/dev/null; done
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return; sleep 0.05; done; fail "nothing serves $1"; }
wait_sock() { for _ in $(seq 400); do [ -S "$1" ] && return; sleep 0.05; done; fail "nothing serves $1"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
us() { echo "${EPOCHREALTIME/./}"; }
# until42 CMD...: runs CMD; prints when (µs since the epoch) it printed "42".
until42() {
  local t="" line
  while IFS= read -r line; do
    if [ -z "$t" ] && [ "$line" = 42 ]; then t=$(us); fi
  done < <("$@" 2>>"$W/err.log")
  [ -n "$t" ] || fail "no output 42 from: $* (see $W/err.log)"
  echo "$t"
}
mib() { awk -v b="$1" 'BEGIN { if (b == "-" || b == "") print "-"; else printf "%.1f MiB", b / 1048576 }'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Metric sums from a Prometheus text page: origin-tier chunk bytes, requests.
origin() { curl -s "http://$1/metrics" | awk '/^lode_agent_tier_bytes_total\{tier="origin"\}/ {b+=$2} /^lode_agent_tier_requests_total\{.*tier="origin"/ {r+=$2} END {printf "%d %d\n", b, r}'; }

# --- the images -------------------------------------------------------------
FILE="file://$W/store"
GWPORT=$(free_port); S3PX=$(free_port); REGPORT=$(free_port); REGPX=$(free_port)
mkdir -p "$W/gw/bench" "$W/registry"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  "$VGW" --quiet --port "127.0.0.1:$GWPORT" posix "$W/gw" >"$W/gw.log" 2>&1 &
started $!
cat >"$W/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:$REGPORT
YML
env -u REGISTRY_AUTH_FILE docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
started $!
S3PXPID= REGPXPID=
proxies() { # proxies DELAY: (re)start both latency proxies, each with a fresh request log
  [ -z "$S3PXPID" ] || stop "$S3PXPID"
  [ -z "$REGPXPID" ] || stop "$REGPXPID"
  : >"$W/s3.req"; : >"$W/reg.req"
  "$B/latproxy" -listen "127.0.0.1:$S3PX" -target "http://127.0.0.1:$GWPORT" -delay "$1" -log "$W/s3.req" 2>>"$W/proxy.log" &
  S3PXPID=$!; started $!
  "$B/latproxy" -listen "127.0.0.1:$REGPX" -target "http://127.0.0.1:$REGPORT" -delay "$1" -log "$W/reg.req" 2>>"$W/proxy.log" &
  REGPXPID=$!; started $!
  wait_http "http://127.0.0.1:$S3PX/"; wait_http "http://127.0.0.1:$REGPX/v2/"
}
wait_http "http://127.0.0.1:$GWPORT/"; wait_http "http://127.0.0.1:$REGPORT/v2/"
proxies 0s
S3="s3://bench/deb?endpoint=http://127.0.0.1:$S3PX&path_style=true"
[ -f "$LODE_HOME/keyring.json" ] || "$L" keys create >/dev/null
WK=(--allow-store-secret) # one keyring builds and runs here
# Images (the same rootfs, so the same chunks: the store dedups them):
#   deb       no profile (what lode build makes: its start set, if any, as hints);
#   deb-prof  a profile recorded by `lode run --record`;
#   deb-learn (when workers learn profiles, --learn-profile) a profile learned
#             by LEARN ordinary starts, published through the store.
# Timed tries pass --learn-profile=false so no try changes what the next reads.
LEARNS=
if "$L" run --help 2>&1 | grep -q -- --learn-profile; then LEARNS=1; WK+=(--learn-profile=false); fi
LEARN=${LEARN:-3}
IMAGES=(deb deb-prof); [ -z "$LEARNS" ] || IMAGES+=(deb-learn)
once() { # once STORE IMAGE [FLAGS]: one start, cache cold, not timed
  local st=$1 im=$2; shift 2
  rm -rf "$W/cache"; drop
  "$L" --store "$st" run "$im" --allow-store-secret --cache-dir "$W/cache" "$@" --entrypoint "${PY[0]}" -- "${PY[@]:1}" >/dev/null 2>>"$W/err.log"
}
images() { # images STORE [BUILD FLAGS]: build IMAGES, record and learn their profiles
  local st=$1; shift
  for im in "${IMAGES[@]}"; do "$L" --store "$st" build "rootfs:$DEB" --name "$im" "$@" >/dev/null; done
  once "$st" deb-prof --record --no-prefetch ${LEARNS:+--learn-profile=false}
  if [ -n "$LEARNS" ]; then for _ in $(seq "$LEARN"); do once "$st" deb-learn; done; fi
}
# Rebuilt whenever lode changes (a new build may write new hints).
stamp="$(sha256sum <"$L" | cut -c1-16) ${IMAGES[*]}"
if [ "$(cat "$W/images.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -f "$W/image.ext4" ]; then
  echo "building the images into the file store and the S3 store" >&2
  rm -rf "$W/store" "$W/gw/bench" "$W/image.ext4"; mkdir -p "$W/gw/bench"
  "$L" --store "$FILE" build "rootfs:$DEB" --name deb-loop --keep-image "$W/image.ext4" >/dev/null
  images "$FILE"
  images "$S3"
  echo "$stamp" >"$W/images.stamp"
fi
PROF=deb-prof; PROFN="profile (run --record)"
if [ -n "$LEARNS" ]; then PROF=deb-learn; PROFN="learned profile"; fi

# The registry's images: the rootfs as one gzip layer (umoci), that layer as
# eStargz, and as eStargz with the files the start reads first + landmark.
if [ ! -f "$W/oci/index.json" ]; then
  echo "packing the rootfs as an OCI image (umoci)" >&2
  rm -rf "$W/oci" "$W/b"
  umoci init --layout "$W/oci"
  umoci new --image "$W/oci:py"
  umoci unpack --image "$W/oci:py" "$W/b" >/dev/null
  tar -C "$W/b/rootfs" --numeric-owner -xf "$DEB"
  umoci config --image "$W/oci:py" --config.cmd python3 --config.cmd=-u --config.cmd=-c --config.cmd 'print(6*7)'
  umoci repack --image "$W/oci:py" "$W/b"
  rm -rf "$W/b"
fi
# The files the start reads, in order of access: ctr-remote's optimizer
# records them with fanotify while it runs the container; its command is not
# buildable here (bench/stargz), so run the start in a chroot of the same
# rootfs unpacked on a tmpfs mounted strictatime, every atime reset to 0
# before, and list the files whose atime moved (read or mapped), oldest
# access first.
if [ ! -s "$W/prioritized.txt" ]; then
  mkdir -p "$W/atime"
  mount -t tmpfs -o strictatime tmpfs "$W/atime"
  tar -C "$W/atime" --numeric-owner -xf "$DEB"
  find "$W/atime" -xdev -type f -print0 | xargs -0 touch -a -d @0
  chroot "$W/atime" "${PY[@]}" >/dev/null
  find "$W/atime" -xdev -type f -newerat @1 -printf '%A@ %P\n' | sort -n | cut -d' ' -f2- >"$W/prioritized.txt"
  umount "$W/atime"
fi
if ! skopeo inspect --tls-verify=false "docker://127.0.0.1:$REGPORT/debian:esgz-opt" >/dev/null 2>&1; then
  echo "pushing the images: gzip, eStargz, eStargz optimized ($(wc -l <"$W/prioritized.txt") prioritized files)" >&2
  skopeo copy --quiet --dest-tls-verify=false "oci:$W/oci:py" "docker://127.0.0.1:$REGPORT/debian:py"
  "$B/stargz" convert -layout "$W/oci" -dst "127.0.0.1:$REGPORT/debian:esgz"
  "$B/stargz" convert -layout "$W/oci" -dst "127.0.0.1:$REGPORT/debian:esgz-opt" -prioritized "$W/prioritized.txt"
fi

# --- one try of each kind; each prints "total_ms mount_ms bytes requests serial"
mkdir -p "$MNT"
loop_try() {
  drop
  local a b c dev s0 s1 x
  a=$(us)
  dev=$(losetup -f --show -r "$W/image.ext4")
  read -r x x s0 x <"/sys/block/${dev#/dev/}/stat" # sectors read (the device's counters outlive a detach)
  mount -o ro,noload "$dev" "$MNT"
  b=$(us)
  c=$(until42 chroot "$MNT" "${PY[@]}")
  read -r x x s1 x <"/sys/block/${dev#/dev/}/stat"
  umount "$MNT"
  losetup -d "$dev"
  echo "$(((c - a) / 1000)) $(((b - a) / 1000)) $(((s1 - s0) * 512)) - -"
}
mount_try() { # mount_try IMAGE: one-shot lode mount, cold cache
  rm -rf "$W/cache"; drop
  local mp; mp=127.0.0.1:$(free_port)
  local a b c
  a=$(us)
  "$L" --store "$FILE" mount "$1" "$MNT" "${WK[@]}" --background --cache-dir "$W/cache" --metrics-listen "$mp" >/dev/null 2>>"$W/err.log"
  b=$(us)
  c=$(until42 chroot "$MNT" "${PY[@]}")
  local m; m=$(origin "$mp")
  "$L" umount "$MNT" >/dev/null 2>>"$W/err.log"
  echo "$(((c - a) / 1000)) $(((b - a) / 1000)) $m -"
}
AGENT= AGENTM=
. "$here/bench/coldlib.sh"
agent_start() {
  rm -rf "$W/cache" "$W/agent.sock"
  AGENTM=127.0.0.1:$(free_port)
  "$L" --store "$FILE" agent "${WK[@]}" --socket "$W/agent.sock" --cache-dir "$W/cache" --state-dir "$W/agent-state" --metrics-listen "$AGENTM" 2>>"$W/err.log" &
  AGENT=$!; started $!
  wait_sock "$W/agent.sock"; wait_http "http://$AGENTM/metrics"
  wait_warm "http://$AGENTM/metrics"
}
# agent_try IMAGE [api]: lode agent mount into the running agent; with "api"
# the same mount asked for on the agent's API (POST /v1/mounts on its
# socket, as a platform's orchestrator or the containerd snapshotter asks)
# with curl instead of a lode process: the agent's own cost without the lode
# client's process start.
agent_try() {
  drop
  local a b c m0 m1
  m0=$(origin "$AGENTM")
  a=$(us)
  if [ "${2:-}" = api ]; then
    curl -sf --unix-socket "$W/agent.sock" -X POST -H 'Content-Type: application/json' \
      -d "{\"image\":\"$1\",\"dir\":\"$MNT\"}" http://lode/v1/mounts >/dev/null 2>>"$W/err.log"
  else
    "$L" agent mount "$1" "$MNT" --socket "$W/agent.sock" >/dev/null 2>>"$W/err.log"
  fi
  b=$(us)
  c=$(until42 chroot "$MNT" "${PY[@]}")
  m1=$(origin "$AGENTM")
  "$L" agent umount "$MNT" --socket "$W/agent.sock" >/dev/null 2>>"$W/err.log"
  read -r b0 r0 <<<"$m0"; read -r b1 r1 <<<"$m1"
  echo "$(((c - a) / 1000)) $(((b - a) / 1000)) $((b1 - b0)) $((r1 - r0)) -"
}
# reqs LOG FROM_US UNTIL_US: "bytes requests serial" of the requests started in that window.
reqs() { "$B/latproxy" summary -log "$1" -from "$(($2 * 1000))" -until "$(($3 * 1000))" | awk '{print $4, $2, $6}'; }
run_try() { # run_try IMAGE [FLAGS]: lode run from the S3 store, cold cache
  local img=$1; shift
  rm -rf "$W/cache"; drop
  local a c
  a=$(us)
  c=$(until42 "$L" --store "$S3" run "$img" "${WK[@]}" --cache-dir "$W/cache" "$@" --entrypoint "${PY[0]}" -- "${PY[@]:1}")
  echo "$(((c - a) / 1000)) - $(reqs "$W/s3.req" "$a" "$c")"
}
# containerd, fresh for each try (its content store, snapshots and stargz's
# cache start empty), with a proxy plugin "stargz" served by bench/stargz.
C=$W/ctrd
cat >"$W/containerd.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$C/c.sock"
[ttrpc]
  address = "$C/t.sock"
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "$C/stargz.sock"
TOML
ctr_try() { # ctr_try SNAPSHOTTER TAG [-lazy]: pull + ctr run, to the output
  local snap=$1 tag=$2 lazy=${3:-}
  rm -rf "$C"; mkdir -p "$C"
  local sp="" cp
  if [ "$snap" = stargz ]; then
    "$B/stargz" serve -socket "$C/stargz.sock" -root "$C/stargz" 2>>"$W/stargz.log" &
    sp=$!; started $!
    wait_sock "$C/stargz.sock"
  fi
  containerd --config "$W/containerd.toml" >>"$W/containerd.log" 2>&1 &
  cp=$!; started $!
  wait_sock "$C/c.sock"
  local ref=127.0.0.1:$REGPX/debian:$tag
  drop
  local a c
  a=$(us)
  c=$(until42 bash -c '"$1" pull -address "$2" -snapshotter "$3" $4 "$5" && ctr -a "$2" -n coldbench run --rm --snapshotter "$3" "$5" "try$$-$RANDOM" "${@:6}"' \
    bash "$B/stargz" "$C/c.sock" "$snap" "$lazy" "$ref" "${PY[@]}")
  echo "$(((c - a) / 1000)) - $(reqs "$W/reg.req" "$a" "$c")"
  ctr -a "$C/c.sock" -n coldbench image rm --sync "$ref" >/dev/null 2>&1 || true
  stop "$cp"
  [ -z "$sp" ] || stop "$sp"
  for m in $(findmnt -rn -o TARGET | grep "^$C/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$C"
}

# --- the runs -----------------------------------------------------------------
declare -A R # R[row]: lines "total mount bytes requests serial", one per try
add() { # add ROW LINE: one try's line; a try that failed printed no full line
  [ "$(echo "$2" | awk '{print NF}')" = 5 ] || fail "try of $1 failed: '$2' (see $W/err.log)"
  R[$1]+="$2"$'\n'
}
col() { printf '%s' "${R[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }
size=$(stat -c %s "$W/image.ext4")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image: Debian bookworm minbase + python3, $((size >> 20)) MiB ext4, $(wc -l <"$W/prioritized.txt") files read by the start; start: ${PY[*]}; $RUNS cold tries each, medians"

if [ "${ONLY:-}" != latency ]; then
for i in $(seq "$RUNS"); do
  add loop "$(loop_try)"
  add mount "$(mount_try deb)"
  add mountp "$(mount_try "$PROF")"
  agent_start
  add agent "$(agent_try deb)"
  add agentw "$(agent_try deb)"
  stop "$AGENT"
  agent_start
  add agentp "$(agent_try "$PROF")"
  stop "$AGENT"
  agent_start
  add agentapi "$(agent_try deb api)"
  stop "$AGENT"
done
lt=$(col loop 1)
echo
echo "Local disk (file store, no network), load $(cut -d' ' -f1-3 /proc/loadavg):"
echo
echo "| start | mount | mount to output | × loop | bytes read/fetched | × loop bytes | chunk requests |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
lb=$(col loop 3)
for row in "loop:loop mount of the ext4 file" "mount:one-shot lode mount" "agent:lode agent mount, cold" "agentw:lode agent mount, warm memory cache" "mountp:one-shot lode mount, $PROFN" "agentp:lode agent mount, cold, $PROFN" "agentapi:agent API call (curl), cold"; do
  k=${row%%:*}; n=${row#*:}
  t=$(col "$k" 1); m=$(col "$k" 2); by=$(col "$k" 3); rq=$(col "$k" 4)
  printf '| %s | %s ms | %s ms | %.2f× | %s | %.2f× | %s |\n' "$n" "$m" "$t" "$(echo "$t / $lt" | bc -l)" "$(mib "$by")" "$(echo "$by / $lb" | bc -l)" "$rq"
done
fi
[ "${ONLY:-}" != local ] || exit 0

SYS=("ovl:containerd overlayfs (full pull)" "sgz:containerd stargz" "sgzo:containerd stargz optimized"
  "runn:lode, nothing prefetched (--no-prefetch)" "run:lode, no profile" "runr:lode, profile (run --record)")
[ -z "$LEARNS" ] || SYS+=("runl:lode, learned profile")
for d in $DELAYS; do
  proxies "$d"
  for i in $(seq "$RUNS"); do
    add "ovl-$d" "$(ctr_try overlayfs py)"
    add "sgz-$d" "$(ctr_try stargz esgz -lazy)"
    add "sgzo-$d" "$(ctr_try stargz esgz-opt -lazy)"
    add "runn-$d" "$(run_try deb --no-prefetch)"
    add "run-$d" "$(run_try deb)"
    add "runr-$d" "$(run_try deb-prof)"
    [ -z "$LEARNS" ] || add "runl-$d" "$(run_try deb-learn)"
  done
done
echo
echo "Latency added per request (S3 store and registry behind bench/latproxy), load $(cut -d' ' -f1-3 /proc/loadavg);"
echo "bytes, requests and serial requests before the output, counted at the proxy:"
echo
echo "| delay | start | to output | × stargz optimized | bytes | requests | serial requests |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for d in $DELAYS; do
  so=$(col "sgzo-$d" 1)
  for row in "${SYS[@]}"; do
    k=${row%%:*}-$d; n=${row#*:}; t=$(col "$k" 1)
    printf '| %s | %s | %.2f s | %.2f× | %s | %s | %s |\n' "$d" "$n" "$(echo "$t / 1000" | bc -l)" "$(echo "$t / $so" | bc -l)" \
      "$(mib "$(col "$k" 3)")" "$(col "$k" 4)" "$(col "$k" 5)"
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); per-try lines: $W/tries.log"
for k in "${!R[@]}"; do printf '%s\n' "${R[$k]}" | awk -v k="$k" 'NF {print k, $0}'; done | sort >"$W/tries.log"
