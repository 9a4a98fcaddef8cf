#!/usr/bin/env python3
"""Server RSS growth per idle connection.

Usage: tools/scripts/idle_rss.py SERVER_PID HOST:PORT CONNS [SOURCES] [--ws PATH]
Opens CONNS idle TCP connections from 127.0.0.1..127.0.0.SOURCES and makes each do one round
trip, so the server has accepted, registered and served every one: one byte echoed (plain TCP)
or, with --ws, a WebSocket upgrade on PATH followed by one small text message echoed. Then waits
for the RSS to settle and prints
`conns=N rss_before_kib=.. rss_after_kib=.. bytes_per_conn=..`.
"""
import socket, sys, time

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("server closed")
        buf += chunk
    return buf

def recv_head(s):
    buf = b""
    while not buf.endswith(b"\r\n\r\n"):
        buf += recv_exact(s, 1)
    return buf

args = [a for a in sys.argv[1:]]
ws_path = None
if "--ws" in args:
    i = args.index("--ws")
    ws_path = args[i + 1]
    del args[i:i + 2]
pid, addr, n = int(args[0]), args[1], int(args[2])
sources = int(args[3]) if len(args) > 3 else 8
host, port = addr.rsplit(":", 1)
before = rss_kib(pid)
socks = []
for i in range(n):
    s = socket.socket()
    s.bind((f"127.0.0.{1 + i % sources}", 0))
    s.connect((host, int(port)))
    socks.append(s)
if ws_path is None:
    for s in socks:
        s.sendall(b"x")
    for s in socks:
        assert s.recv(1) == b"x"
else:
    req = (f"GET {ws_path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    # A masked text frame "x" with mask 0 (x ^ 0 = x).
    frame = bytes([0x81, 0x81, 0, 0, 0, 0]) + b"x"
    for s in socks:
        s.sendall(req + frame)
    for s in socks:
        head = recv_head(s)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert recv_exact(s, 3) == bytes([0x81, 0x01]) + b"x"
time.sleep(1.0)
after = rss_kib(pid)
print(f"conns={n} rss_before_kib={before} rss_after_kib={after} "
      f"bytes_per_conn={(after - before) * 1024 / n:.0f}")
