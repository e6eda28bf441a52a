#!/usr/bin/env bash
# Load benchmark: Lacquer against nginx (proxy_cache) and Varnish (malloc), with a
# bare hyper server returning the same bytes from memory as the ceiling.
#
#   bash benches/load/run.sh            # ROUNDS=3 DURATION=10 by default
#   ROUNDS=1 DURATION=5 WS_OBJECTS=10000 MEM_ENTRIES=100000 bash benches/load/run.sh
#
# On a fresh Debian machine it installs wrk, nginx and varnish (apt-get), builds
# Lacquer in release mode, and runs every server pinned to CPU 0 with wrk pinned to
# CPU 1 (-t1 -c64, HTTP/1.1 keep-alive, one hot object). Targets are interleaved
# over the rounds and medians reported, as ratios to nginx and to the ceiling,
# measured in the same run. Then, in the same way:
#   (a) a working set of WS_OBJECTS distinct 1 KiB objects requested uniformly;
#   (b) 200 clients on a cold object behind a 200 ms origin (cargo bench cold_burst);
#   (c) memory: RSS after storing MEM_ENTRIES small objects, and again after a hit on
#       each, per entry beyond key, headers and body;
#   (d) purge: time to purge a tag carried by 10 and by MEM_ENTRIES entries, and hit
#       p99 with and without a purge storm.
# The tables go to stdout and benches/load/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WS_OBJECTS=${WS_OBJECTS:-100000}
MEM_ENTRIES=${MEM_ENTRIES:-1000000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
LUA=$PWD/benches/load
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

ORIGIN=18100; CEILING=18101; LACQUER=18102; NGINX=18103; VARNISH=18104; SMALL=18105

start_all() { # body size
  local size=$1
  taskset -c "$CLIENT_CPU" "$BIN" origin --listen 127.0.0.1:$ORIGIN --fixed-size "$size" >/dev/null 2>&1 & PIDS+=($!)
  # The ceiling runs on the runtime flavour Lacquer runs on here (one thread).
  taskset -c "$SERVER_CPU" "$BIN" origin --listen 127.0.0.1:$CEILING --fixed-size "$size" --threads 1 >/dev/null 2>&1 & PIDS+=($!)
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

expect_hit() { # port header-regex name [path]: a few tries while the cache warms up
  for _ in $(seq 1 20); do
    curl -sfi "http://127.0.0.1:$1${4:-/obj}" | grep -qiE "$2" && return 0
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
measure() { # port [path [lua-script [script args...]]]
  local port=$1 path=${2:-/obj} script=()
  shift
  [ $# -gt 0 ] && shift
  if [ $# -gt 0 ]; then script=(-s "$1"); shift; fi
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" \
    "http://127.0.0.1:$port$path" -- "$@" |
    awk '
      function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v+0 }
      /Requests\/sec/ { rps=$2 }
      /Non-2xx|Socket errors/ { print "wrk reported errors: " $0 > "/dev/stderr"; bad=1 }
      $1=="50%" { p50=us($2) }
      $1=="99%" { p99=us($2) }
      END { if (bad) rps=0; printf "%d %d %d\n", rps, p50, p99 }'
}

metric() { # port name: a value from a Lacquer's metrics
  curl -s "http://127.0.0.1:$1/.lacquer/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}
entries() { metric "$1" lacquer_entries; }
hits() { metric "$1" 'lacquer_requests_total{cache_status="hit"}'; }

hit_all() { # port prefix count: request each stored object once more (all hits)
  local before budget=$(( $3 / 1000 + 10 )) w h
  before=$(hits "$1")
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${budget}s" -s "$LUA/fill.lua" \
    "http://127.0.0.1:$1/" -- "$2" "$3" >/dev/null & w=$!
  while kill -0 $w 2>/dev/null; do
    h=$(hits "$1")
    if [ $(( ${h:-0} - ${before:-0} )) -ge "$3" ]; then kill $w 2>/dev/null || true; break; fi
    sleep 0.5
  done
  wait $w 2>/dev/null || true
  h=$(hits "$1")
  [ $(( ${h:-0} - ${before:-0} )) -ge "$3" ] || echo "lacquer: $(( ${h:-0} - ${before:-0} )) hits, not $3" >&2
}

stored() { # target port: how many objects it holds
  case $1 in
    lacquer) entries "$2" ;;
    nginx) find "$NGINX_CACHE" -type f | wc -l ;;
    varnish) varnishstat -n "$WORK/varnish-1024" -1 -f MAIN.n_object | awk '{ print $2 }' ;;
  esac
}

fill() { # target port prefix count: request each object once (wrk idles once done)
  local budget=$(( $4 / 1000 + 10 )) w e
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${budget}s" -s "$LUA/fill.lua" \
    "http://127.0.0.1:$2/" -- "$3" "$4" >/dev/null & w=$!
  # Done when the cache holds them all (the warm-up object besides).
  while kill -0 $w 2>/dev/null; do
    e=$(stored "$1" "$2")
    if [ "${e:-0}" -gt "$4" ]; then kill $w 2>/dev/null || true; break; fi
    sleep 0.5
  done
  wait $w 2>/dev/null || true
  e=$(stored "$1" "$2")
  [ "${e:-0}" -gt "$4" ] || echo "$1: holds ${e:-0} objects after the fill, not $4 + 1" >&2
}

median() { sort -n | awk '{a[NR]=$1} END { print a[int((NR+1)/2)] }'; }
med() { echo "$1" | tr ' ' '\n' | grep . | median; }
# Median over the rounds of a/b, each round's pair measured minutes apart at most
# (steadier than a ratio of medians when the machine's speed drifts).
ratio_med() { # "a1 a2 …" "b1 b2 …"
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= n; i++) r[i] = (y[i] > 0) ? x[i] / y[i] : 0
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
    printf "%.2f", r[int((n + 1) / 2)]
  }'
}

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
  if [ $size = 1024 ]; then
    # (a) The working set: every cache first stores all objects, then each is
    # requested uniformly at random (lookups across the whole store).
    for t in lacquer nginx varnish; do
      fill $t "$(port_of $t)" /ws/ "$WS_OBJECTS"
    done
    expect_hit $LACQUER '^cache-status: lacquer; hit' lacquer /ws/$((WS_OBJECTS / 2))
    expect_hit $NGINX '^x-cache: HIT' nginx /ws/$((WS_OBJECTS / 2))
    expect_hit $VARNISH '^x-varnish: [0-9]+ [0-9]+' varnish /ws/$((WS_OBJECTS / 2))
    for r in $(seq 1 "$ROUNDS"); do
      for t in $TARGETS; do
        read -r rps p50 p99 < <(measure "$(port_of $t)" / "$LUA/uniform.lua" /ws/ "$WS_OBJECTS")
        RPS[$t,ws]+="$rps "; P50[$t,ws]+="$p50 "; P99[$t,ws]+="$p99 "
        echo "working set round=$r $t: $rps req/s p50=${p50}us p99=${p99}us" >&2
      done
    done
  fi
  stop_all
done

# (c) and (d): a Lacquer storing MEM_ENTRIES small tagged objects, and a second one
# storing 10 of them.
echo "secret-for-the-load-benchmark" > "$WORK/token"
purge_config() { # port
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
threads = 1
[cache]
max_size = "16 GiB"
[log]
access = false
level = "warn"
[[admin.tokens]]
name = "bench"
file = "$WORK/token"
operations = ["tag"]
[[origins]]
url = "http://127.0.0.1:$ORIGIN"
EOF
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
purge_ms() { # port tag → "milliseconds entries"
  local ms n
  ms=$(curl -s -o "$WORK/purge.json" -w '%{time_total}' -X POST "http://127.0.0.1:$1/.lacquer/purge" \
    -H "Authorization: Bearer $(cat "$WORK/token")" -H 'Content-Type: application/json' \
    -d "{\"tags\":[\"$2\"]}")
  n=$(grep -oE "\"$2\": *[0-9]+" "$WORK/purge.json" | grep -oE '[0-9]+$' || echo "?")
  awk -v s="$ms" -v n="$n" 'BEGIN { printf "%.2f %s\n", s * 1000, n }'
}
taskset -c "$CLIENT_CPU" "$BIN" origin --listen 127.0.0.1:$ORIGIN --fixed-size 16 \
  --fixed-surrogate-key "campaign:all" >/dev/null 2>&1 & PIDS+=($!)
purge_config $LACQUER > "$WORK/mem.toml"
taskset -c "$SERVER_CPU" "$BIN" serve --config "$WORK/mem.toml" >/dev/null 2>&1 & LPID=$!; PIDS+=($LPID)
purge_config $SMALL > "$WORK/small.toml"
taskset -c "$SERVER_CPU" "$BIN" serve --config "$WORK/small.toml" >/dev/null 2>&1 & PIDS+=($!)
for p in $ORIGIN $LACQUER $SMALL; do wait_port $p; done
expect_hit $LACQUER '^cache-status: lacquer; hit' lacquer /warm
expect_hit $SMALL '^cache-status: lacquer; hit' lacquer /warm
RSS0=$(rss_kib $LPID)
fill lacquer $LACQUER /m/ "$MEM_ENTRIES"
ENTRIES=$(entries $LACQUER)
RSS1=$(rss_kib $LPID)
# Then each entry hit once: a hit gives an entry's buffer its shared handle.
hit_all $LACQUER /m/ "$MEM_ENTRIES"
RSS2=$(rss_kib $LPID)
# What an entry must hold: its key (http://127.0.0.1:PORT/m/N, N of the typical
# length), its stored header fields (names and values) and its body.
KEY_BYTES=$(( 17 + ${#LACQUER} + 3 + ${#MEM_ENTRIES} - 1 ))
HEADER_BYTES=$(curl -s -D - -o /dev/null "http://127.0.0.1:$ORIGIN/m/1" | tr -d '\r' |
  awk -F': ' 'NR > 1 && NF >= 2 { n += length($1) + length($2) } END { print n }')
PAYLOAD=$((KEY_BYTES + HEADER_BYTES + 16))
# (d) Hit p99 of a stored object with and without a purge storm (purges of other
# tags: 2 connections, one purge a millisecond each), interleaved.
STORM_RATES=""
for r in $(seq 1 "$ROUNDS"); do
  read -r rps p50 p99 < <(measure $LACQUER /m/1)
  P99[quiet]+="$p99 "
  taskset -c "$CLIENT_CPU" wrk -t1 -c2 -d"$((DURATION + 2))s" -s "$LUA/purge.lua" \
    "http://127.0.0.1:$LACQUER" -- "$(cat "$WORK/token")" > "$WORK/storm.txt" & STORM=$!
  sleep 1
  read -r rps p50 p99s < <(measure $LACQUER /m/1)
  P99[storm]+="$p99s "
  wait $STORM
  rate=$(awk '/Requests\/sec/ { printf "%d", $2 }' "$WORK/storm.txt")
  STORM_RATES+="$rate "
  echo "purge storm round=$r: quiet p99 ${p99}us, storm p99 ${p99s}us at $rate purges/s" >&2
done
fill lacquer $SMALL /s/ 9 # and /warm: 10 entries carry the tag
read -r PURGE_SMALL_MS PURGE_SMALL_N < <(purge_ms $SMALL campaign:all)
read -r PURGE_BIG_MS PURGE_BIG_N < <(purge_ms $LACQUER campaign:all)
stop_all

# (b) The cold burst, in process against a real origin (cargo bench --bench cold_burst).
BURST=""
if [ "${BURST_BENCH:-1}" = 1 ]; then
  BURST=$(cargo bench --locked --bench cold_burst 2>/dev/null | grep '^|' || true)
fi

{
  echo "## Cache-hit load benchmark"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"
  echo "servers pinned to CPU $SERVER_CPU, \`wrk -t1 -c$CONNS -d${DURATION}s\` pinned to CPU $CLIENT_CPU, one hot object,"
  echo "HTTP/1.1 keep-alive, loopback; median of $ROUNDS interleaved rounds (the last two columns: median of the per-round ratios)."
  echo
  echo "| server | body | hits/s | p50 | p99 | × nginx | × ceiling | × nginx, per round | × ceiling, per round |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for size in 1024 65536; do
    nginx_rps=$(med "${RPS[nginx,$size]}")
    ceil_rps=$(med "${RPS[ceiling,$size]}")
    for t in $TARGETS; do
      label=$([ $size = 1024 ] && echo "1 KiB" || echo "64 KiB")
      awk -v t="$t" -v l="$label" -v r="$(med "${RPS[$t,$size]}")" -v a="$(med "${P50[$t,$size]}")" \
        -v b="$(med "${P99[$t,$size]}")" -v n="$nginx_rps" -v c="$ceil_rps" \
        -v rn="$(ratio_med "${RPS[$t,$size]}" "${RPS[nginx,$size]}")" \
        -v rc="$(ratio_med "${RPS[$t,$size]}" "${RPS[ceiling,$size]}")" \
        'BEGIN { printf "| %s | %s | %d | %d µs | %d µs | %.2f | %.2f | %s | %s |\n", t, l, r, a, b, r/n, r/c, rn, rc }'
    done
  done
  echo
  echo "### (a) Working set: $WS_OBJECTS distinct 1 KiB objects, requested uniformly at random"
  echo
  echo "| server | hits/s | p50 | p99 | × nginx | × ceiling | × nginx, per round | × ceiling, per round |"
  echo "|---|---|---|---|---|---|---|---|"
  nginx_rps=$(med "${RPS[nginx,ws]}")
  ceil_rps=$(med "${RPS[ceiling,ws]}")
  for t in $TARGETS; do
    awk -v t="$t" -v r="$(med "${RPS[$t,ws]}")" -v a="$(med "${P50[$t,ws]}")" -v b="$(med "${P99[$t,ws]}")" \
      -v n="$nginx_rps" -v c="$ceil_rps" \
      -v rn="$(ratio_med "${RPS[$t,ws]}" "${RPS[nginx,ws]}")" -v rc="$(ratio_med "${RPS[$t,ws]}" "${RPS[ceiling,ws]}")" \
      'BEGIN { printf "| %s | %d | %d µs | %d µs | %.2f | %.2f | %s | %s |\n", t, r, a, b, r/n, r/c, rn, rc }'
  done
  echo
  echo "### (b) Cold burst: 200 clients on one cold object behind a 200 ms origin (Lacquer)"
  echo
  echo "${BURST:-(cargo bench --bench cold_burst did not run)}"
  echo
  echo "### (c) Memory: $ENTRIES stored entries with 16-byte bodies (Lacquer)"
  echo
  awk -v r0="$RSS0" -v r1="$RSS1" -v r2="$RSS2" -v n="$ENTRIES" -v p="$PAYLOAD" -v k="$KEY_BYTES" -v h="$HEADER_BYTES" 'BEGIN {
    print "| entries | RSS before | RSS after | RSS per entry | key + headers + body | overhead per entry |"
    print "|---|---|---|---|---|---|"
    per = (r1 - r0) * 1024 / n
    printf "| stored | %.1f MiB | %.1f MiB | %d B | %d B (%d + %d + 16) | %d B |\n", r0/1024, r1/1024, per, p, k, h, per - p
    per = (r2 - r0) * 1024 / n
    printf "| stored, then each hit once | %.1f MiB | %.1f MiB | %d B | %d B | %d B |\n", r0/1024, r2/1024, per, p, per - p
  }'
  echo
  echo "### (d) Purge (Lacquer)"
  echo
  echo "| tag carried by | entries the purge reported | purge request, as the client timed it |"
  echo "|---|---|---|"
  echo "| $PURGE_SMALL_N entries | $PURGE_SMALL_N | $PURGE_SMALL_MS ms |"
  echo "| $ENTRIES entries | $PURGE_BIG_N | $PURGE_BIG_MS ms |"
  echo
  awk -v q="$(med "${P99[quiet]}")" -v s="$(med "${P99[storm]}")" -v rate="$(med "$STORM_RATES")" \
    -v rr="$(ratio_med "${P99[storm]}" "${P99[quiet]}")" 'BEGIN {
    print "| hits of a stored object, wrk -t1 -c64 | p99 | × quiet | × quiet, per round |"
    print "|---|---|---|---|"
    printf "| no purges | %d µs | 1.00 | 1.00 |\n| during a purge storm (%d purges/s of other tags) | %d µs | %.2f | %s |\n", q, rate, s, s/q, rr
  }'
} | tee "$OUT"
