#!/bin/sh
# Time from `crictl pull` to the container's first output through containerd's
# CRI plugin: the lode snapshotter against containerd's overlayfs snapshotter,
# in one run, caches cold (docs/benchmarks.md, "containerd snapshotter").
# Root; containerd, runc, docker-registry and crictl (scripts/setup.sh).
# PAYLOAD: bytes of the demo image's unused payload (default 1 GiB).
set -eu
cd "$(dirname "$0")/.."
LODE_CONTAINERD_BENCH=1 LODE_CONTAINERD_BENCH_PAYLOAD=${PAYLOAD:-1073741824} \
	go test -count=1 -timeout 30m -run '^TestContainerdStartBench$' -v ./cmd/lode | grep -E '^RESULT|FAIL|^ok'
