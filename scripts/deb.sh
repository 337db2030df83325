#!/usr/bin/env bash
# Builds dpgate_VERSION_ARCH.deb: both binaries (version and commit set by
# the linker), the systemd unit, /etc/dpgate/dpgate.yaml (a conffile), the
# docs, the man page and shell completions, and a dpgate system user made
# on install.
#
#   bash scripts/deb.sh                 # version from git describe
#   VERSION=1.2.0 bash scripts/deb.sh   # into dist/
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(git describe --tags --always 2>/dev/null | sed 's/^v//')}
VERSION=${VERSION:-0.0.0}
# Debian versions start with a digit; an untagged build is 0.0.0+git<hash>.
if [[ ! "$VERSION" =~ ^[0-9]+\. ]]; then VERSION="0.0.0+git$VERSION"; fi
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
ARCH=$(dpkg --print-architecture)
out=${OUT:-dist}
mkdir -p "$out"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

ldflags="-s -w -X github.com/dpgate/dpgate/internal/gateway.version=$VERSION -X github.com/dpgate/dpgate/internal/gateway.commit=$COMMIT"
mkdir -p "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/dpgate" "$root/usr/share/doc/dpgate" "$root/DEBIAN"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$root/usr/bin/dpgate" ./cmd/dpgate
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$root/usr/bin/dpload" ./cmd/dpload
sed 's#/usr/local/bin/dpgate#/usr/bin/dpgate#g; s#file:///usr/share/doc/dpgate/README.md#file:///usr/share/doc/dpgate/README.md#' \
  configs/dpgate.service > "$root/lib/systemd/system/dpgate.service"
cp configs/dpgate.yaml "$root/etc/dpgate/dpgate.yaml"
mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" "$root/usr/share/man/man1"
"$root/usr/bin/dpgate" completion bash > "$root/usr/share/bash-completion/completions/dpgate"
"$root/usr/bin/dpgate" completion zsh > "$root/usr/share/zsh/vendor-completions/_dpgate"
"$root/usr/bin/dpgate" man | gzip -9n > "$root/usr/share/man/man1/dpgate.1.gz"
cp README.md CHANGELOG.md docs/operations.md docs/METRICS.md "$root/usr/share/doc/dpgate/"
mkdir -p "$root/usr/share/dpgate"
cp configs/prometheus-alerts.yml configs/grafana-dashboard.json "$root/usr/share/dpgate/"
chmod 0644 "$root"/usr/share/dpgate/*
cp LICENSE "$root/usr/share/doc/dpgate/copyright"
chmod 0644 "$root/etc/dpgate/dpgate.yaml" "$root/lib/systemd/system/dpgate.service" "$root"/usr/share/doc/dpgate/* \
  "$root/usr/share/bash-completion/completions/dpgate" "$root/usr/share/zsh/vendor-completions/_dpgate" "$root/usr/share/man/man1/dpgate.1.gz"

cat > "$root/DEBIAN/control" <<CTL
Package: dpgate
Version: $VERSION
Architecture: $ARCH
Maintainer: dpgate developers <dpgate@localhost>
Section: net
Priority: optional
Depends: passwd
Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://github.com/dpgate/dpgate
Description: distribution-point gateway for branch offices
 Relays managed devices to central servers over pinned TLS, holds their
 push connections (TLS and QUIC on 13295), forms a cluster with its
 peers, forwards wake-up packets and measures its uplinks. dpload is its
 load tester.
CTL
echo /etc/dpgate/dpgate.yaml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd dpgate >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/dpgate --no-create-home --shell /usr/sbin/nologin dpgate
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    echo "dpgate installed: edit /etc/dpgate/dpgate.yaml, then: systemctl enable --now dpgate"
  fi
fi
SH
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = purge ] && getent passwd dpgate >/dev/null; then
  userdel dpgate || true
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
SH
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
deb="$out/dpgate_${VERSION}_${ARCH}.deb"
dpkg-deb --build --root-owner-group "$root" "$deb" >/dev/null
sha256sum "$deb" > "$deb.sha256"
echo "$deb"
