"""python-socketio's asyncio client (aiohttp) over wss:// against shardcast with TLS.

SHARDCAST_URL is the server's https:// URL; certificates are not verified (the tests' server
uses a self-signed one). The threaded client (test_contract.py) runs over https:// polling
only: over wss:// its reader and writer threads use one OpenSSL connection at once, and about
one connection in thirty is dropped by the client itself ("WebSocket connection was closed",
then a reset from the client) against any TLS server, Node's socket.io over https included.
The asyncio client has one thread, so it is the python-socketio client for wss://.
"""
import asyncio
import os
import unittest

import socketio

URL = os.environ["SHARDCAST_URL"]
TIMEOUT = 5


class Client:
    def __init__(self):
        self.sio = socketio.AsyncClient(reconnection=False, ssl_verify=False)
        self.events = asyncio.Queue()
        self.disconnected = asyncio.Event()

        @self.sio.on("*")
        async def on_any(event, *args):
            await self.events.put((event, args))

        @self.sio.event
        async def disconnect(reason=None):
            self.disconnected.set()

    async def connect(self):
        await self.sio.connect(URL, transports=["websocket"], wait_timeout=TIMEOUT)
        assert await self.expect("auth") == ({},)
        return self

    async def expect(self, event):
        async def wait():
            while True:
                got, args = await self.events.get()
                if got == event:
                    return args
        return await asyncio.wait_for(wait(), TIMEOUT)


class Wss(unittest.IsolatedAsyncioTestCase):
    async def test_events_acks_binary_rooms_over_wss(self):
        for round_ in range(20):
            a = await Client().connect()
            self.assertEqual(a.sio.transport(), "websocket")
            await a.sio.emit("message", ("text", round_, {"k": [1, None]}, b"\x00\x01\xff"))
            self.assertEqual(await a.expect("message-back"), ("text", round_, {"k": [1, None]}, b"\x00\x01\xff"))
            ack = await a.sio.call("message-with-ack", (1, "two", b"\x03"), timeout=TIMEOUT)
            self.assertEqual(ack, (1, "two", b"\x03"))
            b = await Client().connect()
            self.assertTrue(await a.sio.call("join", "r", timeout=TIMEOUT))
            self.assertTrue(await b.sio.call("join", "r", timeout=TIMEOUT))
            self.assertTrue(await a.sio.call("to-room", ("r", "hello", round_), timeout=TIMEOUT))
            self.assertEqual(await a.expect("room-message"), ("hello", round_))
            self.assertEqual(await b.expect("room-message"), ("hello", round_))
            await b.sio.emit("disconnect-me")
            await asyncio.wait_for(b.disconnected.wait(), TIMEOUT)
            await a.sio.disconnect()


if __name__ == "__main__":
    unittest.main()
