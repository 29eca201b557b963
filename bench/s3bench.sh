#!/bin/bash
# Put/get throughput of 512 KiB objects against versitygw on 127.0.0.1:
# lode's S3 backend (bench/s3) next to s3cmd, in the same run, on the same
# server. s3cmd is single-threaded, so the like-for-like comparison is lode
# at concurrency 1; lode at concurrency 16 is reported too.
#
#   bench/s3bench.sh [N]      (N objects, default 200; needs .ci/s3.sh, s3cmd)
set -euo pipefail
N=${1:-200}
SIZE=$((512 * 1024))
cd "$(dirname "$0")/.."
.ci/s3.sh >/dev/null
VGW=${LODE_VERSITYGW:-${LODE_TOOLS:-$HOME/.cache/lode-tools}/versitygw}
command -v s3cmd >/dev/null || { echo "needs s3cmd (apt install s3cmd)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/lode-s3bench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=lodebench AWS_SECRET_ACCESS_KEY=lodebenchsecret0123456789
ENDPOINT=http://127.0.0.1:$PORT
mkdir -p "$WORK/gw" "$WORK/up" "$WORK/down"
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
	"$VGW" --quiet --port "127.0.0.1:$PORT" posix "$WORK/gw" >"$WORK/gw.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null; wait $GW 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "$ENDPOINT/" && break; sleep 0.05; done

cat >"$WORK/s3cfg" <<CFG
[default]
access_key = $AWS_ACCESS_KEY_ID
secret_key = $AWS_SECRET_ACCESS_KEY
host_base = 127.0.0.1:$PORT
host_bucket = 127.0.0.1:$PORT
use_https = False
signature_v2 = False
bucket_location = us-east-1
progress_meter = False
CFG
S3CMD=(s3cmd -c "$WORK/s3cfg" --no-check-md5 --no-preserve)
"${S3CMD[@]}" mb s3://bench >/dev/null

go build -o "$WORK/lodebench" ./bench/s3
for i in $(seq -f %06g 0 $((N - 1))); do head -c $SIZE /dev/urandom >"$WORK/up/obj$i"; done

now() { date +%s.%N; }
rate() { python3 -c "import sys; n,s,t=map(float,sys.argv[1:]); print(f'{n*s/1e6/t:.1f}')" "$N" "$SIZE" "$1"; }

echo "versitygw $(go version -m "$VGW" | awk '$1=="mod"{print $3}'); $N objects of $SIZE bytes; $(nproc) CPUs"
# s3cmd: one process, objects one after another (it is single-threaded).
t0=$(now); "${S3CMD[@]}" put "$WORK"/up/obj* s3://bench/s3cmd/ >/dev/null; t1=$(now)
S3CMD_PUT=$(python3 -c "print($t1-$t0)")
t0=$(now); "${S3CMD[@]}" get --recursive s3://bench/s3cmd/ "$WORK/down/" >/dev/null; t1=$(now)
S3CMD_GET=$(python3 -c "print($t1-$t0)")
printf 's3cmd put c=1  n=%d: %.3f s, %s MB/s\n' "$N" "$S3CMD_PUT" "$(rate "$S3CMD_PUT")"
printf 's3cmd get c=1  n=%d: %.3f s, %s MB/s\n' "$N" "$S3CMD_GET" "$(rate "$S3CMD_GET")"
cmp -s "$WORK/up/obj000000" "$WORK/down/obj000000" || { echo "s3cmd round trip differs" >&2; exit 1; }

for c in 1 16; do
	"$WORK/lodebench" -url "s3://bench/lode-c$c/?endpoint=$ENDPOINT&path_style=true" -n "$N" -size $SIZE -c $c | tee -a "$WORK/lode.out"
done
python3 - "$WORK/lode.out" "$S3CMD_PUT" "$S3CMD_GET" "$N" "$SIZE" <<'PY'
import re, sys
out, sput, sget, n, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lode = {}
for line in open(out):
    m = re.match(r"lode (\w+)\s+c=(\d+)\s.*?: ([\d.]+) s", line)
    if m:
        lode[(m[1], int(m[2]))] = float(m[3])
for op, s in (("put", sput), ("get", sget)):
    l1 = lode[(op, 1)]
    print(f"{op}: lode c=1 takes {l1/s:.2f}x the time of s3cmd (goal <= 1.2x); lode c=16 is {s/lode[(op,16)]:.1f}x faster than s3cmd")
PY
