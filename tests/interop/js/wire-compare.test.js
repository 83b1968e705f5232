// Packet-for-packet comparison with Node's socket.io: the same raw Engine.IO / Socket.IO
// packets are sent over a plain WebSocket to REFERENCE_URL (Node socket.io 4.8 running the
// contract) and to SHARDCAST_URL; the packet transcripts must be identical once session and
// socket ids are normalised.
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const WebSocket = require("ws");

const REF = process.env.REFERENCE_URL;
const OURS = process.env.SHARDCAST_URL;
if (!REF || !OURS) throw new Error("REFERENCE_URL and SHARDCAST_URL must be set");

// Each step: packets to send (strings are text frames, Buffers binary), then how many packets
// to wait for.
const SCRIPT = [
  [[], 1], // open packet
  [["40"], 2], // CONNECT → CONNECT answer, auth event
  [['40/custom,{"token":1}'], 2],
  [['42["message",1,"a",{"b":[true,null]},{"z":1,"a":{"y":2,"b":3}}]'], 1],
  [['421["message-with-ack",{"x":1},"y"]'], 1],
  [['42/custom,7["join","r"]'], 1],
  [['42/custom,8["to-room","r","hi",3]'], 2],
  [['42/custom,9["leave","r"]'], 1],
  [['451-["message",{"_placeholder":true,"num":0},"t"]', Buffer.from([1, 2, 3])], 2],
  [['42["call-me",5,"q"]'], 1],
  [['430["ok",{"n":1}]'], 1],
  [['4210["broadcast","nobody"]'], 1],
  [["40/nope,"], 1],
  [['42["disconnect-me"]'], 2],
];

function normalise(p) {
  if (Buffer.isBuffer(p)) return `<binary ${p.toString("hex")}>`;
  return p
    .replace(/"sid":"[^"]+"/g, '"sid":"<sid>"')
    .replace(/"pingInterval":\d+,"pingTimeout":\d+/, '"pingInterval":<i>,"pingTimeout":<t>');
}

function transcript(base) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`);
    const got = [];
    let step = 0;
    let want = 0;
    let waiting = [];
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`timed out at step ${step}: ${JSON.stringify(got)}`));
    }, 10000);
    const next = () => {
      if (step === SCRIPT.length) {
        clearTimeout(timer);
        ws.close();
        return resolve(got);
      }
      const [send, expect] = SCRIPT[step++];
      want = expect;
      waiting = [];
      send.forEach((p) => ws.send(p));
      if (want === 0) next();
    };
    ws.on("message", (data, isBinary) => {
      const p = isBinary ? Buffer.from(data) : data.toString();
      if (p === "2") return ws.send("3"); // heartbeats are not part of the transcript
      got.push(normalise(p));
      waiting.push(p);
      if (waiting.length === want) next();
    });
    ws.on("error", (e) => {
      clearTimeout(timer);
      ws.terminate();
      reject(e);
    });
    ws.on("open", () => {
      step = 0;
      next();
    });
  });
}

test("shardcast's packets match Node socket.io's, packet for packet", async () => {
  const ref = await transcript(REF);
  const ours = await transcript(OURS);
  assert.deepEqual(ours, ref);
});
