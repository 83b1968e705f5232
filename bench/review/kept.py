# Repro: sockets kept for connection state recovery have no count limit.
import sys, time, subprocess, urllib.request, re
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from wsc import ws_connect
BIN, PORT, ADMIN = sys.argv[1], 21101, 21102
N, ROOMS = int(sys.argv[2]), int(sys.argv[3])
srv = subprocess.Popen([BIN, "--bind", f"127.0.0.1:{PORT}", "--threads", "1", "--admin-bind", f"127.0.0.1:{ADMIN}",
                        "--recovery-window", "300000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{srv.pid}/status").read()).group(1)) // 1024
def kept():
    m = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    return sum(int(float(l.split()[-1])) for l in m.splitlines() if l.startswith("shardcast_recovery_kept_sockets"))
try:
    time.sleep(0.5)
    print("start: rss", rss(), "MiB, kept", kept())
    t0 = time.time()
    for i in range(N):
        ws = ws_connect("127.0.0.1", PORT)
        ws.recv_text()                 # 0{...}
        ws.send("40")
        ws.recv_text()                 # 40{"sid":..,"pid":..}
        import os, struct
        frames = []
        for r in range(ROOMS):
            d = ('42["join","%s%06d%04d"]' % ("x" * 240, i, r)).encode()
            frames.append(struct.pack("!BBH", 0x81, 0x80 | 126, len(d)) + b"\0\0\0\0" + d)
        ws.s.sendall(b"".join(frames))
        ws.send('421["join","last"]')   # acked: all joins were handled
        while not ws.recv_text().startswith("431"): pass
        ws.s.close()                   # transport close: the socket is kept for the window
        if time.time() - t0 > 150: print("time bound hit at", i); break
    time.sleep(1)
    print(f"after {i+1} connect/join/close cycles ({time.time()-t0:.1f}s): rss", rss(), "MiB, kept", kept())
finally:
    srv.terminate(); srv.wait(timeout=10)
