#!/usr/bin/env bash
# The tests, with their set-up: installs the tools the tests call when
# they are missing (Debian packages, as root; otherwise it names them and
# stops), fetches the Go modules, then runs go test -race on every
# package. Extra arguments go to go test (e.g. -run TestX ./push).
#
#   ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"

# Tools the tests call: openssl (reads our PEM and PKCS#12 files), curl
# (checks our pins with --pinnedpubkey), dig from dnsutils (asks the
# cluster's DNS listener), ip from iproute2 (network namespaces for the
# Wake-on-LAN broadcast test and the chaos harness), nft from nftables
# (partitions between the chaos harness's namespaces), chromium (the web
# console's test drives a headless browser), promtool from prometheus
# (checks /metrics, the alert rules and the dashboard's queries), wine64
# and mingw-w64 (the Windows build of the agent runs under Wine, with a
# ProcessPrng stub built by mingw: cmd/dpgate/wine).
# The namespace tests run only as root, so only root needs ip and nft.
need="openssl:openssl curl:curl dig:dnsutils chromium:chromium promtool:prometheus"
need="$need /usr/lib/wine/wine64:wine64 x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64-win32"
if [ "$(id -u)" -eq 0 ]; then
  need="$need ip:iproute2 nft:nftables"
fi
missing=()
for pair in $need; do
  tool=${pair%%:*}
  [ -x "$tool" ] || command -v "$tool" >/dev/null || missing+=("${pair##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "the tests need these packages: ${missing[*]}" >&2
    echo "install them (Debian: sudo apt-get install -y ${missing[*]}) or run this script as root" >&2
    exit 1
  fi
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

go mod download
# A race-enabled process sleeps a second before it exits, for reports from
# goroutines still running; every test binary and every child process the
# tests start from one (the store's check runs in a child) would pay it.
export GORACE="${GORACE:-atexit_sleep_ms=0}"
if [ "$#" -eq 0 ]; then
  set -- ./...
fi
# -parallel 6: the tests marked parallel are real processes and clusters
# that mostly wait (for failure detection, rebalancing, a browser, Wine),
# so more of them than the two cores run side by side.
exec go test -race -timeout 20m -parallel 6 "$@"
