#!/usr/bin/env bash
# WebSocket echo load run: netpoll's examples/ws_echo side by side with its peers from
# tools (tokio-tungstenite's tt_echo, default config, and fastwebsockets' fws_echo), same
# client (tools ws_load), same machine, in one run, alternating servers each round.
#
# Usage: tools/scripts/ws_echo_compare.sh [DURATION_SECS] [ROUNDS]
#   env SERVERS (default "netpoll tokio-tungstenite fastwebsockets"; tokio-tungstenite-4k
#   (tt_echo with a 4 KiB read buffer, as the suite's tt-4k), tokio-websockets
#   (tws_echo), sockudo-ws (sockudo_echo) and netpoll-uring (ws_echo on the io_uring
#   backend; ws_echo is built with the io-uring feature, so both netpoll modes run the same
#   binary) may be named too), CONNS (default "100 5000"), SIZES (default "64 4096"),
#   THREADS (server threads, default 1), CLIENT_POLLERS (default 1). On a 2-core machine:
#   one core for the server, one for the client.
#   SYSCALLS=1 also counts each server's system calls over the measured window (perf stat on
#   the syscall tracepoints; needs perf and permission to trace) and prints a second table:
#   receives, sends and waits (epoll_wait, io_uring_enter) per echo, all system calls per
#   echo, the client's CPU per echo, and how evenly the echoes spread over the connections
#   (ws_load's top10_share: the busiest tenth's share, 0.10 when all are served alike).
# Output: one line per run, then a table of medians with netpoll's ratio to each peer; raw
# lines also go to target/bench/ws_echo_compare.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
dur="${1:-5}"; rounds="${2:-2}"
read -r -a counts <<< "${CONNS:-100 5000}"
read -r -a sizes <<< "${SIZES:-64 4096}"
read -r -a servers <<< "${SERVERS:-netpoll tokio-tungstenite fastwebsockets}"
threads="${THREADS:-1}"; cpollers="${CLIENT_POLLERS:-1}"
cargo build --release --quiet --example ws_echo --features io-uring
cargo build --release --quiet -p netpoll-tools
bin=target/release
mkdir -p target/bench
out=target/bench/ws_echo_compare.txt; : > "$out"
port=19400
run() { # server-name conns size
  local name=$1 conns=$2 size=$3 pid line
  port=$((port + 1))
  case $name in
    netpoll) "$bin/examples/ws_echo" --addr "127.0.0.1:$port" --pollers "$threads" > /dev/null & ;;
    netpoll-uring) NETPOLL_BACKEND=io_uring "$bin/examples/ws_echo" --addr "127.0.0.1:$port" --pollers "$threads" > /dev/null & ;;
    tokio-tungstenite) "$bin/tt_echo" --addr "127.0.0.1:$port" --threads "$threads" > /dev/null & ;;
    tokio-tungstenite-4k) "$bin/tt_echo" --addr "127.0.0.1:$port" --threads "$threads" --read-buffer 4096 > /dev/null & ;;
    fastwebsockets) "$bin/fws_echo" --addr "127.0.0.1:$port" --threads "$threads" > /dev/null & ;;
    tokio-websockets) "$bin/tws_echo" --addr "127.0.0.1:$port" --threads "$threads" > /dev/null & ;;
    sockudo-ws) "$bin/sockudo_echo" --addr "127.0.0.1:$port" --threads "$threads" > /dev/null & ;;
    *) echo "unknown server $name"; exit 2 ;;
  esac
  pid=$!
  sleep 0.5
  local perf_pid="" perf_start=""
  if [[ -n "${SYSCALLS:-}" ]]; then
    perf_start=$(date +%s.%N)
    perf stat -x, -I 100 -e "$syscall_events" -p "$pid" -o target/bench/syscalls.csv &
    perf_pid=$!
  fi
  line=$("$bin/ws_load" --addr "127.0.0.1:$port" --path /echo --conns "$conns" \
         --size "$size" --duration "$dur" --pollers "$cpollers" --sources 8 --server-pid "$pid" | tr '\n' ' ')
  if [[ -n "$perf_pid" ]]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    line+=" $(window_syscalls "$perf_start" "$line")"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "server=$name $line" | tee -a "$out"
}
syscall_events=raw_syscalls:sys_enter
for s in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_pwait2 io_uring_enter; do
  syscall_events+=",syscalls:sys_enter_$s"
done
# Sums perf's 100 ms intervals that fall inside ws_load's measured window and prints the
# counts per echoed message as key=value pairs.
window_syscalls() { # perf-start-unix ws_load-line
  python3 - "$1" "$2" target/bench/syscalls.csv <<'PY'
import sys
start = float(sys.argv[1])
kv = dict(x.split('=', 1) for x in sys.argv[2].split() if '=' in x)
w0 = float(kv['window_start_unix']) - start
w1 = w0 + float(kv['secs'])
msgs = max(int(kv['msgs']), 1)
sums = {}
for row in open(sys.argv[3]):
    f = row.strip().split(',')
    if len(f) < 4 or row.startswith('#'):
        continue
    t, n, name = float(f[0]), f[1], f[3]
    if w0 + 0.1 <= t <= w1 and n.isdigit():
        name = name.split(':')[-1].replace('sys_enter_', '')
        sums[name] = sums.get(name, 0) + int(n)
scale = (w1 - w0) / max(w1 - w0 - 0.1, 0.1)  # the first interval inside is left out
per = lambda *names: sum(sums.get(n, 0) for n in names) * scale / msgs
print(f"recv_per_msg={per('read', 'readv', 'recvfrom', 'recvmsg'):.3f} "
      f"send_per_msg={per('write', 'writev', 'sendto', 'sendmsg'):.3f} "
      f"wait_per_msg={per('epoll_wait', 'epoll_pwait', 'epoll_pwait2', 'io_uring_enter'):.4f} "
      f"syscalls_per_msg={per('sys_enter'):.3f}")
PY
}
for ((r = 1; r <= rounds; r++)); do
  for c in "${counts[@]}"; do
    for s in "${sizes[@]}"; do
      for name in "${servers[@]}"; do run "$name" "$c" "$s"; done
    done
  done
done
python3 - "$out" <<'PY'
import sys, statistics as st
rows = [dict(kv.split('=', 1) for kv in l.split()) for l in open(sys.argv[1]) if l.strip()]
servers = list(dict.fromkeys(r['server'] for r in rows))
peers = [p for p in servers if p != 'netpoll']
head = "| conns | size | " + " | ".join(f"{s} msgs/s" for s in servers)
head += " | " + " | ".join(f"vs {p}" for p in peers) + " | " + " | ".join(f"{s} CPU us/msg" for s in servers) + " |"
print("\n" + head)
print("|" + "---|" * (2 + 2 * len(servers) + len(peers)))
for c, z in sorted({(int(r['conns']), int(r['size'])) for r in rows}):
    def med(server, key):
        v = [float(r[key]) for r in rows if r['server'] == server and int(r['conns']) == c and int(r['size']) == z]
        return st.median(v) if v else float('nan')
    rate = {s: med(s, 'msgs_per_sec') for s in servers}
    cpu = {s: med(s, 'server_cpu_us_per_msg') for s in servers}
    cells = [f"{rate[s]:,.0f}" for s in servers]
    cells += [f"{rate['netpoll'] / rate[p]:.2f}x" for p in peers]
    cells += [f"{cpu[s]:.2f}" for s in servers]
    print(f"| {c} | {z} | " + " | ".join(cells) + " |")
if any('syscalls_per_msg' in r for r in rows):
    keys = ['recv_per_msg', 'send_per_msg', 'wait_per_msg', 'syscalls_per_msg',
            'client_cpu_us_per_msg', 'top10_share']
    print("\n| conns | size | server | " + " | ".join(keys) + " |")
    print("|" + "---|" * (3 + len(keys)))
    for c, z in sorted({(int(r['conns']), int(r['size'])) for r in rows}):
        for s in servers:
            v = [r for r in rows if r['server'] == s and int(r['conns']) == c and int(r['size']) == z]
            cells = [f"{st.median(float(r[k]) for r in v):.3f}" if all(k in r for r in v) and v else "-" for k in keys]
            print(f"| {c} | {z} | {s} | " + " | ".join(cells) + " |")
PY
