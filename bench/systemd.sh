#!/usr/bin/env bash
# Checks configs/dpgate.service with systemd's own tools: systemd-analyze
# verify (the unit parses, its binaries exist) and systemd-analyze security
# (the exposure score of its sandboxing), on a copy of the unit whose
# binary is a build of this checkout.
#
#   bash bench/systemd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is needed (Debian package systemd)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/dpgate" ./cmd/dpgate
sed "s#/usr/local/bin/dpgate#$work/dpgate#g" configs/dpgate.service > "$work/dpgate.service"
echo "== systemd-analyze verify"
systemd-analyze verify "$work/dpgate.service" && echo "clean"
echo "== systemd-analyze security"
systemd-analyze security --offline=true "$work/dpgate.service" | tail -n 1
