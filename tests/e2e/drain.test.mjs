// Drain and readiness (issue 12): what SIGTERM does to a running gateway in
// front of the mock provider, and GET /health/ready. Each test starts its
// own gateway, since each ends with the process gone.
//
// Readiness during a drain cannot be asked on a new connection (those are
// refused) nor on an idle keep-alive one (closed at once). It is asked by a
// request in flight: its head goes first with `Expect: 100-continue`, so the
// "100 Continue" proves the gateway holds the request; then SIGTERM; then
// its body, and the answer is the draining gateway's.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, startMock } from "./lib/mock.mjs";
import { RawClient } from "./lib/http_raw.mjs";

const KEY = "test-key-for-the-mock-0123456789";
const TENANT_SHA = "ab".repeat(32); // a tenant whose key nobody has: auth is on
let mock;

before(async () => {
  mock = await startMock({ args: ["--name", "m"] });
});

after(async () => {
  await mock.stop();
});

// chat-model takes the mock's knobs from the request body; slow-model (the
// agent's, whose body the gateway writes) streams 400 tokens 50 ms apart.
function config({ drainTimeout = "30s", tenant = false } = {}) {
  return writeConfig({
    "llmux.ini":
      `[server]\nlisten = 127.0.0.1:0\ndrain_timeout = ${drainTimeout}\n\n` +
      `[model chat-model]\ntier = 2\n\n[model slow-model]\ntier = 2\n\n` +
      `[profile p]\nmodels = slow-model\n\n[agent helper]\nprofile = p\n` +
      (tenant ? `\n[tenant t]\nkey_sha256 = ${TENANT_SHA}\n` : ""),
    "providers/m.ini":
      `[provider m]\nplugin = openai\nbase_url = ${mock.baseURL}\napi_key_env = MOCK_KEY\n\n` +
      `[route m chat-model]\nid = m-chat\n`,
    "providers/slow.ini":
      `[provider slow]\nplugin = openai\nbase_url = ${mock.baseURL}\napi_key_env = MOCK_KEY\n` +
      `header.x-mock-tokens = 400\nheader.x-mock-token-delay-ms = 50\n\n` +
      `[route slow slow-model]\nid = slow-chat\n`,
  });
}

async function gateway(opts, env = { MOCK_KEY: KEY }) {
  const gw = await startGateway(config(opts), env);
  gw.exited = once(gw.proc, "exit").then(([code, signal]) => code ?? signal);
  return gw;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls until pred() holds; the bound only turns a hang into a failure.
async function until(pred, what, boundMs = 15000) {
  const t0 = Date.now();
  while (!(await pred())) {
    if (Date.now() - t0 > boundMs) throw new Error(`never saw ${what}`);
    await sleep(10);
  }
}

const sawInLog = (gw, re) => until(() => re.test(gw.stderr()), `${re} in the log:\n${gw.stderr()}`);

function post(path, body) {
  const json = JSON.stringify(body);
  return `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`;
}

const hi = [{ role: "user", content: "hi" }];

// A streamed request on its own connection, resolved once its first event
// arrived (so the gateway is streaming it).
async function openStream(gw, path, body) {
  const c = await RawClient.connect(gw.port);
  c.write(post(path, { stream: true, ...body }));
  await c.waitFor(() => c.buf.includes("data: "), 10000, "the first event");
  return c;
}

const chat = (knobs) => ({ model: "chat-model", messages: hi, mock: knobs });
const long = chat({ tokens: 400, token_delay_ms: 50 }); // 20 s: past any drain here

function events(body) {
  return body.split("\n\n").filter((f) => f.length > 0).map((f) => {
    assert.ok(f.startsWith("data: "), `an SSE frame: ${JSON.stringify(f)}`);
    return f.slice(6);
  });
}

function content(evs) {
  return evs.filter((e) => e !== "[DONE]").map((e) => JSON.parse(e))
    .map((e) => e.choices?.[0]?.delta?.content ?? "").join("");
}

function connectOutcome(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => { s.destroy(); resolve("connected"); });
    s.on("error", (e) => resolve(e.code));
  });
}

test("SIGTERM lets a stream finish whole, refuses new connections, and exits 0", async () => {
  const gw = await gateway({ drainTimeout: "30s" });
  const stream = await openStream(gw, "/v1/chat/completions",
                                 chat({ tokens: 20, token_delay_ms: 50 }));
  gw.proc.kill("SIGTERM");
  await sawInLog(gw, /received SIGTERM: draining/);
  assert.equal(await connectOutcome(gw.port), "ECONNREFUSED");

  const res = await stream.response(15000);
  assert.equal(res.status, 200);
  const evs = events(res.body);
  assert.equal(evs.at(-1), "[DONE]");
  assert.equal(content(evs), expectedContent("m", 20));
  assert.equal(await gw.exited, 0);
  assert.match(gw.stderr(), /drained: every connection is closed/);
});

test("at drain_timeout, streams end with a shutting_down event in their dialect, " +
     "a request not yet answered gets 503, and the process exits 0", async () => {
  const gw = await gateway({ drainTimeout: "1s" });
  const openai = await openStream(gw, "/v1/chat/completions", long);
  const agent = await openStream(gw, "/v1/chat", { agent_type: "helper", message: "hi" });
  const before = (await mock.stats()).requests;
  const waiting = await RawClient.connect(gw.port);
  waiting.write(post("/v1/chat/completions", chat({ latency_ms: 20000 })));
  await until(async () => (await mock.stats()).requests > before, "the mock holding the request");
  gw.proc.kill("SIGTERM");

  const o = await openai.response(15000);
  const last = events(o.body).at(-1);
  assert.notEqual(last, "[DONE]");
  assert.deepEqual(JSON.parse(last).error,
    { message: "the gateway is shutting down", type: "server_error", param: null,
      code: "shutting_down" });

  const a = await agent.response(15000);
  assert.deepEqual(JSON.parse(events(a.body).at(-1)),
    { type: "error", error: "the gateway is shutting down", code: "UPSTREAM_UNAVAILABLE" });

  const w = await waiting.response(15000);
  assert.equal(w.status, 503);
  assert.equal(JSON.parse(w.body).error.code, "shutting_down");

  assert.equal(await gw.exited, 0);
  assert.match(gw.stderr(), /drain_timeout reached: ended 3 requests still in flight/);
});

test("a second SIGTERM stops at once, even with a stream in flight, and exits 0", async () => {
  const gw = await gateway({ drainTimeout: "30s" });
  const stream = await openStream(gw, "/v1/chat/completions", long);
  gw.proc.kill("SIGTERM");
  await sawInLog(gw, /received SIGTERM: draining/);
  gw.proc.kill("SIGTERM");
  assert.equal(await gw.exited, 0);
  assert.match(gw.stderr(), /received SIGTERM again: stopping now/);
  await stream.waitClosed(5000);
  assert.ok(!stream.buf.includes("[DONE]"), "the stream was cut, not finished");
});

test("GET /health/ready is 200 while serving with a provider, and needs no tenant key", async () => {
  const gw = await gateway({ tenant: true });
  const c = await RawClient.connect(gw.port);
  c.write("GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n");
  const r = await c.response();
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { status: "ready", providers: { enabled: 2, total: 2 } });
  c.write("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
  assert.equal((await c.response()).status, 401, "other endpoints still need a key");
  c.destroy();
  assert.equal(await gw.stop(), 0);
});

test("GET /health/ready is 503 no_provider when no provider is enabled; /health stays 200",
     async () => {
  const gw = await gateway({}, {}); // MOCK_KEY unset: provider m is disabled
  const c = await RawClient.connect(gw.port);
  c.write("GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n");
  const r = await c.response();
  assert.equal(r.status, 503);
  assert.equal(JSON.parse(r.body).status, "no_provider");
  c.write("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  assert.equal((await c.response()).status, 200);
  c.destroy();
  assert.equal(await gw.stop(), 0);
});

test("GET /health/ready is 503 draining for a request in flight when SIGTERM came", async () => {
  const gw = await gateway({ drainTimeout: "30s" });
  const c = await RawClient.connect(gw.port);
  c.write("GET /health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" +
          "Expect: 100-continue\r\n\r\n");
  assert.equal((await c.response()).status, 100); // the gateway holds the request
  gw.proc.kill("SIGTERM");
  await sawInLog(gw, /received SIGTERM: draining/);
  c.write("{}");
  const r = await c.response();
  assert.equal(r.status, 503);
  assert.equal(r.headers.connection, "close");
  assert.equal(JSON.parse(r.body).status, "draining");
  await c.waitClosed();
  assert.equal(await gw.exited, 0);
});

test("SIGTERM closes idle keep-alive connections at once, while a stream goes on", async () => {
  const gw = await gateway({ drainTimeout: "30s" });
  const idle = await RawClient.connect(gw.port);
  idle.write("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  assert.equal((await idle.response()).status, 200);
  const stream = await openStream(gw, "/v1/chat/completions", long);
  gw.proc.kill("SIGTERM");
  await idle.waitClosed(10000); // long before the 20 s stream or the 30 s drain_timeout
  assert.equal(idle.buf.length, 0, "closed without a word");
  assert.ok(!stream.ended, "the stream is still going");
  assert.equal(gw.proc.exitCode, null, "the gateway is still draining");
  gw.proc.kill("SIGTERM");
  assert.equal(await gw.exited, 0);
});
