#!/usr/bin/env bash
# bench/reliability.sh — the figures of docs/reliability.md (issue #7).
#
#   bench/reliability.sh fuzz      run every fuzz target for FUZZTIME (default 60s) and print a
#                                  table: target, seconds, executions, new corpus entries, crashes
#   bench/reliability.sh seeds     copy up to SEEDS (default 6) of the smallest inputs the fuzzer
#                                  keeps for each target into testdata/fuzz/<Target>/ where that
#                                  directory is missing (run "fuzz" first)
#   bench/reliability.sh tests     run the reliability and leak tests, printing their counts
#   bench/reliability.sh faults    faults under load (go run ./bench/reliability -scenario=faults; FAULTS_ARGS)
#   bench/reliability.sh soak      memory soak of the agent and of a cache node (SOAK_ARGS)
#   bench/reliability.sh entries   flatten an image of 2,000,001 entries at the default MaxEntries
#   bench/reliability.sh all       everything above but seeds
#
# Environment: FUZZTIME (a go test -fuzztime value), FUZZ_FILTER (regexp on "pkg target"),
# FUZZ_PARALLEL (fuzz workers; default GOMAXPROCS), FUZZ_MINIMIZE (-fuzzminimizetime; default: go
# test's own, 60s, or what the target sets with lodetest.BoundMinimize; executions spent minimizing a
# new input are not counted in "execs", so a long minimization shows as a stretch of 0/sec).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
FUZZTIME=${FUZZTIME:-60s}
FUZZ_FILTER=${FUZZ_FILTER:-.}
SEEDS=${SEEDS:-6}
out=${OUT:-$(mktemp -d /tmp/lode-reliability.XXXXXX)}
mkdir -p "$out"

# targets lists "pkgdir FuzzName" for every fuzz target in the module.
targets() {
  grep -rl --include='*_test.go' '^func Fuzz' internal cmd | while read -r f; do
    d=./$(dirname "$f")
    grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //' | sed "s|^|$d |"
  done | sort -u | grep -E -- "$FUZZ_FILTER"
}

cachedir() { # the fuzzer's corpus cache of one target
  local pkg=$1 target=$2 mod
  mod=$(go list -m)
  echo "$(go env GOCACHE)/fuzz/$mod/${pkg#./}/$target"
}

fuzz() {
  local parallel=()
  [ -n "${FUZZ_PARALLEL:-}" ] && parallel=(-parallel="$FUZZ_PARALLEL")
  [ -n "${FUZZ_MINIMIZE:-}" ] && parallel+=(-fuzzminimizetime="$FUZZ_MINIMIZE")
  printf '%-45s %8s %12s %6s %8s\n' target seconds executions new crashes
  local total=0 crashes=0 deadlines=0
  while read -r pkg target; do
    log="$out/fuzz-$(echo "${pkg#./}" | tr / -)-$target.log" # FuzzOpen, FuzzParseRequest: more than one package
    start=$(date +%s.%N)
    set +e
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "${parallel[@]}" "$pkg" > "$log" 2>&1
    rc=$?
    set -e
    secs=$(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.0f')
    # The last progress line holds the totals: "fuzz: elapsed: 60s, execs: 123 (…/sec), new interesting: 4 (total: 9)".
    last=$(grep 'fuzz: elapsed:' "$log" | tail -1 || true)
    execs=$(echo "$last" | sed -n 's/.*execs: \([0-9]*\).*/\1/p')
    new=$(echo "$last" | sed -n 's/.*new interesting: \([0-9]*\).*/\1/p')
    elapsed=$(echo "$last" | sed -n 's/.*elapsed: \([0-9]*\)s.*/\1/p')
    crash=0
    if [ $rc -ne 0 ]; then
      if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
        crash='0*' deadlines=$((deadlines + 1)) # Go's fuzz-deadline flake: no input failed
      else
        crash=1 crashes=$((crashes + 1))
      fi
    fi
    total=$((total + ${execs:-0}))
    printf '%-45s %8s %12s %6s %8s\n' "${pkg#./internal/} $target" "${elapsed:-$secs}" "${execs:-?}" "${new:-?}" "$crash"
    if [ "$crash" = 1 ]; then sed -n '/--- FAIL/,$p' "$log" | head -20; fi
  done < <(targets)
  printf '%-45s %8s %12s %6s %8s\n' total "" "$total" "" "$crashes"
  if [ "$deadlines" -gt 0 ]; then
    echo "0*: $deadlines run(s) ended in \"context deadline exceeded\" with no failing input written (Go's fuzzer, when -fuzztime ends during a minimization)"
  fi
  echo "logs: $out"
  [ "$crashes" -eq 0 ]
}

seeds() {
  while read -r pkg target; do
    dst="$pkg/testdata/fuzz/$target"
    if [ -d "$dst" ]; then echo "$dst: exists"; continue; fi
    src=$(cachedir "$pkg" "$target")
    if [ ! -d "$src" ]; then echo "$dst: no fuzzer cache at $src (run fuzz first)"; continue; fi
    mkdir -p "$dst"
    # The smallest inputs first: they are the most readable seeds.
    ls -S -r "$src" | head -n "$SEEDS" | while read -r f; do cp "$src/$f" "$dst/$f"; done
    echo "$dst: $(ls "$dst" | wc -l) seeds"
  done < <(targets)
}

tests() {
  go test -count=1 -v -run 'TestTamperMatrix|TestTenantIsolation' ./internal/agent/ | grep -E 'tamper matrix|scanned|^(ok|FAIL|---)'
  go test -count=1 -v -run 'TestBreakouts|TestEscapesAtLimits' ./internal/oci/ | grep -cE '^    --- PASS' | sed 's/^/oci escape cases passed: /'
  go test -count=1 -v -run 'Escape' ./internal/run/ | grep -E '^(ok|FAIL|---|    ---)' || true
  go test -count=1 -v -run 'Leak' ./internal/agent/ ./internal/cachefleet/ ./internal/blockdev/nbd/ ./internal/blockdev/fuse/ | grep -E 'leak|^(ok|FAIL|---)'
}

case "${1:-all}" in
  fuzz) fuzz ;;
  seeds) seeds ;;
  tests) tests ;;
  faults) go run ./bench/reliability -scenario=faults ${FAULTS_ARGS:-} ;;
  soak) go run ./bench/reliability -scenario=soak ${SOAK_ARGS:-} ;;
  entries) go run ./bench/reliability -scenario=entries ${ENTRIES_ARGS:-} ;;
  all) tests; fuzz; go run ./bench/reliability -scenario=faults ${FAULTS_ARGS:-}; go run ./bench/reliability -scenario=soak ${SOAK_ARGS:-}; go run ./bench/reliability -scenario=entries ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
