// Packet-for-packet comparison of connection state recovery with Node's socket.io 4.8
// (connectionStateRecovery): raw WebSockets against REFERENCE_URL and SHARDCAST_URL, both
// with a recovery window. A joins room r and closes its WebSocket; B sends
// two `to-room` r; C connects with A's pid and last offset. The transcripts must be identical
// once ids, pids and offsets (Node's are yeast strings, shardcast's are numbers) are
// normalised: C gets both room messages, then a CONNECT with A's sid and pid, then `auth`.
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const WebSocket = require("ws");

const REF = process.env.REFERENCE_URL;
const OURS = process.env.SHARDCAST_URL;
if (!REF || !OURS) throw new Error("REFERENCE_URL and SHARDCAST_URL must be set");

function normalise(p, ids) {
  return p
    .replace(/"sid":"([^"]+)"/g, (_, s) => `"sid":"${ids(s)}"`)
    .replace(/"pid":"([^"]+)"/g, (_, s) => `"pid":"${ids(s)}"`)
    .replace(/"offset":"[^"]+"/g, '"offset":"<offset>"')
    .replace(/"pingInterval":\d+,"pingTimeout":\d+/, '"pingInterval":<i>,"pingTimeout":<t>')
    // Every event carries its offset as its last argument.
    .replace(/^(42.*),"[^"]*"\]$/, '$1,"<offset>"]');
}

// Opens a raw client; `expect(n)` resolves with the next n packets (pings answered, skipped).
function client(base) {
  const ws = new WebSocket(`${base.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`);
  const queue = [];
  let wanted = null;
  const pump = () => {
    if (wanted && queue.length >= wanted.n) {
      const w = wanted;
      wanted = null;
      w.resolve(queue.splice(0, w.n));
    }
  };
  ws.on("message", (data) => {
    const p = data.toString();
    if (p === "2") return ws.send("3");
    queue.push(p);
    pump();
  });
  const closed = new Promise((res) => ws.on("close", res));
  const expect = (n) => {
    let timer;
    return Promise.race([
      new Promise((resolve) => {
        wanted = { n, resolve };
        pump();
      }),
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`timed out waiting for ${n} packets: ${JSON.stringify(queue)}`)), 5000);
      }),
    ]).finally(() => clearTimeout(timer));
  };
  return { ws, expect, closed, send: (p) => ws.send(p) };
}

async function transcript(base) {
  const seen = new Map();
  const ids = (s) => {
    if (!seen.has(s)) seen.set(s, `<id${seen.size}>`);
    return seen.get(s);
  };
  const out = [];
  const log = (who, packets) => packets.forEach((p) => out.push(`${who} ${normalise(p, ids)}`));

  const a = client(base);
  log("A", await a.expect(1));
  a.send("40");
  const [connect, auth] = await a.expect(2);
  log("A", [connect, auth]);
  const pid = JSON.parse(connect.slice(2)).pid;
  const offset = JSON.parse(auth.slice(2)).pop();
  a.send('421["join","r"]');
  log("A", await a.expect(1));
  // The transport goes away (a WebSocket close, as `socket.io.engine.close()` does).
  a.ws.close();
  await a.closed;

  const b = client(base);
  log("B", await b.expect(1));
  b.send("40");
  log("B", await b.expect(2));
  b.send('422["to-room","r","m1"]');
  log("B", await b.expect(1));
  b.send('423["to-room","r",{"n":2}]');
  log("B", await b.expect(1));

  const c = client(base);
  log("C", await c.expect(1));
  c.send(`40${JSON.stringify({ pid, offset })}`);
  log("C", await c.expect(4));
  b.ws.close();
  c.ws.close();
  return out;
}

test("connection state recovery matches Node's socket.io packet for packet", async () => {
  const ref = await transcript(REF);
  const ours = await transcript(OURS);
  assert.deepEqual(ours, ref);
  // And what it is: the missed messages, then A's sid and pid again, then auth.
  const c = ref.filter((l) => l.startsWith("C "));
  assert.match(c[1], /^C 42\["room-message","m1","<offset>"\]$/);
  assert.match(c[2], /^C 42\["room-message",\{"n":2\},"<offset>"\]$/);
  assert.equal(c[3], ref.find((l) => l.startsWith("A 40")).replace(/^A/, "C"));
});
