// The admin UI's server side, measured against Node: does what @socket.io/admin-ui's browser
// app does (log in to /admin, receive config and server_stats, watch a client connect, join a
// room, send an event, be joined to a room, be emitted to and be disconnected by the admin) with
// socket.io-client, against Node's socket.io 4.8 with `instrument()` (REFERENCE_URL,
// REFERENCE_PROD_URL) and against shardcast (SHARDCAST_URL, SHARDCAST_PROD_URL), and asserts
// that both give the same transcript (event names, order, arguments once ids and dates are
// replaced by their kind) and that it is the one expected.
// ADMIN_PASSWORD: the password of user "admin" both servers were given the hash of.
// SHARDCAST_WORKERS: shardcast's workers (then a socket of another worker than the admin's must
// be seen).
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const { io } = require("socket.io-client");

const PASSWORD = process.env.ADMIN_PASSWORD;
const TARGETS = {
  node: { url: process.env.REFERENCE_URL, prod: process.env.REFERENCE_PROD_URL, open: process.env.REFERENCE_OPEN_URL },
  shardcast: { url: process.env.SHARDCAST_URL, prod: process.env.SHARDCAST_PROD_URL, open: process.env.SHARDCAST_OPEN_URL },
};
const WORKERS = Number(process.env.SHARDCAST_WORKERS || 1);
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const JS_DATE = /^[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d{4} \d\d:\d\d:\d\d GMT[+-]\d{4} \(.+\)$/;
const STEP = 5000;

/** Waits until `pred()` holds; fails the test (never passes) after STEP ms. */
function until(pred, what) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      const v = pred();
      if (v) return resolve(v);
      if (Date.now() - start > STEP) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

function once(emitter, ev, what) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${what || ev}`)), STEP);
    emitter.once(ev, (...args) => { clearTimeout(t); resolve(args); });
  });
}

const opts = (extra) => ({ transports: ["websocket"], reconnection: false, forceNew: true, ...extra });

/** An admin client recording everything it gets, in order (server_stats apart). */
function admin(url, auth) {
  const a = io(`${url}/admin`, opts({ auth }));
  a.log = [];
  a.stats = [];
  a.onAny((ev, ...args) => (ev === "server_stats" ? a.stats.push(args[0]) : a.log.push([ev, ...args])));
  a.on("connect", () => a.log.push(["connect"]));
  a.has = (name, ...args) => a.log.find((e) => e[0] === name && args.every((v, i) => v === undefined || e[i + 1] === v));
  return a;
}

/** Replaces what differs between two runs (ids, dates, session ids) by its kind. */
function normalize(value, names) {
  const walk = (v, key) => {
    if (typeof v === "string") {
      if (names.has(v)) return names.get(v);
      if (ISO.test(v)) return "<date>";
      if (key === "time" && JS_DATE.test(v)) return "<date string>";
      if (key === "clientId") return `<clientId of ${v.length}>`;
      return v;
    }
    if (typeof v === "number") return key === "issued" ? "<number>" : v;
    if (Array.isArray(v)) return v.map((x) => walk(x, key));
    if (v && typeof v === "object") {
      if (key === "headers") return `<headers: ${Object.keys(v).sort().join(",")}>`;
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, k)]));
    }
    return v;
  };
  return walk(value, "");
}

/** The shape of a server_stats message: its fields in order and their types. */
function statsShape(s) {
  return {
    fields: Object.entries(s).map(([k, v]) => `${k}:${Array.isArray(v) ? "array" : typeof v}`),
    namespaces: s.namespaces.map((n) => `${n.name}:${typeof n.socketsCount}`).sort(),
    // Which kinds arrive in one message depends on timing; their form does not.
    eventsMalformed: s.aggregatedEvents.filter((e) => {
      const keys = Object.keys(e).sort().join(",");
      const form = e.type === "rawDisconnection" ? "count,subType,timestamp,type" : "count,timestamp,type";
      return keys !== form || typeof e.count !== "number" || e.count < 1 || e.timestamp % 1000 !== 0;
    }),
  };
}

async function development(url) {
  const out = {};
  // A wrong password: the same CONNECT_ERROR as Node.
  const bad = admin(url, { type: "basic", username: "admin", password: "wrong" });
  const [err] = await once(bad, "connect_error");
  out.refused = { message: err.message, data: err.data };
  bad.close();

  const a = admin(url, { type: "basic", username: "admin", password: PASSWORD });
  await until(() => a.has("all_sockets"), "config and all_sockets");
  const names = new Map([[a.id, "<admin>"]]);
  const session = a.log.find((e) => e[0] === "session");
  assert.ok(session && /^[0-9a-f]{16}$/.test(session[1]), `a session id: ${JSON.stringify(session)}`);
  names.set(session[1], "<session>");

  // A client connects, joins a room, sends an event.
  const c = io(url, opts());
  await once(c, "connect");
  names.set(c.id, "<client>");
  await until(() => a.has("socket_connected") && a.log.find((e) => e[0] === "socket_connected" && e[1].id === c.id), "socket_connected");
  assert.equal(await c.timeout(STEP).emitWithAck("join", "r"), true);
  await until(() => a.has("room_joined", "/", "r", c.id), "room_joined r");
  c.emit("message", "hi", { n: 1 });
  await once(c, "message-back");
  await until(() => a.has("event_sent", "/", c.id), "event_sent message-back");

  // The admin's actions: join, emit, leave, disconnect.
  a.emit("join", "/", "r2", c.id);
  await until(() => a.has("room_joined", "/", "r2", c.id), "room_joined r2");
  a.emit("emit", "/", c.id, "hello", 1, "two");
  const hello = await once(c, "hello");
  assert.deepEqual(hello, [1, "two"]);
  await until(() => a.log.find((e) => e[0] === "event_sent" && e[3][0] === "hello"), "event_sent hello");
  a.emit("leave", "/", "r2", c.id);
  await until(() => a.has("room_left", "/", "r2", c.id), "room_left r2");
  a.emit("_disconnect", "/", false, c.id);
  const [reason] = await once(c, "disconnect");
  out.clientReason = reason;
  await until(() => a.has("room_left", "/", "r", c.id), "socket_disconnected and room_left");

  // Stats arrive every 2 s; one after all this says /admin has its socket.
  const seen = a.stats.length;
  await until(() => a.stats.length > seen, "server_stats");
  const stats = a.stats[a.stats.length - 1];
  out.statsShape = statsShape(stats);
  out.adminSockets = stats.namespaces.find((n) => n.name === "/admin").socketsCount;
  out.server = { serverId: stats.serverId, hostname: stats.hostname };
  out.transcript = normalize(a.log, names);

  // A client on long-polling that upgrades: connected as "polling", then updated.
  const p = io(url, { reconnection: false, forceNew: true });
  await once(p, "connect");
  const updated = () => a.log.find((e) => e[0] === "socket_updated" && e[1].id === p.id);
  await until(updated, "socket_updated on upgrade");
  out.upgrade = {
    connected: a.log.find((e) => e[0] === "socket_connected" && e[1].id === p.id)[1].transport,
    updated: normalize(updated().slice(1), new Map([[p.id, "<polling client>"]])),
    query: Object.keys(a.log.find((e) => e[0] === "socket_connected" && e[1].id === p.id)[1].handshake.query).sort(),
  };
  p.close();
  await until(() => a.has("socket_disconnected", "/", p.id), "the polling client's socket_disconnected");

  // Many clients at once (on every worker): the admin sees each connect and leave.
  const many = await Promise.all(Array.from({ length: 16 }, async () => {
    const s = io(url, opts());
    await once(s, "connect");
    return s;
  }));
  const ids = many.map((s) => s.id);
  await until(() => ids.every((id) => a.log.find((e) => e[0] === "socket_connected" && e[1].id === id)), "16 socket_connected");
  for (const s of many) s.close();
  await until(() => ids.every((id) => a.has("socket_disconnected", "/", id)), "16 socket_disconnected");
  out.manyReasons = [...new Set(ids.map((id) => a.has("socket_disconnected", "/", id)[3]))];
  out.otherWorkers = ids.filter((id) => id.slice(0, 2) !== a.id.slice(0, 2)).length;
  // Every kind of aggregated event turns up within a few stats (the 16 closes are the last).
  const types = () => [...new Set(a.stats.flatMap((s) => s.aggregatedEvents.map((e) => e.type)))].sort();
  await until(() => types().length >= 6, `six kinds of aggregated events (so far ${types()})`);
  out.eventTypes = types();
  a.close();
  return out;
}

async function production(url) {
  const a = admin(url, { type: "basic", username: "admin", password: PASSWORD });
  await until(() => a.has("config"), "config");
  const c = io(url, opts());
  await once(c, "connect");
  c.emit("message", "hi");
  await once(c, "message-back");
  a.emit("_disconnect", "/", false, c.id);
  await once(c, "disconnect");
  // Stats emitted after all this: anything told to the admin namespace before is in the log.
  const seen = a.stats.length;
  await until(() => a.stats.length > seen, "server_stats");
  const names = new Map([[a.id, "<admin>"], [a.log.find((e) => e[0] === "session")[1], "<session>"]]);
  const out = { transcript: normalize(a.log, names), statsShape: statsShape(a.stats[a.stats.length - 1]) };
  a.close();
  return out;
}

const EXPECTED_DEV = [
  ["session", "<session>"],
  ["room_joined", "/admin", "<admin>", "<admin>", "<date>"],
  ["connect"],
  ["socket_connected", "<serialized admin>", "<date>"],
  ["config", { supportedFeatures: ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"] }],
  ["all_sockets", ["<serialized admin>"]],
  ["room_joined", "/", "<client>", "<client>", "<date>"],
  ["socket_connected", "<serialized client>", "<date>"],
  // The contract app's greeting.
  ["event_sent", "/", "<client>", ["auth", {}], "<date>"],
  ["event_received", "/", "<client>", ["join", "r"], "<date>"],
  ["room_joined", "/", "r", "<client>", "<date>"],
  ["event_received", "/", "<client>", ["message", "hi", { n: 1 }], "<date>"],
  ["event_sent", "/", "<client>", ["message-back", "hi", { n: 1 }], "<date>"],
  ["room_joined", "/", "r2", "<client>", "<date>"],
  ["event_sent", "/", "<client>", ["hello", 1, "two"], "<date>"],
  ["room_left", "/", "r2", "<client>", "<date>"],
  ["socket_disconnected", "/", "<client>", "server namespace disconnect", "<date>"],
  ["room_left", "/", "<client>", "<client>", "<date>"],
  ["room_left", "/", "r", "<client>", "<date>"],
];

/** The transcript with serialized sockets (checked field by field apart) as placeholders. */
function outline(transcript) {
  return transcript.map((e) => e.map((x) => {
    if (x && typeof x === "object" && !Array.isArray(x) && "handshake" in x) return `<serialized ${x.id.slice(1, -1)}>`;
    if (Array.isArray(x) && x.every((s) => s && typeof s === "object" && "handshake" in s)) return x.map((s) => `<serialized ${s.id.slice(1, -1)}>`);
    return x;
  }));
}

test("admin UI, development mode: shardcast gives Node's transcript", async () => {
  const node = await development(TARGETS.node.url);
  const ours = await development(TARGETS.shardcast.url);
  // What Node gives is what the UI expects; check it first so the comparison cannot pass on two
  // equally wrong transcripts.
  assert.deepEqual(node.refused, { message: "invalid credentials", data: undefined });
  assert.deepEqual(outline(node.transcript), EXPECTED_DEV);
  assert.deepEqual(ours.refused, node.refused);
  assert.deepEqual(outline(ours.transcript), outline(node.transcript));
  // Serialized sockets field by field (names, types, values once ids and dates are replaced).
  const serialized = (t) => t.filter((e) => e[0] === "socket_connected" || e[0] === "all_sockets").map((e) => e[1]);
  assert.deepEqual(serialized(ours.transcript), serialized(node.transcript));
  assert.equal(ours.clientReason, "io server disconnect");
  assert.equal(ours.clientReason, node.clientReason);
  assert.deepEqual(ours.statsShape, node.statsShape);
  assert.equal(node.adminSockets, 1);
  assert.equal(ours.adminSockets, node.adminSockets);
  assert.deepEqual(ours.manyReasons, node.manyReasons);
  // Same machine, so the same host name (Node's default serverId).
  assert.deepEqual(ours.server, node.server);
  assert.deepEqual(node.upgrade.connected, "polling");
  assert.deepEqual(node.upgrade.updated, [{ id: "<polling client>", nsp: "/", transport: "websocket" }]);
  assert.deepEqual(ours.upgrade, node.upgrade);
  assert.deepEqual(node.eventTypes, ["bytesIn", "bytesOut", "packetsIn", "packetsOut", "rawConnection", "rawDisconnection"]);
  assert.deepEqual(ours.eventTypes, node.eventTypes);
  if (WORKERS > 1) {
    assert.ok(ours.otherWorkers > 0, "none of 16 clients landed on another worker than the admin's");
  }
});

test("admin UI, production mode: config and stats only, actions still work", async () => {
  const node = await production(TARGETS.node.prod);
  const ours = await production(TARGETS.shardcast.prod);
  assert.deepEqual(node.transcript, [
    ["session", "<session>"],
    ["connect"],
    ["config", { supportedFeatures: ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS"] }],
  ]);
  assert.deepEqual(ours.transcript, node.transcript);
  assert.deepEqual(ours.statsShape, node.statsShape);
});

test("admin UI without authentication (auth: false, --admin-ui-auth none): no login, no session", async () => {
  const transcripts = [];
  for (const url of [TARGETS.node.open, TARGETS.shardcast.open]) {
    const a = admin(url, undefined);
    await until(() => a.has("config"), "config");
    transcripts.push(normalize(a.log, new Map([[a.id, "<admin>"]])));
    a.close();
  }
  assert.deepEqual(transcripts[0], [["connect"], ["config", { supportedFeatures: ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS"] }]]);
  assert.deepEqual(transcripts[1], transcripts[0]);
});
