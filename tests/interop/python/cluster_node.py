"""shared/CONTRACT.md's room rows on python-socketio with its RedisManager: one node of the
cluster tests (tests/cluster.rs). `python cluster_node.py` with REDIS_URL set prints
"listening on 127.0.0.1:PORT" once it serves (polling only: the threaded WSGI server of the
standard library has no WebSocket)."""
import logging
import os
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import socketio

logging.basicConfig(level=logging.WARNING)
mgr = socketio.RedisManager(os.environ["REDIS_URL"])
sio = socketio.Server(client_manager=mgr, async_mode="threading", cors_allowed_origins="*")
# Subscribe now, not at the first client (python-socketio's default), so the cluster is whole
# before any client connects.
sio.manager_initialized = True
mgr.initialize()


def contract(nsp):
    @sio.on("connect", namespace=nsp)
    def connect(sid, environ, auth=None):
        sio.emit("auth", auth or {}, to=sid, namespace=nsp)

    @sio.on("join", namespace=nsp)
    def join(sid, room):
        sio.enter_room(sid, room, namespace=nsp)
        return True

    @sio.on("leave", namespace=nsp)
    def leave(sid, room):
        sio.leave_room(sid, room, namespace=nsp)
        return True

    @sio.on("to-room", namespace=nsp)
    def to_room(sid, room, *args):
        sio.emit("room-message", tuple(args), room=room, namespace=nsp)
        return True

    @sio.on("broadcast", namespace=nsp)
    def broadcast(sid, *args):
        sio.emit("broadcast-back", tuple(args), skip_sid=sid, namespace=nsp)
        return True


contract("/")
contract("/custom")


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


srv = make_server("127.0.0.1", 0, socketio.WSGIApp(sio), server_class=Server, handler_class=QuietHandler)
print(f"listening on 127.0.0.1:{srv.server_port}", flush=True)
srv.serve_forever()
