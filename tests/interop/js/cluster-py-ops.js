// ServerHandle requests from shardcast reaching a python-socketio node (driven by
// tests/cluster.rs): URL is the python-socketio node (polling). One socket.io-client socket
// connects and prints {"sid": ...}; told "check" on stdin (shardcast has made it join "x",
// emitted "news-x" to "x" and disconnected it, all by its sid through python-socketio's
// enter_room / emit / disconnect messages), it checks it got the news once and a server-side
// disconnect, and prints {"py_ops":"ok"}. A deadline (20 s) that passes is a failure.
"use strict";
const { io } = require("socket.io-client");

const deadline = setTimeout(() => fail("deadline passed"), 20000);
function fail(why) {
  console.error(`python ops failed: ${why}`);
  process.exit(1);
}

async function main() {
  const s = io(process.env.URL, { transports: ["polling"], reconnection: false, forceNew: true });
  const news = [];
  let reason = null;
  s.on("news-x", (m) => news.push(m));
  s.on("disconnect", (r) => { reason = r; });
  await new Promise((res, rej) => { s.on("connect", res); s.on("connect_error", rej); });
  console.log(JSON.stringify({ sid: s.id }));
  await new Promise((r) => process.stdin.once("data", r));
  await new Promise((resolve) => {
    const t = setInterval(() => {
      if (reason !== null) {
        clearInterval(t);
        resolve();
      }
    }, 10);
  });
  if (JSON.stringify(news) !== JSON.stringify([{ n: 2 }])) fail(`news ${JSON.stringify(news)}`);
  if (reason !== "io server disconnect") fail(`disconnected with ${reason}`);
  console.log(JSON.stringify({ py_ops: "ok" }));
}

main().then(
  () => {
    clearTimeout(deadline);
    process.exit(0);
  },
  (e) => fail(e.stack || String(e)),
);
