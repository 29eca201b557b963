#!/usr/bin/env bash
# Background fill benchmark (issue #9): a full sequential read of the 1 GiB
# demo payload inside a container, cold L1 (disk cache emptied, page cache
# dropped), three ways on the same file store:
#   lazy + fill:  lode run --fill            (mount at once, fill from the first exec)
#   lazy:         lode run                   (on demand and read-ahead only)
#   download:     lode run --prefetch-all    (every chunk fetched, then mounted)
# The container runs `cat /data/model.bin > /dev/null`. Reported per way, as
# medians: exec→exit (the cat alone) and start→exit (command start to the
# cat's end, download included), and the ratios to "download" (goal ≤ 1.2×
# end to end: a workload that reads the whole image is not slower lazily).
# Usage: bench/fill.sh [WORKDIR] [RUNS]   (root, FUSE, loop devices, runc)
# LODE_HOME may point at an existing home holding lode-demo (e.g. the one of
# bench/start.sh) to skip building it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/var/cache/lode-bench/fill}
RUNS=${2:-3}
mkdir -p "$W"
(cd "$here" && go build -o "$W/lode" ./cmd/lode)
L="$W/lode"
export LODE_HOME=${LODE_HOME:-$W/home}
if ! "$L" images 2>/dev/null | grep -q lode-demo; then
  "$L" demo --no-run --payload $((1<<30)) >/dev/null
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); image $("$L" images | awk '/lode-demo/{print $2, $3}'), file store"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# ms DURATION: a Go duration as printed by lode run (850ms, 1.5s, 1m2.3s) in ms.
ms() { awk -v d="$1" 'BEGIN { t=0; while (match(d, /^[0-9.]+(ms|m|s)/)) { s=substr(d, 1, RLENGTH); d=substr(d, RLENGTH+1);
  if (s ~ /ms$/) t+=s+0; else if (s ~ /m$/) t+=(s+0)*60000; else t+=(s+0)*1000 } print t }'; }
one() { # prints "exec_ms total_ms" for one cold run with extra flags "$@"
  rm -rf "$W/cache"; drop
  local line
  line=$("$L" run lode-demo "$@" --cache-dir "$W/cache" --entrypoint /bin/sh -- -c 'cat /data/model.bin > /dev/null' 2>&1 >/dev/null | grep 'first exec after')
  local fe total
  fe=$(echo "$line" | sed -n 's/.*first exec after \([^,]*\),.*/\1/p')
  total=$(echo "$line" | sed -n 's/.* exit [0-9]* after \(.*\)$/\1/p')
  echo "$(( $(ms "$total" | cut -d. -f1) - $(ms "$fe" | cut -d. -f1) )) $(ms "$total" | cut -d. -f1)"
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A ex tot
ways=(fill lazy download)
flags_fill=(--fill); flags_lazy=(); flags_download=(--prefetch-all)
for i in $(seq "$RUNS"); do
  for w in "${ways[@]}"; do
    declare -n fl="flags_$w"
    read -r e t < <(one "${fl[@]}")
    ex[$w]+="$e "; tot[$w]+="$t "
    echo "run $i $w: exec→exit ${e} ms, start→exit ${t} ms" >&2
  done
done
echo
echo "| full read of 1 GiB, cold L1 (median of $RUNS) | exec→exit | start→exit | start→exit ÷ download |"
echo "|---|---|---|---|"
md=$(median ${tot[download]})
for w in "${ways[@]}"; do
  e=$(median ${ex[$w]}); t=$(median ${tot[$w]})
  printf "| %s | %d ms | %d ms | %.2f× |\n" "$w" "$e" "$t" "$(echo "$t / $md" | bc -l)"
done
