#!/usr/bin/env python3
"""Fixed-work Socket.IO echo client: C WebSocket clients, each doing exactly N closed-loop
`message` -> `message-back` round trips (the frames shardcast-loadtest's `echo` sends), then
closing. With N=0 the clients connect (handshake, CONNECT, auth event) and close."""
import asyncio, base64, json, os, struct, sys, time

HOST, PORT = "127.0.0.1", int(sys.argv[1])
C, N = int(sys.argv[2]), int(sys.argv[3])
BODY = "x" * 100

def frame(payload: bytes, opcode=1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

async def read_frame(r):
    b0, b1 = await r.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    if b1 & 0x80:
        raise RuntimeError("server frame masked")
    return b0 & 0x0F, await r.readexactly(n)

async def read_text(r, w):
    while True:
        op, p = await read_frame(r)
        if op == 1:
            if p == b"2":  # Engine.IO ping
                w.write(frame(b"3"))
                continue
            return p
        if op == 8:
            raise RuntimeError("server closed")
        if op == 9:
            w.write(frame(p, 10))

async def client(i, ready, go, stats):
    r, w = await asyncio.open_connection(HOST, PORT)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    p = await read_text(r, w)
    assert p.startswith(b"0{"), p
    w.write(frame(b"40"))
    connected = authed = False
    while not (connected and authed):
        p = await read_text(r, w)
        connected |= p.startswith(b"40")
        authed |= p.startswith(b'42["auth"')
    ready.append(i)
    await go.wait()
    for _ in range(N):
        t0 = time.monotonic_ns()
        w.write(frame(f'42["message",{{"t":{t0},"p":"{BODY}"}}]'.encode()))
        while True:
            p = await read_text(r, w)
            if p.startswith(b'42["message-back"'):
                break
        stats["rt"] += 1
    return r, w

async def main():
    ready, go, stats = [], asyncio.Event(), {"rt": 0}
    tasks = [asyncio.create_task(client(i, ready, go, stats)) for i in range(C)]
    while len(ready) < C:
        if any(t.done() and t.exception() for t in tasks):
            raise SystemExit(f"client failed: {[t.exception() for t in tasks if t.done() and t.exception()][0]!r}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    t = time.monotonic()
    go.set()
    conns = await asyncio.gather(*tasks)
    secs = time.monotonic() - t
    for r, w in conns:
        w.write(struct.pack("!BB", 0x88, 0x80) + b"\0\0\0\0")  # close frame, empty
    await asyncio.sleep(0.5)
    for r, w in conns:
        w.close()
    print(json.dumps({"clients": C, "rounds_per_client": N, "round_trips": stats["rt"], "seconds": round(secs, 2)}))

asyncio.run(main())
