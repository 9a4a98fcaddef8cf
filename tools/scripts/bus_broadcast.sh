#!/usr/bin/env bash
# Cross-node broadcast (issue 17): the same receivers on one node (ws_echo), and over two nodes
# (two ws_echo bound to one channel) on a redis-server and on a nats-server, the sender on one
# of them; rounds alternate. Needs redis-server and nats-server on the PATH and release builds
# (`cargo build --release --example ws_echo && cargo build --release -p netpoll-tools`).
# Usage: tools/scripts/bus_broadcast.sh CONNS RATE SIZE SECS ROUNDS
set -u
B="$(cd "$(dirname "$0")/../.." && pwd)/target/release"
conns=$1; rate=$2; size=$3; secs=$4; rounds=$5
redis-server --port 16380 --bind 127.0.0.1 --save '' --appendonly no > /dev/null 2>&1 & rpid=$!
nats-server -p 14223 -a 127.0.0.1 > /dev/null 2>&1 & npid=$!
sleep 0.5
start() { # LOG ARGS... -> sets spid sport
  local log=$1; shift
  $B/examples/ws_echo --addr 127.0.0.1:0 --pollers 1 --idle-timeout 0 --max-connections 20000 "$@" > $log 2>&1 & spid=$!
  for _ in $(seq 100); do grep -q "listening on" $log && break; sleep 0.05; done
  sport=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' $log)
}
for r in $(seq $rounds); do
  for mode in one redis nats; do
    if [ $mode = one ]; then
      start /tmp/bb_a.log; a=$spid; pa=$sport
      out=$($B/ws_load --url ws://127.0.0.1:$pa/broadcast --mode broadcast --rate $rate --conns $conns --size $size --duration $secs --sources 16 --server-pid $a 2>&1 | head -1)
      kill $a
    else
      url=redis://127.0.0.1:16380; [ $mode = nats ] && url=nats://127.0.0.1:14223
      start /tmp/bb_a.log --$mode $url; a=$spid; pa=$sport
      start /tmp/bb_b.log --$mode $url; b=$spid; pb=$sport
      sleep 0.5
      out=$($B/ws_load --url ws://127.0.0.1:$pa/broadcast --url2 ws://127.0.0.1:$pb --mode broadcast --rate $rate --conns $conns --size $size --duration $secs --sources 16 --server-pid $a --server-pid $b 2>&1 | head -1)
      kill $a $b
    fi
    echo "round=$r mode=$mode $out"
    sleep 1
  done
done
kill $rpid $npid
