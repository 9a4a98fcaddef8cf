#!/usr/bin/env bash
# Syscalls per echoed message, netpoll tcp_echo vs the mio_echo ceiling, counted with
# `strace -c -f` over a whole run (connect, warm-up and measurement). strace slows both
# servers a lot, so only the per-message counts mean anything, not the rates.
#
# Usage: tools/scripts/syscalls_per_msg.sh [CONNS...]   (default: 100 5000)
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(100 5000)
cargo build --release --quiet --example tcp_echo
cargo build --release --quiet -p netpoll-tools --bin mio_echo --bin tcp_load
bin=target/release
port=19500
for c in "${counts[@]}"; do
  for name in netpoll mio; do
    port=$((port + 1))
    trace=$(mktemp)
    case $name in
      netpoll) strace -c -f -o "$trace" "$bin/examples/tcp_echo" --addr "127.0.0.1:$port" --pollers 1 > /dev/null & ;;
      mio)     strace -c -f -o "$trace" "$bin/mio_echo" --addr "127.0.0.1:$port" --threads 1 > /dev/null & ;;
    esac
    spid=$!
    sleep 1
    line=$("$bin/tcp_load" --addr "127.0.0.1:$port" --conns "$c" --size 64 --duration 3 --sources 8)
    total=$(sed -n 's/.*total_msgs=\([0-9]*\).*/\1/p' <<< "$line")
    # Ending the traced server (not strace) makes strace write its summary and exit.
    pkill -f "[a-z_]*echo --addr 127.0.0.1:$port" || true
    wait "$spid" 2>/dev/null || true
    python3 - "$trace" "$name" "$c" "$total" <<'PY'
import sys
path, name, conns, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
calls = {}
for l in open(path):
    f = l.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != 'total':
        calls[f[-1]] = int(f[3])
keep = ['read', 'recvfrom', 'write', 'writev', 'sendto', 'epoll_wait', 'accept4', 'futex']
per = {k: calls.get(k, 0) / total for k in keep if calls.get(k)}
alls = sum(calls.values()) / total
print(f"server={name} conns={conns} msgs={total} syscalls_per_msg={alls:.3f} "
      + " ".join(f"{k}={v:.3f}" for k, v in per.items()))
PY
    rm -f "$trace"
  done
done
