#!/usr/bin/env bash
# Installs what lode needs on a fresh Debian 12 machine, idempotently:
# runtime tools (runc, fuse3, e2fsprogs, util-linux) and the real third-party
# components the tests use (skopeo, umoci, nbdkit, libnbd-bin, qemu-utils,
# s3cmd), plus the versitygw S3 server built once into a cache directory.
# Run as root (or through sudo). Safe to run again: it installs only what is missing.
set -euo pipefail

pkgs=(e2fsprogs util-linux fuse3 runc skopeo umoci nbdkit libnbd-bin qemu-utils s3cmd qemu-system-x86 linux-image-cloud-amd64 busybox-static
  docker-registry apache2-utils debootstrap) # registry, htpasswd and a real rootfs for the registry tests (#17)
# The containerd snapshotter tests (#18): containerd 1.6 with ctr and the runc shim.
pkgs+=(containerd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$here/.ci/s3.sh" ]; then
  "$here/.ci/s3.sh"
fi
if [ -x "$here/.ci/kms.sh" ]; then
  "$here/.ci/kms.sh"
fi
if [ -x "$here/.ci/crictl.sh" ]; then
  "$here/.ci/crictl.sh"
fi
