#!/usr/bin/env bash
# Renders a `lacquer testbed` report in headless Chromium (Debian's `chromium`):
# fails if the page logs anything to the console, and saves a screenshot.
#
#   examples/testbed-screenshot.sh [REPORT_DIR] [OUT.png]
#
# REPORT_DIR defaults to testbed-report (what `lacquer testbed` writes), OUT to
# examples/testbed-report.png (the picture in the README). CI does not run this
# script (installing Chromium does not fit in its time); the report's structure is
# checked by tests/testbed.rs.
set -euo pipefail
DIR=${1:-testbed-report}
OUT=${2:-examples/testbed-report.png}
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -f "$DIR/report.html" ]; then
  echo "no $DIR/report.html: run \`lacquer testbed --report $DIR\` first" >&2
  exit 2
fi
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --enable-logging=stderr --v=0 --window-size=1000,3000 \
  --screenshot="$OUT" "file://$(realpath "$DIR")/report.html" 2>"$LOG" >/dev/null || true
if grep -E 'CONSOLE|Uncaught' "$LOG"; then
  echo "the report logged to the console (above)" >&2
  exit 1
fi
if [ ! -s "$OUT" ]; then
  echo "no screenshot was written; Chromium said:" >&2
  cat "$LOG" >&2
  exit 1
fi
echo "rendered with no console messages: $OUT"
