#!/usr/bin/env bash
# Load benchmark: Lacquer against nginx (proxy_cache) and Varnish (malloc), with a
# bare hyper server returning the same bytes from memory as the ceiling.
#
#   bash benches/load/run.sh            # ROUNDS=3 DURATION=10 by default
#   ROUNDS=1 DURATION=5 bash benches/load/run.sh
#
# On a fresh Debian machine it installs wrk, nginx and varnish (apt-get), builds
# Lacquer in release mode, and runs every server pinned to CPU 0 with wrk pinned to
# CPU 1 (-t1 -c64, HTTP/1.1 keep-alive, one hot object). Targets are interleaved
# over the rounds and medians reported, as ratios to nginx and to the ceiling,
# measured in the same run. The table goes to stdout and benches/load/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
WORK=$(mktemp -d /tmp/lacquer-load.XXXXXX)
chmod 755 "$WORK" # nginx's worker runs unprivileged
OUT=benches/load/results.md

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need varnishd || ! need curl; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx-light varnish curl
fi
# The distribution's own services are not used.
systemctl stop nginx varnish >/dev/null 2>&1 || true

cargo build --release --locked --bin lacquer
BIN=$PWD/target/release/lacquer

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "varnishd.*$WORK" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  return 1
}

ORIGIN=18100; CEILING=18101; LACQUER=18102; NGINX=18103; VARNISH=18104

start_all() { # body size
  local size=$1
  taskset -c "$CLIENT_CPU" "$BIN" origin --listen 127.0.0.1:$ORIGIN --fixed-size "$size" >/dev/null 2>&1 & PIDS+=($!)
  taskset -c "$SERVER_CPU" "$BIN" origin --listen 127.0.0.1:$CEILING --fixed-size "$size" >/dev/null 2>&1 & PIDS+=($!)
  cat > "$WORK/lacquer.toml" <<EOF
[server]
listen = "127.0.0.1:$LACQUER"
threads = 1
[log]
access = false
level = "warn"
[[origins]]
url = "http://127.0.0.1:$ORIGIN"
EOF
  taskset -c "$SERVER_CPU" "$BIN" serve --config "$WORK/lacquer.toml" >/dev/null 2>&1 & PIDS+=($!)
  # nginx's cache on tmpfs, writable by its unprivileged worker.
  NGINX_CACHE=$(mktemp -d /dev/shm/lacquer-nginx.XXXXXX)
  chmod 777 "$NGINX_CACHE"
  cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  tcp_nopush off;
  tcp_nodelay on;
  keepalive_requests 1000000;
  proxy_cache_path $NGINX_CACHE levels=1:2 keys_zone=bench:64m max_size=1g inactive=1h use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_lock on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
  taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log"
  taskset -c "$SERVER_CPU" varnishd -n "$WORK/varnish-$size" -a 127.0.0.1:$VARNISH -b 127.0.0.1:$ORIGIN \
    -s malloc,1g -p thread_pools=1 >/dev/null
  for p in $ORIGIN $CEILING $LACQUER $NGINX $VARNISH; do wait_port $p; done
  # Warm every cache with the object, then check that each really serves hits
  # (a benchmark of errors or misses would be worthless).
  expect_hit $LACQUER '^cache-status: lacquer; hit' lacquer
  expect_hit $NGINX '^x-cache: HIT' nginx
  expect_hit $VARNISH '^x-varnish: [0-9]+ [0-9]+' varnish
}

expect_hit() { # port header-regex name: a few tries while the cache warms up
  for _ in $(seq 1 20); do
    curl -sfi "http://127.0.0.1:$1/obj" | grep -qiE "$2" && return 0
    sleep 0.1
  done
  echo "$3: no cache hit after warm-up" >&2
  exit 1
}

stop_all() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  PIDS=()
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  pkill -f "varnishd -n $WORK" 2>/dev/null || true
  for _ in $(seq 1 50); do pgrep -f "varnishd -n $WORK" >/dev/null || break; sleep 0.1; done
  rm -rf "${NGINX_CACHE:-/nonexistent}"
  sleep 1
}

# wrk output → "rps p50_us p99_us"
measure() { # port
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/obj" |
    awk '
      function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v+0 }
      /Requests\/sec/ { rps=$2 }
      /Non-2xx|Socket errors/ { print "wrk reported errors: " $0 > "/dev/stderr"; bad=1 }
      $1=="50%" { p50=us($2) }
      $1=="99%" { p99=us($2) }
      END { if (bad) rps=0; printf "%d %d %d\n", rps, p50, p99 }'
}

median() { sort -n | awk '{a[NR]=$1} END { print a[int((NR+1)/2)] }'; }

declare -A RPS P50 P99
TARGETS="ceiling lacquer nginx varnish"
port_of() { case $1 in ceiling) echo $CEILING;; lacquer) echo $LACQUER;; nginx) echo $NGINX;; varnish) echo $VARNISH;; esac; }

for size in 1024 65536; do
  start_all $size
  for r in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
      read -r rps p50 p99 < <(measure "$(port_of $t)")
      RPS[$t,$size]+="$rps "; P50[$t,$size]+="$p50 "; P99[$t,$size]+="$p99 "
      echo "size=$size round=$r $t: $rps req/s p50=${p50}us p99=${p99}us" >&2
    done
  done
  stop_all
done

{
  echo "## Cache-hit load benchmark"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"
  echo "servers pinned to CPU $SERVER_CPU, \`wrk -t1 -c$CONNS -d${DURATION}s\` pinned to CPU $CLIENT_CPU, one hot object,"
  echo "HTTP/1.1 keep-alive, loopback; median of $ROUNDS interleaved rounds."
  echo
  echo "| server | body | hits/s | p50 | p99 | × nginx | × ceiling |"
  echo "|---|---|---|---|---|---|---|"
  for size in 1024 65536; do
    nginx_rps=$(echo ${RPS[nginx,$size]} | tr ' ' '\n' | grep . | median)
    ceil_rps=$(echo ${RPS[ceiling,$size]} | tr ' ' '\n' | grep . | median)
    for t in $TARGETS; do
      rps=$(echo ${RPS[$t,$size]} | tr ' ' '\n' | grep . | median)
      p50=$(echo ${P50[$t,$size]} | tr ' ' '\n' | grep . | median)
      p99=$(echo ${P99[$t,$size]} | tr ' ' '\n' | grep . | median)
      label=$([ $size = 1024 ] && echo "1 KiB" || echo "64 KiB")
      awk -v t="$t" -v l="$label" -v r="$rps" -v a="$p50" -v b="$p99" -v n="$nginx_rps" -v c="$ceil_rps" \
        'BEGIN { printf "| %s | %s | %d | %d µs | %d µs | %.2f | %.2f |\n", t, l, r, a, b, r/n, r/c }'
    done
  done
} | tee "$OUT"
