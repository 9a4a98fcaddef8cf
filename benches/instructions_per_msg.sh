#!/usr/bin/env bash
# User-space instructions per echoed message, netpoll tcp_echo vs the mio_echo ceiling, counted
# by `valgrind --tool=callgrind` (deterministic, unaffected by machine noise; kernel work is not
# counted, see syscalls_per_msg.sh for that). Counts cover the whole server run, including
# start-up and accepting, so use enough messages for those to vanish.
#
# Usage: benches/instructions_per_msg.sh [CONNS] [SECS]   (default: 100 connections, 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-100}"; secs="${2:-10}"
cargo build --release --quiet --example tcp_echo --example mio_echo --example tcp_load
bin=target/release/examples
port=19600
for name in netpoll mio; do
  port=$((port + 1))
  out=$(mktemp)
  case $name in
    netpoll) valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/tcp_echo" --addr "127.0.0.1:$port" --pollers 1 > /dev/null 2>&1 & ;;
    mio)     valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/mio_echo" --addr "127.0.0.1:$port" --threads 1 > /dev/null 2>&1 & ;;
  esac
  vpid=$!
  sleep 3
  line=$("$bin/tcp_load" --addr "127.0.0.1:$port" --conns "$conns" --size 64 --duration "$secs" --sources 8)
  total=$(sed -n 's/.*total_msgs=\([0-9]*\).*/\1/p' <<< "$line")
  kill -TERM "$vpid"; wait "$vpid" 2>/dev/null || true
  ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" | head -1)
  [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1)
  echo "server=$name conns=$conns msgs=$total instructions=$ir instructions_per_msg=$(( ir / total ))"
  rm -f "$out"
done
