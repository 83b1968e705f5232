// Cluster-wide questions and operations between shardcast nodes and a Node socket.io 4.8 node
// with @socket.io/redis-adapter (driven by tests/cluster.rs, which holds a shardcast server in
// its own process and talks to this script over stdin/stdout, one JSON line at a time).
//
// NODES: comma-separated shardcast URLs; REDIS_URL (REDIS_SHARDED=1: every node on the
// sharded adapter, which has no allRooms()). This script starts its own Node node, puts
// two socket.io-client sockets on every node (its own included) in one room, prints
// {"room", "ids"}; checks that its own fetchSockets(), allRooms() and an acked broadcast
// (emitWithAck, from this node and from a handler on the first shardcast node) see every socket
// and room of every node (shardcast nodes answer the adapter's
// REMOTE_FETCH, ALL_ROOMS and BROADCAST requests; socket.io's allSockets() stays local with
// this adapter) and prints {"node_checks":"ok"}; then, told "disconnect" on stdin (the Rust side
// has emitted "handle-news" to the room, made every member join "joined" and disconnected
// "joined", all from shardcast's ServerHandle), checks that every socket got the news once and
// its server-side disconnect, prints {"disconnects":"ok"}, and exits at the next stdin line.
// A deadline (20 s) that passes is a failure.
"use strict";
const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { io: connect } = require("socket.io-client");
const { createClient } = require("redis");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");

const deadline = setTimeout(() => fail("deadline passed"), 20000);
function fail(why) {
  console.error(`cluster ops failed: ${why}`);
  process.exit(1);
}
const same = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis client: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  const http = createServer();
  const io = new Server(http, { pingInterval: 2000, pingTimeout: 5000 });
  // REDIS_SHARDED=1: the sharded adapter (Redis 7 sharded pub/sub), which has no allRooms().
  const sharded = Boolean(process.env.REDIS_SHARDED);
  io.adapter(sharded ? createShardedAdapter(pub, sub) : createAdapter(pub, sub));
  io.on("connection", (s) => s.on("join", (room, cb) => { s.join(room); cb(true); }));
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  const urls = [...process.env.NODES.split(","), `http://127.0.0.1:${http.address().port}`];
  const ROOM = `ops-${process.pid}`;
  const clients = [];
  for (const url of urls) {
    for (let i = 0; i < 2; i++) {
      const s = connect(url, { transports: ["websocket"], reconnection: false, forceNew: true });
      s.news = [];
      s.on("ack-me", (x, cb) => cb({ id: s.id, x }));
      s.on("handle-news", (m) => s.news.push(m));
      await new Promise((res, rej) => { s.on("connect", res); s.on("connect_error", rej); });
      if ((await s.timeout(5000).emitWithAck("join", ROOM)) !== true) fail(`join on ${url}`);
      clients.push(s);
    }
  }
  const ids = clients.map((s) => s.id);
  console.log(JSON.stringify({ room: ROOM, ids }));

  const fetched = await io.in(ROOM).fetchSockets();
  if (!same(fetched.map((s) => s.id), ids)) fail(`fetchSockets saw ${JSON.stringify(fetched.map((s) => s.id))}, want ${JSON.stringify(ids)}`);
  for (const f of fetched) if (!f.rooms.has(ROOM)) fail(`fetched socket ${f.id} is not in ${ROOM}: ${[...f.rooms]}`);
  if (!sharded) {
    const rooms = await io.of("/").adapter.allRooms();
    if (!rooms.has(ROOM)) fail(`allRooms has no ${ROOM}`);
  }
  // An acked broadcast from this node: every node's recipients answer (shardcast nodes answer
  // the BROADCAST request with their client count and each ack).
  const answers = await io.to(ROOM).timeout(5000).emitWithAck("ack-me", 7);
  if (!same(answers.map((a) => a.id), ids) || answers.some((a) => a.x !== 7)) fail(`emitWithAck answers ${JSON.stringify(answers)}`);
  // An acked broadcast from a handler on the first shardcast node ("ask-room": the test's own
  // handler there emits "ack-me" to the room with an ack and sends the answers back as "acks").
  const first = clients[0];
  const got = await new Promise((resolve) => {
    first.once("acks", resolve);
    first.emit("ask-room", ROOM);
  });
  if (!same(got.map((a) => a.id), ids)) fail(`a shardcast handler's emit_with_ack got ${JSON.stringify(got)}`);
  console.log(JSON.stringify({ node_checks: "ok" }));

  const reasons = new Map();
  for (const s of clients) s.on("disconnect", (reason) => reasons.set(s, reason));
  await new Promise((r) => process.stdin.once("data", r));
  await new Promise((resolve) => {
    const t = setInterval(() => {
      if (reasons.size === clients.length) {
        // The Rust side emitted "handle-news" from its ServerHandle before disconnecting.
        for (const s of clients) if (JSON.stringify(s.news) !== JSON.stringify([{ n: 1 }])) fail(`${s.id} got news ${JSON.stringify(s.news)}`);
        clearInterval(t);
        resolve();
      }
    }, 10);
  });
  for (const [s, reason] of reasons) if (reason !== "io server disconnect") fail(`${s.id} disconnected with ${reason}`);
  console.log(JSON.stringify({ disconnects: "ok" }));
  // Stay in the cluster until the Rust side has asked its last question.
  await new Promise((r) => process.stdin.once("data", r));
}

main().then(
  () => {
    clearTimeout(deadline);
    process.exit(0);
  },
  (e) => fail(e.stack || String(e)),
);
