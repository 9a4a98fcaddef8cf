#!/usr/bin/env bash
# A/B of user-space instructions per echoed message between a base revision and the working
# tree: both trees' tcp_echo and ws_echo (--pollers 1) under callgrind, 100 connections x 64 B
# from this tree's load clients, rounds interleaved (A B, A B, ...). Instruction counts are
# deterministic enough that two rounds show a change of a few instructions per message; use
# this before and after any hot-path change and record the figures in docs/BENCHMARKS.md.
#
# Usage: tools/scripts/ab_instructions.sh BASE_REV [ROUNDS] [SECS]
#   e.g. tools/scripts/ab_instructions.sh HEAD~3 2 10
# The base is built in a worktree under target/ab-base (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
base="${1:?usage: ab_instructions.sh BASE_REV [ROUNDS] [SECS]}"
rounds="${2:-2}"; secs="${3:-10}"
here=$(pwd)
wt="$here/target/ab-base"
if [[ -d "$wt" ]]; then
  git -C "$wt" checkout --quiet --detach "$base"
else
  git worktree add --quiet --detach "$wt" "$base"
fi
(cd "$wt" && cargo build --release --quiet --example tcp_echo --example ws_echo)
cargo build --release --quiet --example tcp_echo --example ws_echo
cargo build --release --quiet -p netpoll-tools --bin tcp_load --bin ws_load
load="$here/target/release"
port=19900
for r in $(seq 1 "$rounds"); do
  for tree in base work; do
    for kind in tcp ws; do
      port=$((port + 1))
      if [[ $tree == base ]]; then dir="$wt/target/release/examples"; else dir="$here/target/release/examples"; fi
      out=$(mktemp)
      server="$dir/tcp_echo"; [[ $kind == ws ]] && server="$dir/ws_echo"
      valgrind --tool=callgrind --callgrind-out-file="$out" "$server" --pollers 1 --addr "127.0.0.1:$port" > /dev/null 2>&1 &
      vpid=$!
      sleep 3
      if [[ $kind == tcp ]]; then
        line=$("$load/tcp_load" --addr "127.0.0.1:$port" --conns 100 --size 64 --duration "$secs" --sources 8)
      else
        line=$("$load/ws_load" --url "ws://127.0.0.1:$port/echo" --conns 100 --size 64 --duration "$secs" --sources 8)
      fi
      msgs=$(sed -n 's/.*total_msgs=\([0-9]*\).*/\1/p' <<< "$line")
      kill -TERM "$vpid"; wait "$vpid" 2> /dev/null || true
      ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" | head -1)
      [[ -n $ir ]] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out" | head -1)
      echo "round=$r tree=$tree kind=$kind msgs=$msgs instructions_per_msg=$((ir / msgs))"
      rm -f "$out"
    done
  done
done
