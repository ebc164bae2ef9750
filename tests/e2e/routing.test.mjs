// Routing that survives the real world: failover on 429, 5xx and timeouts,
// no failover on 400 or after the first streamed byte, rate-limit headroom,
// cooldown and recovery, each strategy's order, and the 429 body.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

async function mock(name, args = []) {
  const m = await startMock({ args: ["--name", name, "--tokens", "3", ...args] });
  live.push(m);
  return m;
}

// providers: [{name, mock, priority, extra: "key = value\n...", model, id}]
async function gateway({ providers, models = "", server = "", profiles = "" }) {
  const files = {
    "llmux.ini": `[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n${server}\n` +
      (models || "[model m]\ntier = 3\ncapabilities = tools\n") + "\n" + profiles,
  };
  for (const p of providers) {
    files[`providers/${p.name}.ini`] =
      `[provider ${p.name}]\nplugin = openai\nbase_url = ${p.url ?? p.mock.baseURL}\n` +
      `priority = ${p.priority ?? 10}\ntimeout = 1s\n${p.extra ?? ""}\n` +
      `[route ${p.name} ${p.model ?? "m"}]\nid = ${p.id ?? p.name + "-id"}\n${p.route ?? ""}\n` +
      (p.more ?? "");
  }
  const gw = await startGateway(writeConfig(files));
  gw.stderrText = gw.stderr;
  live.push(gw);
  const client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "x", maxRetries: 0 });
  return { gw, client };
}

const hello = [{ role: "user", content: "hi" }];

async function chat(client, body = {}) {
  const { data, response } = await client.chat.completions
    .create({ model: "m", messages: hello, ...body }).withResponse();
  return { data, provider: response.headers.get("x-llmux-provider"),
           attempts: Number(response.headers.get("x-llmux-attempts")) };
}

async function chatError(client, body = {}) {
  try {
    await client.chat.completions.create({ model: "m", messages: hello, ...body });
  } catch (e) {
    return e;
  }
  assert.fail("expected an error");
}

test("a 429 fails over to the next provider, and the limited one is then skipped", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = 429\nheader.x-mock-retry-after = 30\n" },
    { name: "b", mock: b, priority: 2 },
  ] });
  let r = await chat(client);
  assert.equal(r.provider, "b");
  assert.equal(r.attempts, 2);
  assert.equal(r.data.model, "b-id");
  // a said retry-after 30: it has no headroom now, so it is not even tried.
  const before = (await a.stats()).requests;
  r = await chat(client);
  assert.equal(r.provider, "b");
  assert.equal(r.attempts, 1);
  assert.equal((await a.stats()).requests, before, "the rate-limited provider saw nothing");
});

test("5xx, resets and timeouts fail over; the answer says which route served", async () => {
  const a = await mock("a"), b = await mock("b"), c = await mock("c"), d = await mock("d");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = 500\n" },
    { name: "b", mock: b, priority: 2, extra: "header.x-mock-fault = reset\n" },
    { name: "c", mock: c, priority: 3, extra: "header.x-mock-fault = stall\n" },
    { name: "d", mock: d, priority: 4 },
  ], server: "max_attempts = 4\n" });
  const r = await chat(client);
  assert.equal(r.provider, "d");
  assert.equal(r.attempts, 4);
});

test("a 400 is the client's fault: no failover", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = 400\n" },
    { name: "b", mock: b, priority: 2 },
  ] });
  const e = await chatError(client);
  assert.equal(e.status, 400);
  assert.equal(e.headers.get("x-llmux-attempts"), "1");
  assert.equal((await b.stats()).requests, 0, "the second provider was never asked");
});

test("no failover after the first streamed byte reached the client", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = reset-mid-stream\n" },
    { name: "b", mock: b, priority: 2 },
  ] });
  const stream = await client.chat.completions.create({ model: "m", messages: hello, stream: true });
  let chunks = 0;
  await assert.rejects((async () => { for await (const _ of stream) chunks++; })());
  assert.ok(chunks >= 1);
  assert.equal((await b.stats()).requests, 0);
});

test("configured limits: a route without headroom is skipped, not tried", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, route: "requests_per_minute = 2\n" },
    { name: "b", mock: b, priority: 2 },
  ] });
  assert.equal((await chat(client)).provider, "a");
  assert.equal((await chat(client)).provider, "a");
  const r = await chat(client);
  assert.equal(r.provider, "b");
  assert.equal(r.attempts, 1);
  assert.equal((await a.stats()).requests, 2);
});

test("when no route has headroom: 429 with Retry-After and ARES's fields", async () => {
  const a = await mock("a");
  const { gw } = await gateway({ providers: [
    { name: "groq", mock: a, priority: 1, route: "requests_per_minute = 1\n" },
  ] });
  const post = () => fetch(gw.url + "/v1/chat/completions", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: hello }),
  });
  assert.equal((await post()).status, 200);
  const r = await post();
  assert.equal(r.status, 429);
  const retry = Number(r.headers.get("retry-after"));
  assert.ok(retry >= 1 && retry <= 61, `Retry-After ${retry}`);
  assert.deepEqual(await r.json(), {
    error: { message: "Rate limit exceeded for provider 'groq'", type: "rate_limit_error",
             code: "RATE_LIMIT_EXCEEDED" },
    retry_after: retry,
  });
});

test("limits are synced from the provider's headers (a 429's reset)", async () => {
  const a = await mock("a");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = 429\nheader.x-mock-retry-after = 20\n" },
  ] });
  let e = await chatError(client);
  assert.equal(e.status, 429);
  assert.equal(e.headers.get("retry-after"), "20");
  const before = (await a.stats()).requests;
  e = await chatError(client);
  assert.equal(e.status, 429);
  assert.equal(e.code, "RATE_LIMIT_EXCEEDED");
  assert.ok(Number(e.headers.get("retry-after")) <= 20);
  assert.equal((await a.stats()).requests, before, "no request while the provider said wait");
});

test("a failing route cools down, then one probe brings it back", async () => {
  const b = await mock("b");
  // a: nothing listens on this port at first (connection refused).
  const a0 = await mock("a-probe-port");
  const port = a0.port;
  await a0.stop();
  live.splice(live.indexOf(a0), 1);
  const { client } = await gateway({
    providers: [
      { name: "a", url: `http://127.0.0.1:${port}/v1`, priority: 1 },
      { name: "b", mock: b, priority: 2 },
    ],
    server: "cooldown_failures = 2\ncooldown_window = 60s\ncooldown = 1s\n",
  });
  assert.equal((await chat(client)).attempts, 2); // a refused, b served
  assert.equal((await chat(client)).attempts, 2); // second failure: a rests
  let r = await chat(client);
  assert.equal(r.provider, "b");
  assert.equal(r.attempts, 1, "a is cooling down: skipped");
  // a comes back on its port; after the cooldown one probe finds it.
  const a = await mock("a", ["--listen", `127.0.0.1:${port}`]);
  await new Promise((res) => setTimeout(res, 1100));
  r = await chat(client);
  assert.equal(r.provider, "a", "the probe succeeded");
  r = await chat(client);
  assert.equal(r.provider, "a", "the route is closed again");
  assert.equal((await a.stats()).requests, 2);
});

test("503 when every route is cooling down", async () => {
  const a0 = await mock("gone");
  const port = a0.port;
  await a0.stop();
  live.splice(live.indexOf(a0), 1);
  const { client } = await gateway({
    providers: [{ name: "a", url: `http://127.0.0.1:${port}/v1`, priority: 1 }],
    server: "cooldown_failures = 1\ncooldown = 30s\nmax_attempts = 1\n",
  });
  let e = await chatError(client);
  assert.equal(e.status, 502);
  assert.match(e.message, /connect|refused/i);
  e = await chatError(client);
  assert.equal(e.status, 503);
  assert.equal(e.code, "all_routes_cooling_down");
  assert.ok(Number(e.headers.get("retry-after")) >= 1);
});

test("a 502 names the provider and why, never its address: that goes to the log", async () => {
  const gone = await mock("gone");
  const port = gone.port;
  await gone.stop();
  live.splice(live.indexOf(gone), 1);
  const { gw, client } = await gateway({
    providers: [{ name: "faraway", url: `http://localhost:${port}/v1` }],
    server: "max_attempts = 1\n",
  });
  const e = await chatError(client);
  assert.equal(e.status, 502);
  assert.equal(e.code, "connection_refused");
  assert.match(e.error.message, /faraway/);
  assert.match(e.error.message, /connection refused/);
  assert.match(e.error.message, /^Provider 'faraway' \(route faraway\/[^)]+\): /, "the route that failed");
  const body = JSON.stringify(e.error);
  for (const secret of ["localhost", "127.0.0.1", "::1", String(port)])
    assert.ok(!body.includes(secret), `${secret} in ${body}`);
  // The operator finds the address in the log (written before the answer;
  // the pipe may deliver it a little later).
  for (let i = 0; i < 100 && !gw.stderr().includes(`localhost:${port}`); i++)
    await new Promise((r) => setTimeout(r, 20));
  assert.match(gw.stderr(), new RegExp(`faraway.*localhost:${port}`));
});

test("a final error names every route tried and why", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = 500\n" },
    { name: "b", mock: b, priority: 2, extra: "header.x-mock-fault = 503\n" },
  ], server: "cooldown_failures = 10\n" });
  const e = await chatError(client);
  assert.equal(e.status, 503);
  assert.match(e.message, /a\/a-id.*500/);
  assert.match(e.message, /b\/b-id.*503/);
  assert.equal(e.headers.get("x-llmux-attempts"), "3", "two routes, then one retry of the last");
});

const PRICED = `[model cheap]\ntier = 2\nprice_in = 0.1\nprice_out = 0.1\n
[model dear]\ntier = 2\nprice_in = 5\nprice_out = 15\n`;

test("strategy priority: lower priority number first, ties in config order", async () => {
  const a = await mock("a"), b = await mock("b"), c = await mock("c");
  const { client } = await gateway({ providers: [
    { name: "a", mock: a, priority: 5 },
    { name: "b", mock: b, priority: 1 },
    { name: "c", mock: c, priority: 1 },
  ] });
  assert.equal((await chat(client)).provider, "b");
});

test("strategy cheapest: the cheapest model of the profile serves", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({
    models: PRICED,
    providers: [
      { name: "a", mock: a, priority: 1, model: "dear" },
      { name: "b", mock: b, priority: 9, model: "cheap" },
    ],
    profiles: "[profile thrifty]\nmodels = dear, cheap\nstrategy = cheapest\n" +
              "[profile ordered]\nmodels = dear, cheap\nstrategy = priority\n",
  });
  assert.equal((await chat(client, { model: "thrifty" })).provider, "b");
  assert.equal((await chat(client, { model: "ordered" })).provider, "a");
});

test("strategy lowest-latency: the faster provider wins once both are measured", async () => {
  const slow = await mock("slow", ["--latency-ms", "150"]), fast = await mock("fast");
  const { client } = await gateway({
    models: PRICED,
    providers: [
      { name: "slow", mock: slow, priority: 1, model: "dear" },
      { name: "fast", mock: fast, priority: 2, model: "cheap" },
    ],
    profiles: "[profile quick]\nmodels = dear, cheap\nstrategy = lowest-latency\n",
  });
  const seen = [];
  for (let i = 0; i < 4; i++) seen.push((await chat(client, { model: "quick" })).provider);
  assert.deepEqual(seen.slice(2), ["fast", "fast"], `order was ${seen}`);
});

test("strategy weighted: a tiny weight is (almost) never first", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({
    models: PRICED,
    providers: [
      { name: "a", mock: a, priority: 1, model: "dear" },
      { name: "b", mock: b, priority: 1, model: "cheap" },
    ],
    profiles: "[profile w]\nmodels = dear, cheap\nstrategy = weighted\nweights = 0.000001, 1000\n",
  });
  for (let i = 0; i < 5; i++) assert.equal((await chat(client, { model: "w" })).provider, "b");
});

test("strategy least-loaded: a busy route is passed over", async () => {
  const a = await mock("a", ["--tokens", "40", "--token-delay-ms", "25"]), b = await mock("b");
  const { client } = await gateway({
    models: PRICED,
    providers: [
      { name: "a", mock: a, priority: 1, model: "dear" },
      { name: "b", mock: b, priority: 2, model: "cheap" },
    ],
    profiles: "[profile spread]\nmodels = dear, cheap\nstrategy = least-loaded\n",
  });
  const stream = await client.chat.completions.create({ model: "spread", messages: hello, stream: true });
  const it = stream[Symbol.asyncIterator]();
  await it.next(); // a is now busy with a long stream
  assert.equal((await chat(client, { model: "spread" })).provider, "b");
  for (let x = await it.next(); !x.done; x = await it.next());
});

test("capability filter: tools only go to models with the tools capability", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({
    models: "[model plain]\ntier = 2\ncapabilities = json\n[model tooled]\ntier = 2\ncapabilities = tools\n",
    providers: [
      { name: "a", mock: a, priority: 1, model: "plain" },
      { name: "b", mock: b, priority: 2, model: "tooled" },
    ],
    profiles: "[profile any]\nmodels = plain, tooled\n",
  });
  const tools = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];
  assert.equal((await chat(client, { model: "any" })).provider, "a");
  assert.equal((await chat(client, { model: "any", tools })).provider, "b");
});

test("capability filter: images only go to models with the vision capability", async () => {
  const a = await mock("a"), b = await mock("b");
  const { client } = await gateway({
    models: "[model blind]\ntier = 2\ncapabilities = tools\n[model seeing]\ntier = 2\ncapabilities = vision\n",
    providers: [
      { name: "a", mock: a, priority: 1, model: "blind" },
      { name: "b", mock: b, priority: 2, model: "seeing" },
    ],
    profiles: "[profile any]\nmodels = blind, seeing\n",
  });
  const picture = [{ role: "user", content: [
    { type: "text", text: "what is this?" },
    { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } },
  ] }];
  assert.equal((await chat(client, { model: "any" })).provider, "a");
  assert.equal((await chat(client, { model: "any", messages: picture })).provider, "b");
});

test("a client that stops reading a stream is cut off after idle_timeout, and the provider too", async () => {
  const net = await import("node:net");
  // 1e6 tokens (~200 MB of events) outlast every socket buffer on the way.
  const a = await mock("a", ["--tokens", "1000000"]);
  const { gw } = await gateway({ providers: [{ name: "a", mock: a, priority: 1 }],
                                 server: "idle_timeout = 1s\n" });
  const body = JSON.stringify({ model: "m", stream: true, messages: hello });
  const sock = net.connect(gw.port, "127.0.0.1");
  await new Promise((r) => sock.once("connect", r));
  sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
             `Content-Length: ${body.length}\r\n\r\n${body}`);
  sock.pause(); // never read: the gateway's writes pile up
  const start = Date.now();
  // The provider's connection goes when the gateway gives up on the client:
  // then only our own stats request is open at the mock.
  let active = -1;
  for (let i = 0; i < 60 && active !== 1; i++) {
    await new Promise((r) => setTimeout(r, 100));
    active = (await a.stats()).active_connections;
  }
  assert.equal(active, 1, "the upstream stream was cancelled");
  assert.ok(Date.now() - start >= 1000, "not before idle_timeout");
  // The client's connection was closed too: reading again finds its end.
  const closed = new Promise((r) => sock.once("close", () => r(true)));
  sock.on("error", () => {});
  sock.resume();
  assert.equal(await Promise.race([closed, new Promise((r) => setTimeout(() => r(false), 5000))]), true,
               "the gateway closed the stalled client's connection");
  const r = await fetch(gw.url + "/health");
  assert.equal(r.status, 200, "the gateway serves on");
});
