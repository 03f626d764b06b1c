#!/usr/bin/env python3
"""What one open stream costs ssehub, and how fast it shuts down with them.

    cargo build --release
    python3 bench/stream_cost.py [STREAMS]      # default 1000

Starts target/release/ssehub on a free loopback port, opens STREAMS raw
subscriptions (each reads its head and `retry:` line), prints threads, file
descriptors, memory maps and RSS per stream from /proc, then sends SIGTERM
and reports how long the process took to exit and how many streams ended
with the zero-size chunk. Loopback only; bounded by STREAMS and timeouts.
"""
import os
import signal
import socket
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
hub = subprocess.Popen(
    ["./target/release/ssehub", "--bind", "127.0.0.1:0"],
    stderr=subprocess.PIPE,
    text=True,
)
line = hub.stderr.readline()
addr = line.split("listening on http://")[1].split()[0]
host, port = addr.rsplit(":", 1)


def usage():
    status = open(f"/proc/{hub.pid}/status").read().splitlines()
    field = lambda k: int([l for l in status if l.startswith(k)][0].split()[1])
    return {
        "threads": field("Threads:"),
        "rss_kib": field("VmRSS:"),
        "fds": len(os.listdir(f"/proc/{hub.pid}/fd")),
        "maps": len(open(f"/proc/{hub.pid}/maps").readlines()),
    }


time.sleep(0.2)
before = usage()
streams = []
for _ in range(N):
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    streams.append(s)
for s in streams:
    got = b""
    while b"retry" not in got:
        got += s.recv(4096)
time.sleep(0.5)
after = usage()
print(f"{N} streams: before {before}, after {after}")
print("per stream: " + ", ".join(
    f"{k} {(after[k] - before[k]) / N:.2f}" for k in ("threads", "fds", "maps", "rss_kib")
))
started = time.time()
hub.send_signal(signal.SIGTERM)
hub.wait(timeout=10)
took = time.time() - started
clean = 0
for s in streams:
    s.settimeout(2)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except OSError:
        pass
    clean += got.endswith(b"0\r\n\r\n")
print(f"SIGTERM: exit {hub.returncode} after {took:.3f} s; {clean}/{N} streams ended with the zero chunk")
