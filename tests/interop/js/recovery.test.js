// Connection state recovery with the official socket.io-client 4.8 (connectionStateRecovery,
// socket.io >= 4.6): a client whose transport is cut comes back with the same id, its rooms,
// `recovered` true, and the room messages it missed, in order. Past the window it gets a fresh
// socket. Run against two servers of the same kind (shardcast, or Node's reference server):
// SHARDCAST_URL with a 10 s window, SHARDCAST_SHORT_URL with a 300 ms one.
"use strict";
const { test, describe, after } = require("node:test");
const assert = require("node:assert/strict");
const { io } = require("socket.io-client");

const URL = process.env.SHARDCAST_URL;
const SHORT_URL = process.env.SHARDCAST_SHORT_URL;
if (!URL || !SHORT_URL) throw new Error("SHARDCAST_URL and SHARDCAST_SHORT_URL must be set");
const SHORT_WINDOW_MS = 300;

const open = [];
after(() => open.forEach((s) => s.disconnect()));

function race(p, what, ms = 5000) {
  return Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms))]);
}
function once(emitter, ev, what) {
  return race(new Promise((res) => emitter.once(ev, (...args) => res(args))), what || ev);
}

async function connect(url, transport, extra = {}) {
  const s = io(url, { transports: [transport], forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 200, ...extra });
  open.push(s);
  await once(s, "connect", `connect over ${transport}`);
  return s;
}

for (const transport of ["websocket", "polling"]) {
  describe(`connection state recovery over ${transport}`, () => {
    test("a cut client comes back with its id, its rooms and the room messages it missed, in order", async () => {
      const a = await connect(URL, transport);
      const b = await connect(URL, transport);
      assert.equal(a.recovered, false, "a first connection is not a recovery");
      assert.equal(await race(a.emitWithAck("join", "r1"), "join"), true);
      const id = a.id;
      const got = [];
      a.on("room-message", (...args) => got.push(args));
      // Seen before the cut: its offset is what the client sends back.
      assert.equal(await race(b.emitWithAck("to-room", "r1", "before"), "to-room before"), true);
      await race(new Promise((res) => { const t = setInterval(() => { if (got.length === 1) { clearInterval(t); res(); } }, 5); }), "the first room-message");

      const gone = once(a, "disconnect", "disconnect after the cut");
      a.io.engine.close();
      await gone;
      const back = once(a, "connect", "reconnect");
      assert.equal(await race(b.emitWithAck("to-room", "r1", "m1"), "to-room m1"), true);
      assert.equal(await race(b.emitWithAck("to-room", "r1", { n: 2 }), "to-room m2"), true);
      await back;
      assert.equal(a.recovered, true, "recovered");
      assert.equal(a.id, id, "same id");
      // Each room-message carries its offset (a string) as its last argument.
      assert.deepEqual(got.map((args) => args.slice(0, -1)), [["before"], ["m1"], [{ n: 2 }]]);
      for (const args of got) assert.equal(typeof args[args.length - 1], "string");
      // Still a member of r1.
      const next = once(a, "room-message", "room-message after recovery");
      assert.equal(await race(b.emitWithAck("to-room", "r1", "after"), "to-room after"), true);
      assert.deepEqual((await next).slice(0, -1), ["after"]);
      a.disconnect();
      b.disconnect();
    });

    test("past the window the client gets a fresh socket", async () => {
      // Reconnects only once the server's window is over.
      const a = await connect(SHORT_URL, transport, { reconnectionDelay: SHORT_WINDOW_MS + 700, reconnectionDelayMax: SHORT_WINDOW_MS + 700, randomizationFactor: 0 });
      assert.equal(await race(a.emitWithAck("join", "r2"), "join"), true);
      const id = a.id;
      const gone = once(a, "disconnect", "disconnect after the cut");
      a.io.engine.close();
      await gone;
      await once(a, "connect", "reconnect");
      assert.equal(a.recovered, false, "not recovered past the window");
      assert.notEqual(a.id, id, "a new id");
      a.disconnect();
    });
  });
}
