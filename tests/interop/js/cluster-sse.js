// Server-side events between a shardcast node and a Node socket.io 4.8 node with
// @socket.io/redis-adapter (driven by tests/cluster.rs): REDIS_URL. This Node node answers
// "sse-ping" with {from: "node", x}; it prints {"ready":true} once subscribed, then sends
// serverSideEmit("sse-note", 1) and serverSideEmitWithAck("sse-ping", 5), and prints the
// answers as {"answers": [...]}. A deadline (20 s) that passes is a failure.
"use strict";
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");

const deadline = setTimeout(() => fail("deadline passed"), 20000);
function fail(why) {
  console.error(`cluster sse failed: ${why}`);
  process.exit(1);
}

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis client: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server();
  // REDIS_SHARDED=1: the sharded adapter (Redis 7 sharded pub/sub).
  io.adapter(process.env.REDIS_SHARDED ? createShardedAdapter(pub, sub) : createAdapter(pub, sub));
  io.on("sse-ping", (x, cb) => cb({ from: "node", x }));
  // The adapter subscribes without waiting; a PING on the subscriber connection comes back
  // after its SUBSCRIBE was handled.
  await sub.ping();
  console.log(JSON.stringify({ ready: true }));
  // Told on stdin that the shardcast side has asked (and been answered).
  await new Promise((r) => process.stdin.once("data", r));
  io.serverSideEmit("sse-note", 1);
  const answers = await io.serverSideEmitWithAck("sse-ping", 5);
  console.log(JSON.stringify({ answers }));
}

main().then(
  () => {
    clearTimeout(deadline);
    process.exit(0);
  },
  (e) => fail(e.stack || String(e)),
);
