// Memory a client can make the gateway hold (issue 11), measured on the real
// binary: clients that pipeline requests and never read the answers,
// clients without a key that declare 8 MB bodies, and clients with a key
// whose bodies together exceed [server] max_memory. The gateway's peak
// resident size (VmHWM in /proc/PID/status) must stay far below what the
// old behaviour reached (hundreds of MiB for the same floods).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { RawClient } from "./lib/http_raw.mjs";

const MiB = 1024 * 1024;
const MAX_MEMORY = 32 * MiB;
let gw, key, baseKiB;

function statusKiB(field) {
  const text = readFileSync(`/proc/${gw.proc.pid}/status`, "utf8");
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)[1]);
}

// Growth of the peak resident size since start-up, in MiB.
const peakGrowthMiB = () => (statusKiB("VmHWM") - baseKiB) / 1024;

before(async () => {
  const r = runLlmux(["key", "new", "acme"]);
  assert.equal(r.status, 0, r.stderr);
  key = r.stdout.split("\n")[0];
  const hash = /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1];
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = error\n" +
      `max_memory = ${MAX_MEMORY / MiB}m\nmax_connections = 2000\n` +
      `[model m]\ntier = 3\n[tenant acme]\nkey_sha256 = ${hash}\n`,
  });
  // ASan keeps freed memory in a quarantine (256 MiB by default): keep it
  // small so that the figure is the gateway's own memory.
  const asan = process.env.ASAN_OPTIONS ? process.env.ASAN_OPTIONS + ":" : "";
  gw = await startGateway(config, { ASAN_OPTIONS: asan + "quarantine_size_mb=4" });
  await (await fetch(gw.url + "/health")).text();
  baseKiB = statusKiB("VmRSS");
});

after(async () => {
  if (gw) assert.equal(await gw.stop(), 0);
});

// Writes pipelined GET /health on `conns` connections for `ms`, never
// reading; returns the bytes the kernel took on each connection.
async function pipelineFlood(conns, ms) {
  const chunk = Buffer.from("GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000));
  const socks = [];
  const stop = Date.now() + ms;
  for (let i = 0; i < conns; i++) {
    const s = net.connect({ port: gw.port, host: "127.0.0.1" });
    s.on("error", () => {});
    socks.push(s);
  }
  await Promise.all(socks.map((s) => once(s, "connect")));
  for (const s of socks) s.pause();
  await Promise.all(socks.map(async (s) => {
    while (Date.now() < stop && !s.destroyed) {
      if (s.write(chunk)) continue;
      await Promise.race([once(s, "drain"), sleep(Math.max(0, stop - Date.now()))]);
    }
  }));
  const taken = socks.map((s) => s.bytesWritten - s.writableLength);
  for (const s of socks) s.destroy();
  return taken;
}

test("pipelined requests whose answers are never read are not read either", async () => {
  const taken = await pipelineFlood(8, 2000);
  const growth = peakGrowthMiB();
  const most = Math.max(...taken) / MiB;
  console.log(`pipelining: peak RSS growth ${growth.toFixed(1)} MiB, ` +
    `at most ${most.toFixed(1)} MiB taken from one connection`);
  // The server stops reading while an answer is unwritten: what a
  // connection could push is what the socket buffers hold.
  assert.ok(most < 32, `one connection pushed ${most.toFixed(1)} MiB`);
  assert.ok(growth < 64, `peak RSS grew by ${growth.toFixed(1)} MiB`);
  const res = await fetch(gw.url + "/health");
  assert.equal(res.status, 200);
  await res.text();
});

test("a request without a key gets its 401 before any body byte is sent", async () => {
  const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" +
    "Content-Type: application/json\r\nContent-Length: 8000000\r\n\r\n";
  const clients = await Promise.all(Array.from({ length: 300 }, () => RawClient.connect(gw.port)));
  for (const c of clients) c.write(head);
  const answers = await Promise.all(clients.map(async (c) => {
    const res = await c.response(5000);
    await c.waitClosed(5000); // the body is never read: the connection closes
    c.destroy();
    return res;
  }));
  for (const res of answers) {
    assert.equal(res.status, 401);
    assert.equal(res.headers.connection, "close");
    assert.equal(JSON.parse(res.body).error.code, "invalid_api_key");
  }
});

test("a declared Content-Length reserves nothing: 8 MB declared, 1 byte sent", async () => {
  // The old front door reserved the declared length at the head: 300 such
  // clients took 2.4 GB of address space. Mapped size (VmSize) shows a
  // reservation even where untouched pages never become resident.
  const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" +
    `Authorization: Bearer ${key}\r\nContent-Length: 8000000\r\n\r\n{`;
  const before = statusKiB("VmSize");
  const clients = await Promise.all(Array.from({ length: 300 }, () => RawClient.connect(gw.port)));
  for (const c of clients) c.write(head);
  // The gateway has read every head once it answers a request sent after them.
  await sleep(200);
  await (await fetch(gw.url + "/health")).text();
  const grownMiB = (statusKiB("VmSize") - before) / 1024;
  console.log(`8 MB declared, 1 byte sent, 300 clients: VmSize grew by ${grownMiB.toFixed(1)} MiB`);
  for (const c of clients) {
    assert.equal(c.buf.length, 0); // no answer yet: the body is awaited
    c.destroy();
  }
  assert.ok(grownMiB < 256, `VmSize grew by ${grownMiB.toFixed(1)} MiB`);
});

test("bodies beyond max_memory get 503 overloaded and the peak stays under the cap", async () => {
  const body = Buffer.alloc(8000000, "a");
  const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" +
    `Authorization: Bearer ${key}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${body.length}\r\n\r\n`;
  const clients = await Promise.all(Array.from({ length: 24 }, () => RawClient.connect(gw.port)));
  for (const c of clients) {
    c.write(head);
    c.write(body);
  }
  const answers = await Promise.all(clients.map(async (c) => {
    const res = await c.response(20000);
    c.destroy();
    return res;
  }));
  const growth = peakGrowthMiB();
  const statuses = answers.map((r) => r.status);
  console.log(`8 MB bodies: peak RSS growth ${growth.toFixed(1)} MiB; ` +
    `${statuses.filter((s) => s === 503).length} of ${statuses.length} got 503`);
  for (const res of answers) {
    // 400: read whole, then refused as JSON; 503: over max_memory.
    assert.ok(res.status === 400 || res.status === 503, `status ${res.status}`);
    if (res.status === 503) {
      const e = JSON.parse(res.body).error;
      assert.equal(e.code, "overloaded");
      assert.equal(e.type, "server_error");
    }
  }
  assert.ok(statuses.includes(503));
  assert.ok(growth < MAX_MEMORY / MiB + 32, `peak RSS grew by ${growth.toFixed(1)} MiB`);
});

test("beyond [server] max_connections a new connection gets 503 and is closed", async () => {
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = error\nmax_connections = 2\n",
  });
  const small = await startGateway(config);
  try {
    // Accepted in the order they connected: the first two are held open.
    const held = [await RawClient.connect(small.port), await RawClient.connect(small.port)];
    const third = await RawClient.connect(small.port);
    const res = await third.response(5000);
    await third.waitClosed(5000);
    assert.equal(res.status, 503);
    assert.equal(res.headers.connection, "close");
    assert.equal(JSON.parse(res.body).error.code, "too_many_connections");
    for (const c of [third, ...held]) c.destroy();
  } finally {
    assert.equal(await small.stop(), 0);
  }
});
