// One check of a cluster of Socket.IO nodes sharing Redis (driven by tests/cluster.rs).
//
// NODES: comma-separated node URLs; `http://127.0.0.1:PORT|polling` restricts that node's
// clients to polling (python-socketio's threaded WSGI server has no WebSocket).
// PHASE=all: PER_NODE socket.io-client sockets on every node join one room; a `to-room` from
//   one socket of each node, a `broadcast` (skip-sender) from each node, and an emit from an
//   emitter (EMITTER=node: @socket.io/redis-emitter; EMITTER=python: python-socketio's
//   write-only RedisManager run with $PYTHON; EMITTER=node+python: both) must reach every
//   member on every node exactly once (EMITTER=none: no emitter). With ROOM_SUBSCRIBERS=N
//   (sharded pub/sub), the broadcasts wait until N nodes subscribe to the room's channel. Exactly once is checked behind a fence: after everything arrived, each node sends
//   one more `to-room`; a duplicate of an earlier message from that node would come before it
//   on every path (Redis delivers one publisher's messages in order).
// PHASE=local: Redis is down; every node still serves its own clients: a `to-room` reaches
//   every member on the same node.
// Exits 0 on success; on failure prints what is missing and exits 1. A deadline (20 s) that
// passes is a failure, never a success.
"use strict";
const { io } = require("socket.io-client");
const { execFile } = require("node:child_process");
// Loaded before any socket connects: a synchronous require later would stall the event loop
// while the clients must answer the servers' pings.
const { createClient } = require("redis");
const { Emitter } = require("@socket.io/redis-emitter");

const nodes = process.env.NODES.split(",").map((s) => {
  const [url, only] = s.split("|");
  return { url, transports: only ? [only] : null };
});
const PHASE = process.env.PHASE || "all";
const PER_NODE = Number(process.env.PER_NODE || 4);
const ROOM = `room-${process.pid}-${Date.now()}`;
const deadline = setTimeout(() => fail("deadline passed"), 20000);

let clients = [];
function fail(why) {
  console.error(`cluster check (${PHASE}) failed: ${why}`);
  for (const c of clients) {
    const got = JSON.stringify({ room: c.room, bcast: c.bcast });
    console.error(`  node ${c.node} client ${c.i} (${c.socket.io.engine && c.socket.io.engine.transport.name}): ${got}`);
  }
  process.exit(1);
}

function connect(node, n, i) {
  const transports = node.transports || (i % 2 === 0 ? ["websocket"] : ["polling", "websocket"]);
  const socket = io(node.url, { transports, reconnection: false, forceNew: true });
  const c = { node: n, i, socket, room: [], bcast: [] };
  socket.on("room-message", (m) => c.room.push(m));
  socket.on("broadcast-back", (m) => c.bcast.push(m));
  socket.on("disconnect", (reason) => fail(`node ${n} client ${i} disconnected: ${reason}`));
  return new Promise((resolve, reject) => {
    socket.on("connect", () => resolve(c));
    socket.on("connect_error", (e) => reject(new Error(`${node.url}: ${e.message}`)));
  });
}

const count = (list, key) => list.filter((m) => JSON.stringify(m) === JSON.stringify(key)).length;

function waitFor(pred, what) {
  return new Promise((resolve) => {
    const t = setInterval(() => {
      if (pred()) {
        clearInterval(t);
        resolve();
      }
    }, 10);
    t.what = what;
  });
}

async function main() {
  for (let n = 0; n < nodes.length; n++) {
    for (let i = 0; i < PER_NODE; i++) clients.push(await connect(nodes[n], n, i));
  }
  for (const c of clients) {
    const ok = await c.socket.timeout(5000).emitWithAck("join", ROOM);
    if (ok !== true) fail(`join answered ${ok}`);
  }
  const senders = nodes.map((_, n) => clients.find((c) => c.node === n && c.i === 0));
  // ROOM_SUBSCRIBERS=N (sharded pub/sub): every node subscribes to the room's own channel
  // when the room comes to exist there; wait until N nodes have (PUBSUB SHARDNUMSUB).
  if (process.env.ROOM_SUBSCRIBERS) {
    const want = Number(process.env.ROOM_SUBSCRIBERS);
    const redis = createClient({ url: process.env.REDIS_URL });
    await redis.connect();
    for (;;) {
      const got = await redis.sendCommand(["PUBSUB", "SHARDNUMSUB", `socket.io#/#${ROOM}#`]);
      if (Number(got[1]) === want) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    await redis.quit();
  }
  if (PHASE === "local") {
    for (const s of senders) await s.socket.timeout(5000).emitWithAck("to-room", ROOM, { local: s.node });
    await waitFor(() => clients.every((c) => count(c.room, { local: c.node }) >= 1), "local deliveries");
    return;
  }
  const expectedRoom = [];
  for (const s of senders) {
    await s.socket.timeout(5000).emitWithAck("to-room", ROOM, { from: s.node });
    expectedRoom.push({ from: s.node });
    await s.socket.timeout(5000).emitWithAck("broadcast", { bfrom: s.node });
  }
  // EMITTER: "node", "python", both ("node+python"), each with its own message, or "none".
  for (const emitter of (process.env.EMITTER || "node").split("+").filter((e) => e !== "none")) {
    if (emitter === "python") {
      const code = "import os, socketio; socketio.RedisManager(os.environ['REDIS_URL'], write_only=True).emit('room-message', {'from': 'py-emitter'}, room=os.environ['ROOM'], namespace='/')";
      await new Promise((resolve, reject) =>
        execFile(process.env.PYTHON, ["-c", code], { env: { ...process.env, ROOM } }, (e, out, err) => (e ? reject(new Error(`python emitter: ${e.message} ${err}`)) : resolve())),
      );
      expectedRoom.push({ from: "py-emitter" });
    } else {
      const redis = createClient({ url: process.env.REDIS_URL });
      await redis.connect();
      new Emitter(redis).to(ROOM).emit("room-message", { from: "emitter" });
      await redis.quit();
      expectedRoom.push({ from: "emitter" });
    }
  }
  const allArrived = () =>
    clients.every(
      (c) =>
        expectedRoom.every((e) => count(c.room, e) >= 1) &&
        senders.every((s) => s === c || count(c.bcast, { bfrom: s.node }) >= 1),
    );
  await waitFor(allArrived, "every message");
  for (const s of senders) await s.socket.timeout(5000).emitWithAck("to-room", ROOM, { fence: s.node });
  await waitFor(() => clients.every((c) => senders.every((s) => count(c.room, { fence: s.node }) === 1)), "the fences");
  for (const c of clients) {
    for (const e of expectedRoom) if (count(c.room, e) !== 1) fail(`${JSON.stringify(e)} arrived ${count(c.room, e)} times`);
    for (const s of senders) {
      const want = s === c ? 0 : 1;
      if (count(c.bcast, { bfrom: s.node }) !== want) fail(`broadcast from node ${s.node} arrived ${count(c.bcast, { bfrom: s.node })} times, want ${want}`);
    }
  }
}

main().then(
  () => {
    clearTimeout(deadline);
    console.log(`cluster check (${PHASE}) passed: ${clients.length} clients on ${nodes.length} nodes`);
    for (const c of clients) c.socket.removeAllListeners("disconnect").close();
    process.exit(0);
  },
  (e) => fail(e.stack || String(e)),
);
