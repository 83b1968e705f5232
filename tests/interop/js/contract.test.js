// The official socket.io-client 4.8 against a server implementing shared/CONTRACT.md.
// SHARDCAST_URL points at it (e.g. http://127.0.0.1:3000). Every contract row is covered in
// three modes: WebSocket only, polling only, and polling then upgrade.
"use strict";
const { test, describe, after } = require("node:test");
const assert = require("node:assert/strict");
const { io, Manager } = require("socket.io-client");

const URL = process.env.SHARDCAST_URL;
if (!URL) throw new Error("SHARDCAST_URL is not set");

const MODES = {
  websocket: { transports: ["websocket"] },
  polling: { transports: ["polling"] },
  upgrade: { transports: ["polling", "websocket"], upgrade: true },
};

const open = [];
after(() => open.forEach((s) => s.disconnect()));

function timeout(ms, what) {
  return new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out: ${what}`)), ms));
}
function race(p, what, ms = 5000) {
  return Promise.race([p, timeout(ms, what)]);
}
function once(emitter, ev, what) {
  return race(new Promise((res) => emitter.once(ev, (...args) => res(args))), what || ev);
}

// Connects and resolves with [socket, authEventArgs] once `auth` arrived.
async function connect(mode, nsp = "/", extra = {}) {
  const s = io(URL + nsp, { ...MODES[mode], forceNew: true, reconnection: false, ...extra });
  open.push(s);
  const authed = once(s, "auth", `auth on ${nsp}`);
  await once(s, "connect", `connect to ${nsp} (${mode})`);
  const auth = await authed;
  if (mode === "upgrade" && s.io.engine.transport.name !== "websocket") {
    await once(s.io.engine, "upgrade", "upgrade to websocket");
  }
  return [s, auth];
}

// SHARDCAST_SUITE picks the part to run: "contract" (every row, in every transport mode,
// against the contract's heartbeats) or "scale" (many clients in this one Node process,
// against a server with relaxed heartbeats: 500 clients' pongs from one busy event loop
// within 200 ms measure the test machine, not the server). Both run by default.
const SUITE = process.env.SHARDCAST_SUITE || "all";

for (const mode of SUITE === "scale" ? [] : Object.keys(MODES)) {
  describe(`contract over ${mode}`, () => {
    test("connect emits auth with the payload, or {} without one, on / and /custom", async () => {
      for (const nsp of ["/", "/custom"]) {
        const [a, authA] = await connect(mode, nsp, { auth: { token: "abc", n: 1 } });
        assert.deepEqual(authA, [{ token: "abc", n: 1 }]);
        const [b, authB] = await connect(mode, nsp);
        assert.deepEqual(authB, [{}]);
        if (mode === "upgrade") assert.equal(a.io.engine.transport.name, "websocket");
        if (mode === "polling") assert.equal(a.io.engine.transport.name, "polling");
        a.disconnect();
        b.disconnect();
      }
    });

    test("message → message-back with the same args, binary preserved", async () => {
      const [s] = await connect(mode);
      const args = ["text", 42, { nested: [1, 2, { x: null }] }, true, Buffer.from([1, 2, 3, 255])];
      const back = once(s, "message-back");
      s.emit("message", ...args);
      const got = await back;
      assert.equal(got.length, args.length);
      assert.deepEqual(got.slice(0, 4), args.slice(0, 4));
      assert.deepEqual(Buffer.from(got[4]), args[4]);
      s.disconnect();
    });

    test("message-with-ack acks with the same args (binary too)", async () => {
      const [s] = await connect(mode, "/custom");
      const res = await race(s.emitWithAck("message-with-ack", "a", { b: 2 }, [3]), "ack");
      assert.deepEqual(res, "a"); // emitWithAck resolves with the first argument
      const all = await race(new Promise((r) => s.emit("message-with-ack", "a", { b: 2 }, Buffer.from("bin"), (...v) => r(v))), "ack args");
      assert.deepEqual(all.slice(0, 2), ["a", { b: 2 }]);
      assert.equal(Buffer.from(all[2]).toString(), "bin");
      s.disconnect();
    });

    test("join / to-room / leave: acks true, members only, sender included, ack before the emit", async () => {
      const room = `room-${mode}`;
      const [a] = await connect(mode);
      const [b] = await connect(mode);
      const [c] = await connect(mode);
      assert.equal(await race(a.emitWithAck("join", room), "join ack"), true);
      assert.equal(await race(b.emitWithAck("join", room), "join ack"), true);
      let cGot = 0;
      c.on("room-message", () => cGot++);
      const order = [];
      const aGot = new Promise((r) => a.once("room-message", (...v) => { order.push("message"); r(v); }));
      const bGot = once(b, "room-message");
      const acked = race(new Promise((r) => a.emit("to-room", room, "hello", Buffer.from([9]), (v) => { order.push("ack"); r(v); })), "to-room ack");
      assert.equal(await acked, true);
      const [ga, gb] = await Promise.all([race(aGot, "a room-message"), bGot]);
      assert.equal(ga[0], "hello");
      assert.deepEqual(Buffer.from(ga[1]), Buffer.from([9]));
      assert.equal(gb[0], "hello");
      assert.deepEqual(order, ["ack", "message"]);
      assert.equal(await race(b.emitWithAck("leave", room), "leave ack"), true);
      let bAfter = 0;
      b.on("room-message", () => bAfter++);
      a.emit("to-room", room, "second");
      await once(a, "room-message");
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(bAfter, 0, "left the room");
      assert.equal(cGot, 0, "never a member");
      [a, b, c].forEach((s) => s.disconnect());
    });

    test("broadcast reaches every socket of the namespace but the sender; ack true", async () => {
      const [a] = await connect(mode, "/custom");
      const [b] = await connect(mode, "/custom");
      const [other] = await connect(mode, "/");
      let aGot = 0, otherGot = 0;
      a.on("broadcast-back", () => aGot++);
      other.on("broadcast-back", () => otherGot++);
      const bGot = once(b, "broadcast-back");
      assert.equal(await race(a.emitWithAck("broadcast", "x", 1), "broadcast ack"), true);
      assert.deepEqual(await bGot, ["x", 1]);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(aGot, 0, "not the sender");
      assert.equal(otherGot, 0, "not another namespace");
      [a, b, other].forEach((s) => s.disconnect());
    });

    test("call-me: ping-back with an ack; the client's answer comes back as pong-result", async () => {
      const [s] = await connect(mode);
      s.on("ping-back", (...args) => {
        const cb = args.pop();
        assert.equal(typeof cb, "function", "ping-back carries an ack id");
        cb("answer", args[0] + 1, Buffer.from("z"));
      });
      const result = once(s, "pong-result");
      s.emit("call-me", 41);
      const got = await result;
      assert.deepEqual(got.slice(0, 2), ["answer", 42]);
      assert.equal(Buffer.from(got[2]).toString(), "z");
      s.disconnect();
    });

    test("disconnect-me disconnects every namespace of the client, in order, then the session", async () => {
      const m = new Manager(URL, { ...MODES[mode], reconnection: false, forceNew: true });
      const root = m.socket("/");
      const custom = m.socket("/custom");
      open.push(root, custom);
      await Promise.all([once(root, "connect", "root connect"), once(custom, "connect", "custom connect")]);
      if (mode === "upgrade" && m.engine.transport.name !== "websocket") await once(m.engine, "upgrade");
      const order = [];
      const d1 = new Promise((r) => root.once("disconnect", (reason) => { order.push(["/", reason]); r(); }));
      const d2 = new Promise((r) => custom.once("disconnect", (reason) => { order.push(["/custom", reason]); r(); }));
      const closed = new Promise((r) => m.engine.once("close", (reason) => r(reason)));
      custom.emit("disconnect-me");
      await race(Promise.all([d1, d2]), "both disconnects");
      assert.deepEqual(order, [["/", "io server disconnect"], ["/custom", "io server disconnect"]]);
      await race(closed, "engine close");
    });

    test("an unknown namespace gets connect_error Invalid namespace", async () => {
      const s = io(URL + "/nope", { ...MODES[mode], forceNew: true, reconnection: false });
      open.push(s);
      const [err] = await once(s, "connect_error");
      assert.equal(err.message, "Invalid namespace");
      s.disconnect();
    });

    test("client-side disconnect reason", async () => {
      const [s] = await connect(mode);
      const d = once(s, "disconnect");
      s.disconnect();
      assert.deepEqual(await d, ["io client disconnect", undefined]);
    });
  });
}

(SUITE === "contract" ? describe.skip : describe)("scale", () => {
  test("500 clients at once each get their echo", async () => {
    const N = 500;
    const sockets = [];
    const done = [];
    for (let i = 0; i < N; i++) {
      const s = io(URL, { transports: ["websocket"], forceNew: true, reconnection: false });
      sockets.push(s);
      done.push(
        new Promise((res, rej) => {
          s.once("connect_error", rej);
          s.once("connect", () => {
            s.once("message-back", (v) => (v === i ? res() : rej(new Error(`wrong echo ${v} for ${i}`))));
            s.emit("message", i);
          });
        }),
      );
    }
    await race(Promise.all(done), "500 echoes", 30000);
    sockets.forEach((s) => s.disconnect());
  });

  test("a room message reaches every member exactly once across workers", async () => {
    const N = 40;
    const members = [];
    for (let i = 0; i < N; i++) members.push((await connect("websocket"))[0]);
    for (const s of members) assert.equal(await race(s.emitWithAck("join", "big"), "join"), true);
    // Socket ids name their worker in their first two characters.
    const workers = new Set(members.map((s) => s.id.slice(0, 2)));
    if (process.env.SHARDCAST_WORKERS === "2") assert.equal(workers.size, 2, "members on both workers");
    const counts = new Array(N).fill(0);
    members.forEach((s, i) => s.on("room-message", () => counts[i]++));
    const all = Promise.all(members.map((s) => once(s, "room-message")));
    members[0].emit("to-room", "big", "hi");
    await all;
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(counts, new Array(N).fill(1));
    members.forEach((s) => s.disconnect());
  });
});
