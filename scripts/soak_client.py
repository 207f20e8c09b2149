#!/usr/bin/env python3
"""Flood and abuse a running neurostimd's control API and metrics port, for a
bounded time, and say whether the daemon kept answering.

    python3 scripts/soak_client.py --socket PATH [--metrics HOST:PORT]
        --seconds S --out STATS.json [--mode abuse|probe]

Standard library only. Loopback and Unix sockets only (a --metrics host
other than 127.0.0.1/localhost/::1 is refused). Every loop is bounded in
count and time; every socket has a timeout.

mode abuse (scripts/soak.sh run 1), all at once until --seconds run out:
  - a probe: GET /status on the control socket every 0.5 s (the health
    signal: its latency, failures and the longest gap between answers);
  - a flood: rounds of 24 concurrent clients, each 8 requests alternating
    GET /status and GET /metrics on the socket and GET /metrics on the
    metrics port, one request per connection;
  - abuse, cycling: clients that connect and leave without a word, send a
    request and leave before reading (some with a TCP RST), 150 idle
    connections and 30 half-open ones (half a header, then shutdown(WR)),
    a 200 kB header, a 100 kB body, a header sent a byte every 0.3 s, random
    bytes, bad JSON / unknown fields / out-of-range targets (refused, change
    nothing), wrong methods and paths, 40 pipelined requests never read.
mode probe (run 2): only the probe, plus GET /metrics every 2 s.

At the end it asks once more for /status and /metrics (after the abuse
stopped) and writes STATS.json: requests per kind with their outcomes
(HTTP status, "closed", "timeout", "refused"), probe latency percentiles,
the longest gap between answered probes, the daemon's sample counter at the
start and the end. Exit 1 if the final requests fail, or the daemon did not
answer a probe for more than --max-gap seconds (default 10), or its sample
counter did not advance.
"""
import argparse
import collections
import json
import os
import random
import socket
import sys
import threading
import time

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Target:
    def __init__(self, kind, addr):
        self.kind, self.addr = kind, addr

    def connect(self, timeout=3.0):
        if self.kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.addr)
        return s


def read_response(s, limit=4 << 20):
    """Read one HTTP response; return (status, body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            if not buf:
                raise ConnectionResetError("closed before an answer")
            break
        buf += chunk
        if len(buf) > limit:
            break
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while length is not None and len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def request(target, method, path, body=None, timeout=3.0, extra=b""):
    s = target.connect(timeout)
    try:
        req = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n".encode() + extra
        if body is not None:
            req += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        req += b"\r\n" + (body or b"")
        s.sendall(req)
        return read_response(s)
    finally:
        s.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.defaultdict(collections.Counter)

    def add(self, kind, outcome):
        with self.lock:
            self.outcomes[kind][str(outcome)] += 1

    def run(self, kind, fn):
        try:
            r = fn()
            self.add(kind, r if r is not None else "ok")
        except socket.timeout:
            self.add(kind, "timeout")
        except (ConnectionRefusedError, FileNotFoundError):
            self.add(kind, "refused")
        except (ConnectionError, BrokenPipeError, OSError, ValueError, IndexError):
            self.add(kind, "closed")


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--metrics")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=["abuse", "probe"], default="abuse")
    ap.add_argument("--max-gap", type=float, default=10.0)
    a = ap.parse_args()

    ctl = Target("unix", a.socket)
    met = None
    if a.metrics:
        host, _, port = a.metrics.rpartition(":")
        host = host.strip("[]")
        if host not in LOOPBACK:
            sys.exit(f"soak_client: refusing non-loopback metrics address {a.metrics}")
        met = Target("tcp", (host, int(port)))

    stats = Stats()
    stop = threading.Event()
    t_start = time.monotonic()
    deadline = t_start + a.seconds
    probe_lat, probe_ok_times, probe_fail = [], [], [0]
    samples_seen = []

    def left():
        return deadline - time.monotonic()

    # ------------------------------------------------------------- probe
    def probe():
        last_metrics = 0.0
        while not stop.is_set() and left() > 0:
            t0 = time.monotonic()
            try:
                st, body = request(ctl, "GET", "/status", timeout=3.0)
                dt = time.monotonic() - t0
                if st == 200:
                    probe_lat.append(dt)
                    probe_ok_times.append(time.monotonic())
                    try:
                        j = json.loads(body)
                        n = find_samples(j)
                        if n is not None:
                            samples_seen.append(n)
                    except ValueError:
                        pass
                else:
                    probe_fail[0] += 1
                stats.add("probe_status", st)
            except Exception as e:  # noqa: BLE001 - counted, never fatal
                probe_fail[0] += 1
                stats.add("probe_status", type(e).__name__)
            if a.mode == "probe" and met and time.monotonic() - last_metrics > 2:
                last_metrics = time.monotonic()
                stats.run("probe_metrics_tcp", lambda: request(met, "GET", "/metrics")[0])
            stop.wait(0.5)

    # ------------------------------------------------------------- flood
    def flood():
        rounds = 0
        while not stop.is_set() and left() > 1 and rounds < 100000:
            rounds += 1

            def one(i):
                for k in range(8):
                    if left() <= 0:
                        return
                    sel = (i + k) % 3
                    if sel == 0:
                        stats.run("flood_status", lambda: request(ctl, "GET", "/status")[0])
                    elif sel == 1:
                        stats.run("flood_metrics_unix", lambda: request(ctl, "GET", "/metrics")[0])
                    elif met:
                        stats.run("flood_metrics_tcp", lambda: request(met, "GET", "/metrics")[0])

            ts = [threading.Thread(target=one, args=(i,)) for i in range(24)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=30)
            stop.wait(0.2)

    # ------------------------------------------------------------- abuse
    def leave_silently(t):
        s = t.connect()
        s.close()

    def leave_before_reading(t, rst):
        s = t.connect()
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        if rst and t.kind == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()

    def hold(t, n, seconds, half_open):
        socks = []
        try:
            for _ in range(n):
                if left() <= 0:
                    break
                try:
                    s = t.connect()
                    if half_open:
                        s.sendall(b"GET /status HTTP/1.1\r\nHost: loc")
                        s.shutdown(socket.SHUT_WR)
                    socks.append(s)
                except OSError:
                    stats.add(f"hold_{'half_open' if half_open else 'idle'}_{t.kind}", "connect_failed")
            time.sleep(max(0.0, min(seconds, left())))
        finally:
            closed = 0
            for s in socks:
                try:
                    s.settimeout(0.05)
                    if s.recv(1) == b"":
                        closed += 1
                except OSError:
                    pass
                s.close()
            stats.add(f"hold_{'half_open' if half_open else 'idle'}_{t.kind}", f"held {len(socks)}")
            stats.add(f"hold_{'half_open' if half_open else 'idle'}_{t.kind}", f"closed_by_daemon {closed}")

    def big_header(t):
        return request(t, "GET", "/status", extra=b"X-Big: " + b"a" * 200_000 + b"\r\n")[0]

    def big_body(t):
        return request(t, "POST", "/objective", body=b"{" + b" " * 100_000 + b"}")[0]

    def slow_header(t):
        s = t.connect(timeout=4.0)
        try:
            for ch in b"GET /status HTTP/1.1\r\nHost: localhost\r\n":
                if left() <= 0:
                    return "deadline"
                s.send(bytes([ch]))
                time.sleep(0.3)
            return "not_closed"
        except OSError:
            return "closed_by_daemon"
        finally:
            s.close()

    def garbage(t):
        s = t.connect()
        try:
            s.sendall(os.urandom(4096) + b"\r\n\r\n")
            return read_response(s)[0]
        finally:
            s.close()

    def pipelined_unread(t):
        s = t.connect()
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" * 40)
            time.sleep(min(3.0, max(0.0, left())))
            return "sent"
        finally:
            s.close()

    bad_requests = [
        ("POST", "/objective", b"{not json"),
        ("POST", "/objective", b'{"kind": "rate", "target": 500}'),
        ("POST", "/objective", b'{"kind": "rate", "target": 15, "extra": 1}'),
        ("POST", "/objective", b'{"kind": "nonsense"}'),
        ("POST", "/status", b""),
        ("GET", "/shutdown", None),
        ("GET", "/nope", None),
        ("DELETE", "/metrics", None),
        ("POST", "/arm", b'{"x": 1}'),
    ]

    def abuse():
        cycle = 0
        while not stop.is_set() and left() > 1 and cycle < 10000:
            cycle += 1
            targets = [ctl] + ([met] if met else [])
            for t in targets:
                for _ in range(20):
                    stats.run(f"leave_silently_{t.kind}", lambda: leave_silently(t))
                for i in range(20):
                    stats.run(f"leave_before_reading_{t.kind}", lambda: leave_before_reading(t, i % 2 == 0))
                if left() <= 1:
                    break
                stats.run(f"big_header_{t.kind}", lambda: big_header(t))
                stats.run(f"garbage_{t.kind}", lambda: garbage(t))
            stats.run("big_body_unix", lambda: big_body(ctl))
            for m, p, b in bad_requests:
                stats.run(f"refused_{m}_{p}", lambda: request(ctl, m, p, body=b)[0])
            # idle and half-open connections held for a few seconds, on both
            # listeners at once, with a slow header and an unread pipeline
            hs = [
                threading.Thread(target=hold, args=(ctl, 150, 3.0, False)),
                threading.Thread(target=hold, args=(ctl, 30, 3.0, True)),
                threading.Thread(target=lambda: stats.run("slow_header_unix", lambda: slow_header(ctl))),
                threading.Thread(target=lambda: stats.run("pipelined_unread_unix", lambda: pipelined_unread(ctl))),
            ]
            if met:
                hs.append(threading.Thread(target=hold, args=(met, 100, 3.0, False)))
                hs.append(threading.Thread(target=lambda: stats.run("pipelined_unread_tcp", lambda: pipelined_unread(met))))
            for h in hs:
                h.start()
            for h in hs:
                h.join(timeout=30)
            stop.wait(0.5)

    threads = [threading.Thread(target=probe)]
    if a.mode == "abuse":
        threads += [threading.Thread(target=flood), threading.Thread(target=abuse)]
    for t in threads:
        t.start()
    try:
        while left() > 0 and any(t.is_alive() for t in threads):
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=40)
    stuck = [t.name for t in threads if t.is_alive()]

    # after the abuse: the daemon must still answer
    time.sleep(0.5)
    final = {}
    for name, tgt, path in (("status", ctl, "/status"), ("metrics_unix", ctl, "/metrics"), ("metrics_tcp", met, "/metrics")):
        if tgt is None:
            continue
        try:
            st, body = request(tgt, "GET", path, timeout=5.0)
            final[name] = st
            if name == "status" and st == 200:
                n = find_samples(json.loads(body))
                if n is not None:
                    samples_seen.append(n)
        except Exception as e:  # noqa: BLE001
            final[name] = type(e).__name__

    gaps = [b - a_ for a_, b in zip([t_start] + probe_ok_times, probe_ok_times)]
    max_gap = max(gaps) if gaps else a.seconds
    lat_ms = [x * 1000 for x in probe_lat]
    out = {
        "mode": a.mode,
        "seconds": a.seconds,
        "requests": sum(sum(c.values()) for c in stats.outcomes.values()),
        "outcomes": {k: dict(v) for k, v in sorted(stats.outcomes.items())},
        "probe": {
            "answered": len(probe_lat),
            "failed": probe_fail[0],
            "p50_ms": pct(lat_ms, 0.5),
            "p99_ms": pct(lat_ms, 0.99),
            "max_ms": max(lat_ms) if lat_ms else None,
            "max_gap_s": max_gap,
        },
        "final": final,
        "samples_first": samples_seen[0] if samples_seen else None,
        "samples_last": samples_seen[-1] if samples_seen else None,
        "stuck_threads": stuck,
    }
    problems = []
    if any(v != 200 for v in final.values()):
        problems.append(f"final requests: {final}")
    if max_gap > a.max_gap:
        problems.append(f"no answered probe for {max_gap:.1f} s")
    if not samples_seen or samples_seen[-1] <= samples_seen[0]:
        problems.append("the daemon's sample counter did not advance")
    if stuck:
        problems.append(f"client threads did not finish: {stuck}")
    out["problems"] = problems
    out["ok"] = not problems
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"soak_client: {out['requests']} requests, probe {len(probe_lat)} answered / {probe_fail[0]} failed, "
          f"longest gap {max_gap:.2f} s, final {final}" + (f"; PROBLEMS: {problems}" if problems else ""))
    return 0 if not problems else 1


def find_samples(j):
    """The sample counter in GET /status (counters.samples, or samples)."""
    if isinstance(j, dict):
        c = j.get("counters")
        if isinstance(c, dict) and isinstance(c.get("samples"), int):
            return c["samples"]
        if isinstance(j.get("samples"), int):
            return j["samples"]
    return None


if __name__ == "__main__":
    sys.exit(main())
