#!/usr/bin/env bash
# Cross-builds and vets every platform dpgate supports: the gateway and
# the reference agent (dpgate, "dpgate agent") and dpload for Windows,
# macOS and Linux on amd64 and arm64. With --out DIR the binaries stay
# there with a SHA256SUMS file (a release); otherwise they are thrown
# away after the build (CI). Version and commit are set as scripts/deb.sh
# sets them.
#
#   bash scripts/cross.sh                 # vet and build every platform
#   bash scripts/cross.sh --out dist/     # and keep the binaries
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

out=""
if [ "${1:-}" = "--out" ]; then
  out=$2
fi
keep=$out
if [ -z "$out" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo 0.0.0)}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
ldflags="-s -w -X github.com/dpgate/dpgate/internal/gateway.version=$VERSION -X github.com/dpgate/dpgate/internal/gateway.commit=$COMMIT"

platforms="linux/amd64 linux/arm64 windows/amd64 windows/arm64 darwin/amd64 darwin/arm64"
for p in $platforms; do
  os=${p%/*} arch=${p#*/} ext=""
  [ "$os" = windows ] && ext=.exe
  GOOS=$os GOARCH=$arch go vet ./...
  for cmd in dpgate dpload; do
    GOOS=$os GOARCH=$arch CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/${cmd}_${os}_${arch}${ext}" "./cmd/$cmd"
  done
  echo "$p: vet clean, built"
done
(cd "$out" && sha256sum dpgate_* dpload_* > SHA256SUMS)
if [ -n "$keep" ]; then
  ls -l "$out"
fi
