import socket, os, struct, base64, json, time

def ws_connect(host, port, path="/socket.io/?EIO=4&transport=websocket"):
    s = socket.create_connection((host, port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d: raise EOFError("closed during handshake: %r" % buf)
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.split(b"\r\n")[0])
    return WS(s, rest)

class WS:
    def __init__(self, s, rest): self.s, self.buf = s, rest
    def send(self, text, opcode=1):
        data = text.encode() if isinstance(text, str) else text
        mask = os.urandom(4)
        n = len(data)
        if n < 126: hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536: hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else: hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
    def _need(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d: raise EOFError
            self.buf += d
    def recv(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7f; off = 2
        if n == 126: self._need(4); n = struct.unpack("!H", self.buf[2:4])[0]; off = 4
        elif n == 127: self._need(10); n = struct.unpack("!Q", self.buf[2:10])[0]; off = 10
        self._need(off + n)
        data = self.buf[off:off+n]; self.buf = self.buf[off+n:]
        return b0 & 0x0f, data
    def recv_text(self):
        while True:
            op, d = self.recv()
            if op == 1: return d.decode()
            if op == 8: raise EOFError("close %r" % d)
