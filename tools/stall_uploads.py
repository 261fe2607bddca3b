"""Memory under stalled uploads: N connections each declare a 16 MB body, send SENT bytes and stop.

    .venv/bin/python -m tools.stall_uploads ROOT MODEL N SENT [edgecnn serve options...]

Starts `edgecnn serve MODEL` from the checkout ROOT on a loopback port, opens the N uploads and
prints the server's RSS before and 2 s after (docs/RELIABILITY.md). Loopback only.
"""

import socket
import subprocess
import sys
import time
import os
import httpx

root, model, n, sent = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
extra = sys.argv[5:]
name = os.path.basename(os.path.dirname(os.path.abspath(model))).encode()  # the default model name
port = 18000 + os.getpid() % 1000
proc = subprocess.Popen(
    [sys.executable, "-m", "edgecnn.cli", "serve", model, "--port", str(port), *extra],
    cwd=root,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
for _ in range(300):
    try:
        if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.1)


def rss():
    return int([line for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS")][0].split()[1]) // 1024


before = rss()
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v2/models/"
        + name
        + b"/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 16000000\r\n\r\n"
    )
    try:
        s.sendall(b" " * sent)
    except OSError:
        pass
    socks.append(s)
time.sleep(2)
print(f"{n} stalled uploads x {sent / 2**20:.0f} MiB sent: server RSS {before} -> {rss()} MiB (+{rss() - before})")
for s in socks:
    s.close()
proc.terminate()
proc.wait(30)
