#!/usr/bin/env bash
# WebSocket echo load run: netpoll's examples/ws_echo side by side with tokio-tungstenite
# (bench/peers tt_echo, default config), same client (examples/ws_load), same machine, in one
# run, alternating servers each round.
#
# Usage: benches/ws_echo_compare.sh [DURATION_SECS] [ROUNDS]
#   env CONNS (default "100 5000"), SIZES (default "64 4096"), THREADS (server threads,
#   default 1), CLIENT_POLLERS (default 1). On a 2-core machine: one core for the server, one
#   for the client.
# Output: one line per run, then a table of medians with netpoll/tokio-tungstenite ratios;
# raw lines also go to target/bench/ws_echo_compare.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
dur="${1:-5}"; rounds="${2:-2}"
read -r -a counts <<< "${CONNS:-100 5000}"
read -r -a sizes <<< "${SIZES:-64 4096}"
threads="${THREADS:-1}"; cpollers="${CLIENT_POLLERS:-1}"
cargo build --release --quiet --example ws_echo --example ws_load
cargo build --release --quiet -p netpoll-peers --bin tt_echo
bin=target/release
mkdir -p target/bench
out=target/bench/ws_echo_compare.txt; : > "$out"
port=19400
run() { # server-name conns size
  local name=$1 conns=$2 size=$3 pid line
  port=$((port + 1))
  case $name in
    netpoll) "$bin/examples/ws_echo" --addr "127.0.0.1:$port" --pollers "$threads" > /dev/null & ;;
    tokio-tungstenite) "$bin/tt_echo" --addr "127.0.0.1:$port" --threads "$threads" > /dev/null & ;;
  esac
  pid=$!
  sleep 0.5
  line=$("$bin/examples/ws_load" --addr "127.0.0.1:$port" --path /echo --conns "$conns" \
         --size "$size" --duration "$dur" --pollers "$cpollers" --sources 8 --server-pid "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "server=$name $line" | tee -a "$out"
}
for ((r = 1; r <= rounds; r++)); do
  for c in "${counts[@]}"; do
    for s in "${sizes[@]}"; do
      run netpoll "$c" "$s"; run tokio-tungstenite "$c" "$s"
    done
  done
done
python3 - "$out" <<'PY'
import sys, statistics as st
rows = [dict(kv.split('=', 1) for kv in l.split()) for l in open(sys.argv[1]) if l.strip()]
print("\n| conns | size | netpoll msgs/s | tokio-tungstenite msgs/s | ratio | netpoll CPU us/msg | t-t CPU us/msg |")
print("|---|---|---|---|---|---|---|")
keys = sorted({(int(r['conns']), int(r['size'])) for r in rows})
for c, s in keys:
    def med(server, key):
        return st.median(float(r[key]) for r in rows
                         if r['server'] == server and int(r['conns']) == c and int(r['size']) == s)
    a, b = med('netpoll', 'msgs_per_sec'), med('tokio-tungstenite', 'msgs_per_sec')
    ca, cb = med('netpoll', 'server_cpu_us_per_msg'), med('tokio-tungstenite', 'server_cpu_us_per_msg')
    print(f"| {c} | {s} | {a:,.0f} | {b:,.0f} | {a/b:.2f}x | {ca:.2f} | {cb:.2f} |")
PY
