// The official openai client talking to llmux, which proxies to the
// project's mock provider over HTTP and HTTPS: plain and streamed chat,
// tools, completions, embeddings, every error path and a client abort.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, makeCerts, startMock } from "./lib/mock.mjs";

const KEY = "test-key-for-the-mock-0123456789";
let plain, tls, badTls, gw, client, certs;

// One provider per fault: the mock takes its fault from a request header,
// and `header.NAME` in a provider section adds it to every request.
const FAULTS = ["429", "500", "503", "401", "400", "context-length", "reset", "garbage",
                "invalid-json", "stall", "reset-mid-stream", "stall-mid-stream"];

function config() {
  let providers = {};
  const route = (prov, model, id) => `[route ${prov} ${model}]\nid = ${id}\n`;
  providers["providers/plain.ini"] =
    `[provider plain]\nplugin = openai\nbase_url = ${plain.baseURL}\napi_key_env = MOCK_KEY\n` +
    `priority = 1\nheader.X-Title = llmux-e2e\n\n` +
    route("plain", "chat-model", "provider-chat-id") +
    route("plain", "embed-model", "provider-embed-id");
  providers["providers/tls.ini"] =
    `[provider tls]\nplugin = openai\nbase_url = https://localhost:${tls.port}/v1\n` +
    `api_key_env = MOCK_KEY\nca_file = ${certs.caCert}\n\n` + route("tls", "tls-model", "tls-id");
  providers["providers/badtls.ini"] =
    `[provider badtls]\nplugin = openai\nbase_url = https://localhost:${badTls.port}/v1\n` +
    `api_key_env = MOCK_KEY\nca_file = ${certs.caCert}\n\n` + route("badtls", "badtls-model", "x");
  providers["providers/slow.ini"] =
    `[provider slow]\nplugin = openai\nbase_url = ${plain.baseURL}\napi_key_env = MOCK_KEY\n` +
    `header.x-mock-tokens = 60\nheader.x-mock-token-delay-ms = 50\n\n` + route("slow", "slow-model", "slow-id");
  for (const f of FAULTS) {
    const name = "f" + f.replace(/[^a-z0-9]/g, "");
    providers[`providers/${name}.ini`] =
      `[provider ${name}]\nplugin = openai\nbase_url = ${plain.baseURL}\napi_key_env = MOCK_KEY\n` +
      `header.x-mock-fault = ${f}\ntimeout = 1s\nstream_timeout = 1s\n\n` +
      route(name, `fault-${f}`, `fault-${f}-id`);
  }
  const models = ["chat-model", "slow-model", "tls-model", "badtls-model", ...FAULTS.map((f) => `fault-${f}`)]
    .map((m) => `[model ${m}]\ntier = 2\ncapabilities = tools, json\n`).join("\n");
  return {
    "llmux.ini": `[server]\nlisten = 127.0.0.1:0\n\n${models}\n` +
      `[model embed-model]\ntier = 1\ncapabilities = embeddings\n\n[alias]\ngpt-4 = chat-model\n`,
    ...providers,
  };
}

before(async () => {
  certs = makeCerts(mkdtempSync(path.join(tmpdir(), "llmux-certs-")));
  plain = await startMock({ args: ["--name", "plain", "--tokens", "6"] });
  tls = await startMock({ args: ["--name", "tls", "--tls-cert", certs.cert, "--tls-key", certs.key],
                          ca: certs.caPem });
  badTls = await startMock({ args: ["--tls-cert", certs.badCert, "--tls-key", certs.badKey] });
  gw = await startGateway(writeConfig(config()), { MOCK_KEY: KEY });
  client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "client-key", maxRetries: 0, timeout: 10000 });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all([plain.stop(), tls.stop(), badTls.stop()]);
  assert.doesNotMatch(gw.stderr(), new RegExp(KEY), "the provider key is never logged");
});

const hello = [{ role: "user", content: "Say hello" }];

test("a plain chat completion is proxied with the model rewritten and the key sent", async () => {
  await plain.reset();
  const { data, response } = await client.chat.completions
    .create({ model: "gpt-4", messages: hello })
    .withResponse();
  assert.equal(data.object, "chat.completion");
  assert.equal(data.choices[0].message.content, expectedContent("plain", 6));
  assert.equal(data.model, "provider-chat-id");
  assert.ok(data.usage.prompt_tokens > 0);
  assert.equal(response.headers.get("x-llmux-provider"), "plain");
  assert.equal(response.headers.get("x-llmux-model"), "chat-model");
  assert.equal(response.headers.get("x-llmux-served-model"), "provider-chat-id",
               "the model the provider says answered");
  assert.match(response.headers.get("x-llmux-overhead-us"), /^\d+$/);
  assert.match(response.headers.get("x-request-id"), /\S/);
  const [seen] = await plain.requests();
  assert.equal(seen.path, "/v1/chat/completions");
  assert.equal(JSON.parse(seen.body).model, "provider-chat-id");
  assert.deepEqual(JSON.parse(seen.body).messages, hello, "the rest of the body is untouched");
  assert.equal(seen.headers.authorization, `Bearer ${KEY}`, "the provider's key, not the client's");
  assert.equal(seen.headers["x-title"], "llmux-e2e");
});

test("a streamed chat completion arrives chunk by chunk", async () => {
  const stream = await client.chat.completions.create({
    model: "chat-model", messages: hello, stream: true, stream_options: { include_usage: true },
  });
  let text = "", chunks = 0, finish = null, usage = null;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.choices[0]?.delta?.content) text += chunk.choices[0].delta.content;
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, expectedContent("plain", 6));
  assert.ok(chunks >= 6, `got ${chunks} chunks`);
  assert.equal(finish, "stop");
  assert.ok(usage && usage.completion_tokens > 0);
});

const tools = [{
  type: "function",
  function: { name: "get_weather", description: "weather", parameters: {
    type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
}];

test("tool calls pass through, plain and streamed", async () => {
  const r = await client.chat.completions.create({ model: "chat-model", messages: hello, tools });
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  const call = r.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, "get_weather");
  JSON.parse(call.function.arguments);

  const stream = await client.chat.completions.create({ model: "chat-model", messages: hello, tools, stream: true });
  let name = "", args = "";
  for await (const chunk of stream) {
    for (const tc of chunk.choices[0]?.delta?.tool_calls ?? []) {
      if (tc.function?.name) name += tc.function.name;
      if (tc.function?.arguments) args += tc.function.arguments;
    }
  }
  assert.equal(name, "get_weather");
  JSON.parse(args);
});

test("legacy completions and embeddings are proxied", async () => {
  const c = await client.completions.create({ model: "chat-model", prompt: "Once" });
  assert.equal(c.object, "text_completion");
  const e = await client.embeddings.create({ model: "embed-model", input: ["a", "b"] });
  assert.equal(e.data.length, 2);
  assert.ok(e.data[0].embedding.length > 0);
  assert.equal(e.model, "provider-embed-id");
});

test("HTTPS to a provider whose certificate the configured CA signed works", async () => {
  const { data, response } = await client.chat.completions
    .create({ model: "tls-model", messages: hello }).withResponse();
  assert.equal(data.choices[0].message.content, expectedContent("tls", 8));
  assert.equal(response.headers.get("x-llmux-provider"), "tls");
});

test("HTTPS to a provider with an untrusted certificate is a 502 naming the certificate", async () => {
  await assert.rejects(client.chat.completions.create({ model: "badtls-model", messages: hello }), (e) => {
    assert.equal(e.status, 502);
    assert.match(e.message, /certificate/i);
    return true;
  });
});

async function expectError(model, status, code, extra) {
  await assert.rejects(client.chat.completions.create({ model, messages: hello }), (e) => {
    assert.equal(e.status, status, `${model}: ${e.message}`);
    if (code) assert.equal(e.code, code, `${model}: ${e.message}`);
    if (extra) extra(e);
    return true;
  });
}

test("a provider's 429 reaches the client as 429 with Retry-After", async () => {
  await expectError("fault-429", 429, "RATE_LIMIT_EXCEEDED", (e) => {
    assert.match(e.headers.get("retry-after"), /^\d+$/);
    assert.equal(e.type, "rate_limit_error");
    assert.equal(typeof e.error.retry_after, "undefined", "retry_after sits beside error");
  });
});

test("provider failures map to 502, 503 and 504", async () => {
  await expectError("fault-500", 502, "upstream_error");
  await expectError("fault-503", 503, "provider_overloaded");
  await expectError("fault-401", 502, "upstream_auth_failed");
  await expectError("fault-reset", 502);
  await expectError("fault-garbage", 502);
  await expectError("fault-invalid-json", 502, "upstream_garbage");
  await expectError("fault-stall", 504, "upstream_timeout");
});

test("the client's own mistakes reported by the provider come back as 400", async () => {
  await expectError("fault-400", 400);
  await expectError("fault-context-length", 400, "context_length_exceeded");
});

async function streamError(model) {
  const stream = await client.chat.completions.create({ model, messages: hello, stream: true });
  let got = 0;
  try {
    for await (const _ of stream) got++;
  } catch (e) {
    return { got, error: e };
  }
  return { got, error: null };
}

test("a stream that breaks mid-way ends with an error event, not a hang", async () => {
  for (const model of ["fault-reset-mid-stream", "fault-stall-mid-stream"]) {
    const { got, error } = await streamError(model);
    assert.ok(got >= 1, `${model}: some chunks arrived first`);
    assert.ok(error, `${model}: the client sees an error`);
    assert.match(String(error.message), /stream|upstream|provider/i);
  }
});

test("a client that aborts mid-stream cancels the upstream request", async () => {
  const before = await plain.stats();
  const ac = new AbortController();
  const stream = await client.chat.completions.create(
    { model: "slow-model", messages: hello, stream: true }, { signal: ac.signal });
  let n = 0;
  for await (const _ of stream) { if (++n === 2) break; } // breaking aborts the request
  assert.equal(n, 2);
  // 60 tokens at 50 ms would take 3 s: the provider must see the abort long before.
  let after;
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = await plain.stats();
    if (after.aborted > before.aborted) break;
  }
  assert.equal(after.aborted, before.aborted + 1, "the upstream connection was closed mid-stream");
  const r = await client.chat.completions.create({ model: "chat-model", messages: hello });
  assert.equal(r.object, "chat.completion", "the gateway still serves");
});

test("connections to a provider are kept alive and reused", async () => {
  const before = await plain.stats();
  for (let i = 0; i < 5; i++) await client.chat.completions.create({ model: "chat-model", messages: hello });
  const after = await plain.stats();
  assert.equal(after.requests - before.requests, 5);
  assert.ok(after.connections - before.connections <= 1,
            `at most one new connection for 5 requests: ${JSON.stringify({ before, after })}`);
});

test("a large request body arriving in pieces reaches the provider byte for byte", async () => {
  const net = await import("node:net");
  await plain.reset();
  const text = "x".repeat(150000) + "\u00e9\u4e2d" + "y".repeat(50000);
  const body = Buffer.from(JSON.stringify({ model: "chat-model", messages: [{ role: "user", content: text }] }));
  const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
               `Content-Length: ${body.length}\r\n\r\n`;
  const sock = net.connect(gw.port, "127.0.0.1");
  await new Promise((r) => sock.once("connect", r));
  const chunks = [];
  sock.on("data", (d) => chunks.push(d));
  const pause = () => new Promise((r) => setTimeout(r, 20));
  sock.write(head + body.subarray(0, 1000).toString("latin1"), "latin1");
  for (const [a, b] of [[1000, 70000], [70000, 70001], [70001, body.length]]) {
    await pause();
    sock.write(body.subarray(a, b));
  }
  await new Promise((resolve) => {
    const check = () => (Buffer.concat(chunks).toString().includes("chat.completion") ? resolve() : setTimeout(check, 10));
    check();
  });
  sock.destroy();
  assert.match(Buffer.concat(chunks).toString(), /^HTTP\/1\.1 200 /);
  const [seen] = await plain.requests();
  const sent = JSON.parse(seen.body);
  assert.equal(sent.model, "provider-chat-id");
  assert.equal(sent.messages[0].content, text, "every byte of the message arrived");
});
