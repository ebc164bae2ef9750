// The `ollama` plugin end to end: the official openai client talks to
// llmux, which speaks Ollama's native API (/api/chat NDJSON, /api/embed) to
// the mock's Ollama endpoints. Plain and streamed chat, tool calls in both,
// embeddings, and the seed's troubleshooting advice as client errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import OpenAI from "openai";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, startMock } from "./lib/mock.mjs";

let mock, gw, client, closedPort;

// A port nothing listens on: bind an ephemeral one, then close it.
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function config() {
  const route = (prov, model, id) => `[route ${prov} ${model}]\nid = ${id}\n`;
  return {
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\n\n" +
      "[model local-chat]\ntier = 1\ncapabilities = tools, json\n\n" +
      "[model local-crash]\ntier = 1\n\n[model not-pulled]\ntier = 1\n\n" +
      "[model stopped]\ntier = 1\n\n" +
      "[model local-embed]\ntier = 1\ncapabilities = embeddings\n",
    "providers/ollama.ini": `[provider ollama]\nplugin = ollama\nbase_url = ${mock.url}\n` +
      "keep_alive = 5m\n\n" +
      route("ollama", "local-chat", "llama3.1") +
      route("ollama", "local-crash", "crash-model") +
      route("ollama", "not-pulled", "missing-model") +
      route("ollama", "local-embed", "nomic-embed-text"),
    "providers/down.ini": `[provider down]\nplugin = ollama\nbase_url = http://127.0.0.1:${closedPort}\n` +
      "connect_timeout = 2s\n\n" + route("down", "stopped", "llama3.1"),
  };
}

before(async () => {
  closedPort = await freePort();
  mock = await startMock({ args: ["--name", "ol", "--tokens", "5"] });
  gw = await startGateway(writeConfig(config()));
  client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "unused", maxRetries: 0, timeout: 10000 });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await mock.stop();
});

const hello = [{ role: "system", content: "Be brief." }, { role: "user", content: "Say hello" }];
const tools = ["get_weather", "get_time"].map((name) => ({
  type: "function",
  function: { name, description: name, parameters: { type: "object", properties: {} } },
}));

test("a plain chat goes to /api/chat and comes back as a chat.completion", async () => {
  await mock.reset();
  const { data, response } = await client.chat.completions
    .create({ model: "local-chat", messages: hello, temperature: 0.3, stop: "END" })
    .withResponse();
  assert.equal(data.object, "chat.completion");
  assert.equal(data.choices[0].message.content, expectedContent("ol", 5));
  assert.equal(data.choices[0].finish_reason, "stop");
  assert.equal(data.model, "llama3.1");
  assert.equal(data.usage.completion_tokens, 5);
  assert.ok(data.usage.prompt_tokens > 0);
  assert.equal(response.headers.get("x-llmux-provider"), "ollama");
  const [seen] = await mock.requests();
  assert.equal(seen.path, "/api/chat");
  const sent = JSON.parse(seen.body);
  assert.equal(sent.model, "llama3.1");
  assert.equal(sent.stream, false);
  assert.deepEqual(sent.messages, hello);
  assert.deepEqual(sent.options, { temperature: 0.3, stop: ["END"] });
  assert.equal(sent.keep_alive, "5m");
  assert.equal(seen.headers.authorization, undefined, "no key configured, none sent");
});

test("max_tokens becomes num_predict and a cut answer finishes with length", async () => {
  await mock.reset();
  const r = await client.chat.completions.create({ model: "local-chat", messages: hello, max_tokens: 2 });
  assert.equal(r.choices[0].message.content, expectedContent("ol", 2));
  assert.equal(r.choices[0].finish_reason, "length");
  const [seen] = await mock.requests();
  assert.equal(JSON.parse(seen.body).options.num_predict, 2);
});

test("a streamed chat turns Ollama's NDJSON into SSE chunks", async () => {
  const stream = await client.chat.completions.create({
    model: "local-chat", messages: hello, stream: true, stream_options: { include_usage: true },
  });
  let text = "", chunks = 0, finish = null, usage = null, role = null;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    const c = chunk.choices[0];
    if (c?.delta?.role) role = c.delta.role;
    if (c?.delta?.content) text += c.delta.content;
    if (c?.finish_reason) finish = c.finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(role, "assistant");
  assert.equal(text, expectedContent("ol", 5));
  assert.ok(chunks >= 7, `got ${chunks} chunks`);
  assert.equal(finish, "stop");
  assert.equal(usage.completion_tokens, 5);
});

test("tool calls come back with string arguments and generated ids", async () => {
  const r = await client.chat.completions.create({ model: "local-chat", messages: hello, tools });
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  const calls = r.choices[0].message.tool_calls;
  assert.equal(calls.length, 2);
  assert.deepEqual(calls.map((c) => c.function.name), ["get_weather", "get_time"]);
  calls.forEach((c, i) => {
    assert.match(c.id, /^call_[0-9a-f]{16}$/);
    assert.equal(c.type, "function");
    assert.deepEqual(JSON.parse(c.function.arguments), { input: expectedContent("ol", 5), call: i });
  });
  assert.notEqual(calls[0].id, calls[1].id);
  const again = await client.chat.completions.create({ model: "local-chat", messages: hello, tools });
  assert.deepEqual(again.choices[0].message.tool_calls.map((c) => c.id), calls.map((c) => c.id),
    "the same request gets the same ids");
});

test("streamed tool calls keep one index each across lines", async () => {
  const stream = await client.chat.completions.create({
    model: "local-chat", messages: hello, tools, stream: true,
  });
  const calls = [];
  let finish = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    for (const tc of c?.delta?.tool_calls ?? []) {
      calls[tc.index] ??= { id: "", name: "", args: "" };
      if (tc.id) calls[tc.index].id += tc.id;
      if (tc.function?.name) calls[tc.index].name += tc.function.name;
      if (tc.function?.arguments) calls[tc.index].args += tc.function.arguments;
    }
    if (c?.finish_reason) finish = c.finish_reason;
  }
  assert.equal(finish, "tool_calls");
  assert.equal(calls.length, 2);
  assert.deepEqual(calls.map((c) => c.name), ["get_weather", "get_time"]);
  calls.forEach((c, i) => {
    assert.match(c.id, /^call_[0-9a-f]{16}$/);
    assert.deepEqual(JSON.parse(c.args), { input: expectedContent("ol", 5), call: i });
  });
});

test("tool results go back to Ollama with the tool's name", async () => {
  await mock.reset();
  const messages = [
    ...hello,
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function",
      function: { name: "get_weather", arguments: "{\"city\":\"Paris\"}" } }] },
    { role: "tool", tool_call_id: "call_1", content: "sunny" },
  ];
  await client.chat.completions.create({ model: "local-chat", messages });
  const sent = JSON.parse((await mock.requests())[0].body);
  assert.deepEqual(sent.messages[2].tool_calls, [{ function: { name: "get_weather", arguments: { city: "Paris" } } }]);
  assert.deepEqual(sent.messages[3], { role: "tool", content: "sunny", tool_name: "get_weather" });
});

test("embeddings go through /api/embed, as base64 (the client's default) and floats", async () => {
  await mock.reset();
  const b64 = await client.embeddings.create({ model: "local-embed", input: ["one", "two"] });
  assert.equal(b64.data.length, 2);
  assert.equal(b64.data[0].embedding.length, 16);
  assert.equal(b64.model, "nomic-embed-text");
  const floats = await client.embeddings.create({
    model: "local-embed", input: ["one", "two"], encoding_format: "float",
  });
  floats.data.forEach((d, i) => {
    assert.equal(d.index, i);
    d.embedding.forEach((x, j) => assert.ok(Math.abs(x - b64.data[i].embedding[j]) < 1e-6));
  });
  assert.notDeepEqual(floats.data[0].embedding, floats.data[1].embedding);
  const seen = await mock.requests();
  assert.equal(seen[0].path, "/api/embed");
  assert.deepEqual(JSON.parse(seen[0].body).input, ["one", "two"]);
});

test("a stopped Ollama gets the advice to start it, without its address", async () => {
  await assert.rejects(client.chat.completions.create({ model: "stopped", messages: hello }), (e) => {
    assert.equal(e.status, 502);
    assert.match(e.message, /Ollama is not running: start it with `ollama serve`/);
    assert.doesNotMatch(e.message, /127\.0\.0\.1|localhost/);
    return true;
  });
});

test("a model that is not pulled gets the advice to pull it", async () => {
  await assert.rejects(client.chat.completions.create({ model: "not-pulled", messages: hello }), (e) => {
    assert.equal(e.code, "model_not_found");
    assert.match(e.message, /model 'missing-model' is not pulled: run `ollama pull missing-model`/);
    return true;
  });
});

test("an error line mid-stream reaches the client as a stream error", async () => {
  const stream = await client.chat.completions.create({ model: "local-crash", messages: hello, stream: true });
  let text = "";
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  }, /llama runner process has terminated/);
  assert.equal(text, expectedContent("ol", 2), "what came before the error arrived");
});

test("a request the provider's API cannot take is the client's 400, naming the provider", async () => {
  // Ollama's native API has no legacy completions endpoint.
  await assert.rejects(client.completions.create({ model: "local-chat", prompt: "Once" }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, "unsupported_by_provider");
    assert.match(e.message, /cannot accept this request/);
    return true;
  });
});
