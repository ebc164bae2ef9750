// Outbound fidelity, the gateway's part (issue 15): `n` > 1 fanned out to a
// provider without it (n requests, choices merged, usage summed, streams
// interleaved by index, counted n times against limits, or a 400 with
// `[server] fan_out = off`), passed through to one that has it; and a
// request its model can never serve by capability is a 400
// model_not_supported, not a 503 to retry.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, httpRequest, parseSSE, startMock } from "./lib/mock.mjs";

const KEY = "test-anthropic-key-for-the-mock-0123456789";
const CLAUDE_ID = "claude-3-5-sonnet-20241022";
const live = [], gateways = [];
after(async () => {
  for (const gw of gateways) {
    assert.equal(await gw.stop(), 0, "llmux shuts down cleanly (and, under ASan, leaks nothing)");
    assert.doesNotMatch(gw.stderr(), /AddressSanitizer|runtime error/);
  }
  for (const x of live.reverse()) await x.stop();
});

async function mock(name, tokens = 3) {
  const m = await startMock({ args: ["--name", name, "--tokens", String(tokens)] });
  live.push(m);
  return m;
}

// A gateway over `providers` ({name, plugin, mock, extra, routes: [[model, id, extra]]})
// and `models` (the [model] sections), with `server` lines added.
async function gateway({ providers, models, server = "" }) {
  const files = {
    "llmux.ini": `[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n${server}\n` +
      models,
  };
  for (const p of providers) {
    let text = `[provider ${p.name}]\nplugin = ${p.plugin}\nbase_url = ${p.mock.baseURL}\n` +
      `api_key_env = MOCK_KEY\npriority = ${p.priority ?? 1}\ntimeout = 2s\n${p.extra ?? ""}\n`;
    for (const [model, id, extra] of p.routes) text += `[route ${p.name} ${model}]\nid = ${id}\n${extra ?? ""}\n`;
    files[`providers/${p.name}.ini`] = text;
  }
  const gw = await startGateway(writeConfig(files), { MOCK_KEY: KEY });
  gateways.push(gw);
  const client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "x", maxRetries: 0, timeout: 10000 });
  return { gw, client };
}

const hello = [{ role: "user", content: "hi" }];
const api = (m) => m.requests().then((rs) => rs.filter((r) => r.path.startsWith("/v1/")));

async function post(gw, path, body) {
  const r = await httpRequest(gw.url + path, { body, headers: { authorization: "Bearer x" } });
  return { ...r, json: r.headers["content-type"]?.startsWith("application/json") ? JSON.parse(r.body) : null };
}

test("n = 3 to an Anthropic route: three requests, three choices 0..2, usage summed", async () => {
  const claude = await mock("claude");
  const { client } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude, routes: [["c", CLAUDE_ID]] }],
    models: "[model c]\ntier = 3\n",
  });
  const one = await client.chat.completions.create({ model: "c", messages: hello });
  await claude.reset();
  const { data, response } = await client.chat.completions
    .create({ model: "c", messages: hello, n: 3 }).withResponse();
  const seen = await api(claude);
  assert.equal(seen.length, 3, "the provider got one request per choice");
  for (const r of seen) assert.equal(JSON.parse(r.body).n, undefined, "Anthropic never sees n");
  assert.deepEqual(data.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of data.choices) assert.equal(c.message.content, expectedContent("claude", 3));
  assert.equal(data.usage.prompt_tokens, 3 * one.usage.prompt_tokens);
  assert.equal(data.usage.completion_tokens, 3 * one.usage.completion_tokens);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
  assert.equal(response.headers.get("x-llmux-attempts"), "1", "one attempt, fanned out");
});

test("a streamed n = 2: chunks of both indices, one [DONE], usage once", async () => {
  const claude = await mock("claude", 4);
  const { gw } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude, routes: [["c", CLAUDE_ID]] }],
    models: "[model c]\ntier = 3\n",
  });
  const r = await post(gw, "/v1/chat/completions", {
    model: "c", messages: hello, n: 2, stream: true, stream_options: { include_usage: true },
  });
  assert.equal(r.status, 200);
  const events = parseSSE(r.body);
  assert.equal(events.filter((e) => e.data === "[DONE]").length, 1);
  assert.equal(events.at(-1).data, "[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
  const text = ["", ""];
  for (const c of chunks) for (const ch of c.choices) text[ch.index] += ch.delta?.content ?? "";
  assert.deepEqual(text, [expectedContent("claude", 4), expectedContent("claude", 4)]);
  const usage = chunks.filter((c) => c.usage);
  assert.equal(usage.length, 1, "the copies' usage comes as one chunk");
  assert.deepEqual(usage[0].choices, []);
  assert.equal(usage[0].usage.completion_tokens, 2 * 4);
  assert.equal((await api(claude)).length, 2);
});

test("n = 2 to an OpenAI-format route goes through as it is, in one request", async () => {
  const oa = await mock("oa");
  const { client } = await gateway({
    providers: [{ name: "oa", plugin: "openai", mock: oa, routes: [["m", "oa-id"]] }],
    models: "[model m]\ntier = 3\n",
  });
  await client.chat.completions.create({ model: "m", messages: hello, n: 2 });
  const seen = await api(oa);
  assert.equal(seen.length, 1);
  assert.equal(JSON.parse(seen[0].body).n, 2);
});

test("an openai section with supports_n = false is fanned out too", async () => {
  const groq = await mock("groq");
  const { client } = await gateway({
    providers: [{ name: "groq", plugin: "openai", mock: groq, extra: "supports_n = false\n",
                  routes: [["m", "groq-id"]] }],
    models: "[model m]\ntier = 3\n",
  });
  const data = await client.chat.completions.create({ model: "m", messages: hello, n: 2 });
  assert.deepEqual(data.choices.map((c) => c.index), [0, 1]);
  let seen = await api(groq);
  assert.equal(seen.length, 2);
  for (const r of seen) assert.equal(JSON.parse(r.body).n, 1);
  for (const r of seen) assert.equal(JSON.parse(r.body).model, "groq-id");
  // "n" before "model", and wider than 1: the model id is still spliced in its place.
  await groq.reset();
  const r = await httpRequest(client.baseURL + "/chat/completions", {
    body: '{"n":12,"messages":[{"role":"user","content":"hi"}],"model":"m"}',
    headers: { "content-type": "application/json", authorization: "Bearer x" },
  });
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).choices.length, 12);
  seen = await api(groq);
  assert.equal(seen.length, 12);
  for (const q of seen) assert.equal(q.body, '{"n":1,"messages":[{"role":"user","content":"hi"}],"model":"groq-id"}');
});

test("fan_out = off: n > 1 to a provider without it is a 400 n_not_supported", async () => {
  const claude = await mock("claude");
  const { gw } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude, routes: [["c", CLAUDE_ID]] }],
    models: "[model c]\ntier = 3\n",
    server: "fan_out = off\n",
  });
  const r = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 2 });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.code, "n_not_supported");
  assert.equal(r.json.error.type, "invalid_request_error");
  assert.match(r.json.error.message, /Provider 'anthropic' does not support n > 1.*fan_out = off/);
  assert.equal((await api(claude)).length, 0);
  const ok = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 1 });
  assert.equal(ok.status, 200, "n = 1 is served as ever");
});

test("a fanned-out request counts n times: requests_per_minute = 2 and n = 3 is a 429", async () => {
  const claude = await mock("claude");
  const { gw } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude,
                  routes: [["c", CLAUDE_ID, "requests_per_minute = 2\n"]] }],
    models: "[model c]\ntier = 3\n",
  });
  const r = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 3 });
  assert.equal(r.status, 429);
  assert.equal(r.json.error.code, "RATE_LIMIT_EXCEEDED");
  assert.equal((await api(claude)).length, 0, "no copy was sent");
  const two = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 2 });
  assert.equal(two.status, 200, "two fit");
  assert.equal(two.json.choices.length, 2);
  const more = await post(gw, "/v1/chat/completions", { model: "c", messages: hello });
  assert.equal(more.status, 429, "and they used the minute's two requests");
});

test("a copy refused at its head fails the whole request over to the next route", async () => {
  const claude = await mock("claude"), backup = await mock("backup");
  const { client } = await gateway({
    providers: [
      { name: "anthropic", plugin: "anthropic", mock: claude, priority: 1,
        extra: "header.x-mock-fault = 500\n", routes: [["c", CLAUDE_ID]] },
      { name: "backup", plugin: "openai", mock: backup, priority: 2, routes: [["c", "backup-id"]] },
    ],
    models: "[model c]\ntier = 3\n",
  });
  const { data, response } = await client.chat.completions
    .create({ model: "c", messages: hello, n: 2 }).withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "backup");
  assert.equal(response.headers.get("x-llmux-attempts"), "2");
  assert.equal(data.choices[0].message.content, expectedContent("backup", 3));
  const sent = await api(backup);
  assert.equal(sent.length, 1);
  assert.equal(JSON.parse(sent[0].body).n, 2, "the whole request, n and all");
});

test("tools to a model whose routes lack them: 400 model_not_supported naming tools", async () => {
  const oa = await mock("oa");
  const { gw } = await gateway({
    providers: [{ name: "oa", plugin: "openai", mock: oa, routes: [["plain", "oa-id"]] }],
    models: "[model plain]\ntier = 3\ncapabilities = json\n",
  });
  const tools = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];
  const r = await post(gw, "/v1/chat/completions", { model: "plain", messages: hello, tools });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.type, "invalid_request_error");
  assert.equal(r.json.error.code, "model_not_supported");
  assert.equal(r.json.error.message,
    "Model 'plain' does not support tools (no route of it declares the 'tools' capability).");
  assert.equal((await api(oa)).length, 0);
});

test("embeddings to a chat model: 400 model_not_supported, not an embeddings model", async () => {
  const oa = await mock("oa");
  const { gw } = await gateway({
    providers: [{ name: "oa", plugin: "openai", mock: oa, routes: [["chat", "oa-id"]] }],
    models: "[model chat]\ntier = 3\ncapabilities = tools\n",
  });
  const r = await post(gw, "/v1/embeddings", { model: "chat", input: "hello" });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.code, "model_not_supported");
  assert.match(r.json.error.message, /^Model 'chat' is not an embeddings model/);
});

test("a route that could serve but is unavailable keeps the 503", async () => {
  const oa = await mock("oa"), off = await mock("off");
  const { gw } = await gateway({
    providers: [
      { name: "oa", plugin: "openai", mock: oa, routes: [["plain", "oa-id"]] },
      { name: "off", plugin: "openai", mock: off, extra: "enabled = false\n", routes: [["toolish", "off-id"]] },
    ],
    models: "[model plain]\ntier = 3\ncapabilities = json\n\n[model toolish]\ntier = 3\ncapabilities = tools\n" +
      "\n[profile both]\nmodels = toolish, plain\n",
  });
  const tools = [{ type: "function", function: { name: "f", parameters: { type: "object" } } }];
  const r = await post(gw, "/v1/chat/completions", { model: "both", messages: hello, tools });
  assert.equal(r.status, 503);
  assert.equal(r.json.error.code, "no_provider_available");
});

test("a fanned-out stream that breaks after its head ends with an error event", async () => {
  const claude = await mock("claude", 6);
  const { gw } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude,
                  extra: "header.x-mock-fault = reset-mid-stream\n", routes: [["c", CLAUDE_ID]] }],
    models: "[model c]\ntier = 3\n",
  });
  const r = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 2, stream: true });
  assert.equal(r.status, 200);
  const events = parseSSE(r.body);
  assert.ok(!events.some((e) => e.data === "[DONE]"));
  assert.equal(JSON.parse(events.at(-1).data).error.type, "upstream_error");
});

test("a client leaving a fanned-out stream cancels every copy", async () => {
  const claude = await mock("claude", 50);
  const { gw } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude,
                  extra: "header.x-mock-token-delay-ms = 20\n", routes: [["c", CLAUDE_ID]] }],
    models: "[model c]\ntier = 3\n",
  });
  const client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "x", maxRetries: 0 });
  const stream = await client.chat.completions.create({ model: "c", messages: hello, n: 3, stream: true });
  let n = 0;
  for await (const _ of stream) if (++n === 3) break; // closes the connection
  // 50 tokens at 20 ms would take a second: each copy must see the abort first.
  let stats;
  for (let i = 0; i < 40; i++) {
    await new Promise((res) => setTimeout(res, 20));
    stats = await claude.stats();
    if (stats.aborted >= 3) break;
  }
  assert.equal(stats.aborted, 3, "every copy's connection was closed mid-stream");
  const ok = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 2 });
  assert.equal(ok.status, 200, "and the gateway goes on");
});

test("n beyond what llmux fans out (16) is a 400 n_not_supported, with nothing sent", async () => {
  const claude = await mock("claude");
  const { gw } = await gateway({
    providers: [{ name: "anthropic", plugin: "anthropic", mock: claude, routes: [["c", CLAUDE_ID]] }],
    models: "[model c]\ntier = 3\n",
  });
  const r = await post(gw, "/v1/chat/completions", { model: "c", messages: hello, n: 17 });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.code, "n_not_supported");
  assert.match(r.json.error.message, /n = 17 is more than llmux fans out \(at most 16/);
  assert.equal((await api(claude)).length, 0);
});
