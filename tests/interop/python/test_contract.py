"""The official python-socketio client against a server implementing shared/CONTRACT.md.

SHARDCAST_URL points at it. Every contract row is covered in three modes: WebSocket only,
polling only, and polling then upgrade. Run with `python -m unittest -v test_contract`.
"""
import os
import queue
import threading
import time
import unittest

import socketio

URL = os.environ["SHARDCAST_URL"]
# For https:// against the tests' self-signed certificate (tests/tls.rs sets it to 0).
SSL_VERIFY = os.environ.get("SHARDCAST_SSL_VERIFY", "1") != "0"
MODES = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}
TIMEOUT = 5


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, mode, namespaces=("/",), auth=None):
        self.sio = socketio.Client(reconnection=False, ssl_verify=SSL_VERIFY)
        self.events = queue.Queue()
        self.disconnects = queue.Queue()
        self.mode = mode
        for ns in namespaces:
            self.sio.on("*", self._recorder(ns), namespace=ns)
            self.sio.on("disconnect", self._disconnect_recorder(ns), namespace=ns)
        self.sio.connect(URL, transports=MODES[mode], namespaces=list(namespaces), auth=auth, wait_timeout=TIMEOUT)
        if mode == "upgrade":
            deadline = time.time() + TIMEOUT
            while self.sio.transport() != "websocket" and time.time() < deadline:
                time.sleep(0.01)

    def _recorder(self, ns):
        def on_any(event, *args):
            self.events.put((ns, event, args))
        return on_any

    def _disconnect_recorder(self, ns):
        def on_disconnect(reason=None):
            self.disconnects.put((ns, reason))
        return on_disconnect

    def expect(self, event, ns="/"):
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            try:
                got_ns, got_event, args = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if got_ns == ns and got_event == event:
                return args
        raise AssertionError(f"no {event!r} on {ns}")

    def nothing(self, event, wait=0.2):
        time.sleep(wait)
        while not self.events.empty():
            _, got_event, _ = self.events.get_nowait()
            if got_event == event:
                raise AssertionError(f"unexpected {event!r}")

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:
            pass


def contract_tests(mode):
    class ContractTests(unittest.TestCase):
        def client(self, **kw):
            c = Client(mode, **kw)
            self.addCleanup(c.close)
            return c

        def test_auth_event_on_both_namespaces(self):
            c = self.client(namespaces=("/", "/custom"), auth={"token": "py"})
            self.assertEqual(c.expect("auth"), ({"token": "py"},))
            self.assertEqual(c.expect("auth", "/custom"), ({"token": "py"},))
            d = self.client()
            self.assertEqual(d.expect("auth"), ({},))
            if mode == "upgrade":
                self.assertEqual(c.sio.transport(), "websocket")
            else:
                self.assertEqual(c.sio.transport(), MODES[mode][0])

        def test_message_back_with_binary(self):
            c = self.client()
            c.sio.emit("message", ("text", 7, {"k": [1, None]}, b"\x00\x01\xff"))
            self.assertEqual(c.expect("message-back"), ("text", 7, {"k": [1, None]}, b"\x00\x01\xff"))

        def test_message_with_ack(self):
            c = self.client(namespaces=("/custom",))
            self.assertEqual(c.sio.call("message-with-ack", ("a", {"b": 2}, b"bin"), namespace="/custom", timeout=TIMEOUT), ("a", {"b": 2}, b"bin"))

        def test_rooms(self):
            room = f"py-{mode}"
            a, b, outsider = self.client(), self.client(), self.client()
            self.assertIs(a.sio.call("join", room, timeout=TIMEOUT), True)
            self.assertIs(b.sio.call("join", room, timeout=TIMEOUT), True)
            self.assertIs(a.sio.call("to-room", (room, "hello", b"\x09"), timeout=TIMEOUT), True)
            self.assertEqual(a.expect("room-message"), ("hello", b"\x09"))
            self.assertEqual(b.expect("room-message"), ("hello", b"\x09"))
            self.assertIs(b.sio.call("leave", room, timeout=TIMEOUT), True)
            a.sio.emit("to-room", (room, "again"))
            self.assertEqual(a.expect("room-message"), ("again",))
            b.nothing("room-message")
            outsider.nothing("room-message")

        def test_broadcast(self):
            a, b = self.client(), self.client()
            self.assertIs(a.sio.call("broadcast", ("x", 1), timeout=TIMEOUT), True)
            self.assertEqual(b.expect("broadcast-back"), ("x", 1))
            a.nothing("broadcast-back")

        def test_call_me_server_to_client_ack(self):
            c = self.client()
            c.sio.on("ping-back", lambda *args: ("answer", args[0] + 1, b"z"))
            c.sio.emit("call-me", 41)
            self.assertEqual(c.expect("pong-result"), ("answer", 42, b"z"))

        def test_disconnect_me(self):
            c = self.client(namespaces=("/", "/custom"))
            c.expect("auth", "/custom")
            c.sio.emit("disconnect-me", namespace="/custom")
            got = [c.disconnects.get(timeout=TIMEOUT), c.disconnects.get(timeout=TIMEOUT)]
            server = socketio.Client.reason.SERVER_DISCONNECT
            self.assertEqual(got, [("/", server), ("/custom", server)])
            deadline = time.time() + TIMEOUT
            while c.sio.eio.state != "disconnected" and time.time() < deadline:
                time.sleep(0.02)
            self.assertEqual(c.sio.eio.state, "disconnected")

        def test_invalid_namespace(self):
            sio = socketio.Client(reconnection=False, ssl_verify=SSL_VERIFY)
            errors = queue.Queue()
            sio.on("connect_error", lambda data: errors.put(data), namespace="/nope")
            with self.assertRaises(socketio.exceptions.ConnectionError):
                sio.connect(URL, transports=MODES[mode], namespaces=["/nope"], wait_timeout=TIMEOUT)
            self.assertEqual(errors.get(timeout=TIMEOUT), {"message": "Invalid namespace"})
            sio.disconnect()

    ContractTests.__name__ = f"Contract_{mode}"
    ContractTests.__qualname__ = ContractTests.__name__
    return ContractTests


ContractWebsocket = contract_tests("websocket")
ContractPolling = contract_tests("polling")
ContractUpgrade = contract_tests("upgrade")


class Scale(unittest.TestCase):
    def test_many_clients_at_once(self):
        n = int(os.environ.get("PY_CLIENTS", "100"))
        clients, errors = [], []

        def run(i):
            try:
                c = Client("websocket")
                clients.append(c)
                c.sio.emit("message", i)
                if c.expect("message-back") != (i,):
                    errors.append(i)
            except Exception as e:  # noqa: BLE001 - any failure counts
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
        self.assertEqual(errors, [])
        self.assertEqual(len(clients), n)


if __name__ == "__main__":
    unittest.main()
