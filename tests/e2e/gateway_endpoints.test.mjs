// The gateway's own endpoints on the shipped configuration, with no API
// keys set: models, resolution, health, and the errors a client can cause.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { SOURCE_DIR, startGateway } from "./lib/gateway.mjs";
import { oneShot } from "./lib/http_raw.mjs";

let gw;
before(async () => {
  gw = await startGateway(path.join(SOURCE_DIR, "config/llmux.ini"));
});
after(async () => {
  const status = await gw.stop();
  assert.equal(status, 0, "llmux exits 0 on SIGTERM");
});

const get = (p, init) => fetch(gw.url + p, init);

test("GET /health answers ok with a request id", async () => {
  const r = await get("/health");
  assert.equal(r.status, 200);
  assert.match(r.headers.get("x-request-id"), /^req_[0-9a-f]{16}$/);
  const body = await r.json();
  assert.equal(body.status, "ok");
  assert.equal(body.providers.enabled, 2, "only keyless Ollama and the local simple embedder are enabled without keys");
});

test("a client's x-request-id is passed back", async () => {
  const r = await get("/health", { headers: { "x-request-id": "abc-123" } });
  assert.equal(r.headers.get("x-request-id"), "abc-123");
});

test("GET /v1/models lists canonical models, every generic alias, profiles and agents", async () => {
  const r = await get("/v1/models");
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.equal(body.object, "list");
  const kinds = Object.fromEntries(body.data.map((m) => [m.id, m.llmux.kind]));
  for (const id of ["llama-3.1-8b", "llama-3.3-70b", "llama-3.1-405b", "qwen-2.5-72b",
                    "qwen-2.5-32b", "gemma-2-9b", "gemma-2-27b", "deepseek-r1",
                    "claude-3.5-sonnet", "gpt-4o", "nomic-embed-text", "text-embedding-3-small"])
    assert.equal(kinds[id], "canonical", id);
  for (const id of ["best", "best-xl", "best-large", "best-medium", "best-small", "70b", "32b", "8b"])
    assert.equal(kinds[id], "generic", id);
  for (const id of ["fast", "balanced", "powerful", "deepseek", "local"])
    assert.equal(kinds[id], "profile", id);
  for (const id of ["classifier", "product", "analyst", "code-review"])
    assert.equal(kinds[id], "agent", id);
  for (const m of body.data) {
    assert.equal(m.object, "model");
    assert.equal(typeof m.created, "number");
    assert.equal(m.owned_by, "llmux");
  }
});

test("GET /v1/models/{name} resolves a provider-prefixed alias with a slash in it", async () => {
  const r = await get("/v1/models/meta-llama/llama-3.3-70b");
  assert.equal(r.status, 200);
  const m = await r.json();
  assert.equal(m.id, "meta-llama/llama-3.3-70b");
  assert.equal(m.llmux.kind, "alias");
  assert.equal(m.llmux.resolves_to, "llama-3.3-70b");
  assert.ok(m.llmux.routes.some((x) => x.provider === "groq" && x.provider_model === "llama-3.3-70b-versatile"));
});

test("GET /v1/models/{name} accepts a percent-encoded name and any case", async () => {
  const r = await get("/v1/models/META-LLAMA%2Fllama-3.3-70B");
  assert.equal(r.status, 200);
  assert.equal((await r.json()).llmux.resolves_to, "llama-3.3-70b");
});

test("a user alias resolves through its chain", async () => {
  const m = await (await get("/v1/models/gpt-4")).json();
  assert.equal(m.llmux.kind, "user_alias");
  assert.equal(m.llmux.chain[0].name, "gpt-4");
  assert.equal(m.llmux.target_kind, "canonical");
});

test("generic aliases, profiles and agents resolve to ordered routes", async () => {
  const large = await (await get("/v1/models/best-large")).json();
  assert.equal(large.llmux.target_kind, "generic");
  assert.ok(large.llmux.models.includes("llama-3.3-70b"));
  assert.ok(large.llmux.routes.length >= 2);
  const agent = await (await get("/v1/models/classifier")).json();
  assert.equal(agent.llmux.kind, "agent");
  assert.equal(agent.llmux.resolves_to, "fast");
});

test("an unknown model is a 404 model_not_found naming the closest names", async () => {
  const r = await get("/v1/models/llama-3.3-70");
  assert.equal(r.status, 404);
  const { error } = await r.json();
  assert.equal(error.code, "model_not_found");
  assert.equal(error.type, "invalid_request_error");
  assert.match(error.message, /llama-3\.3-70b/);
});

test("an unknown path is a 404 in OpenAI's error shape", async () => {
  const r = await get("/v2/nothing");
  assert.equal(r.status, 404);
  const body = await r.json();
  assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
  assert.equal(body.error.code, "unknown_url");
});

test("every answer carries x-request-id, 404s included", async () => {
  for (const p of ["/v2/nothing", "/v1/models/llama-3.3-70"]) {
    const r = await get(p);
    assert.equal(r.status, 404);
    assert.match(r.headers.get("x-request-id") ?? "", /^req_[0-9a-f]{16}$/, p);
  }
  const mine = await get("/v2/nothing", { headers: { "x-request-id": "trace-404" } });
  assert.equal(mine.headers.get("x-request-id"), "trace-404");
});

test("a wrong method is a 405 with Allow", async () => {
  const r = await get("/v1/chat/completions");
  assert.equal(r.status, 405);
  assert.equal(r.headers.get("allow"), "POST");
  assert.equal((await r.json()).error.code, "method_not_allowed");
  const r2 = await get("/v1/models", { method: "DELETE" });
  assert.equal(r2.status, 405);
  assert.match(r2.headers.get("allow"), /GET/);
});

test("a 405 carries x-request-id, the client's when it sent one", async () => {
  for (const [p, method] of [["/v1/models", "DELETE"], ["/v1/models/fast", "POST"], ["/health", "PUT"]]) {
    const r = await get(p, { method });
    assert.equal(r.status, 405, `${method} ${p}`);
    assert.match(r.headers.get("x-request-id") ?? "", /^req_[0-9a-f]{16}$/, `${method} ${p}`);
  }
  const mine = await get("/v1/models", { method: "DELETE", headers: { "x-request-id": "trace-405" } });
  assert.equal(mine.headers.get("x-request-id"), "trace-405");
});

test("the front door's own answers (400, 413, 431) carry x-request-id", async () => {
  const port = Number(new URL(gw.url).port);
  const cases = [
    [400, "GET /health HTTP/1.1\r\n\r\n"], // no Host
    [413, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n"],
    [431, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(64 * 1024)}\r\n\r\n`],
  ];
  for (const [status, raw] of cases) {
    const { res, client } = await oneShot(port, raw);
    client.destroy();
    assert.equal(res.status, status);
    assert.match(res.headers["x-request-id"] ?? "", /^req_[0-9a-f]{16}$/, String(status));
  }
});

async function post(body) {
  const r = await get("/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

test("request bodies are validated with the field named", async () => {
  let r = await post("{not json");
  assert.equal(r.status, 400);
  assert.equal(r.body.error.code, "invalid_json");
  r = await post({ messages: [] });
  assert.equal(r.status, 400);
  assert.equal(r.body.error.param, "model");
  r = await post({ model: 42, messages: [] });
  assert.equal(r.body.error.param, "model");
  r = await post({ model: "fast" });
  assert.equal(r.status, 400);
  assert.equal(r.body.error.param, "messages");
  r = await post({ model: "fast", messages: [], stream: "yes" });
  assert.equal(r.body.error.param, "stream");
  r = await post({ model: "no-such-model", messages: [] });
  assert.equal(r.status, 404);
  assert.equal(r.body.error.code, "model_not_found");
});

test("a model served only by disabled providers is a 503 naming the key to set", async () => {
  // (`balanced` would fall back to the local Ollama: fallback_local.)
  const r = await post({ model: "llama-3.3-70b", messages: [{ role: "user", content: "hi" }] });
  assert.equal(r.status, 503);
  assert.equal(r.body.error.code, "no_provider_available");
  assert.match(r.body.error.message, /GROQ_API_KEY/);
});
