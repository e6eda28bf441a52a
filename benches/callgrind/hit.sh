#!/usr/bin/env bash
# Instructions per 1 KiB cache hit, counted by callgrind (repeatable, unlike
# timings on a shared machine). Runs the release binary under callgrind twice,
# with N1 and N2 keep-alive GETs of one hot object from one client, and reports
# (I2 - I1) / (N2 - N1): startup, the miss and shutdown cancel out.
#
#   benches/callgrind/hit.sh [path/to/lacquer]   (default: target/release/lacquer)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/lacquer}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
[ -x "$BIN" ] || cargo build --release --locked --bin lacquer
N1=${N1:-2000}
N2=${N2:-12000}
WORK=$(mktemp -d /tmp/lacquer-callgrind.XXXXXX)
PIDS=()
# KEEP=dir keeps the callgrind profiles there (for callgrind_annotate).
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] && cp "$WORK"/cg.* "$KEEP"/ 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

ORIGIN=$(free_port)
"$BIN" origin --listen 127.0.0.1:$ORIGIN --fixed-size 1024 >/dev/null 2>&1 & PIDS+=($!)
wait_port $ORIGIN

run() { # requests -> total instructions
  local n=$1 port
  port=$(free_port)
  cat > "$WORK/l.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
threads = 1
[log]
access = false
level = "warn"
[[origins]]
url = "http://127.0.0.1:$ORIGIN"
CONF
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$n" "$BIN" serve --config "$WORK/l.toml" >/dev/null 2>"$WORK/vg.$n" &
  local pid=$!
  wait_port "$port"
  python3 - "$port" "$n" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("GET", "/hot"); r = c.getresponse(); r.read()  # the miss
for _ in range(n):
    c.request("GET", "/hot"); r = c.getresponse(); body = r.read()
    assert r.status == 200 and len(body) == 1024, r.status
assert "hit" in (r.getheader("cache-status") or ""), r.getheader("cache-status")
PY
  kill -TERM $pid; wait $pid || true
  awk '/^(summary|totals):/ { print $2; exit }' "$WORK/cg.$n"
}

I1=$(run $N1)
I2=$(run $N2)
python3 -c "print(f'instructions per 1 KiB hit: {($I2 - $I1) / ($N2 - $N1):.0f}  ($N2 - $N1 hits; totals $I1, $I2)')"
