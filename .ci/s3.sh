#!/bin/sh
# Installs versitygw, the S3-compatible server that the store/s3 tests and
# bench/s3bench.sh run on 127.0.0.1, into $LODE_TOOLS (default
# ~/.cache/lode-tools), outside the repository. Idempotent: does nothing when
# the pinned version is already there. lodetest.S3Server finds it there.
set -eu
VERSION=v1.8.0 # keep in step with lodetest.VersityGWVersion
TOOLS=${LODE_TOOLS:-$HOME/.cache/lode-tools}
BIN=$TOOLS/versitygw
if [ -x "$BIN" ] && go version -m "$BIN" 2>/dev/null | grep -q "github.com/versity/versitygw[[:space:]]*$VERSION"; then
	echo "versitygw $VERSION: $BIN"
	exit 0
fi
mkdir -p "$TOOLS"
echo "building versitygw $VERSION into $TOOLS (a few minutes, once)" >&2
cd "$TOOLS" # outside any module, so go.mod of the repo is not involved
GOBIN=$TOOLS GOFLAGS= go install "github.com/versity/versitygw/cmd/versitygw@$VERSION"
echo "versitygw $VERSION: $BIN"
