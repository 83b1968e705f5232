#!/usr/bin/env python3
"""Memory a hostile client makes a shardcast binary hold, per byte it sends.

    python3 bench/hostile.py [--json out.json] [--only 1,2,...] path/to/shardcast

For each finding of the hostile-client audit (docs/architecture.md, "Bounded by construction";
tests/hostile.rs and tests/hostile_deflate.rs drive the same inputs in the test harness), a
fresh server is started (`--bind 127.0.0.1:PORT --threads 1 --no-pin --ping-interval 25000
--ping-timeout 20000`, plus `--websocket-compression` for the compressed cases), the hostile
input is sent from one or a few loopback connections, and the server's resident memory (VmRSS
of /proc/PID/status, sampled every 20 ms) is followed. Printed per finding: the bytes the
client actually got into the kernel, the peak RSS growth over the RSS before the scenario,
their ratio, and whether a bystander (a fresh connection doing a polling handshake) still got
its 200 while the hostile connections were open.

Bounded: every scenario stops after its byte budget, its time limit (at most ~40 s), or when
the server's RSS passes --rss-cap (default 2 GiB; "capped" is then noted, and the ratio is a
lower bound); the server is stopped with SIGTERM, then SIGKILL. Loopback only. A run takes
under 5 minutes per binary. Python 3 standard library only.
"""
import base64
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

HOST = "127.0.0.1"
MAX_PAYLOAD = 1_000_000  # the server's default --max-payload


class Sampler(threading.Thread):
    """Follows VmRSS of a pid; `peak` is the highest seen."""

    def __init__(self, pid, cap):
        super().__init__(daemon=True)
        self.pid, self.cap = pid, cap
        self.peak = self.last = rss(pid) or 0
        self.running = True
        self.dead = False

    def run(self):
        while self.running:
            r = rss(self.pid)
            if r is None:
                self.dead = True
                return
            self.last = r
            self.peak = max(self.peak, r)
            time.sleep(0.02)

    @property
    def capped(self):
        return self.peak >= self.cap


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Server:
    def __init__(self, binary, port, compression):
        args = [binary, "--bind", f"{HOST}:{port}", "--threads", "1", "--no-pin",
                "--ping-interval", "25000", "--ping-timeout", "20000"]
        if compression:
            args.append("--websocket-compression")
        self.port = port
        self.log = open(os.devnull, "wb")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{binary} did not start on port {port}")

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(3)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


# ---------------------------------------------------------------- HTTP helpers

def http_response(s, limit=10.0):
    """Reads one HTTP response (head + Content-Length body); returns (status, body)."""
    s.settimeout(limit)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[:length]


def get(path):
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def handshake(port):
    """A polling handshake on a fresh connection; returns the sid."""
    s = socket.create_connection((HOST, port), timeout=5)
    s.sendall(get("/socket.io/?EIO=4&transport=polling"))
    status, body = http_response(s)
    s.close()
    if status != 200 or not body.startswith(b"0{"):
        raise RuntimeError(f"handshake: HTTP {status} {body[:80]!r}")
    return json.loads(body[1:])["sid"]


def bystander(port, limit=5.0):
    """A fresh client's polling handshake: (ok, milliseconds or the error)."""
    t = time.time()
    try:
        s = socket.create_connection((HOST, port), timeout=limit)
        s.sendall(get("/socket.io/?EIO=4&transport=polling"))
        status, body = http_response(s, limit)
        s.close()
        ok = status == 200 and body.startswith(b"0{")
        return ok, f"{(time.time() - t) * 1000:.0f} ms" if ok else f"HTTP {status}"
    except OSError as e:
        return False, f"{type(e).__name__} after {time.time() - t:.1f} s"


def push(s, data, until, stall=2.0, cap=None):
    """Writes `data` on a non-blocking socket until all is in the kernel, `until` (a time)
    passes, the socket stays blocked for `stall` seconds, the peer closes, or the sampler's
    cap is hit. Returns (bytes sent, why it stopped)."""
    s.setblocking(False)
    view, sent, blocked_since = memoryview(data), 0, None
    while sent < len(data):
        if time.time() > until:
            return sent, "time"
        if cap is not None and cap.capped:
            return sent, "rss cap"
        try:
            n = s.send(view[sent:sent + 262144])
            sent += n
            blocked_since = None
        except BlockingIOError:
            now = time.time()
            blocked_since = blocked_since or now
            if now - blocked_since > stall:
                return sent, "blocked"
            select.select([], [s], [], 0.05)
        except OSError as e:
            return sent, f"peer closed ({type(e).__name__})"
    return sent, "all sent"


def closed_by_peer(s):
    """Whether the server closed (or reset) this connection; reads and discards what came."""
    s.setblocking(False)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


# ---------------------------------------------------------------- WebSocket helpers

class Ws:
    """A minimal client WebSocket for the hostile Socket.IO cases."""

    def __init__(self, port, deflate):
        self.s = socket.create_connection((HOST, port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
        self.s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.s.recv(4096)
            if not d:
                raise ConnectionError("closed during the WebSocket handshake")
            buf += d
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.split(b"\r\n")[0].decode())
        self.deflate = b"permessage-deflate" in head.lower()
        self.sent = len(key) + 200 + len(ext)
        # Engine.IO open, then Socket.IO CONNECT to "/" and its answer.
        self.recv_until(lambda op, p: p.startswith(b"0{"))
        self.send(1, b"40")
        self.recv_until(lambda op, p: p.startswith(b"40"))

    def frame(self, opcode, payload, fin=True, rsv1=False):
        mask = os.urandom(4)
        b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, n)
        m = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""
        return head + mask + body

    def send(self, opcode, payload, fin=True, rsv1=False):
        f = self.frame(opcode, payload, fin, rsv1)
        self.s.settimeout(5)
        self.s.sendall(f)
        self.sent += len(f)

    def recv_frame(self, limit=5.0):
        """One server frame (opcode, payload); None once closed."""
        self.s.settimeout(limit)
        while True:
            b = self.buf
            if len(b) >= 2:
                n, h = b[1] & 0x7F, 2
                if n == 126 and len(b) >= 4:
                    n, h = struct.unpack("!H", b[2:4])[0], 4
                elif n == 127 and len(b) >= 10:
                    n, h = struct.unpack("!Q", b[2:10])[0], 10
                if n < 126 or h > 2:
                    if len(b) >= h + n:
                        self.buf = b[h + n:]
                        return b[0] & 0x0F, b[h:h + n]
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d

    def recv_until(self, want, limit=5.0):
        while True:
            f = self.recv_frame(limit)
            if f is None:
                raise ConnectionError("closed")
            if f[0] == 8:
                raise ConnectionError(f"close {f[1][:2].hex()}")
            if want(*f):
                return f


def deflated(n, more_follows):
    """n zeros as one permessage-deflate message (or a fragment that more will follow)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(bytes(n)) + c.flush(zlib.Z_SYNC_FLUSH)
    return out if more_follows else out[:-4]  # a whole message drops 00 00 ff ff


# ---------------------------------------------------------------- the findings

def f1_parked_poll(port, cap, budget):
    """Finding 1: 256 MiB streamed behind a parked long-poll GET on one connection."""
    sid = handshake(port)
    s = socket.create_connection((HOST, port), timeout=5)
    head = get(f"/socket.io/?EIO=4&transport=polling&sid={sid}")
    s.sendall(head)
    time.sleep(0.2)  # parked: nothing to send to a session that has not CONNECTed
    n, why = push(s, b"x" * (256 << 20), time.time() + budget, cap=cap)
    return {"sent": len(head) + n, "stopped": why, "hold": [s]}


def f2_pong_flood(port, cap, budget):
    """Finding 2: ~100 MB of PONG packets POSTed to one polling session."""
    sid = handshake(port)
    body = "\x1e".join(["3"] * (MAX_PAYLOAD // 2)).encode()
    req = (f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {HOST}\r\n"
           f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection((HOST, port), timeout=10)
    sent, why, until, statuses = 0, "all sent", time.time() + budget, {}
    for _ in range(100):
        if time.time() > until:
            why = "time"
            break
        if cap.capped:
            why = "rss cap"
            break
        try:
            s.settimeout(10)
            s.sendall(req)
            sent += len(req)
            status, _ = http_response(s, 10)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                why = f"HTTP {status}"
                break
        except OSError as e:
            why = f"{type(e).__name__}"
            break
    return {"sent": sent, "stopped": why, "statuses": statuses, "hold": [s]}


def f3_pipelined(port, cap, budget):
    """Finding 3: tiny pipelined requests on one connection that never reads its responses."""
    s = socket.create_connection((HOST, port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    one = f"GET /x HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    burst = one * ((4 << 20) // len(one))
    sent, why, until = 0, "time", time.time() + min(budget, 8)
    while time.time() < until:
        n, why = push(s, burst, until, cap=cap)
        sent += n
        if why != "all sent":
            break
    return {"sent": sent, "stopped": why, "hold": [s]}


def attachments(port, cap, budget, per_packet, size, conns=4, rounds=60):
    """Finding 7a: BINARY_EVENTs whose attachments are compressed binary messages of zeros."""
    frame_data = deflated(size, False)
    places = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(per_packet))
    header = f'45{per_packet}-["e",{places}]'.encode()
    ws = [Ws(port, True) for _ in range(conns)]
    if not all(w.deflate for w in ws):
        return {"sent": sum(w.sent for w in ws), "stopped": "permessage-deflate not agreed", "hold": [w.s for w in ws]}
    sent, closes, why, until = 0, 0, "all sent", time.time() + budget
    for _ in range(rounds):
        if time.time() > until:
            why = "time"
            break
        if cap.capped:
            why = "rss cap"
            break
        for i, w in enumerate(ws):
            try:
                w.send(1, header)
                for _ in range(per_packet):
                    w.send(2, frame_data, rsv1=True)
            except OSError:
                pass
            if closed_by_peer(w.s):
                closes += 1
                sent += w.sent
                w.s.close()
                try:
                    ws[i] = Ws(port, True)
                except OSError:
                    why = "reconnect refused"
        time.sleep(0.01)
    sent += sum(w.sent for w in ws)
    return {"sent": sent, "stopped": why, "sessions_closed_by_server": closes, "hold": [w.s for w in ws]}


def f7a(port, cap, budget):
    """7a as written in the issue: one attachment of ~1 MB inflated per packet, repeated."""
    return attachments(port, cap, budget, 1, MAX_PAYLOAD - 1000)


def f7a10(port, cap, budget):
    """7a as the audit found it: ten declared attachments of 900 KB inflated each."""
    return attachments(port, cap, budget, 10, 900_000, rounds=20)


def f7b(port, cap, budget, conns=50):
    """Finding 7b: an unfinished compressed fragment (FIN=0, RSV1) of ~900 KB inflated, on 50
    connections; a ping after it shows the server took the fragment."""
    data = deflated(900_000, True)
    ws, pongs = [], 0
    for _ in range(conns):
        w = Ws(port, True)
        if not w.deflate:
            return {"sent": w.sent, "stopped": "permessage-deflate not agreed", "hold": [w.s]}
        w.send(2, data, fin=False, rsv1=True)
        w.send(9, b"p")
        ws.append(w)
    for w in ws:
        try:
            # The contract's `auth` event may come first; a close (1009, 1013) ends the wait.
            while (f := w.recv_frame(5)) is not None and f[0] not in (8, 10):
                pass
            pongs += f is not None and f[0] == 10
        except OSError:
            pass
    return {"sent": sum(w.sent for w in ws), "stopped": f"{pongs} of {conns} pongs", "hold": [w.s for w in ws]}


def f8_stalled_bodies(port, cap, budget, conns=300):
    """Finding 8: 300 POSTs of Content-Length 1,000,000 that stop after 900,000 bytes."""
    sid = handshake(port)
    head = (f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 1000000\r\n\r\n").encode()
    data = head + b"4" * 900_000
    held, sent, stops, until = [], 0, {}, time.time() + budget
    for _ in range(conns):
        if time.time() > until or cap.capped:
            break
        try:
            s = socket.create_connection((HOST, port), timeout=5)
        except OSError:
            stops["connect failed"] = stops.get("connect failed", 0) + 1
            continue
        n, why = push(s, data, until, stall=0.5, cap=cap)
        sent += n
        stops[why] = stops.get(why, 0) + 1
        held.append(s)
    time.sleep(0.5)
    shed = sum(closed_by_peer(s) for s in held)
    return {"sent": sent, "stopped": ", ".join(f"{v}× {k}" for k, v in stops.items()),
            "closed_by_server": shed, "hold": held}


FINDINGS = [
    ("1", "256 MiB behind a parked long-poll GET (1 connection)", f1_parked_poll, False, 8),
    ("2", "PONG flood, ~100 MB POSTed to one polling session", f2_pong_flood, False, 40),
    ("3", "pipelined tiny GETs, never reading (1 connection, 8 s)", f3_pipelined, False, 8),
    ("7a", "compressed BINARY_EVENT attachment ~1 MB inflated, repeated (4 connections)", f7a, True, 15),
    ("7a10", "compressed BINARY_EVENT, 10 attachments × 900 KB inflated, repeated (4 connections)", f7a10, True, 15),
    ("7b", "unfinished compressed fragment, ~900 KB inflated (50 connections)", f7b, True, 15),
    ("8", "300 stalled POST bodies (Content-Length 1,000,000, 900,000 sent)", f8_stalled_bodies, False, 20),
]


def run(binary, key, what, fn, compression, budget, port, rss_cap):
    srv = Server(binary, port, compression)
    res = {"finding": key, "what": what, "compression": compression}
    try:
        ok0, _ = bystander(port)  # warms the listener and the first session's structures
        time.sleep(0.3)
        before = rss(srv.p.pid)
        cap = Sampler(srv.p.pid, rss_cap)
        cap.start()
        t = time.time()
        try:
            r = fn(port, cap, budget)
        except (OSError, RuntimeError) as e:
            r = {"sent": 0, "stopped": f"error: {type(e).__name__}: {e}", "hold": []}
        hold = r.pop("hold")
        time.sleep(1.0)  # let the server take what is in flight
        ok, why = bystander(port)
        cap.running = False
        cap.join()
        grown = max(0, cap.peak - before)
        res.update(r)
        res.update({"seconds": round(time.time() - t, 1), "rss_before": before, "rss_peak": cap.peak,
                    "rss_growth": grown, "ratio": grown / r["sent"] if r["sent"] else None,
                    "capped": cap.capped, "bystander_ok": ok and ok0, "bystander": why,
                    "server_alive": srv.alive() and not cap.dead})
        for s in hold:
            s.close()
    finally:
        srv.stop()
    return res


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def main():
    args = sys.argv[1:]
    out = only = None
    rss_cap = 2 << 30
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--json":
            out = args.pop(0)
        elif flag == "--only":
            only = args.pop(0).split(",")
        elif flag == "--rss-cap":
            rss_cap = int(args.pop(0))
        else:
            sys.exit(__doc__)
    if len(args) != 1:
        sys.exit(__doc__)
    binary = args[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    print(f"# {binary}")
    print("| finding | input | bytes sent | peak RSS growth | growth ÷ sent | bystander | server | stopped |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (key, what, fn, comp, budget) in enumerate(FINDINGS):
        if only and key not in only:
            continue
        r = run(binary, key, what, fn, comp, budget, 9700 + i, rss_cap)
        results.append(r)
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "—"
        if r["capped"]:
            ratio = f"≥ {ratio} (capped at {mib(rss_cap)})"
        extra = "".join(f", {k} {r[k]}" for k in ("statuses", "sessions_closed_by_server", "closed_by_server") if k in r)
        print(f"| {key} | {what} | {r['sent']:,} | {mib(r['rss_growth'])} | {ratio} | "
              f"{'OK' if r['bystander_ok'] else 'FAILED'} ({r['bystander']}) | {'alive' if r['server_alive'] else 'DIED'} | "
              f"{r['stopped']}{extra} |", flush=True)
    if out:
        with open(out, "w") as f:
            json.dump({"binary": binary, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
