// Native passthrough (issue 15): a client speaking a provider's own API is
// served untranslated by a provider that declares it (ABI 1.4 features:
// LLMUX_FEATURE_MESSAGES, LLMUX_FEATURE_RESPONSES). The Anthropic SDK ->
// llmux -> the anthropic plugin's mock gets the client's body with only the
// model replaced, and the client gets the mock's bytes; usage is counted
// from the native answer; a 529 fails over to an OpenAI-format route, which
// translates. The openai SDK's responses.create -> llmux -> an openai-plugin
// provider with `responses = true` (or a model with `capabilities =
// responses`) passes through to its /v1/responses; without either it is
// translated to chat.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, httpRequest, startMock } from "./lib/mock.mjs";

const KEY = "llmux-passthrough-e2e-tenant-key-0123456789";
const TOKENS = 5;
let claude, oa, oaresp, gw, anthropic, openai;

function config() {
  const base = (name, plugin, mock, extra = "") =>
    `[provider ${name}]\nplugin = ${plugin}\nbase_url = ${mock.baseURL}\napi_key_env = MOCK_KEY\n` +
    `timeout = 3s\n${extra}\n`;
  const files = {
    "providers/claude.ini": base("claude", "anthropic", claude) +
      "[route claude claude-native]\nid = claude-model-v1\n",
    "providers/claude529.ini": base("claude529", "anthropic", claude,
      "priority = 1\nheader.x-mock-fault = 503\n") + "[route claude529 claude-fo]\nid = claude-model\n",
    "providers/claude400.ini": base("claude400", "anthropic", claude,
      "header.x-mock-fault = 400\n") + "[route claude400 claude-bad]\nid = claude-model\n",
    "providers/oa.ini": base("oa", "openai", oa, "priority = 2\n") +
      "[route oa claude-fo]\nid = oa-model\n[route oa oa-translated]\nid = oa-model\n" +
      "[route oa oa-capable]\nid = oa-cap-model\n",
    "providers/oaresp.ini": base("oaresp", "openai", oaresp, "responses = true\n") +
      "[route oaresp resp-native]\nid = gpt-native\n",
  };
  const models = ["claude-native", "claude-fo", "claude-bad", "oa-translated", "resp-native"];
  const hash = createHash("sha256").update(KEY).digest("hex");
  files["llmux.ini"] = "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nmax_attempts = 2\n\n" +
    models.map((m) => `[model ${m}]\ntier = 3\n`).join("\n") +
    "\n[model oa-capable]\ntier = 3\ncapabilities = responses\n" +
    `\n[tenant pass]\nkey_sha256 = ${hash}\n`;
  return files;
}

before(async () => {
  const args = (name) => ({ args: ["--name", name, "--tokens", String(TOKENS)] });
  [claude, oa, oaresp] = await Promise.all([startMock(args("claude")), startMock(args("oa")),
    startMock(args("oaresp"))]);
  gw = await startGateway(writeConfig(config()), { MOCK_KEY: "mock-key-0123456789" });
  anthropic = new Anthropic({ baseURL: gw.url, apiKey: KEY, maxRetries: 0, timeout: 10000 });
  openai = new OpenAI({ baseURL: gw.url + "/v1", apiKey: KEY, maxRetries: 0, timeout: 10000 });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all([claude, oa, oaresp].map((m) => m.stop()));
});

async function lastSeen(mock) {
  const log = await mock.requests();
  return log[log.length - 1];
}

// The raw body the client sends, and what the provider must get: the same
// bytes with only the model's value replaced.
function bodies(model, providerModel, extra = {}) {
  const body = JSON.stringify({ model, max_tokens: 100, system: "Be  brief.",
    messages: [{ role: "user", content: "Say \u00e9 hello" }], metadata: { user_id: "u1" },
    ...extra });
  return { body, upstream: body.replace(JSON.stringify(model), JSON.stringify(providerModel)) };
}

async function post(path, body, headers = {}) {
  return httpRequest(gw.url + path, { method: "POST", body, headers: {
    "content-type": "application/json", authorization: `Bearer ${KEY}`, ...headers } });
}

async function usage() {
  const r = await fetch(gw.url + "/v1/usage", { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal(r.status, 200);
  return (await r.json()).today;
}

function modelUsage(u, model) {
  return u.models.find((m) => m.model === model) ?? { requests: 0, input_tokens: 0, output_tokens: 0 };
}

test("Messages to the anthropic plugin: the mock gets the client's bytes, model replaced", async () => {
  const { body, upstream } = bodies("claude-native", "claude-model-v1");
  const r = await post("/v1/messages", body);
  assert.equal(r.status, 200);
  const seen = await lastSeen(claude);
  assert.equal(seen.path ?? seen.url, "/v1/messages");
  assert.equal(seen.body, upstream);
  assert.equal(r.headers["x-llmux-provider"], "claude");
  assert.ok(r.headers["request-id"], "request-id as Anthropic's clients expect");
  // The answer is the mock's own: the same request straight to the mock.
  const direct = await httpRequest(claude.baseURL + "/messages", { method: "POST", body: upstream,
    headers: { "content-type": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01" } });
  const strip = (s) => s.replace(/"id":"msg_[^"]*"/, '"id":"X"');
  assert.equal(strip(r.body), strip(direct.body));
});

test("the Anthropic SDK: messages.create through, usage counted from the native answer", async () => {
  const before = modelUsage(await usage(), "claude-native");
  const msg = await anthropic.messages.create({ model: "claude-native", max_tokens: 100,
    messages: [{ role: "user", content: "Say hello" }] });
  assert.equal(msg.type, "message");
  assert.equal(msg.model, "claude-model-v1", "the provider's own answer: its model id");
  assert.deepEqual(msg.content, [{ type: "text", text: expectedContent("claude", TOKENS) }]);
  const after = modelUsage(await usage(), "claude-native");
  assert.equal(after.requests, before.requests + 1);
  assert.equal(after.output_tokens - before.output_tokens, msg.usage.output_tokens);
  assert.equal(after.input_tokens - before.input_tokens, msg.usage.input_tokens);
});

test("a Messages stream passes through byte for byte, and its usage is counted", async () => {
  const { body, upstream } = bodies("claude-native", "claude-model-v1", { stream: true });
  const before = modelUsage(await usage(), "claude-native");
  const r = await post("/v1/messages", body);
  assert.equal(r.status, 200);
  assert.match(r.headers["content-type"], /^text\/event-stream/);
  assert.equal((await lastSeen(claude)).body, upstream);
  const direct = await httpRequest(claude.baseURL + "/messages", { method: "POST", body: upstream,
    headers: { "content-type": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01" } });
  const strip = (s) => s.replace(/"id":"msg_[^"]*"/g, '"id":"X"');
  assert.equal(strip(r.body), strip(direct.body));
  const start = JSON.parse(/event: message_start\ndata: (.*)/.exec(r.body)[1]);
  const delta = JSON.parse(/event: message_delta\ndata: (.*)/.exec(r.body)[1]);
  const after = modelUsage(await usage(), "claude-native");
  assert.equal(after.input_tokens - before.input_tokens, start.message.usage.input_tokens);
  assert.equal(after.output_tokens - before.output_tokens, delta.usage.output_tokens);
  assert.equal(delta.usage.output_tokens, TOKENS);
});

test("the Anthropic SDK's stream sees Anthropic's events", async () => {
  const stream = anthropic.messages.stream({ model: "claude-native", max_tokens: 100,
    messages: [{ role: "user", content: "Say hello" }] });
  const final = await stream.finalMessage();
  assert.equal(final.content[0].text, expectedContent("claude", TOKENS));
  assert.equal(final.usage.output_tokens, TOKENS);
});

test("a 529 from the anthropic route fails over to an OpenAI-format route, translated", async () => {
  const { data, response } = await anthropic.messages.create({ model: "claude-fo", max_tokens: 100,
    messages: [{ role: "user", content: "Say hello" }] }).withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "oa");
  assert.equal(response.headers.get("x-llmux-attempts"), "2");
  assert.equal(data.type, "message");
  assert.deepEqual(data.content, [{ type: "text", text: expectedContent("oa", TOKENS) }]);
  const seen = await lastSeen(oa);
  assert.ok(JSON.parse(seen.body).messages, "the openai route got a chat body");
});

test("when every route fails, the native provider's error body reaches the client as it is", async () => {
  const body = JSON.stringify({ model: "claude-bad", max_tokens: 10,
    messages: [{ role: "user", content: "hi" }] });
  const e = await post("/v1/messages", body);
  assert.equal(e.status, 400);
  const direct = await httpRequest(claude.baseURL + "/messages", { method: "POST",
    body: body.replace('"claude-bad"', '"claude-model"'), headers: { "content-type": "application/json",
      "x-api-key": "k", "anthropic-version": "2023-06-01", "x-mock-fault": "400" } });
  assert.equal(direct.status, 400);
  const strip = (b) => b.replace(/"request_id":"req_mock[0-9a-f]+"/, '"request_id":"X"');
  assert.equal(strip(e.body), strip(direct.body), "the provider's own error body");
  assert.equal(JSON.parse(e.body).error.type, "invalid_request_error");
  assert.ok(e.headers["x-request-id"]);
});

test("responses.create to a provider with responses = true passes through", async () => {
  const before = modelUsage(await usage(), "resp-native");
  const body = JSON.stringify({ model: "resp-native", input: "Say  hello", store: false });
  const r = await post("/v1/responses", body);
  assert.equal(r.status, 200);
  const seen = await lastSeen(oaresp);
  assert.equal(seen.body, body.replace('"resp-native"', '"gpt-native"'));
  const res = JSON.parse(r.body);
  assert.match(res.id, /^resp_mock/, "the provider's response, not llmux's");
  assert.equal(res.model, "gpt-native");
  const sdk = await openai.responses.create({ model: "resp-native", input: "Say hello" });
  assert.equal(sdk.output_text, expectedContent("oaresp", TOKENS));
  const after = modelUsage(await usage(), "resp-native");
  assert.equal(after.requests, before.requests + 2);
  assert.equal(after.output_tokens - before.output_tokens, 2 * TOKENS);
  assert.equal(after.input_tokens - before.input_tokens,
    res.usage.input_tokens + sdk.usage.input_tokens);
});

test("a Responses stream passes through byte for byte, usage from response.completed", async () => {
  const before = modelUsage(await usage(), "resp-native");
  const body = JSON.stringify({ model: "resp-native", input: "Say hello", stream: true });
  const r = await post("/v1/responses", body);
  assert.equal(r.status, 200);
  const upstream = body.replace('"resp-native"', '"gpt-native"');
  const direct = await httpRequest(oaresp.baseURL + "/responses", { method: "POST", body: upstream,
    headers: { "content-type": "application/json" } });
  const strip = (s) => s.replace(/(resp|msg)_mock\d+/g, "$1_X").replace(/"created_at":\d+/g, "");
  assert.equal(strip(r.body), strip(direct.body));
  const events = [];
  for await (const ev of await openai.responses.create({ model: "resp-native", input: "hi", stream: true }))
    events.push(ev.type);
  assert.equal(events[0], "response.created");
  assert.equal(events.at(-1), "response.completed");
  const after = modelUsage(await usage(), "resp-native");
  assert.equal(after.output_tokens - before.output_tokens, 2 * TOKENS);
});

test("capabilities = responses on a model passes through on an openai-plugin provider", async () => {
  const sdk = await openai.responses.create({ model: "oa-capable", input: "Say hello" });
  const seen = await lastSeen(oa);
  assert.equal(seen.path ?? seen.url, "/v1/responses");
  assert.equal(JSON.parse(seen.body).model, "oa-cap-model");
  assert.match(sdk.id, /^resp_mock/);
  assert.equal(sdk.output_text, expectedContent("oa", TOKENS));
});

test("without either, responses.create is translated to chat", async () => {
  const sdk = await openai.responses.create({ model: "oa-translated", input: "Say hello" });
  const seen = await lastSeen(oa);
  assert.equal(seen.path ?? seen.url, "/v1/chat/completions");
  assert.doesNotMatch(sdk.id, /^resp_mock/);
  assert.equal(sdk.output_text, expectedContent("oa", TOKENS));
});
