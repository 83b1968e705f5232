# Repro: questions from other nodes (FETCH_SOCKETS over Redis) are not counted in the inbound bound.
import sys, time, subprocess, socket, re, threading, urllib.request, json
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from wsc import ws_connect
BIN, NREQ, NSOCK = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
RP, PORT, ADMIN = 21120, 21121, 21122
red = subprocess.Popen(["redis-server", "--port", str(RP), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
time.sleep(0.5)
srv = subprocess.Popen([BIN, "--bind", f"127.0.0.1:{PORT}", "--threads", "1", "--admin-bind", f"127.0.0.1:{ADMIN}",
                        "--redis", f"redis://127.0.0.1:{RP}/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{srv.pid}/status").read()).group(1)) // 1024
def metric(name):
    m = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    return [l for l in m.splitlines() if l.startswith(name)]
def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
try:
    time.sleep(1.5)
    socks = []
    for i in range(NSOCK):
        ws = ws_connect("127.0.0.1", PORT); ws.recv_text(); ws.send("40"); ws.recv_text(); socks.append(ws)
    time.sleep(0.5)
    base = rss()
    print("connected", NSOCK, "sockets; rss", base, "MiB;", metric("shardcast_cluster")[:3])
    peak = [base, 0]
    stop = False
    def sample():
        while not stop:
            peak[0] = max(peak[0], rss()); time.sleep(0.01)
    t = threading.Thread(target=sample); t.start()
    r = socket.create_connection(("127.0.0.1", RP))
    batch = b"".join(resp("PUBLISH", "socket.io-request#/#", json.dumps({"uid": "evil", "requestId": f"q{i}", "type": 5, "opts": {"rooms": [], "except": []}})) for i in range(NREQ))
    t0 = time.time(); r.sendall(batch)
    got = 0; buf = b""
    while got < NREQ:
        buf += r.recv(65536); got = buf.count(b"\r\n")
    print(f"{NREQ} FETCH_SOCKETS requests published in {time.time()-t0:.2f}s")
    time.sleep(5); stop = True; t.join()
    print("peak rss", peak[0], "MiB (base", base, "); rss now", rss())
    print(metric("shardcast_cluster"))
finally:
    srv.terminate(); srv.wait(timeout=10); red.terminate(); red.wait(timeout=10)
