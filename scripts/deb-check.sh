#!/usr/bin/env bash
# Installs the Debian package into a clean Debian 12 root made with
# debootstrap (no container), as an administrator would with dpkg -i, and
# runs dpgate version and dpgate config on the installed configuration.
# As root; installs debootstrap when missing; needs deb.debian.org.
#
#   bash scripts/deb-check.sh [dist/dpgate_*.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-$(bash scripts/deb.sh)}
command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d /tmp/dpgate-deb-root.XXXXXX)
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
echo "debootstrap (minbase, bookworm) into $root"
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
mount -t proc proc "$root/proc"
cp "$deb" "$root/tmp/"
chroot "$root" dpkg -i "/tmp/$(basename "$deb")"
echo "== dpkg -s"
chroot "$root" dpkg -s dpgate | grep -E '^(Status|Version):'
echo "== getent passwd dpgate"
chroot "$root" getent passwd dpgate
echo "== dpgate version"
chroot "$root" dpgate version
echo "== dpgate config -c /etc/dpgate/dpgate.yaml"
chroot "$root" dpgate config -c /etc/dpgate/dpgate.yaml | head -5
echo "== dpload --help"
chroot "$root" dpload --help 2>&1 | head -2
echo "== files"
chroot "$root" dpkg -L dpgate | grep -E 'man1|completions|systemd|bin/|share/dpgate/'
echo "installed and checked"
