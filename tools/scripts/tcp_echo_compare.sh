#!/usr/bin/env bash
# TCP echo load run: netpoll's examples/tcp_echo side by side with tools mio_echo (a
# minimal single-purpose mio echo server, the practical ceiling for byte echo), same client
# (tools tcp_load), same machine, in one run, alternating servers each round.
#
# Usage: tools/scripts/tcp_echo_compare.sh [DURATION_SECS] [ROUNDS] [CONN_COUNTS...]
#   defaults: 5 s, 2 rounds, connection counts "100 5000"; message size 64 B (SIZE env).
#   Server and client each get one thread (POLLERS env), on a 2-core machine.
# Output: one line per run, then a summary table of medians with netpoll/mio ratios;
# raw lines also go to target/bench/tcp_echo_compare.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
dur="${1:-5}"; rounds="${2:-2}"; shift $(( $# > 2 ? 2 : $# )) || true
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(100 5000)
size="${SIZE:-64}"; pollers="${POLLERS:-1}"
cargo build --release --quiet --example tcp_echo
cargo build --release --quiet -p netpoll-tools --bin mio_echo --bin tcp_load
bin=target/release
mkdir -p target/bench
out=target/bench/tcp_echo_compare.txt; : > "$out"
port=19300
run() { # server-name conns
  local name=$1 conns=$2 pid line
  port=$((port + 1))
  case $name in
    netpoll) "$bin/examples/tcp_echo" --addr "127.0.0.1:$port" --pollers "$pollers" > /dev/null & ;;
    mio)     "$bin/mio_echo" --addr "127.0.0.1:$port" --threads "$pollers" > /dev/null & ;;
  esac
  pid=$!
  sleep 0.5
  line=$("$bin/tcp_load" --addr "127.0.0.1:$port" --conns "$conns" --size "$size" \
         --duration "$dur" --pollers "$pollers" --sources 8 --server-pid "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "server=$name $line" | tee -a "$out"
}
for ((r = 1; r <= rounds; r++)); do
  for c in "${counts[@]}"; do
    run netpoll "$c"; run mio "$c"
  done
done
python3 - "$out" <<'PY'
import sys, statistics as st
rows = [dict(kv.split('=', 1) for kv in l.split()) for l in open(sys.argv[1]) if l.strip()]
print("\n| conns | netpoll msgs/s | mio msgs/s | ratio | netpoll CPU us/msg | mio CPU us/msg | CPU ratio |")
print("|---|---|---|---|---|---|---|")
for c in sorted({int(r['conns']) for r in rows}):
    def med(server, key):
        return st.median(float(r[key]) for r in rows if r['server'] == server and int(r['conns']) == c)
    a, b = med('netpoll', 'msgs_per_sec'), med('mio', 'msgs_per_sec')
    ca, cb = med('netpoll', 'server_cpu_us_per_msg'), med('mio', 'server_cpu_us_per_msg')
    print(f"| {c} | {a:,.0f} | {b:,.0f} | {a/b:.2f}x | {ca:.2f} | {cb:.2f} | {ca/cb:.2f}x |")
PY
