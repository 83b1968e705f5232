# Repro: 16 idle unauthenticated connections make /health answer 503 for 10 s.
import socket, subprocess, sys, time
BIN = sys.argv[1]
srv = subprocess.Popen([BIN, "--bind", "127.0.0.1:21111", "--threads", "1", "--admin-bind", "127.0.0.1:21112"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def health():
    s = socket.create_connection(("127.0.0.1", 21112), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    r = b""
    while True:
        d = s.recv(4096)
        if not d: break
        r += d
    return r.split(b"\r\n")[0].decode(), r.split(b"\r\n\r\n", 1)[1].decode().strip()
try:
    time.sleep(0.5)
    print("before:", health())
    idle = [socket.create_connection(("127.0.0.1", 21112)) for _ in range(16)]
    time.sleep(0.2)
    print("with 16 idle connections:", health())
    time.sleep(3)
    print("3 s later:", health())
    for s in idle: s.close()
    time.sleep(0.2)
    print("after closing them:", health())
finally:
    srv.terminate(); srv.wait(timeout=10)
