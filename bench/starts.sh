#!/usr/bin/env bash
# Many starts at once (issue #12), docs/scale.md: the bench/starts load
# generator against 5 `lode cache serve` processes on 127.0.0.2..6 and a file
# origin, latencies injected per tier from the paper. Scenarios:
#   sweep          one worker, rising start rates: the highest steady rate (loading starts p99 ≤ 2× p50; docs/decisions/20261123-start-latency-classes.md)
#   pinned         the sweep with the worker (the generator process) on CPU 0 and
#                  the cache nodes (and an s3 origin) on CPU 1 (taskset), so that
#                  the worker's own cost is measured: its rates are PINNED_SWEEP, with
#                  lode agent's default --max-starts 64 (the other scenarios keep 16)
#   steady         W workers, warm fleet, CPU profile of the generator (pprof top)
#   empty-fleet    every node restarted empty at once (and again with the
#                  jittered second look at the fleet, SECOND_LOOK)
#   node-restart   one node restarted empty
#   origin-errors  fleet emptied, 5% of origin requests fail
#   origin-stall   fleet emptied, the origin answers nothing for 10 s
# Usage: bench/starts.sh [all|sweep|pinned|steady|storm|faults] [WORKDIR]
# Environment: ORIGIN (file, or s3 for a bucket on versitygw), W (workers, 4), RATE (starts/s per worker, 5), ORIGIN_RATE
# (origin requests/s per worker, 25), SWEEP (rates, 5,10,15,20,30,40),
# SECOND_LOOK (100ms; empty to skip that run), MAX_RATE (40: the one-worker
# storm at the highest rate it sustains), PINNED_SWEEP (10,20,30,40,50,60,80),
# WORKER_CPU (0), NODE_CPUS (1), PINNED_NICE (0; e.g. -10 runs the pinned worker and
# its nodes ahead of other load on a shared host: they use a fraction of their CPUs;
# set on the run's own autogroup too), SAMPLES (pinned: a CSV file for every start,
# the scheduling probe and every fleet fetch; bench/starts -samples).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
WD=${2:-/var/tmp/lode-bench/starts}
W=${W:-4}; RATE=${RATE:-5}; ORIGIN_RATE=${ORIGIN_RATE:-25}; SWEEP=${SWEEP:-5,10,15,20,30,40}
SECOND_LOOK=${SECOND_LOOK-100ms}; MAX_RATE=${MAX_RATE:-40}
PINNED_SWEEP=${PINNED_SWEEP:-10,20,30,40,50,60,80}; WORKER_CPU=${WORKER_CPU:-0}; NODE_CPUS=${NODE_CPUS:-1}; PINNED_NICE=${PINNED_NICE:-0}
mkdir -p "$WD"
cd "$here"

# Build the lode binary (for the node processes) and the generator; if the
# working tree does not build (someone's work in progress), build HEAD.
if ! { go build -o "$WD/lode" ./cmd/lode && go build -o "$WD/starts" ./bench/starts; } 2>"$WD/build.log"; then
  echo "working tree does not build ($(head -1 "$WD/build.log")); building HEAD $(git rev-parse --short HEAD)" >&2
  rm -rf "$WD/src" && mkdir -p "$WD/src"
  git archive HEAD | tar -x -C "$WD/src"
  (cd "$WD/src" && go build -o "$WD/lode" ./cmd/lode && go build -o "$WD/starts" ./bench/starts)
fi
B=("$WD/starts" -lode="$WD/lode" -work="$WD/run")

# ORIGIN=s3: the origin is a bucket on versitygw (the S3-compatible server the
# store/s3 tests use, .ci/s3.sh) on 127.0.0.1 instead of a directory; the
# injected origin latency is added on top of the server's own.
if [[ ${ORIGIN:-file} == s3 ]]; then
  .ci/s3.sh >/dev/null
  VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789 AWS_REGION=us-east-1
  rm -rf "$WD/gw" && mkdir -p "$WD/gw"
  pin=(); [[ $what == pinned ]] && pin=(taskset -c "$NODE_CPUS")
  ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    "${pin[@]}" "$VGW" --quiet --port "127.0.0.1:$PORT" posix "$WD/gw" >"$WD/gw.log" 2>&1 &
  GW=$!
  trap 'kill $GW 2>/dev/null; wait $GW 2>/dev/null; rm -rf "$WD/gw"' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.05; done
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    -X PUT "http://127.0.0.1:$PORT/starts" >/dev/null || { echo "creating bucket starts on versitygw failed ($WD/gw.log)" >&2; exit 1; }
  B+=(-store="s3://starts/origin?endpoint=http://127.0.0.1:$PORT&path_style=true")
fi
common=(-workers="$W" -rate="$RATE" -origin-rate="$ORIGIN_RATE" -origin-burst=10 -warm=6s -before=8s -after=22s)
fresh() { rm -rf "$WD/run"; mkdir -p "$WD/run"; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; load $(cut -d' ' -f1-3 /proc/loadavg); $(go version | cut -d' ' -f3); commit $(git rev-parse --short HEAD); origin ${ORIGIN:-file}"

if [[ $what == all || $what == sweep ]]; then
  echo; echo "## sweep: one worker, offered start rates $SWEEP"
  fresh; "${B[@]}" -scenario=sweep -workers=1 -rates="$SWEEP" -warm=8s -step=40s
fi

if [[ $what == all || $what == pinned ]]; then
  echo; echo "## pinned sweep: one worker on CPU $WORKER_CPU (GOMAXPROCS 1), 5 nodes${ORIGIN:+ and the $ORIGIN origin} on CPU $NODE_CPUS, nice $PINNED_NICE, offered start rates $PINNED_SWEEP"
  # With kernel autogroups (sched_autogroup_enabled), nice orders tasks only
  # within a session: the pinned run gets a session of its own (setsid) and
  # PINNED_NICE is set on its autogroup, or it would share each CPU equally
  # with every other session's work whatever its nice.
  fresh
  setsid nice -n "$PINNED_NICE" taskset -c "$WORKER_CPU" "${B[@]}" -node-cpus="$NODE_CPUS" -max-starts=64 -scenario=sweep -workers=1 \
    -rates="$PINNED_SWEEP" -warm=8s -step=40s ${SAMPLES:+-samples="$SAMPLES"} &
  gen=$!
  if [[ -w /proc/$gen/autogroup && $PINNED_NICE != 0 ]]; then echo "$PINNED_NICE" >"/proc/$gen/autogroup" || true; fi
  wait $gen
fi

if [[ $what == all || $what == steady ]]; then
  echo; echo "## steady: $W workers × $RATE starts/s, warm fleet, CPU profile"
  fresh; "${B[@]}" -scenario=steady "${common[@]}" -before=15s -after=1s -cpuprofile="$WD/steady.pprof"
  echo; echo "pprof (generator process: $W agents, fleet clients, injected latency), flat:"
  go tool pprof -top -nodecount=15 "$WD/starts" "$WD/steady.pprof" 2>/dev/null | sed -n '4,22p'
  echo; echo "cumulative, lock and allocation entries:"
  go tool pprof -top -cum -nodecount=400 "$WD/starts" "$WD/steady.pprof" 2>/dev/null |
    grep -E 'mallocgc$|runtime\.lock2$|lockSlow$|RWMutex\)\.R?Lock$|gcBgMarkWorker$|runtime\.memmove$|Mutex\)\.Lock$' | head -12
fi

if [[ $what == all || $what == storm ]]; then
  echo; echo "## storm: $W workers × $RATE starts/s, origin limit $ORIGIN_RATE/s per worker"
  fresh; "${B[@]}" -scenario=empty-fleet "${common[@]}"
  if [[ -n $SECOND_LOOK ]]; then
    fresh; "${B[@]}" -scenario=empty-fleet "${common[@]}" -second-look="$SECOND_LOOK" -every=4 | sed 's/^### empty-fleet:/### empty-fleet, second look '"$SECOND_LOOK"':/'
  fi
  fresh; "${B[@]}" -scenario=node-restart "${common[@]}" -every=4
  echo; echo "## storm at the maximum start rate: 1 worker × $MAX_RATE starts/s"
  fresh; "${B[@]}" -scenario=empty-fleet "${common[@]}" -workers=1 -rate="$MAX_RATE" -every=4 | sed 's/^### empty-fleet:/### empty-fleet, 1 worker at '"$MAX_RATE"' starts\/s:/'
fi

if [[ $what == all || $what == faults ]]; then
  echo; echo "## origin faults: fleet emptied, then origin errors or a stall"
  fresh; "${B[@]}" -scenario=origin-errors "${common[@]}" -error-rate=0.05 -every=4
  fresh; "${B[@]}" -scenario=origin-stall "${common[@]}" -stall=10s -every=2
fi
rm -rf "$WD/run"
