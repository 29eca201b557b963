#!/bin/sh
# Installs local-kms (github.com/nsmithuk/local-kms), the AWS KMS protocol
# server that the internal/kms tests start on a free port, into $LODE_TOOLS
# (default ~/.cache/lode-tools), outside the repository. Idempotent: does
# nothing when the pinned version is already there. lodetest.StartKMS finds
# it there.
set -eu
VERSION=v0.0.0-20260228092603-2a5e92d09ab6 # keep in step with lodetest.LocalKMSVersion
TOOLS=${LODE_TOOLS:-$HOME/.cache/lode-tools}
BIN=$TOOLS/local-kms
if [ -x "$BIN" ] && go version -m "$BIN" 2>/dev/null | grep -q "github.com/nsmithuk/local-kms[[:space:]]*$VERSION"; then
	echo "local-kms $VERSION: $BIN"
	exit 0
fi
mkdir -p "$TOOLS"
echo "building local-kms $VERSION into $TOOLS (about a minute, once)" >&2
cd "$TOOLS" # outside any module, so go.mod of the repo is not involved
GOBIN=$TOOLS GOFLAGS= go install "github.com/nsmithuk/local-kms@$VERSION"
echo "local-kms $VERSION: $BIN"
