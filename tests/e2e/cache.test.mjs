// The response cache (issue 17, [server] cache = memory): an identical
// deterministic chat request is answered from the cache, in its own shape
// (a stream as SSE), marked x-llmux-cache: hit, at no cost, per tenant;
// Cache-Control and x-llmux-cache: force steer it. With cache = redis, two
// gateways share answers through the shared state, and a Redis that is
// gone is a miss.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, parseSSE, startMock } from "./lib/mock.mjs";
import { startRedis } from "./lib/redis.mjs";

const live = [];
let mk, gw;
const keys = {};

function newKey(tenant) {
  const r = runLlmux(["key", "new", tenant]);
  assert.equal(r.status, 0, r.stderr);
  return { key: r.stdout.split("\n")[0], hash: /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1] };
}

before(async () => {
  mk = await startMock({ args: ["--name", "mk", "--tokens", "3"] });
  live.push(mk);
  for (const t of ["a", "b"]) keys[t] = newKey(t);
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\ncache = memory\n" +
      "cache_size = 1m\ncache_ttl = 1h\n" +
      "[model m]\ntier = 3\nprice_in = 1\nprice_out = 1\n" +
      `[tenant a]\nkey_sha256 = ${keys.a.hash}\n[tenant b]\nkey_sha256 = ${keys.b.hash}\n`,
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
      "[route mk m]\nid = mk-id\n",
  });
  gw = await startGateway(config);
  live.push(gw);
});

after(async () => {
  assert.equal(await gw.stop(), 0, `llmux shuts down cleanly: ${gw.stderr()}`);
  for (const x of live.reverse()) await x.stop();
});

let nth = 0;
// A body no other test sends (the cache is shared by the whole file).
function body(extra = {}) {
  return { model: "m", temperature: 0, messages: [{ role: "user", content: `q${nth++}` }], ...extra };
}

function post(b, { tenant = "a", headers = {} } = {}) {
  return fetch(gw.url + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${keys[tenant].key}`, ...headers },
    body: JSON.stringify(b),
  });
}

const seen = async () => (await mk.stats()).requests;

test("a second identical temperature-0 request is a hit the provider never sees", async () => {
  const b = body();
  const n0 = await seen();
  const r1 = await post(b);
  assert.equal(r1.status, 200);
  assert.equal(r1.headers.get("x-llmux-cache"), "miss");
  const j1 = await r1.json();
  // Keys in another order, another user: the same canonical request.
  const r2 = await post({ user: "someone", messages: b.messages, temperature: 0, model: "m" });
  assert.equal(r2.status, 200);
  assert.equal(r2.headers.get("x-llmux-cache"), "hit");
  assert.equal(r2.headers.get("x-llmux-model"), "m");
  assert.deepEqual(await r2.json(), j1);
  assert.equal(await seen(), n0 + 1, "the provider saw one request");
});

test("a stream request after a non-stream one is replayed as SSE", async () => {
  const b = body();
  const r1 = await post(b);
  const j1 = await r1.json();
  const n0 = await seen();
  const r2 = await post({ ...b, stream: true, stream_options: { include_usage: true } });
  assert.equal(r2.status, 200);
  assert.equal(r2.headers.get("x-llmux-cache"), "hit");
  assert.match(r2.headers.get("content-type"), /^text\/event-stream/);
  const events = parseSSE(await r2.text());
  assert.equal(events.at(-1).data, "[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
  for (const c of chunks) assert.equal(c.object, "chat.completion.chunk");
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  assert.equal(text, j1.choices[0].message.content);
  assert.equal(text, expectedContent("mk", 3));
  assert.equal(chunks.filter((c) => c.choices[0]?.finish_reason).length, 1);
  assert.deepEqual(chunks.at(-1).usage, j1.usage);
  assert.equal(await seen(), n0);
});

test("tenants do not share answers", async () => {
  const b = body();
  assert.equal((await post(b, { tenant: "a" })).headers.get("x-llmux-cache"), "miss");
  assert.equal((await post(b, { tenant: "b" })).headers.get("x-llmux-cache"), "miss");
  assert.equal((await post(b, { tenant: "b" })).headers.get("x-llmux-cache"), "hit");
});

test("Cache-Control: no-cache bypasses the cache and no-store keeps nothing", async () => {
  const b = body();
  await (await post(b)).text();
  const n0 = await seen();
  const r = await post(b, { headers: { "cache-control": "no-cache" } });
  assert.equal(r.headers.get("x-llmux-cache"), "miss");
  await r.text();
  assert.equal(await seen(), n0 + 1);
  const c = body();
  await (await post(c, { headers: { "cache-control": "no-store" } })).text();
  assert.equal((await post(c)).headers.get("x-llmux-cache"), "miss");
});

test("a request with temperature 0.7 and no seed is cached only when forced", async () => {
  const b = body({ temperature: 0.7 });
  const r1 = await post(b);
  assert.equal(r1.headers.get("x-llmux-cache"), null);
  await r1.text();
  assert.equal((await post(b)).headers.get("x-llmux-cache"), null);
  const force = { "x-llmux-cache": "force" };
  assert.equal((await post(b, { headers: force })).headers.get("x-llmux-cache"), "miss");
  assert.equal((await post(b, { headers: force })).headers.get("x-llmux-cache"), "hit");
  const s = body({ temperature: 0.7, seed: 42 });
  await (await post(s)).text();
  assert.equal((await post(s)).headers.get("x-llmux-cache"), "hit");
});

test("usage counts a hit apart, at no cost, and metrics count the decisions", async () => {
  const u0 = await (await fetch(gw.url + "/v1/usage", { headers: { authorization: `Bearer ${keys.b.key}` } })).json();
  const b = body();
  await (await post(b, { tenant: "b" })).text();
  const r = await post(b, { tenant: "b" });
  assert.equal(r.headers.get("x-llmux-cache"), "hit");
  const j = await r.json();
  const u = await (await fetch(gw.url + "/v1/usage", { headers: { authorization: `Bearer ${keys.b.key}` } })).json();
  assert.equal(u.cached.requests, u0.cached.requests + 1);
  assert.equal(u.cached.output_tokens, u0.cached.output_tokens + j.usage.completion_tokens);
  assert.equal(u.cached.cost_usd, 0);
  assert.equal(u.today.requests, u0.today.requests + 1, "the miss only");
  const m = await (await fetch(gw.url + "/metrics")).text();
  for (const result of ["hit", "miss", "bypass", "store"])
    assert.match(m, new RegExp(`^llmux_cache_requests_total\\{result="${result}"\\} [1-9]`, "m"));
});

test("cache = redis shares answers between two gateways, and needs shared_state", async () => {
  const redis = await startRedis();
  const gws = [];
  try {
    const config = writeConfig({
      "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\ncache = redis\n" +
        `shared_state = ${redis.url}\nshared_state_prefix = c1:\nshared_state_timeout = 2s\n` +
        "[model m]\ntier = 3\n",
      "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
        "[route mk m]\nid = mk-id\n",
    });
    for (let i = 0; i < 2; i++) gws.push(await startGateway(config));
    const b = { model: "m", seed: 7, messages: [{ role: "user", content: "shared" }] };
    const send = (gw, extra = {}) => fetch(gw.url + "/v1/chat/completions", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...b, ...extra }),
    });
    const n0 = await seen();
    const r1 = await send(gws[0]);
    assert.equal(r1.headers.get("x-llmux-cache"), "miss");
    const j1 = await r1.json();
    let r2;
    for (let i = 0; i < 50; i++) { /* the store is asynchronous */
      r2 = await send(gws[1]);
      if (r2.headers.get("x-llmux-cache") === "hit") break;
      await r2.text();
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(r2.headers.get("x-llmux-cache"), "hit");
    assert.deepEqual(await r2.json(), j1);
    const n1 = await seen();
    const s = await send(gws[1], { stream: true });
    assert.equal(s.headers.get("x-llmux-cache"), "hit");
    assert.equal(parseSSE(await s.text()).at(-1).data, "[DONE]");
    assert.equal(await seen(), n1, "hits never reach the provider");
    assert.ok(n1 - n0 <= 2, `${n1 - n0} provider requests`);
    // Redis gone: a miss, answered by the provider, never an error.
    await redis.kill();
    const down = await send(gws[0], { seed: 8 });
    assert.equal(down.status, 200);
    assert.equal(down.headers.get("x-llmux-cache"), "miss");
    await down.text();
    while (gws.length) {
      const g = gws.pop();
      assert.equal(await g.stop(), 0, `llmux shuts down cleanly: ${g.stderr()}`);
    }
  } finally {
    for (const g of gws) await g.stop();
    await redis.stop();
  }
  const bad = writeConfig({ "llmux.ini": "[server]\nlisten = 127.0.0.1:0\ncache = redis\n[model m]\ntier = 3\n" });
  const r = runLlmux(["check", "-c", bad]);
  assert.notEqual(r.status, 0);
  assert.match(r.stdout + r.stderr, /llmux\.ini:3: .*cache = redis .*no shared_state/);
});
