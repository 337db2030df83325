#!/usr/bin/env bash
# Renders a dpload HTML report in headless Chromium (Debian's chromium,
# installed if missing), counts console messages (there should be none)
# and saves a screenshot next to the report.
#
#   bash bench/report-check.sh /tmp/connect-report.html
set -euo pipefail
report=${1:?usage: bench/report-check.sh REPORT.html}
if ! command -v chromium >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
shot="${report%.html}.png"
log=$(mktemp)
timeout 60 chromium --headless=new --no-sandbox --disable-gpu --window-size=800,1500 \
  --screenshot="$shot" --enable-logging=stderr --v=0 "file://$(realpath "$report")" 2>"$log"
n=$(grep -c "CONSOLE" "$log" || true)
echo "console messages: $n; screenshot: $shot"
rm -f "$log"
[ "$n" -eq 0 ]
