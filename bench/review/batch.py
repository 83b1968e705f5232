# Repro: /api/emit/batch answers "emitted": N while the cluster queue (4,096) drops most of them for the other nodes.
import sys, time, subprocess, socket, json, urllib.request
BIN, N = sys.argv[1], int(sys.argv[2])
RP, PORT, ADMIN = 21350, 21351, 21352
red = subprocess.Popen(["redis-server", "--port", str(RP), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
import socket as _s
for _ in range(50):
    try: _s.create_connection(("127.0.0.1", RP)).close(); break
    except OSError: time.sleep(0.1)
srv = subprocess.Popen([BIN, "--bind", f"127.0.0.1:{PORT}", "--threads", "1", "--admin-bind", f"127.0.0.1:{ADMIN}", "--api-key", "k",
                        "--redis", f"redis://127.0.0.1:{RP}/"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    time.sleep(1.5)
    sub = socket.create_connection(("127.0.0.1", RP))
    sub.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$11\r\nsocket.io#*\r\n"); time.sleep(0.3); sub.recv(65536)
    body = json.dumps([{"event": "e", "args": [i]} for i in range(N)]).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}/api/emit/batch", data=body, headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
    print("body", len(body), "bytes; answer:", urllib.request.urlopen(req, timeout=30).read().decode())
    time.sleep(2)
    sub.settimeout(0.5); got = b""
    try:
        while True:
            d = sub.recv(1 << 20)
            if not d: break
            got += d
    except socket.timeout: pass
    print("messages other nodes received on socket.io#*:", got.count(b"pmessage"))
finally:
    srv.terminate(); srv.wait(timeout=10); red.terminate(); red.wait(timeout=10)
    print("stderr:", srv.stderr.read().decode()[-1500:])
