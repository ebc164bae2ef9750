// Outbound fidelity (issue 15): what a provider lacks is emulated, mapped or
// refused in words, never dropped in silence. The AI SDK's generateObject
// and streamObject (`openai.chat()` pointed at llmux) get structured output
// from Anthropic through a forced tool; Anthropic's temperature is clamped
// and said in x-llmux-adjusted; logprobs are refused by Anthropic (another
// route serves them) and mapped for Ollama; Ollama gets only the tool a
// tool_choice forces and is told a call is required; an image URL for
// Ollama is the client's 400. The mocks (tests/mock/anthropic.c, ollama.c)
// answer in each provider's wire format and record what they received.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, streamObject } from "ai";
import { z } from "zod";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, startMock } from "./lib/mock.mjs";

const KEY = "test-anthropic-key-for-the-fidelity-mock-0123";
const TOKENS = 5;
let claude, ol, gw, client, sdk;

function config() {
  const route = (prov, model, id) => `[route ${prov} ${model}]\nid = ${id}\n`;
  const models = ["claude-json", "claude-only", "claude-then-ollama", "local-chat"]
    .map((m) => `[model ${m}]\ntier = 4\ncapabilities = tools, vision, json\n`).join("\n");
  return {
    "llmux.ini": `[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n\n${models}`,
    "providers/anthropic.ini": `[provider anthropic]\nplugin = anthropic\nbase_url = ${claude.baseURL}\n` +
      "api_key_env = MOCK_KEY\npriority = 1\ntimeout = 5s\n\n" +
      route("anthropic", "claude-json", "claude-3-5-sonnet-20241022") +
      route("anthropic", "claude-only", "claude-3-5-sonnet-20241022") +
      route("anthropic", "claude-then-ollama", "claude-3-5-sonnet-20241022"),
    "providers/ollama.ini": `[provider ollama]\nplugin = ollama\nbase_url = ${ol.url}\npriority = 9\n\n` +
      route("ollama", "claude-then-ollama", "llama3.1") +
      route("ollama", "local-chat", "llama3.1"),
  };
}

before(async () => {
  claude = await startMock({ args: ["--name", "claude", "--tokens", String(TOKENS)] });
  ol = await startMock({ args: ["--name", "ol", "--tokens", String(TOKENS)] });
  gw = await startGateway(writeConfig(config()), { MOCK_KEY: KEY });
  client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "client-key", maxRetries: 0, timeout: 10000 });
  sdk = createOpenAI({ baseURL: gw.url + "/v1", apiKey: "client-key" });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all([claude.stop(), ol.stop()]);
});

async function lastSeen(mock) {
  const log = await mock.requests();
  const seen = log[log.length - 1];
  return { ...seen, json: JSON.parse(seen.body) };
}

async function failure(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected the request to fail");
}

const content = expectedContent("claude", TOKENS);
const person = z.object({ name: z.string(), age: z.number().int(), tags: z.array(z.string()) });

// ---- Anthropic: structured output through a forced tool -------------------

test("generateObject through an Anthropic route gets the schema's object", async () => {
  const { object, finishReason } = await generateObject({
    model: sdk.chat("claude-json"), schema: person, schemaName: "person",
    prompt: "Invent a person.",
  });
  assert.deepEqual(object, { name: content, age: 42, tags: [content] });
  assert.equal(finishReason, "stop");
  const seen = (await lastSeen(claude)).json;
  assert.equal(seen.response_format, undefined, "Anthropic has no response_format");
  assert.equal(seen.tools.length, 1);
  assert.equal(seen.tools[0].name, "person");
  assert.deepEqual(Object.keys(seen.tools[0].input_schema.properties), ["name", "age", "tags"]);
  assert.deepEqual(seen.tool_choice, { type: "tool", name: "person", disable_parallel_tool_use: true });
});

test("streamObject through an Anthropic route builds the object from content deltas", async () => {
  const result = streamObject({ model: sdk.chat("claude-json"), schema: person, prompt: "Invent a person." });
  const partials = [];
  for await (const p of result.partialObjectStream) partials.push(p);
  assert.deepEqual(await result.object, { name: content, age: 42, tags: [content] });
  assert.ok(partials.length > 1, "the object arrived in pieces");
  assert.equal((await lastSeen(claude)).json.stream, true);
});

test("json_object asks for an object tool and a JSON answer; the content is that JSON", async () => {
  const r = await client.chat.completions.create({
    model: "claude-json", response_format: { type: "json_object" },
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "A JSON object, please." }],
  });
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.equal(r.choices[0].message.tool_calls, undefined);
  assert.deepEqual(JSON.parse(r.choices[0].message.content), { input: content });
  const seen = (await lastSeen(claude)).json;
  assert.deepEqual(seen.tools[0].input_schema, { type: "object" });
  assert.match(seen.system, /^Be brief\.\n\nAnswer with a JSON object/);
});

test("response_format with the client's own tools is refused in words", async () => {
  const e = await failure(client.chat.completions.create({
    model: "claude-only", response_format: { type: "json_object" },
    messages: [{ role: "user", content: "hi" }],
    tools: [{ type: "function", function: { name: "get_time", parameters: { type: "object", properties: {} } } }],
  }));
  assert.equal(e.status, 400);
  assert.match(e.error.message, /^Provider 'anthropic' cannot combine response_format json_object with tools/);
});

// ---- Anthropic: temperature and logprobs ------------------------------------

test("a temperature above Anthropic's 1 is clamped and said in x-llmux-adjusted", async () => {
  const { data, response } = await client.chat.completions.create({
    model: "claude-json", temperature: 1.6, messages: [{ role: "user", content: "hi" }],
  }).withResponse();
  assert.equal(data.choices[0].message.content, content);
  assert.equal(response.headers.get("x-llmux-adjusted"), "temperature");
  assert.equal((await lastSeen(claude)).json.temperature, 1);

  // Streams say it in their head.
  const { data: stream, response: head } = await client.chat.completions.create({
    model: "claude-json", temperature: 2, stream: true, messages: [{ role: "user", content: "hi" }],
  }).withResponse();
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, content);
  assert.equal(head.headers.get("x-llmux-adjusted"), "temperature");

  // Nothing adjusted, nothing said.
  const { response: plain } = await client.chat.completions.create({
    model: "claude-json", temperature: 0.4, messages: [{ role: "user", content: "hi" }],
  }).withResponse();
  assert.equal(plain.headers.get("x-llmux-adjusted"), null);
  assert.equal((await lastSeen(claude)).json.temperature, 0.4);
});

test("logprobs through Anthropic alone: a 400 naming the provider", async () => {
  const before = (await claude.requests()).length;
  const e = await failure(client.chat.completions.create({
    model: "claude-only", logprobs: true, messages: [{ role: "user", content: "hi" }],
  }));
  assert.equal(e.status, 400);
  assert.equal(e.type, "invalid_request_error");
  assert.equal(e.error.message, "Provider 'anthropic' does not support logprobs");
  assert.equal(e.code, "unsupported_by_provider");
  assert.equal((await claude.requests()).length, before, "nothing went to Anthropic");
});

test("logprobs where Anthropic comes first: the next route that has them serves", async () => {
  const { data, response } = await client.chat.completions.create({
    model: "claude-then-ollama", logprobs: true, top_logprobs: 1,
    messages: [{ role: "user", content: "hi" }],
  }).withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "ollama");
  assert.equal(data.choices[0].logprobs.content.length, TOKENS);
});

// ---- Ollama: logprobs, tool_choice, image URLs -------------------------------

const olContent = expectedContent("ol", TOKENS);
const olTokens = olContent.split(/(?= tok)/);

test("logprobs through Ollama come back in OpenAI's shape, plain and streamed", async () => {
  const r = await client.chat.completions.create({
    model: "local-chat", logprobs: true, top_logprobs: 2, messages: [{ role: "user", content: "hi" }],
  });
  const seen = (await lastSeen(ol)).json;
  assert.equal(seen.logprobs, true);
  assert.equal(seen.top_logprobs, 2);
  const lp = r.choices[0].logprobs.content;
  assert.deepEqual(lp.map((e) => e.token), olTokens);
  assert.deepEqual(lp.map((e) => e.logprob), olTokens.map((_, k) => -(k + 1) / 8));
  assert.deepEqual(lp[1].bytes, [...Buffer.from(" tok1")]);
  assert.deepEqual(lp[1].top_logprobs.map((a) => a.token), [" tok1", " alt1"]);
  assert.equal(lp[1].top_logprobs[1].logprob, -0.25 - 1);

  const stream = await client.chat.completions.create({
    model: "local-chat", logprobs: true, stream: true, messages: [{ role: "user", content: "hi" }],
  });
  const tokens = [];
  for await (const chunk of stream) for (const e of chunk.choices[0]?.logprobs?.content ?? []) tokens.push(e.token);
  assert.deepEqual(tokens, olTokens);

  // Not asked for: null.
  const none = await client.chat.completions.create({ model: "local-chat", messages: [{ role: "user", content: "hi" }] });
  assert.equal(none.choices[0].logprobs, null);
  assert.equal((await lastSeen(ol)).json.logprobs, undefined);
});

const tools = ["get_weather", "get_time"].map((name) => ({
  type: "function", function: { name, description: name, parameters: { type: "object", properties: {} } },
}));

test("a named tool_choice sends Ollama only that tool, and says a call is required", async () => {
  const r = await client.chat.completions.create({
    model: "local-chat", tools, tool_choice: { type: "function", function: { name: "get_time" } },
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Time?" }],
  });
  assert.deepEqual(r.choices[0].message.tool_calls.map((c) => c.function.name), ["get_time"]);
  const seen = (await lastSeen(ol)).json;
  assert.deepEqual(seen.tools.map((t) => t.function.name), ["get_time"]);
  assert.equal(seen.tool_choice, undefined, "Ollama has no tool_choice");
  assert.equal(seen.messages[0].content, "Be brief.\n\nYou must answer by calling the tool `get_time`.");
});

test("tool_choice required sends every tool and a system line; none sends no tools", async () => {
  await client.chat.completions.create({
    model: "local-chat", tools, tool_choice: "required", messages: [{ role: "user", content: "Go" }],
  });
  let seen = (await lastSeen(ol)).json;
  assert.deepEqual(seen.tools.map((t) => t.function.name), ["get_weather", "get_time"]);
  assert.deepEqual(seen.messages[0], { role: "system", content: "You must answer by calling one or more of the provided tools." });

  const r = await client.chat.completions.create({
    model: "local-chat", tools, tool_choice: "none", messages: [{ role: "user", content: "Go" }],
  });
  assert.equal(r.choices[0].message.content, olContent);
  seen = (await lastSeen(ol)).json;
  assert.equal(seen.tools, undefined);
  assert.equal(seen.messages.length, 1);
});

test("an image URL for Ollama is the client's 400: llmux does not fetch URLs", async () => {
  const before = (await ol.requests()).length;
  const e = await failure(client.chat.completions.create({
    model: "local-chat",
    messages: [{ role: "user", content: [{ type: "text", text: "What is this?" },
      { type: "image_url", image_url: { url: "https://example.com/cat.png" } }] }],
  }));
  assert.equal(e.status, 400);
  assert.equal(e.error.message,
    "Provider 'ollama' takes only inline images (data: URLs); llmux does not fetch image URLs");
  assert.equal((await ol.requests()).length, before, "nothing went to Ollama");
});
