#!/usr/bin/env python3
"""Server RSS growth per idle connection.

Usage: benches/idle_rss.py SERVER_PID HOST:PORT CONNS [SOURCES]
Opens CONNS idle TCP connections from 127.0.0.1..127.0.0.SOURCES, round-trips one byte on
each (so the server has accepted, registered and served every one), waits for the RSS to
settle, and prints `conns=N rss_before_kib=.. rss_after_kib=.. bytes_per_conn=..`.
"""
import socket, sys, time

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")

pid, addr, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sources = int(sys.argv[4]) if len(sys.argv) > 4 else 8
host, port = addr.rsplit(":", 1)
before = rss_kib(pid)
socks = []
for i in range(n):
    s = socket.socket()
    s.bind((f"127.0.0.{1 + i % sources}", 0))
    s.connect((host, int(port)))
    socks.append(s)
for s in socks:
    s.sendall(b"x")
for s in socks:
    assert s.recv(1) == b"x"
time.sleep(1.0)
after = rss_kib(pid)
print(f"conns={n} rss_before_kib={before} rss_after_kib={after} "
      f"bytes_per_conn={(after - before) * 1024 / n:.0f}")
