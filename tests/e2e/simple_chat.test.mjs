// The `simple` embedding provider (no network) through the gateway with the
// official openai client, and `llmux chat`: one prompt through the same
// registry, router and plugins, streamed to stdout, with --embed,
// --verbose, --provider, the LLMUX_MODEL / LLMUX_PROVIDER defaults and the
// troubleshooting text when nothing can answer.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import OpenAI from "openai";
import { LLMUX, SOURCE_DIR, runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, startMock } from "./lib/mock.mjs";

let mockA, mockB, cfg, gw, client, deadPort;

// A port nothing listens on: bind an ephemeral one, then close it.
function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function config() {
  const prov = (name, url, prio, extra = "") =>
    `[provider ${name}]\nplugin = openai\nbase_url = ${url}\npriority = ${prio}\n${extra}\n` +
    `[route ${name} chat-model]\nid = ${name}-chat-id\n`;
  return writeConfig({
    "llmux.ini":
      "[server]\nlisten = 127.0.0.1:0\n\n[model chat-model]\ntier = 2\n\n" +
      "[model down-model]\ntier = 2\n\n[model locked-model]\ntier = 2\n\n" +
      "[model vectors]\ntier = 1\ncapabilities = embeddings\n\n" +
      "[model local-chat]\ntier = 1\n\n[model mixed-model]\ntier = 1\n\n" +
      "[route b mixed-model]\nid = b-chat-id\n",
    "providers/a.ini": prov("a", mockA.baseURL, 1),
    "providers/b.ini": prov("b", mockB.baseURL, 2),
    "providers/down.ini":
      `[provider down]\nplugin = openai\nbase_url = http://127.0.0.1:${deadPort}/v1\n\n` +
      "[route down down-model]\nid = down-id\n",
    "providers/locked.ini":
      `[provider locked]\nplugin = openai\nbase_url = ${mockA.baseURL}\n` +
      "api_key_env = E2E_MISSING_KEY\n\n[route locked locked-model]\nid = locked-id\n",
    "providers/simple.ini":
      "[provider simple]\nplugin = simple\ndimension = 64\n\n[route simple vectors]\nid = simple-vec\n\n" +
      // Chat-capable models on the embedding-only plugin: respond_local refuses them.
      "[route simple local-chat]\nid = simple-chat\n\n[route simple mixed-model]\nid = simple-chat\n",
  });
}

// Runs `llmux chat ...` asynchronously, recording each stdout chunk as it
// arrives: { status, stdout, stderr, chunks }.
function chat(args, env = {}) {
  return new Promise((resolve, reject) => {
    const cleaned = { ...process.env };
    for (const k of Object.keys(cleaned)) if (k.startsWith("LLMUX_")) delete cleaned[k];
    const proc = spawn(LLMUX, ["chat", "-c", cfg, ...args], {
      env: { ...cleaned, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const chunks = [];
    let stderr = "";
    const timer = setTimeout(() => proc.kill("SIGKILL"), 15000);
    proc.stdout.setEncoding("utf8");
    proc.stderr.setEncoding("utf8");
    proc.stdout.on("data", (d) => chunks.push(d));
    proc.stderr.on("data", (d) => { stderr += d; });
    proc.on("error", reject);
    proc.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout: chunks.join(""), stderr, chunks });
    });
  });
}

const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

before(async () => {
  deadPort = await freePort();
  mockA = await startMock({ args: ["--name", "alpha", "--tokens", "6", "--token-delay-ms", "40"] });
  mockB = await startMock({ args: ["--name", "beta", "--tokens", "3"] });
  cfg = config();
  gw = await startGateway(cfg);
  client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "unused", maxRetries: 0, timeout: 10000 });
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all([mockA.stop(), mockB.stop()]);
});

test("simple serves embeddings to the openai client: unit length, deterministic", async () => {
  const { data, response } = await client.embeddings
    .create({ model: "vectors", input: ["hello world", "hello world", "stock market"] })
    .withResponse();
  assert.equal(response.headers.get("x-llmux-provider"), "simple");
  assert.equal(data.model, "simple-vec");
  assert.equal(data.data.length, 3);
  for (const item of data.data) {
    assert.equal(item.embedding.length, 64, "the provider's dimension key");
    assert.ok(Math.abs(norm(item.embedding) - 1) < 1e-5, "unit length");
  }
  assert.deepEqual(data.data[0].embedding, data.data[1].embedding);
  assert.notDeepEqual(data.data[0].embedding, data.data[2].embedding);
  const floats = await client.embeddings.create({
    model: "vectors", input: "hello world", encoding_format: "float",
  });
  // The client's default (base64) and plain floats carry the same vector.
  for (let i = 0; i < 64; i++)
    assert.ok(Math.abs(floats.data[0].embedding[i] - data.data[0].embedding[i]) < 1e-6);
  assert.ok(data.usage.prompt_tokens > 0);
});

test("the shipped configuration serves embeddings offline through simple", async () => {
  const shipped = await startGateway(path.join(SOURCE_DIR, "config/llmux.ini"));
  try {
    const c = new OpenAI({ baseURL: shipped.url + "/v1", apiKey: "x", maxRetries: 0 });
    const r = await c.embeddings.create({ model: "simple-embed", input: "offline" });
    assert.equal(r.data[0].embedding.length, 256);
    assert.ok(Math.abs(norm(r.data[0].embedding) - 1) < 1e-5);
  } finally {
    assert.equal(await shipped.stop(), 0);
  }
});

test("a chat request to the embedding-only simple provider is refused cleanly", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "vectors", messages: [{ role: "user", content: "hi" }] }),
    // No route of it could ever serve chat: the client's 400, not a 503 to retry.
    (e) => e.status === 400 && e.code === "model_not_supported" && /vectors/.test(e.message),
  );
});

// provider.h: respond_local returning LLMUX_EINVAL before it emitted
// anything is the client's 400 (or the next route), for a stream as well:
// the event-stream head waits for the plugin's first frame.
test("a local plugin refusing a stream before any frame is a 400, not a broken stream", async () => {
  const r = await fetch(gw.url + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "local-chat", stream: true, messages: [{ role: "user", content: "hi" }] }),
  });
  assert.equal(r.status, 400);
  assert.match(r.headers.get("content-type"), /application\/json/);
  const { error } = await r.json();
  assert.equal(error.code, "unsupported_request");
  assert.match(error.message, /simple/);
});

test("a local plugin refusing a stream before any frame lets the next route answer", async () => {
  const r = await fetch(gw.url + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "mixed-model", stream: true, messages: [{ role: "user", content: "hi" }],
      provider: { order: ["simple", "b"] },
    }),
  });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-llmux-provider"), "b");
  assert.equal(r.headers.get("x-llmux-attempts"), "2");
  const text = await r.text();
  assert.doesNotMatch(text, /local_provider_failed/);
  const content = text.split("\n").filter((l) => l.startsWith("data: {"))
    .map((l) => JSON.parse(l.slice(6)).choices?.[0]?.delta?.content ?? "").join("");
  assert.equal(content, expectedContent("beta", 3));
  assert.match(text, /data: \[DONE\]/);
});

test("llmux chat streams the answer to stdout as it arrives", async () => {
  const r = await chat(["-m", "chat-model", "Say hello"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, expectedContent("alpha", 6) + "\n");
  assert.ok(r.chunks.length >= 3, `streamed in pieces, got ${r.chunks.length}`);
  assert.equal(r.stderr, "", "nothing but the answer without --verbose");
  const sent = (await mockA.requests()).at(-1);
  const body = JSON.parse(sent.body);
  assert.equal(body.model, "a-chat-id");
  assert.equal(body.stream, true);
  assert.deepEqual(body.messages, [{ role: "user", content: "Say hello" }]);
});

test("LLMUX_MODEL sets the model and --max-tokens caps the answer", async () => {
  const r = await chat(["--max-tokens", "2", "short", "please"], { LLMUX_MODEL: "chat-model" });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, expectedContent("alpha", 2) + "\n");
  const body = JSON.parse((await mockA.requests()).at(-1).body);
  assert.equal(body.max_tokens, 2);
  assert.equal(body.messages[0].content, "short please", "the words make one prompt");
});

test("--provider and LLMUX_PROVIDER restrict routing to one provider", async () => {
  let r = await chat(["-m", "chat-model", "--provider", "b", "hi"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, expectedContent("beta", 3) + "\n");
  r = await chat(["-m", "chat-model", "hi"], { LLMUX_PROVIDER: "b" });
  assert.equal(r.stdout, expectedContent("beta", 3) + "\n");
  r = await chat(["-m", "chat-model", "--provider", "simple", "hi"]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /provider 'simple' does not serve model 'chat-model' \(served by: a, b\)/);
  r = await chat(["-m", "chat-model", "--provider", "nope", "hi"]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /no provider 'nope'/);
});

test("--verbose shows the route and the timings on stderr", async () => {
  const r = await chat(["-m", "chat-model", "--verbose", "hi"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, expectedContent("alpha", 6) + "\n", "stdout holds only the answer");
  assert.match(r.stderr, /^route: provider a, model chat-model, attempts 1$/m);
  assert.match(r.stderr,
    /^timings: first byte [\d.]+ ms, first token [\d.]+ ms, total [\d.]+ ms, gateway overhead \d+ us$/m);
});

test("--embed prints the dimension and the first values", async () => {
  const r = await chat(["--embed", "-m", "vectors", "hello world"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^dimension 64, norm 1\.000000, \d+ non-zero: \[(-?\d\.\d{6}, ){8}\.\.\.\]\n$/);
  const again = await chat(["--embed", "-m", "vectors", "hello world"]);
  assert.equal(again.stdout, r.stdout, "deterministic");
});

test("with no provider able to answer, chat prints the gateway's advice and exits 1", async () => {
  let r = await chat(["-m", "locked-model", "hi"]);
  assert.equal(r.status, 1);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /^llmux: No provider can serve model 'locked-model' now: .*E2E_MISSING_KEY is not set/m);
  assert.match(r.stderr, /^hint: /m);
  assert.doesNotMatch(r.stderr, /\bat .*\.c:\d+|Segmentation|Aborted/);
  r = await chat(["-m", "down-model", "hi"]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^llmux: .*connection refused/m);
  r = await chat(["-m", "no-such-model", "hi"]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /no-such-model/);
});

test("usage errors exit 2; --help exits 0", () => {
  assert.equal(runLlmux(["chat", "-c", cfg]).status, 2, "no prompt");
  assert.equal(runLlmux(["chat", "-c", cfg, "--max-tokens", "x", "hi"]).status, 2);
  const h = runLlmux(["chat", "--help"]);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /--provider NAME/);
});

test("llmux models asks the openai providers for their lists (GET /models), not simple", () => {
  const r = runLlmux(["models", "-c", cfg]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /chat-model/);
  assert.match(r.stdout, /provider model lists \(asked now\):/);
  assert.match(r.stdout, /^ {2}models at a: mock-small, /m);
  assert.match(r.stdout, /^ {2}down unreachable: /m);
  assert.doesNotMatch(r.stdout, /models at (simple|locked)/, "simple cannot list; locked has no key");
});
