#!/usr/bin/env python3
"""Opens N WebSocket connections that upgrade and then never read (slow consumers).

Usage: tools/scripts/stuck_ws_clients.py HOST:PORT PATH N [SECONDS]
Each socket has a 4 KiB receive buffer. Holds them for SECONDS (default 3600), then exits.
Prints `stuck=N` once all are upgraded.
"""
import socket, sys, time

host, port = sys.argv[1].rsplit(":", 1)
path, n = sys.argv[2], int(sys.argv[3])
secs = float(sys.argv[4]) if len(sys.argv) > 4 else 3600
req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall(req)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    socks.append(s)
print(f"stuck={n}", flush=True)
time.sleep(secs)
