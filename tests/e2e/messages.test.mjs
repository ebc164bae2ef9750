// Anthropic's Messages API in (issue 15): the official @anthropic-ai/sdk
// talks to llmux's POST /v1/messages, and llmux serves it from providers of
// each upstream format: an OpenAI-compatible one (the openai plugin), an
// Anthropic one (the anthropic plugin: Messages -> chat -> Messages) and
// Ollama's native API. Each gets the same suite: create, stream (the event
// sequence Anthropic documents), tools with a round trip, errors in
// Anthropic's shape, count_tokens.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import Anthropic from "@anthropic-ai/sdk";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, httpRequest, startMock } from "./lib/mock.mjs";

const KEY = "llmux-messages-e2e-tenant-key-0123456789";
const MOCK_KEY = "test-provider-key-for-the-mocks-0123456789";
const TOKENS = 5;
let mocks = {}, gw, client;

// One model per upstream format, and a few with faults.
const FORMATS = {
  openai: { model: "oa-chat", mock: "oa", plugin: "openai", url: (m) => m.baseURL },
  anthropic: { model: "claude-chat", mock: "claude", plugin: "anthropic", url: (m) => m.baseURL },
  ollama: { model: "ol-chat", mock: "ol", plugin: "ollama", url: (m) => m.url },
};

function config() {
  const files = {};
  const models = [];
  const provider = (name, f, extra = "") =>
    `[provider ${name}]\nplugin = ${f.plugin}\nbase_url = ${f.url(mocks[f.mock])}\n` +
    (f.plugin === "ollama" ? "" : "api_key_env = MOCK_KEY\n") + `timeout = 3s\n${extra}\n`;
  for (const [name, f] of Object.entries(FORMATS)) {
    files[`providers/${name}.ini`] = provider(name, f) + `[route ${name} ${f.model}]\nid = ${f.mock}-model\n`;
    models.push(f.model);
  }
  files["providers/oabroken.ini"] = provider("oabroken", FORMATS.openai,
    "header.x-mock-fault = reset-mid-stream\nheader.x-mock-fail-after = 3\n") +
    "[route oabroken oa-broken]\nid = oa-model\n";
  files["providers/claudeerr.ini"] = provider("claudeerr", FORMATS.anthropic,
    "header.x-mock-stream-error = overloaded_error\nheader.x-mock-fail-after = 4\n") +
    "[route claudeerr claude-streamerr]\nid = claude-model\n";
  files["providers/oa429.ini"] = provider("oa429", FORMATS.openai,
    "header.x-mock-fault = 429\nheader.x-mock-retry-after = 30\n") +
    "[route oa429 oa-limited]\nid = oa-model\n";
  models.push("oa-broken", "claude-streamerr", "oa-limited");
  const hash = createHash("sha256").update(KEY).digest("hex");
  files["llmux.ini"] = "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nmax_attempts = 1\n\n" +
    models.map((m) => `[model ${m}]\ntier = 3\ncapabilities = tools, vision\n`).join("\n") +
    `\n[tenant messages]\nkey_sha256 = ${hash}\n`;
  return files;
}

before(async () => {
  for (const f of Object.values(FORMATS)) {
    mocks[f.mock] = await startMock({ args: ["--name", f.mock, "--tokens", String(TOKENS)] });
  }
  gw = await startGateway(writeConfig(config()), { MOCK_KEY });
  client = new Anthropic({ baseURL: gw.url, apiKey: KEY, maxRetries: 0, timeout: 10000 });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all(Object.values(mocks).map((m) => m.stop()));
});

const hello = [{ role: "user", content: "Say hello" }];
const tools = [
  { name: "get_weather", description: "Weather for a city",
    input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
  { name: "get_time", input_schema: { type: "object", properties: {} } },
];

async function lastSeen(mock) {
  const log = await mock.requests();
  const seen = log[log.length - 1];
  return { ...seen, json: JSON.parse(seen.body) };
}

// The types of a stream's events, runs of deltas written once as "delta*".
function shape(types) {
  return types.filter((t, i) => t !== "content_block_delta" || types[i - 1] !== "content_block_delta")
    .map((t) => (t === "content_block_delta" ? "delta*" : t));
}

// Raw SSE: each frame "event: NAME\ndata: JSON" whose JSON type is NAME.
function parseAnthropicSSE(text) {
  assert.ok(text.endsWith("\n\n"), "the stream ends with a blank line");
  return text.slice(0, -2).split("\n\n").map((frame) => {
    const m = /^event: ([a-z_]+)\ndata: (.*)$/.exec(frame);
    assert.ok(m, `malformed frame: ${JSON.stringify(frame)}`);
    const data = JSON.parse(m[2]);
    assert.equal(data.type, m[1]);
    return data;
  });
}

async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected the call to fail");
}

for (const [format, f] of Object.entries(FORMATS)) {
  describe(`POST /v1/messages served by a ${format}-format provider`, () => {
    const text = expectedContent(f.mock, TOKENS);

    test("messages.create answers a Message", async () => {
      const { data, response } = await client.messages
        .create({ model: f.model, max_tokens: 100, system: "Be brief.", messages: hello })
        .withResponse();
      assert.equal(data.type, "message");
      assert.equal(data.role, "assistant");
      assert.match(data.id, /^msg_/);
      assert.deepEqual(data.content, [{ type: "text", text }]);
      assert.equal(data.stop_reason, "end_turn");
      assert.equal(data.stop_sequence, null);
      assert.equal(data.usage.output_tokens, TOKENS);
      assert.ok(data.usage.input_tokens > 0);
      assert.equal(response.headers.get("x-llmux-provider"), format);
      assert.match(response.headers.get("request-id"), /^req_/);
      assert.equal(response.headers.get("request-id"), response.headers.get("x-request-id"));
    });

    test("max_tokens cuts the answer short: stop_reason max_tokens", async () => {
      const r = await client.messages.create({ model: f.model, max_tokens: 2, messages: hello });
      assert.deepEqual(r.content, [{ type: "text", text: expectedContent(f.mock, 2) }]);
      assert.equal(r.stop_reason, "max_tokens");
    });

    test("messages.stream delivers Anthropic's documented event sequence", async () => {
      const stream = client.messages.stream({ model: f.model, max_tokens: 100, messages: hello });
      const types = [];
      let deltas = "";
      stream.on("streamEvent", (ev) => {
        types.push(ev.type);
        if (ev.type === "content_block_delta") deltas += ev.delta.text;
      });
      const final = await stream.finalMessage();
      assert.deepEqual(shape(types), ["message_start", "content_block_start", "delta*",
        "content_block_stop", "message_delta", "message_stop"]);
      assert.equal(deltas, text);
      assert.deepEqual(final.content, [{ type: "text", text }]);
      assert.equal(final.stop_reason, "end_turn");
      assert.equal(final.usage.output_tokens, TOKENS);

      // On the wire, ping included (the SDK swallows it): event and data agree.
      const raw = await httpRequest(gw.url + "/v1/messages", {
        headers: { "x-api-key": KEY, "anthropic-version": "2023-06-01" }, agent: false,
        body: { model: f.model, max_tokens: 100, messages: hello, stream: true },
      });
      assert.equal(raw.status, 200);
      assert.match(raw.headers["content-type"], /^text\/event-stream/);
      const events = parseAnthropicSSE(raw.body);
      assert.deepEqual(shape(events.map((e) => e.type)), ["message_start", "content_block_start",
        "ping", "delta*", "content_block_stop", "message_delta", "message_stop"]);
      assert.ok(events[0].message.usage.input_tokens > 0, "message_start carries input_tokens");
      assert.equal(events.at(-2).delta.stop_reason, "end_turn");
    });

    test("tools: tool_use blocks with parsed input, then a tool_result round trip", async () => {
      const r = await client.messages.create({ model: f.model, max_tokens: 100, messages: hello, tools });
      assert.equal(r.stop_reason, "tool_use");
      const uses = r.content.filter((b) => b.type === "tool_use");
      assert.ok(uses.length >= 1, "at least one tool is called");
      for (const u of uses) {
        assert.ok(typeof u.id === "string" && u.id.length > 0);
        assert.ok(tools.some((t) => t.name === u.name));
        assert.equal(typeof u.input, "object");
        assert.equal(u.input.input, text, "the mock's arguments, parsed");
      }
      const followUp = [...hello, { role: "assistant", content: r.content },
        { role: "user", content: uses.map((u) => ({ type: "tool_result", tool_use_id: u.id, content: "18C" })) }];
      const done = await client.messages.create({
        model: f.model, max_tokens: 100, messages: followUp, tools, tool_choice: { type: "none" },
      });
      assert.equal(done.stop_reason, "end_turn");
      assert.deepEqual(done.content, [{ type: "text", text }]);
    });

    test("tools streamed: input_json_delta pieces make the final input", async () => {
      const stream = client.messages.stream({ model: f.model, max_tokens: 100, messages: hello, tools });
      const types = [];
      stream.on("streamEvent", (ev) => {
        types.push(ev.type === "content_block_delta" ? ev.delta.type : ev.type);
      });
      const final = await stream.finalMessage();
      assert.equal(final.stop_reason, "tool_use");
      const uses = final.content.filter((b) => b.type === "tool_use");
      assert.ok(uses.length >= 1);
      for (const u of uses) assert.equal(u.input.input, text);
      assert.ok(types.includes("input_json_delta"));
      assert.equal(types[0], "message_start");
      assert.deepEqual(types.slice(-2), ["message_delta", "message_stop"]);
    });

    test("count_tokens gives the gateway's estimate", async () => {
      const r = await client.messages.countTokens({ model: f.model, system: "Be brief.", messages: hello });
      assert.ok(Number.isInteger(r.input_tokens) && r.input_tokens > 0);
      const longer = await client.messages.countTokens({
        model: f.model, messages: [{ role: "user", content: "word ".repeat(400) }],
      });
      assert.ok(longer.input_tokens > r.input_tokens + 300, "grows with the prompt");
    });
  });
}

describe("what the provider receives", () => {
  test("the Messages request becomes an equivalent chat request", async () => {
    const png = Buffer.from("not really a png").toString("base64");
    await client.messages.create({
      model: "oa-chat", max_tokens: 64, temperature: 0.5, top_p: 0.9, top_k: 5,
      stop_sequences: ["END"], metadata: { user_id: "u-42" },
      system: [{ type: "text", text: "Be brief." }, { type: "text", text: "Be kind." }],
      messages: [{ role: "user", content: [
        { type: "text", text: "What is this?" },
        { type: "image", source: { type: "base64", media_type: "image/png", data: png } },
      ] }],
      tools, tool_choice: { type: "tool", name: "get_time", disable_parallel_tool_use: true },
    });
    const seen = await lastSeen(mocks.oa);
    assert.equal(seen.path, "/v1/chat/completions");
    assert.equal(seen.headers["anthropic-version"], undefined, "client headers stay home");
    assert.equal(seen.headers["x-api-key"], undefined);
    assert.equal(seen.headers.authorization, `Bearer ${MOCK_KEY}`);
    assert.deepEqual(seen.json, {
      model: "oa-model",
      messages: [
        { role: "system", content: "Be brief.\n\nBe kind." },
        { role: "user", content: [
          { type: "text", text: "What is this?" },
          { type: "image_url", image_url: { url: `data:image/png;base64,${png}` } },
        ] },
      ],
      max_tokens: 64, temperature: 0.5, top_p: 0.9, stop: ["END"], user: "u-42",
      tools: tools.map((t) => ({ type: "function", function: {
        name: t.name, ...(t.description ? { description: t.description } : {}), parameters: t.input_schema } })),
      tool_choice: { type: "function", function: { name: "get_time" } },
      parallel_tool_calls: false,
    });
  });

  test("a tool round trip becomes assistant tool_calls and tool messages", async () => {
    await client.messages.create({
      model: "oa-chat", max_tokens: 64, stream: false,
      messages: [
        { role: "user", content: "Weather?" },
        { role: "assistant", content: [{ type: "text", text: "Let me look." },
          { type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "Paris" } }] },
        { role: "user", content: [{ type: "text", text: "Thanks" },
          { type: "tool_result", tool_use_id: "toolu_1", content: [{ type: "text", text: "18C" }] }] },
      ],
      tools, tool_choice: { type: "any" },
    });
    const { json } = await lastSeen(mocks.oa);
    assert.deepEqual(json.messages, [
      { role: "user", content: "Weather?" },
      { role: "assistant", content: "Let me look.", tool_calls: [
        { id: "toolu_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
      { role: "tool", tool_call_id: "toolu_1", content: "18C" },
      { role: "user", content: "Thanks" },
    ]);
    assert.equal(json.tool_choice, "required");
  });

  test("a stream asks the provider for usage at its end", async () => {
    await client.messages.create({ model: "oa-chat", max_tokens: 64, messages: hello, stream: true })
      .then(async (s) => { for await (const _ of s); });
    const { json } = await lastSeen(mocks.oa);
    assert.equal(json.stream, true);
    assert.deepEqual(json.stream_options, { include_usage: true });
  });
});

describe("errors in Anthropic's shape", () => {
  test("an unknown model is NotFoundError (404 not_found_error)", async () => {
    const e = await rejection(client.messages.create({ model: "no-such-model", max_tokens: 10, messages: hello }));
    assert.ok(e instanceof Anthropic.NotFoundError, e.constructor.name);
    assert.equal(e.status, 404);
    assert.equal(e.error.type, "error");
    assert.equal(e.error.error.type, "not_found_error");
    assert.match(e.error.error.message, /no-such-model/);
    assert.match(e.requestID, /^req_/);
    const c = await rejection(client.messages.countTokens({ model: "no-such-model", messages: hello }));
    assert.ok(c instanceof Anthropic.NotFoundError);
  });

  test("a bad key is AuthenticationError (401 authentication_error), x-api-key or Bearer", async () => {
    const bad = new Anthropic({ baseURL: gw.url, apiKey: "not-a-key", maxRetries: 0 });
    const e = await rejection(bad.messages.create({ model: "oa-chat", max_tokens: 10, messages: hello }));
    assert.ok(e instanceof Anthropic.AuthenticationError, e.constructor.name);
    assert.equal(e.error.error.type, "authentication_error");
    const bearer = new Anthropic({ baseURL: gw.url, apiKey: null, authToken: KEY, maxRetries: 0 });
    const ok = await bearer.messages.create({ model: "oa-chat", max_tokens: 10, messages: hello });
    assert.equal(ok.type, "message");
  });

  test("a malformed request is BadRequestError naming the field", async () => {
    let e = await rejection(client.messages.create({ model: "oa-chat", messages: hello }));
    assert.ok(e instanceof Anthropic.BadRequestError, e.constructor.name);
    assert.equal(e.error.error.type, "invalid_request_error");
    assert.match(e.error.error.message, /^max_tokens: Field required/);
    e = await rejection(client.messages.create({ model: "oa-chat", max_tokens: 10, temperature: 3, messages: hello }));
    assert.match(e.error.error.message, /^temperature:/);
    e = await rejection(client.messages.create({ model: "oa-chat", max_tokens: 10,
      messages: [{ role: "system", content: "no" }] }));
    assert.match(e.error.error.message, /^messages\.0\.role:/);
    const raw = await httpRequest(gw.url + "/v1/messages", {
      headers: { "x-api-key": KEY, "content-type": "application/json" }, agent: false,
      body: '{"model":"oa-chat","max_tokens":10,"max_tokens":20,"messages":[]}',
    });
    assert.equal(raw.status, 400);
    assert.equal(JSON.parse(raw.body).error.type, "invalid_request_error");
  });

  test("the provider's 429 is RateLimitError with retry-after", async () => {
    const e = await rejection(client.messages.create({ model: "oa-limited", max_tokens: 10, messages: hello }));
    assert.ok(e instanceof Anthropic.RateLimitError, e.constructor.name);
    assert.equal(e.error.error.type, "rate_limit_error");
    assert.match(e.headers.get("retry-after"), /^\d+$/);
  });

  test("a stream that breaks ends with an error event the SDK throws", async () => {
    for (const model of ["oa-broken", "claude-streamerr"]) {
      const stream = client.messages.stream({ model, max_tokens: 100, messages: hello });
      const types = [];
      stream.on("streamEvent", (ev) => types.push(ev.type));
      const e = await rejection(stream.finalMessage());
      assert.ok(e instanceof Anthropic.APIError, `${model}: ${e.constructor.name}`);
      assert.equal(types[0], "message_start", `${model}: events came before the error`);
      assert.ok(!types.includes("message_stop"), `${model}: no message_stop after an error`);
      if (model === "claude-streamerr") assert.equal(e.type, "overloaded_error");
    }
  });

  test("GET /v1/messages is 405 in Anthropic's shape", async () => {
    const r = await httpRequest(gw.url + "/v1/messages", { headers: { "x-api-key": KEY }, agent: false });
    assert.equal(r.status, 405);
    assert.equal(JSON.parse(r.body).type, "error");
  });
});
