#!/usr/bin/env bash
# The local table of bench/coldstart.sh (issue #21), file store only, with
# several lode binaries interleaved in every round so that a change and main
# are measured in one run on a loaded machine: per round a loop mount of the
# ext4 file + chroot, then for each BIN: one-shot `lode mount --background`
# (image IMG, and PIMG with a recorded profile), `lode agent mount` cold in a
# fresh agent and warm, cold with PIMG, and cold asked for on the agent's API
# with curl (no lode client process). Total = command start to the
# output "42" of python3 -u -c 'print(6*7)', page cache dropped before each
# try; bytes = the origin tier's bytes (sealed chunks read from the store)
# against the sectors the loop device read. Medians; per-try lines in
# WORKDIR/tries.log (rows suffixed with the BIN's index).
#
# Usage: bench/coldlocal.sh WORKDIR RUNS BIN [BIN...]
#   The first BIN builds the images (deb, deb-prof, deb-raw = --compress none)
#   when WORKDIR has none. IMG (default deb) and PIMG (default deb-prof) pick
#   the images. Needs root, /dev/fuse, loop devices, python3, curl.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '/^# Usage:/,/^$/p' "$0" >&2; exit 2; }
IMG=${IMG:-deb}; PIMG=${PIMG:-deb-prof}
W=$1; RUNS=$2; shift 2; BINS=("$@")
export LODE_HOME=$W/home
DEB=$HOME/.cache/lode-tools/debian-bookworm-minbase-python3.tar
PY=(/usr/bin/python3 -u -c 'print(6*7)')
MNT=$W/mnt; mkdir -p "$MNT"
FILE="file://$W/store"
L=${BINS[0]}
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
us() { echo "${EPOCHREALTIME/./}"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return; sleep 0.05; done; echo "nothing at $1" >&2; exit 1; }
wait_sock() { for _ in $(seq 400); do [ -S "$1" ] && return; sleep 0.05; done; exit 1; }
until42() { local t="" line; while IFS= read -r line; do if [ -z "$t" ] && [ "$line" = 42 ]; then t=$(us); fi; done < <("$@" 2>>"$W/err.log"); echo "$t"; }
origin() { curl -s "http://$1/metrics" | awk '/^lode_agent_tier_bytes_total\{tier="origin"\}/ {b+=$2} /^lode_agent_tier_requests_total\{.*tier="origin"/ {r+=$2} END {printf "%d %d\n", b, r}'; }
WK=(--allow-store-secret --learn-profile=false)
if [ ! -f "$W/image.ext4" ]; then
  [ -f "$LODE_HOME/keyring.json" ] || "$L" keys create >/dev/null
  "$L" --store "$FILE" build "rootfs:$DEB" --name deb-loop --keep-image "$W/image.ext4" >/dev/null
  "$L" --store "$FILE" build "rootfs:$DEB" --name deb >/dev/null
  "$L" --store "$FILE" build "rootfs:$DEB" --name deb-prof >/dev/null
  "$L" --store "$FILE" build "rootfs:$DEB" --name deb-raw --compress none >/dev/null
  rm -rf "$W/cache"; drop
  "$L" --store "$FILE" run deb-prof --allow-store-secret --cache-dir "$W/cache" --record --no-prefetch --learn-profile=false --entrypoint "${PY[0]}" -- "${PY[@]:1}" >/dev/null
fi
loop_try() {
  drop; local a b c dev s0 s1 x
  a=$(us); dev=$(losetup -f --show -r "$W/image.ext4")
  read -r x x s0 x <"/sys/block/${dev#/dev/}/stat"
  mount -o ro,noload "$dev" "$MNT"; b=$(us)
  c=$(until42 chroot "$MNT" "${PY[@]}")
  read -r x x s1 x <"/sys/block/${dev#/dev/}/stat"
  umount "$MNT"; losetup -d "$dev"
  echo "$(((c - a) / 1000)) $(((b - a) / 1000)) $(((s1 - s0) * 512)) -"
}
mount_try() { # BIN IMAGE
  rm -rf "$W/cache"; drop
  local mp; mp=127.0.0.1:$(free_port); local a b c
  a=$(us)
  "$1" --store "$FILE" mount "$2" "$MNT" "${WK[@]}" --background --cache-dir "$W/cache" --metrics-listen "$mp" >/dev/null 2>>"$W/err.log"
  b=$(us); c=$(until42 chroot "$MNT" "${PY[@]}")
  local m; m=$(origin "$mp")
  "$1" umount "$MNT" >/dev/null 2>>"$W/err.log"
  echo "$(((c - a) / 1000)) $(((b - a) / 1000)) $m"
}
AGENT= AGENTM=
cleanup() {
  set +e
  mountpoint -q "$MNT" && umount -l "$MNT"
  [ -z "$AGENT" ] || kill "$AGENT" 2>/dev/null
}
trap cleanup EXIT
. "$(dirname "$0")/coldlib.sh"
agent_start() { # BIN
  rm -rf "$W/cache" "$W/agent.sock"; AGENTM=127.0.0.1:$(free_port)
  "$1" --store "$FILE" agent "${WK[@]}" --socket "$W/agent.sock" --cache-dir "$W/cache" --state-dir "$W/agent-state" --metrics-listen "$AGENTM" 2>>"$W/err.log" &
  AGENT=$!; wait_sock "$W/agent.sock"; wait_http "http://$AGENTM/metrics"
  wait_warm "http://$AGENTM/metrics"
}
agent_try() { # BIN IMAGE [api]: with "api", the mount is asked for with curl on the agent's API (POST /v1/mounts)
  drop; local a b c m0 m1
  m0=$(origin "$AGENTM"); a=$(us)
  if [ "${3:-}" = api ]; then
    curl -sf --unix-socket "$W/agent.sock" -X POST -H 'Content-Type: application/json' \
      -d "{\"image\":\"$2\",\"dir\":\"$MNT\"}" http://lode/v1/mounts >/dev/null 2>>"$W/err.log"
  else
    "$1" agent mount "$2" "$MNT" --socket "$W/agent.sock" >/dev/null 2>>"$W/err.log"
  fi
  b=$(us); c=$(until42 chroot "$MNT" "${PY[@]}"); m1=$(origin "$AGENTM")
  "$1" agent umount "$MNT" --socket "$W/agent.sock" >/dev/null 2>>"$W/err.log"
  read -r b0 r0 <<<"$m0"; read -r b1 r1 <<<"$m1"
  echo "$(((c - a) / 1000)) $(((b - a) / 1000)) $((b1 - b0)) $((r1 - r0))"
}
stopa() { kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=; }
: >"$W/tries.log"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  echo "loop $(loop_try)" >>"$W/tries.log"
  for bi in "${!BINS[@]}"; do B=${BINS[$bi]}
    echo "mount$bi $(mount_try "$B" "$IMG")" >>"$W/tries.log"
    echo "mountp$bi $(mount_try "$B" "$PIMG")" >>"$W/tries.log"
    agent_start "$B"
    echo "agent$bi $(agent_try "$B" "$IMG")" >>"$W/tries.log"
    echo "agentw$bi $(agent_try "$B" "$IMG")" >>"$W/tries.log"
    stopa; agent_start "$B"
    echo "agentp$bi $(agent_try "$B" "$PIMG")" >>"$W/tries.log"
    stopa; agent_start "$B"
    echo "agenta$bi $(agent_try "$B" "$IMG" api)" >>"$W/tries.log"
    stopa
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
med() { awk -v k="$1" -v c="$2" '$1==k {print $c}' "$W/tries.log" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
lt=$(med loop 2); lb=$(med loop 4)
printf '%-10s %8s %8s %7s %10s %6s %5s\n' row total mount xloop bytes xbytes reqs
for k in $(awk '{print $1}' "$W/tries.log" | awk '!s[$0]++'); do
  t=$(med "$k" 2); m=$(med "$k" 3); by=$(med "$k" 4); rq=$(med "$k" 5)
  printf '%-10s %8s %8s %7.2f %9.1fM %6.2f %5s\n' "$k" "$t" "$m" "$(echo "$t/$lt" | bc -l)" "$(echo "$by/1048576" | bc -l)" "$(echo "$by/$lb" | bc -l)" "$rq"
done
