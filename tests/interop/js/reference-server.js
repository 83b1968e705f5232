// shared/CONTRACT.md on Node's own socket.io 4.8: the reference the interop suite is checked
// against (`node reference-server.js [port]` prints "listening on 127.0.0.1:PORT").
// With ADMIN_UI set it serves @socket.io/admin-ui (below).
// With REDIS_URL set it joins a cluster through @socket.io/redis-adapter (the cluster tests and
// benchmark; REDIS_SHARDED=1 for its sharded adapter), and prints "redis ready" each time its
// Redis clients (re)connect.
"use strict";
const { createServer } = require("node:http");
const { Server } = require("socket.io");

const httpServer = createServer();
const io = new Server(httpServer, {
  path: "/socket.io/",
  // The contract's test values; the benchmark sets production ones through the environment.
  pingInterval: Number(process.env.PING_INTERVAL || 300),
  pingTimeout: Number(process.env.PING_TIMEOUT || 200),
  maxHttpBufferSize: 1e6,
  cors: { origin: "*" },
  transports: ["polling", "websocket"],
  // RECOVERY_WINDOW (ms) turns on connection state recovery, as `--recovery-window` does.
  ...(process.env.RECOVERY_WINDOW
    ? { connectionStateRecovery: { maxDisconnectionDuration: Number(process.env.RECOVERY_WINDOW) } }
    : {}),
});

function contract(nsp) {
  nsp.on("connection", (socket) => {
    socket.emit("auth", socket.handshake.auth || {});
    socket.on("message", (...args) => socket.emit("message-back", ...args));
    socket.on("message-with-ack", (...args) => {
      const cb = typeof args[args.length - 1] === "function" ? args.pop() : null;
      if (cb) cb(...args);
    });
    const withAck = (fn) => (...args) => {
      const cb = typeof args[args.length - 1] === "function" ? args.pop() : null;
      fn(cb, ...args);
    };
    socket.on("join", withAck((cb, room) => { socket.join(room); if (cb) cb(true); }));
    socket.on("leave", withAck((cb, room) => { socket.leave(room); if (cb) cb(true); }));
    socket.on("to-room", withAck((cb, room, ...args) => { if (cb) cb(true); nsp.to(room).emit("room-message", ...args); }));
    socket.on("broadcast", withAck((cb, ...args) => { if (cb) cb(true); socket.broadcast.emit("broadcast-back", ...args); }));
    socket.on("call-me", (...args) => {
      socket.timeout(5000).emit("ping-back", ...args, (err, ...vals) => { if (!err) socket.emit("pong-result", ...vals); });
    });
    socket.on("disconnect-me", () => socket.disconnect(true));
  });
}
contract(io.of("/"));
contract(io.of("/custom"));

// ADMIN_UI=production|development serves @socket.io/admin-ui as `--admin-ui-mode` does, with
// ADMIN_USER and ADMIN_HASH (a bcrypt hash) as `--admin-ui-auth USER:HASH`, or ADMIN_HASH=none.
if (process.env.ADMIN_UI) {
  const { instrument } = require("@socket.io/admin-ui");
  instrument(io, {
    auth: process.env.ADMIN_HASH === "none" ? false : { type: "basic", username: process.env.ADMIN_USER, password: process.env.ADMIN_HASH },
    mode: process.env.ADMIN_UI,
  });
}

async function withRedis() {
  const { createClient } = require("redis");
  const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) {
    // Redis going away must not crash the node: log once per error and let the client reconnect.
    c.on("error", (e) => console.error(`redis client: ${e.message}`));
  }
  let ready = 0;
  sub.on("ready", () => { if (++ready > 1) console.log("redis ready"); });
  await Promise.all([pub.connect(), sub.connect()]);
  // REDIS_SHARDED=1: Redis 7 sharded pub/sub (`createShardedAdapter`, subscriptionMode
  // "dynamic", its default).
  io.adapter(process.env.REDIS_SHARDED ? createShardedAdapter(pub, sub) : createAdapter(pub, sub));
}

(process.env.REDIS_URL ? withRedis() : Promise.resolve()).then(() => {
  httpServer.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
    console.log(`listening on 127.0.0.1:${httpServer.address().port}`);
  });
});
