// Routing the caller can steer (issue 16): a profile's preferred providers
// and pins, prices per route for `cheapest`, the body's `provider` object,
// the x-llmux-provider header, and tenants that may not steer. Which mock
// answered is read from the x-llmux-provider response header.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway, writeConfig, runLlmux } from "./lib/gateway.mjs";
import { startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

let a, b, c, gw, open, locked;

function newKey(tenant) {
  const r = runLlmux(["key", "new", tenant]);
  assert.equal(r.status, 0, r.stderr);
  return { key: r.stdout.split("\n")[0], hash: /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1] };
}

// Providers a (priority 1), b (2), c (3); model m on all three, m2 on a and
// c. The route prices make c the cheapest m, a the dearest.
before(async () => {
  for (const name of ["a", "b", "c"]) {
    const m = await startMock({ args: ["--name", name, "--tokens", "3"] });
    live.push(m);
    if (name === "a") a = m; else if (name === "b") b = m; else c = m;
  }
  const mocks = { a, b, c };
  const k1 = newKey("open"), k2 = newKey("locked");
  const files = {
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n" +
      "max_attempts = 3\n\n" +
      "[model m]\ntier = 3\nprice_in = 1\nprice_out = 1\n\n" +
      "[model m2]\ntier = 2\n\n" +
      "[profile pref]\nmodels = m\nproviders = c, b\n\n" +
      "[profile pinned]\nmodels = m@b, m2\n\n" +
      "[profile thrift]\nmodels = m\nstrategy = cheapest\n\n" +
      "[model m3]\ntier = 1\n\n" +
      "[profile low]\nmodels = m2\nescalate = pref\n\n" +
      "[profile shaky]\nmodels = m3\nescalate = low\n\n" +
      `[tenant open]\nkey_sha256 = ${k1.hash}\n\n` +
      `[tenant locked]\nkey_sha256 = ${k2.hash}\nallow_routing_overrides = false\n`,
  };
  const price = { a: "price_in = 3\n", b: "", c: "price_out = 0.1\n" };
  for (const [i, name] of ["a", "b", "c"].entries()) {
    files[`providers/${name}.ini`] =
      `[provider ${name}]\nplugin = openai\nbase_url = ${mocks[name].baseURL}\n` +
      `priority = ${i + 1}\ntimeout = 1s\n\n` +
      `[route ${name} m]\nid = ${name}-m\n${price[name]}\n` +
      (name !== "b" ? `[route ${name} m2]\nid = ${name}-m2\n` : "");
  }
  // `bad` is mock a answering 500 to everything: m3's only route.
  files["providers/bad.ini"] = `[provider bad]\nplugin = openai\nbase_url = ${a.baseURL}\n` +
    "priority = 1\nheader.x-mock-fault = 500\n\n[route bad m3]\nid = bad-m3\n";
  gw = await startGateway(writeConfig(files));
  live.push(gw);
  open = new OpenAI({ baseURL: gw.url + "/v1", apiKey: k1.key, maxRetries: 0 });
  locked = new OpenAI({ baseURL: gw.url + "/v1", apiKey: k2.key, maxRetries: 0 });
});

const hello = [{ role: "user", content: "hi" }];

async function chat(client, body = {}, headers = {}) {
  const { response } = await client.chat.completions
    .create({ model: "m", messages: hello, ...body }, { headers }).withResponse();
  return response.headers.get("x-llmux-provider");
}

async function chatError(client, body = {}, headers = {}) {
  try {
    await client.chat.completions.create({ model: "m", messages: hello, ...body }, { headers });
  } catch (e) {
    return e;
  }
  assert.fail("expected an error");
}

test("by default the provider with the lowest priority number answers", async () => {
  assert.equal(await chat(open), "a");
});

test("a profile's providers = c, b go before provider priority", async () => {
  assert.equal(await chat(open, { model: "pref" }), "c");
});

test("a member written m@b is served by b only", async () => {
  assert.equal(await chat(open, { model: "pinned" }), "b");
});

test("cheapest chooses between the providers of one model by their route prices", async () => {
  assert.equal(await chat(open, { model: "thrift" }), "c");
});

test("provider.order puts the caller's choice first", async () => {
  assert.equal(await chat(open, { provider: { order: ["b", "c"] } }), "b");
});

test("the provider object is llmux's: it never reaches the provider", async () => {
  assert.equal(await chat(open, { provider: { order: ["c"] }, temperature: 0.5 }), "c");
  const last = (await c.requests()).at(-1);
  const sent = JSON.parse(last.body);
  assert.equal(sent.provider, undefined);
  assert.equal(sent.temperature, 0.5);
  assert.equal(sent.model, "c-m");
  // As the last member too (its comma before it goes).
  const r = await fetch(gw.url + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + open.apiKey },
    body: '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "provider" : {"only": ["c"]} }',
  });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-llmux-provider"), "c");
  assert.deepEqual(Object.keys(JSON.parse((await c.requests()).at(-1).body)), ["model", "messages"]);
});

test("provider.only, provider.ignore and sort price", async () => {
  assert.equal(await chat(open, { provider: { only: ["c"] } }), "c");
  assert.equal(await chat(open, { provider: { ignore: ["a"] } }), "b");
  assert.equal(await chat(open, { provider: { sort: "price" } }), "c");
});

test("the x-llmux-provider header picks one provider", async () => {
  assert.equal(await chat(open, {}, { "x-llmux-provider": "b" }), "b");
});

test("allow_fallbacks false never leaves the listed providers", async () => {
  const before = (await a.stats()).requests;
  const e = await chatError(open, { model: "m2", provider: { order: ["b"], allow_fallbacks: false } });
  assert.equal(e.status, 503);
  assert.match(e.message, /excluded by the request's provider/);
  assert.equal((await a.stats()).requests, before, "a was never asked");
});

test("malformed steering is the caller's 400 naming the parameter", async () => {
  let e = await chatError(open, { provider: { sort: "fastest" } });
  assert.equal(e.status, 400);
  assert.equal(e.error.param, "provider.sort");
  e = await chatError(open, { provider: { only: ["nope"] } });
  assert.equal(e.status, 400);
  assert.match(e.message, /unknown provider 'nope'/);
  e = await chatError(open, {}, { "x-llmux-provider": "nope" });
  assert.equal(e.status, 400);
});

test("a tenant with allow_routing_overrides = false gets a 403", async () => {
  assert.equal(await chat(locked), "a");
  const e = await chatError(locked, { provider: { only: ["c"] } });
  assert.equal(e.status, 403);
  assert.equal(e.code, "routing_override_not_allowed");
  const h = await chatError(locked, {}, { "x-llmux-provider": "c" });
  assert.equal(h.status, 403);
});

test("body models: the first name is the model, the next ones its fallbacks", async () => {
  const { response } = await open.chat.completions
    .create({ models: ["m2", "m"], messages: hello }).withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "a");
  assert.equal(JSON.parse((await a.requests()).at(-1).body).model, "a-m2");
  // m2 has no route on b: the list goes on to m, which has.
  const r = await open.chat.completions
    .create({ models: ["m2", "m"], messages: hello, provider: { only: ["b"] } }).withResponse();
  assert.equal(r.response.headers.get("x-llmux-provider"), "b");
  const sent = JSON.parse((await b.requests()).at(-1).body);
  assert.equal(sent.model, "b-m");
  assert.equal(sent.models, undefined);
  assert.equal(sent.provider, undefined);
});

test("body models after model: tried once model's routes are out", async () => {
  assert.equal(await chat(open, { model: "m2", models: ["m"] }, { "x-llmux-provider": "b" }), "b");
});

test("body models: an unknown name is a 404, a malformed list a 400", async () => {
  let e = await chatError(open, { models: ["m2", "nope"] });
  assert.equal(e.status, 404);
  assert.match(e.message, /nope/);
  e = await chatError(open, { model: undefined, models: [] });
  assert.equal(e.status, 400);
  assert.equal(e.error.param, "models");
  e = await chatError(open, { models: ["m", 3] });
  assert.equal(e.status, 400);
});

test("escalate: a profile whose routes were all filtered out hands over to the next", async () => {
  // low (m2 on a and c) loses both to ignore; it escalates to pref (c, b): b.
  assert.equal(await chat(open, { model: "low", provider: { ignore: ["a", "c"] } }), "b");
});

test("escalate: a profile whose routes all failed hands over, chain followed", async () => {
  // shaky's only route answers 500 (and again on the retry of a last
  // candidate); low takes over, and a serves its m2: three attempts in all.
  const { response } = await open.chat.completions
    .create({ model: "shaky", messages: hello }).withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "a");
  assert.equal(response.headers.get("x-llmux-attempts"), "3");
});

test("no escalation without escalate: the profile's own failure is the answer", async () => {
  const e = await chatError(open, { model: "thrift", provider: { ignore: ["a", "b", "c"] } });
  assert.equal(e.status, 503);
});
