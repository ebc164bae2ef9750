// The official openai client talking to llmux, which speaks Anthropic's
// Messages API to the mock (tests/mock/anthropic.c) through the `anthropic`
// plugin. The mock validates requests the way Anthropic does and answers
// 400 otherwise, so every success here proves the translation: plain and
// streamed chat, system prompts, stop and max_tokens, tool calls in both
// (with a round trip of tool results), and Anthropic's errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, httpRequest, parseSSE, startMock } from "./lib/mock.mjs";

const KEY = "test-anthropic-key-for-the-mock-0123456789";
const CLAUDE_ID = "claude-3-5-sonnet-20241022";
let claude, backup, gw, client;

function provider(name, url, extra = "") {
  return `[provider ${name}]\nplugin = anthropic\nbase_url = ${url}\napi_key_env = MOCK_KEY\n` +
    `ratelimit_headers = anthropic\npriority = 1\ntimeout = 2s\n${extra}\n`;
}
const route = (prov, model, id = CLAUDE_ID) => `[route ${prov} ${model}]\nid = ${id}\n\n`;

function config() {
  const url = claude.baseURL; // http://127.0.0.1:PORT/v1, as users write Anthropic's
  const faults = {
    a429: "header.x-mock-fault = 429\nheader.x-mock-retry-after = 30\n",
    a529: "header.x-mock-fault = 503\nheader.x-mock-retry-after = 0\n",
    a400: "header.x-mock-fault = 400\n",
    astreamerr: "header.x-mock-stream-error = overloaded_error\nheader.x-mock-fail-after = 4\n",
  };
  const files = {
    "providers/anthropic.ini": provider("anthropic", url) + route("anthropic", "claude-model"),
    "providers/backup.ini":
      `[provider backup]\nplugin = openai\nbase_url = ${backup.baseURL}\napi_key_env = MOCK_KEY\n` +
      `priority = 9\n\n` + route("backup", "failover-model", "backup-id"),
  };
  for (const [name, extra] of Object.entries(faults)) files[`providers/${name}.ini`] = provider(name, url, extra);
  files["providers/a429.ini"] += route("a429", "failover-model") + route("a429", "limited-model");
  files["providers/a529.ini"] += route("a529", "overloaded-model");
  files["providers/a400.ini"] += route("a400", "bad-model");
  files["providers/astreamerr.ini"] += route("astreamerr", "streamerr-model");
  const models = ["claude-model", "failover-model", "limited-model", "overloaded-model", "bad-model",
                  "streamerr-model"].map((m) => `[model ${m}]\ntier = 4\ncapabilities = tools, vision\n`).join("\n");
  files["llmux.ini"] = `[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n\n${models}`;
  return files;
}

before(async () => {
  claude = await startMock({ args: ["--name", "claude", "--tokens", "5"] });
  backup = await startMock({ args: ["--name", "backup", "--tokens", "3"] });
  gw = await startGateway(writeConfig(config()), { MOCK_KEY: KEY });
  client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "client-key", maxRetries: 0, timeout: 10000 });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all([claude.stop(), backup.stop()]);
  assert.doesNotMatch(gw.stderr(), new RegExp(KEY), "the provider key is never logged");
});

const hello = [{ role: "system", content: "Be brief." }, { role: "user", content: "Say hello" }];

async function lastSeen() {
  const log = await claude.requests();
  const seen = log[log.length - 1];
  return { ...seen, json: JSON.parse(seen.body) };
}

test("a plain chat goes out as a Messages request and comes back as a chat completion", async () => {
  const { data, response } = await client.chat.completions
    .create({ model: "claude-model", messages: hello }).withResponse();
  assert.equal(data.object, "chat.completion");
  assert.equal(data.choices[0].message.role, "assistant");
  assert.equal(data.choices[0].message.content, expectedContent("claude", 5));
  assert.equal(data.choices[0].finish_reason, "stop");
  assert.equal(data.model, CLAUDE_ID);
  assert.match(data.id, /^msg_mock/);
  assert.equal(data.usage.completion_tokens, 5);
  assert.ok(data.usage.prompt_tokens > 0);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + 5);
  assert.equal(response.headers.get("x-llmux-provider"), "anthropic");

  const seen = await lastSeen();
  assert.equal(seen.method, "POST");
  assert.equal(seen.path, "/v1/messages");
  assert.equal(seen.headers["x-api-key"], KEY, "the provider's key, in Anthropic's header");
  assert.equal(seen.headers["anthropic-version"], "2023-06-01");
  assert.equal(seen.headers.authorization, undefined);
  assert.deepEqual(seen.json, {
    model: CLAUDE_ID, max_tokens: 4096, system: "Be brief.",
    messages: [{ role: "user", content: "Say hello" }],
  });
});

test("a streamed chat arrives as chunks with a finish reason, usage and [DONE]", async () => {
  const stream = await client.chat.completions.create({
    model: "claude-model", messages: hello, stream: true, stream_options: { include_usage: true },
  });
  let text = "", chunks = 0, finish = null, usage = null;
  const ids = new Set();
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    ids.add(chunk.id);
    if (chunk.choices[0]?.delta?.content) text += chunk.choices[0].delta.content;
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, expectedContent("claude", 5));
  assert.ok(chunks >= 7, `role, 5 tokens, finish and usage: got ${chunks}`);
  assert.equal(ids.size, 1, "one id for the whole stream");
  assert.equal(finish, "stop");
  assert.equal(usage.completion_tokens, 5);
  const seen = await lastSeen();
  assert.equal(seen.json.stream, true);
  assert.equal(seen.json.stream_options, undefined, "OpenAI-only fields stay home");

  // On the wire: well-formed `data:` frames only, ending with [DONE].
  const raw = await httpRequest(gw.url + "/v1/chat/completions", {
    body: { model: "claude-model", messages: hello, stream: true }, agent: false,
  });
  assert.equal(raw.status, 200);
  assert.match(raw.headers["content-type"], /^text\/event-stream/);
  const events = parseSSE(raw.body);
  assert.equal(events.at(-1).data, "[DONE]");
  assert.ok(events.slice(0, -1).every((e) => JSON.parse(e.data).object === "chat.completion.chunk"));
});

test("max_tokens cuts the answer (length) and stop sequences end it (stop)", async () => {
  let r = await client.chat.completions.create({ model: "claude-model", messages: hello, max_tokens: 2 });
  assert.equal(r.choices[0].message.content, expectedContent("claude", 2));
  assert.equal(r.choices[0].finish_reason, "length");
  r = await client.chat.completions.create({
    model: "claude-model", messages: hello, stop: ["tok3"], temperature: 0.2, top_p: 0.9,
  });
  assert.equal(r.choices[0].message.content, expectedContent("claude", 3));
  assert.equal(r.choices[0].finish_reason, "stop");
  const seen = await lastSeen();
  assert.deepEqual(seen.json.stop_sequences, ["tok3"]);
  assert.equal(seen.json.temperature, 0.2);
  assert.equal(seen.json.top_p, 0.9);
});

const tools = [
  { type: "function", function: { name: "get_weather", description: "Weather for a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: {} } } },
];

test("tool calls come back as tool_calls, and tool results go back as one user turn", async () => {
  const r = await client.chat.completions.create({ model: "claude-model", messages: hello, tools });
  const msg = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  assert.equal(msg.content, "claude", "the text Claude wrote before calling");
  assert.deepEqual(msg.tool_calls.map((c) => c.function.name), ["get_weather", "get_time"]);
  for (const call of msg.tool_calls) {
    assert.equal(call.type, "function");
    assert.match(call.id, /^toolu_/);
    assert.deepEqual(JSON.parse(call.function.arguments), { input: expectedContent("claude", 5) });
  }
  let seen = await lastSeen();
  assert.equal(seen.json.tools[0].name, "get_weather");
  assert.deepEqual(seen.json.tools[0].input_schema, tools[0].function.parameters);

  // The round trip: the mock refuses tool_use ids without matching results.
  const followUp = [...hello, msg,
    { role: "tool", tool_call_id: msg.tool_calls[0].id, content: "18C" },
    { role: "tool", tool_call_id: msg.tool_calls[1].id, content: "noon" }];
  const done = await client.chat.completions.create({ model: "claude-model", messages: followUp, tools });
  assert.equal(done.choices[0].finish_reason, "stop");
  assert.equal(done.choices[0].message.content, expectedContent("claude", 5));
  seen = await lastSeen();
  const turns = seen.json.messages;
  assert.deepEqual(turns.map((t) => t.role), ["user", "assistant", "user"]);
  assert.deepEqual(turns[1].content.map((b) => b.type), ["text", "tool_use", "tool_use"]);
  assert.deepEqual(turns[1].content[1].input, { input: expectedContent("claude", 5) });
  assert.deepEqual(turns[2].content, [
    { type: "tool_result", tool_use_id: msg.tool_calls[0].id, content: "18C" },
    { type: "tool_result", tool_use_id: msg.tool_calls[1].id, content: "noon" },
  ]);
});

test("streamed tool calls arrive as deltas, each with its own index", async () => {
  const stream = await client.chat.completions.create({ model: "claude-model", messages: hello, tools, stream: true });
  const calls = [];
  let finish = null, text = "";
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta ?? {};
    if (d.content) text += d.content;
    for (const tc of d.tool_calls ?? []) {
      calls[tc.index] ??= { id: "", name: "", args: "" };
      if (tc.id) calls[tc.index].id = tc.id;
      if (tc.function?.name) calls[tc.index].name += tc.function.name;
      if (tc.function?.arguments) calls[tc.index].args += tc.function.arguments;
    }
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
  }
  assert.equal(text, "claude");
  assert.equal(finish, "tool_calls");
  assert.deepEqual(calls.map((c) => c.name), ["get_weather", "get_time"]);
  for (const c of calls) {
    assert.match(c.id, /^toolu_/);
    assert.deepEqual(JSON.parse(c.args), { input: expectedContent("claude", 5) });
  }

  // A named tool_choice calls that tool only, without a preamble.
  const one = await client.chat.completions.create({
    model: "claude-model", messages: hello, tools, stream: true,
    tool_choice: { type: "function", function: { name: "get_time" } },
  });
  const names = [];
  for await (const chunk of one) {
    for (const tc of chunk.choices[0]?.delta?.tool_calls ?? []) if (tc.function?.name) names.push([tc.index, tc.function.name]);
  }
  assert.deepEqual(names, [[0, "get_time"]]);
  assert.deepEqual((await lastSeen()).json.tool_choice, { type: "tool", name: "get_time" });
});

async function chatError(model, body = {}) {
  try {
    await client.chat.completions.create({ model, messages: hello, ...body });
  } catch (e) {
    return e;
  }
  assert.fail(`expected ${model} to fail`);
}

test("Anthropic's 429 fails over to another provider, or reaches the client as 429", async () => {
  const { data, response } = await client.chat.completions
    .create({ model: "failover-model", messages: hello }).withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "backup");
  assert.equal(data.choices[0].message.content, expectedContent("backup", 3));

  const e = await chatError("limited-model");
  assert.equal(e.status, 429);
  assert.match(e.headers.get("retry-after"), /^\d+$/);
  assert.ok(Number(e.headers.get("retry-after")) > 1, "the provider's retry-after is honoured");
});

test("529 overloaded_error is a 503; a 400 comes back as 400 with Anthropic's words", async () => {
  let e = await chatError("overloaded-model");
  assert.equal(e.status, 503);
  assert.equal(e.code, "provider_overloaded");
  assert.match(e.message, /Overloaded/);

  e = await chatError("bad-model");
  assert.equal(e.status, 400);
  assert.match(e.message, /mock fault 400/);

  // A request Anthropic refuses on its own terms: top_p above 1 (a
  // temperature above 1 is clamped instead: fidelity.test.mjs).
  e = await chatError("claude-model", { top_p: 1.5 });
  assert.equal(e.status, 400);
  assert.match(e.message, /top_p: Input should be less than or equal to 1/);
});

test("an error event mid-stream reaches the client as a stream error", async () => {
  const stream = await client.chat.completions.create({ model: "streamerr-model", messages: hello, stream: true });
  let got = 0, error = null;
  try {
    for await (const _ of stream) got++;
  } catch (e) {
    error = e;
  }
  assert.ok(got >= 1, "chunks before the error arrived");
  assert.ok(error, "the client sees an error");
  assert.match(String(error.message), /overloaded/i);
});
