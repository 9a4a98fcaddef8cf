#!/usr/bin/env python3
"""permessage-deflate interop: the Python `websockets` client (an independent RFC 7692
implementation on CPython's zlib, keeping context both ways unless told not to) against a
netpoll server (examples/ws_echo with --deflate or --deflate-takeover BITS).

    python3 tools/scripts/deflate_interop.py ws://127.0.0.1:PORT/echo EXPECTED

EXPECTED is a substring the negotiated Sec-WebSocket-Extensions must contain. The client
sends 3,000 messages (text and binary, empty to 1 MiB, many of them repeating earlier ones,
so that context takeover has something to refer to), checks every echo is the same message,
and checks that the bytes the server sent were compressed: fewer than a third of the plain
payload. Exits non-zero on any mismatch.
"""

import random
import socket
import sys
from urllib.parse import urlparse

from websockets.sync.client import connect


class CountingSocket(socket.socket):
    """Counts the bytes the server sends (the compressed frames on the wire)."""

    received = 0

    def recv(self, n, *args):
        data = super().recv(n, *args)
        CountingSocket.received += len(data)
        return data


def message(rnd, n):
    words = ["price", '"bid":', "101.25", "volume", '{"sym":"ABC"}', " ", "\n", "netpoll"]
    size = rnd.choice([0, 1, 10, 63, 64, 200, 1000, 5000, 20000, 70000])
    if n % 500 == 7:
        size = 1 << 20
    text = "".join(rnd.choice(words) for _ in range(size // 5 + 1))[:size]
    return text if n % 3 else text.encode()


def main():
    uri, expected = sys.argv[1], sys.argv[2]
    url = urlparse(uri)
    sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((url.hostname, url.port))
    rnd = random.Random(1)
    plain = 0
    with connect(uri, sock=sock, max_size=1 << 24, compression="deflate") as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        if expected not in ext:
            sys.exit(f"negotiated {ext!r}, expected it to contain {expected!r}")
        sent = []
        for n in range(3000):
            # Every fourth message repeats an earlier one.
            msg = rnd.choice(sent) if sent and n % 4 == 0 else message(rnd, n)
            sent.append(msg)
            ws.send(msg)
            got = ws.recv(timeout=30)
            if got != msg:
                sys.exit(f"message {n}: echo differs ({len(got)} vs {len(msg)} bytes)")
            plain += len(msg)
    wire = CountingSocket.received
    print(f"deflate interop ok: {len(sent)} messages, {plain} payload bytes, "
          f"{wire} bytes from the server, extensions {ext!r}")
    if wire * 3 > plain:
        sys.exit(f"the server's bytes were not compressed: {wire} for {plain}")


if __name__ == "__main__":
    main()
