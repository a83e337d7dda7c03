#!/usr/bin/env python3
"""Open N idle client connections to a proxy and report its resident memory.

Phases, each followed by a settle pause, reading VmRSS (sum over --pid):
  idle       nothing connected
  connected  N TCP connections open, no bytes sent
  requested  one HTTP/1.1 keep-alive GET sent and answered on each, then idle
Prints one JSON object.  Every wait is bounded (--timeout).
"""
import argparse, json, select, socket, sys, time


def rss_kb(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--host-header", default="app.bench.local")
    ap.add_argument("--pid", type=int, action="append", required=True)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    out = {"count": a.count}
    time.sleep(a.settle)
    out["idle_kb"] = rss_kb(a.pid)
    socks = []
    for _ in range(a.count):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    time.sleep(a.settle)
    out["connected_kb"] = rss_kb(a.pid)
    req = ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-idle-conns\r\n\r\n" % a.host_header).encode()
    ok = 0
    # send in batches of 100 so the proxy is never asked for more than 100 at once
    for i in range(0, len(socks), 100):
        batch = socks[i:i + 100]
        for s in batch:
            s.sendall(req)
        pending = {s: b"" for s in batch}
        while pending and time.monotonic() < deadline:
            r, _, _ = select.select(list(pending), [], [], 1.0)
            for s in r:
                d = s.recv(65536)
                pending[s] += d
                buf = pending[s]
                if not d or b"\r\n\r\n" in buf:
                    # nginx `return 200` has an empty body (Content-Length: 0); headers end the reply
                    if buf.startswith(b"HTTP/1.1 200"):
                        ok += 1
                    del pending[s]
    out["answered_200"] = ok
    time.sleep(a.settle)
    out["requested_kb"] = rss_kb(a.pid)
    still_open = 0
    for s in socks:
        try:
            s.setblocking(False)
            still_open += 1 if s.recv(1, socket.MSG_PEEK) else 0
        except BlockingIOError:
            still_open += 1  # nothing to read and not closed: still open
        except OSError:
            pass
    out["still_open"] = still_open
    for s in socks:
        s.close()
    print(json.dumps(out))
    return 0 if ok == a.count else 1


if __name__ == "__main__":
    sys.exit(main())
