// Sharded pub/sub under room churn (driven by tests/cluster.rs): node A's room subscriptions
// must follow the rooms A has, whatever the churn, and never cost other rooms their messages.
//
// A, B: the URLs of two shardcast nodes with --redis-sharded; REDIS_URL: their Redis.
// 1. A listener on A joins room STAY (and A subscribes to its channel: PUBSUB SHARDNUMSUB).
// 2. CHURNERS sockets on A join and leave fresh rooms as fast as A acks, for CHURN_MS; every
//    HOLD_EVERY-th room of each is kept (at most HOLD of them). Meanwhile a socket on B sends
//    K `to-room` STAY messages.
// 3. Exactly once, behind a fence: after the K, B sends one more `to-room` STAY; once it came,
//    the listener must have every one of the K exactly once (Redis delivers one publisher's
//    messages on one channel in order, so a late or duplicate copy would come before it).
// 4. Half of the churners close. `PUBSUB SHARDCHANNELS` must come to hold exactly the rooms
//    still in use (STAY and the remaining churners' kept rooms), and once everyone left, none.
// Exits 0 on success; on failure prints why and exits 1. A deadline (60 s) that passes is a
// failure, never a success.
"use strict";
const { io } = require("socket.io-client");
const { createClient } = require("redis");

const A = process.env.A, B = process.env.B;
const CHURNERS = Number(process.env.CHURNERS || 10);
const CHURN_MS = Number(process.env.CHURN_MS || 3000);
const HOLD_EVERY = Number(process.env.HOLD_EVERY || 25);
const HOLD = Number(process.env.HOLD || 10);
const K = Number(process.env.K || 1000);
const TAG = `${process.pid}-${Date.now()}`;
const STAY = `stay-${TAG}`;
const ours = (ch) => ch.startsWith(`socket.io#/#stay-${TAG}`) || ch.startsWith(`socket.io#/#churn-${TAG}-`);
const channel = (room) => `socket.io#/#${room}#`;

const deadline = setTimeout(() => fail("deadline passed"), 60000);
function fail(why) {
  console.error(`room churn check failed: ${why}`);
  process.exit(1);
}
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const opts = { transports: ["websocket"], reconnection: false, forceNew: true };

function connect(url) {
  const s = io(url, opts);
  return new Promise((resolve, reject) => {
    s.on("connect", () => resolve(s));
    s.on("connect_error", (e) => reject(new Error(`${url}: ${e.message}`)));
  });
}

async function ack(s, ...args) {
  const ok = await s.timeout(5000).emitWithAck(...args);
  if (ok !== true) fail(`${args[0]} answered ${ok}`);
}

// Polls `PUBSUB SHARDCHANNELS` until our channels are exactly `want` (a set of rooms).
async function channelsBecome(redis, want, what) {
  const wantCh = [...want].map(channel).sort();
  let got = [];
  const end = Date.now() + 10000;
  while (Date.now() < end) {
    got = (await redis.sendCommand(["PUBSUB", "SHARDCHANNELS"])).filter(ours).sort();
    if (JSON.stringify(got) === JSON.stringify(wantCh)) return;
    await wait(20);
  }
  const extra = got.filter((c) => !wantCh.includes(c));
  const missing = wantCh.filter((c) => !got.includes(c));
  fail(`${what}: ${extra.length} channels subscribed for rooms no longer in use (${extra.slice(0, 5)}), ${missing.length} rooms in use not subscribed (${missing.slice(0, 5)})`);
}

async function main() {
  const redis = createClient({ url: process.env.REDIS_URL });
  await redis.connect();
  const listener = await connect(A);
  const got = new Map();
  let fenced = false;
  listener.on("room-message", (m) => {
    if (m === "fence") fenced = true;
    else got.set(m, (got.get(m) || 0) + 1);
  });
  listener.on("disconnect", (r) => fail(`listener disconnected: ${r}`));
  await ack(listener, "join", STAY);
  while (Number((await redis.sendCommand(["PUBSUB", "SHARDNUMSUB", channel(STAY)]))[1]) !== 1) await wait(10);
  const sender = await connect(B);

  // Churn on A.
  let stop = false, joins = 0;
  const churners = [];
  for (let k = 0; k < CHURNERS; k++) {
    const s = await connect(A);
    const c = { s, held: [] };
    s.on("disconnect", (r) => { if (!c.closed) fail(`churner ${k} disconnected: ${r}`); });
    churners.push(c);
  }
  const loops = churners.map(async (c, k) => {
    for (let i = 0; !stop; i++) {
      const room = `churn-${TAG}-${k}-${i}`;
      await ack(c.s, "join", room);
      joins++;
      if (i % HOLD_EVERY === 0 && c.held.length < HOLD) c.held.push(room);
      else await ack(c.s, "leave", room);
    }
  });
  // B's messages to STAY while A churns.
  for (let i = 0; i < K; i++) {
    sender.emit("to-room", STAY, i);
    if (i % 20 === 19) await wait(2);
  }
  await wait(Math.max(0, CHURN_MS - K / 10));
  stop = true;
  await Promise.all(loops);
  await ack(sender, "to-room", STAY, "fence");
  while (!fenced) await wait(10);
  const missing = [], twice = [];
  for (let i = 0; i < K; i++) {
    const n = got.get(i) || 0;
    if (n === 0) missing.push(i);
    if (n > 1) twice.push(i);
  }
  if (missing.length || twice.length) fail(`of B's ${K} messages to ${STAY}, ${missing.length} never came (${missing.slice(0, 5)}), ${twice.length} came twice`);

  // Half of the churners leave for good; the others keep their rooms.
  const [gone, kept] = [churners.slice(0, CHURNERS / 2), churners.slice(CHURNERS / 2)];
  for (const c of gone) { c.closed = true; c.s.close(); }
  const inUse = new Set([STAY, ...kept.flatMap((c) => c.held)]);
  await channelsBecome(redis, inUse, "after the churn");
  console.log(`room churn: ${joins} joins on A, ${K}/${K} of B's messages once, ${inUse.size} rooms in use and subscribed`);
  for (const c of kept) { c.closed = true; c.s.close(); }
  await ack(listener, "leave", STAY);
  await channelsBecome(redis, new Set(), "once every client left");
  await redis.quit();
}

main().then(
  () => {
    clearTimeout(deadline);
    console.log("room churn check ok");
    process.exit(0);
  },
  (e) => fail(e.stack || e.message),
);
