// One reading of the JSON body (issue 11, the request side): the gateway
// reads keys as the provider will, after unescaping, and refuses a body
// that names a key it reads twice, so the model a tenant is allowed and
// billed for is the model the provider serves. And whatever bytes a client
// sends, error bodies are valid UTF-8 JSON.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { startMock } from "./lib/mock.mjs";

const live = [];
let mk, gw, key;

before(async () => {
  mk = await startMock({ args: ["--name", "mk", "--tokens", "3"] });
  live.push(mk);
  const r = runLlmux(["key", "new", "narrow"]);
  assert.equal(r.status, 0, r.stderr);
  key = r.stdout.split("\n")[0];
  const hash = /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1];
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n" +
      "[model m]\ntier = 3\nprice_in = 1\nprice_out = 1\n" +
      "[model secret]\ntier = 1\nprice_in = 100\nprice_out = 100\n" +
      "[model lm]\ntier = 1\n" +
      "[profile fast]\nmodels = m\n[agent classifier]\nprofile = fast\n" +
      `[tenant narrow]\nkey_sha256 = ${hash}\nmodels = fast, lm, classifier\n`,
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
      "[route mk m]\nid = mk-id\n[route mk secret]\nid = secret-id\n",
    // The same mock, in Ollama's dialect: a plugin that translates the body.
    "providers/ol.ini": `[provider ol]\nplugin = ollama\nbase_url = ${mk.url}\n` +
      "[route ol lm]\nid = llama3.1\n",
  });
  gw = await startGateway(config);
  live.push(gw);
});

after(async () => {
  for (const x of live.reverse()) await x.stop();
});

// Sends `raw` (a string or bytes, sent as is) and decodes the answer with a
// strict UTF-8 decoder: { status, body (parsed JSON), text }.
async function send(method, path, raw) {
  const r = await fetch(gw.url + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: raw,
  });
  const bytes = new Uint8Array(await r.arrayBuffer());
  const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes); // throws on bad UTF-8
  return { status: r.status, body: JSON.parse(text), text, headers: r.headers };
}

const hello = '"messages":[{"role":"user","content":"hi"}]';

async function mockBodies() {
  return (await mk.requests()).map((q) => JSON.parse(q.body));
}

test("an escaped second 'model' is 400 duplicate_key, not a way around the allow-list", async () => {
  await mk.reset();
  const r = await send("POST", "/v1/chat/completions",
    `{"model":"fast","mod\\u0065l":"secret",${hello}}`);
  assert.equal(r.status, 400, r.text);
  assert.equal(r.body.error.code, "duplicate_key");
  assert.equal(r.body.error.type, "invalid_request_error");
  assert.equal(r.body.error.param, "model");
  assert.deepEqual(await mk.requests(), [], "nothing reached the provider");
});

test("an escaped key is the key it spells: {\"m\\u006fdel\":\"lm\"} is model lm", async () => {
  await mk.reset();
  const r = await send("POST", "/v1/chat/completions", `{"m\\u006fdel":"lm",${hello}}`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get("x-llmux-model"), "lm");
  const [sent] = await mockBodies();
  assert.equal(sent.model, "llama3.1");
});

test("an escaped model key keeps its spelling upstream, with the route's model in it", async () => {
  await mk.reset();
  const r = await send("POST", "/v1/chat/completions", `{"m\\u006fdel":"fast",${hello}}`);
  assert.equal(r.headers.get("x-llmux-model"), "m", r.text);
  // The mock matches key bytes and so answers 400 (no "model"); a provider's
  // JSON parser reads what JSON.parse reads: the model the gateway resolved.
  const [sent] = await mockBodies();
  assert.equal(sent.model, "mk-id");
});

test("an escaped model value resolves as its text: \"f\\u0061st\" is fast", async () => {
  const r = await send("POST", "/v1/chat/completions", `{"model":"f\\u0061st",${hello}}`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get("x-llmux-model"), "m");
});

test("a key the gateway reads, given twice, is 400 duplicate_key naming it", async () => {
  const cases = [
    ["messages", `{"model":"fast",${hello},"messages":[]}`],
    ["max_tokens", `{"model":"fast",${hello},"max_tokens":1,"max\\u005ftokens":100000}`],
    ["stream", `{"model":"fast",${hello},"stream":false,"stream":true}`],
    ["n", `{"model":"fast",${hello},"n":1,"\\u006e":8}`],
  ];
  await mk.reset();
  for (const [param, raw] of cases) {
    const r = await send("POST", "/v1/chat/completions", raw);
    assert.equal(r.status, 400, `${param}: ${r.text}`);
    assert.equal(r.body.error.code, "duplicate_key", param);
    assert.equal(r.body.error.param, param);
  }
  assert.deepEqual(await mk.requests(), []);
});

test("keys the gateway does not read may repeat, at the top level and inside", async () => {
  const r = await send("POST", "/v1/chat/completions",
    '{"model":"fast","messages":[{"role":"user","role":"user","content":"hi"}],' +
    '"x_custom":1,"x_custom":2}');
  assert.equal(r.status, 200, r.text);
});

test("a lone surrogate in the model is answered with valid UTF-8 JSON", async () => {
  const r = await send("POST", "/v1/chat/completions", `{"model":"m\\ud800",${hello}}`);
  assert.equal(r.status, 404, r.text);
  assert.equal(r.body.error.code, "model_not_found");
  assert.ok(r.body.error.message.includes("m\ufffd"), r.body.error.message);
});

test("invalid UTF-8 in a URL's model name is answered with valid UTF-8 JSON", async () => {
  // CESU-8 (an encoded surrogate), an overlong '/', a truncated sequence.
  for (const name of ["m%ED%A0%80", "m%C0%AF", "m%E2%82"]) {
    const r = await send("GET", `/v1/models/${name}`);
    assert.equal(r.status, 404, r.text);
    assert.ok(r.body.error.message.includes("m\ufffd"), r.body.error.message);
  }
});

test("an agent_type cut inside a character is answered with valid UTF-8 JSON", async () => {
  // The message quotes at most 100 bytes of the name: the cut falls inside 'é'.
  const r = await send("POST", "/v1/chat",
    JSON.stringify({ message: "hi", agent_type: "a".repeat(99) + "é" }));
  assert.equal(r.status, 400, r.text);
  assert.equal(r.body.code, "UNKNOWN_AGENT_TYPE");
});
