#!/bin/sh
# Installs crictl, the CRI client the containerd snapshotter tests drive
# (crictl pull/runp/create/start/exec), into $LODE_TOOLS (default
# ~/.cache/lode-tools), outside the repository. Idempotent: does nothing when
# the pinned version is already there. lodetest.CrictlPath finds it there.
set -eu
VERSION=v1.37.0
TOOLS=${LODE_TOOLS:-$HOME/.cache/lode-tools}
BIN=$TOOLS/crictl
if [ -x "$BIN" ] && go version -m "$BIN" 2>/dev/null | grep -q "sigs.k8s.io/cri-tools[[:space:]]*$VERSION"; then
	echo "crictl $VERSION: $BIN"
	exit 0
fi
mkdir -p "$TOOLS"
echo "building crictl $VERSION into $TOOLS (a minute or two, once)" >&2
cd "$TOOLS" # outside any module, so go.mod of the repo is not involved
GOBIN=$TOOLS GOFLAGS= go install "sigs.k8s.io/cri-tools/cmd/crictl@$VERSION"
echo "crictl $VERSION: $BIN"
