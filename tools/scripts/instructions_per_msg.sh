#!/usr/bin/env bash
# User-space instructions per echoed message, counted by `valgrind --tool=callgrind`
# (deterministic, unaffected by machine noise; kernel work is not counted, see
# syscalls_per_msg.sh for that): netpoll's tcp_echo against the mio_echo ceiling, and netpoll's
# ws_echo (WebSocket, 64 B binary messages). Counts cover the whole server run, including
# start-up and accepting, so use enough messages for those to vanish.
#
# Usage: tools/scripts/instructions_per_msg.sh [CONNS] [SECS]   (default: 100 connections, 10 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
conns="${1:-100}"; secs="${2:-10}"
cargo build --release --quiet --example tcp_echo --example ws_echo
cargo build --release --quiet -p netpoll-tools --bin mio_echo --bin tcp_load --bin ws_load
bin=target/release
port=19600
for name in netpoll mio netpoll-ws; do
  port=$((port + 1))
  out=$(mktemp)
  case $name in
    netpoll)    server=("$bin/examples/tcp_echo" --pollers 1) ;;
    mio)        server=("$bin/mio_echo" --threads 1) ;;
    netpoll-ws) server=("$bin/examples/ws_echo" --pollers 1) ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$out" "${server[@]}" --addr "127.0.0.1:$port" > /dev/null 2>&1 &
  vpid=$!
  sleep 3
  case $name in
    netpoll-ws) line=$("$bin/ws_load" --url "ws://127.0.0.1:$port/echo" --conns "$conns" --size 64 --duration "$secs" --sources 8) ;;
    *)          line=$("$bin/tcp_load" --addr "127.0.0.1:$port" --conns "$conns" --size 64 --duration "$secs" --sources 8) ;;
  esac
  total=$(sed -n 's/.*total_msgs=\([0-9]*\).*/\1/p' <<< "$line")
  kill -TERM "$vpid"; wait "$vpid" 2>/dev/null || true
  ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" | head -1)
  [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1)
  echo "server=$name conns=$conns msgs=$total instructions=$ir instructions_per_msg=$(( ir / total ))"
  rm -f "$out"
done
