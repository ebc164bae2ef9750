// Tenants: keys (Authorization and x-api-key), what a tenant may use, its
// limits before any provider's, ARES's agent endpoint (plain and streamed,
// every error code), usage over HTTP and on the command line, and a daily
// quota that survives a SIGKILL.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import OpenAI from "openai";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, parseSSE, startMock } from "./lib/mock.mjs";

const live = [];
let mk, bad, config, gw;
const keys = {};

function newKey(tenant) {
  const r = runLlmux(["key", "new", tenant]);
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assert.match(lines[0], /^llmux-[A-Za-z0-9_-]{43}$/);
  const hash = /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1];
  assert.ok(r.stdout.includes(`[tenant ${tenant}]`));
  return { key: lines[0], hash };
}

before(async () => {
  mk = await startMock({ args: ["--name", "mk", "--tokens", "3"] });
  bad = await startMock({ args: ["--name", "bad", "--tokens", "3"] });
  live.push(mk, bad);
  for (const t of ["acme", "acme2", "narrow", "daily", "broke"]) keys[t] = newKey(t.replace(/2$/, ""));
  const profiles = ["fast", "balanced", "powerful", "deepseek"]
    .map((p) => `[profile ${p}]\nmodels = m\n`).join("");
  const agents = [["classifier", "fast"], ["product", "balanced"], ["analyst", "powerful"],
    ["code-review", "deepseek"], ["broken", "broken-p"], ["limited", "limited-p"]]
    .map(([a, p]) => `[agent ${a}]\nprofile = ${p}\n`).join("");
  config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n" +
      "usage_db = data/usage.db\n" +
      "[model m]\ntier = 3\nprice_in = 1\nprice_out = 1\n[model mb]\ntier = 3\n[model mr]\ntier = 3\n" +
      profiles + "[profile broken-p]\nmodels = mb\n[profile limited-p]\nmodels = mr\n" + agents +
      // acme: two keys (rotation), everything allowed, product overridden.
      `[tenant acme]\nkey_sha256 = ${keys.acme.hash}\n  ${keys.acme2.hash}\n` +
      "requests_per_minute = 100\nagent.product = powerful\n" +
      `[tenant narrow]\nkey_sha256 = ${keys.narrow.hash}\nmodels = fast, classifier\n` +
      "requests_per_minute = 2\n" +
      `[tenant daily]\nkey_sha256 = ${keys.daily.hash}\ntokens_per_day = 10\n` +
      `[tenant broke]\nkey_sha256 = ${keys.broke.hash}\nbudget_usd_per_month = 0.00001\n`,
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
      "[route mk m]\nid = mk-id\nrequests_per_minute = 1000\n" +
      "[route mk mr]\nid = mr-id\nrequests_per_minute = 1\n",
    "data/README": "usage_db lives here\n",
    "providers/bad.ini": `[provider bad]\nplugin = openai\nbase_url = ${bad.baseURL}\n` +
      "header.x-mock-fault = 500\n[route bad mb]\nid = mb-id\n",
  });
  gw = await startGateway(config);
  live.push(gw);
});

after(async () => {
  for (const x of live.reverse()) await x.stop();
});

const hello = [{ role: "user", content: "hi" }];
const client = (key) => new OpenAI({ baseURL: gw.url + "/v1", apiKey: key, maxRetries: 0 });

async function apiError(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected an error");
}

function post(p, body, headers = {}) {
  return fetch(gw.url + p, {
    method: "POST", headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

const bearer = (t) => ({ authorization: `Bearer ${keys[t].key}` });

test("a good key is served; a rotated second key of the same tenant too", async () => {
  for (const k of [keys.acme.key, keys.acme2.key]) {
    const r = await client(k).chat.completions.create({ model: "m", messages: hello });
    assert.equal(r.choices[0].message.content, expectedContent("mk", 3));
  }
});

test("a wrong or missing key is 401 invalid_api_key in OpenAI's shape", async () => {
  let e = await apiError(client("llmux-wrong").chat.completions.create({ model: "m", messages: hello }));
  assert.equal(e.status, 401);
  assert.equal(e.code, "invalid_api_key");
  const r = await fetch(gw.url + "/v1/models");
  assert.equal(r.status, 401);
  const body = await r.json();
  assert.equal(body.error.code, "invalid_api_key");
  assert.equal(body.error.type, "invalid_request_error");
  e = await apiError(client(keys.acme.key + "x").models.list());
  assert.equal(e.status, 401);
  // /health stays open.
  assert.equal((await fetch(gw.url + "/health")).status, 200);
});

test("x-api-key is accepted, as Anthropic clients send it", async () => {
  const r = await post("/v1/chat/completions", { model: "m", messages: hello },
    { "x-api-key": keys.acme.key });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).choices[0].message.content, expectedContent("mk", 3));
});

test("a model the tenant may not use is 404 model_not_found; /v1/models lists only what it may use", async () => {
  const c = client(keys.narrow.key);
  const e = await apiError(c.chat.completions.create({ model: "powerful", messages: hello }));
  assert.equal(e.status, 404);
  assert.equal(e.code, "model_not_found");
  assert.equal(e.error.message, "The model `powerful` does not exist or you do not have access to it.");
  const ids = (await c.models.list()).data.map((m) => m.id).sort();
  assert.deepEqual(ids, ["classifier", "fast"]);
  const all = (await client(keys.acme.key).models.list()).data.map((m) => m.id);
  assert.ok(all.includes("powerful") && all.includes("m"));
});

// One request per endpoint for `model`, as tenant t: { status, headers, body }.
const endpoints = {
  "chat/completions": (model) => ({ messages: hello, model }),
  "completions": (model) => ({ prompt: "hi", model }),
  "embeddings": (model) => ({ input: "hi", model }),
};
async function modelAnswers(t, model) {
  const out = {};
  for (const [ep, body] of Object.entries(endpoints)) {
    const r = await post(`/v1/${ep}`, body(model), bearer(t));
    out[ep] = { status: r.status, type: r.headers.get("content-type"), body: await r.json() };
  }
  const r = await fetch(`${gw.url}/v1/models/${encodeURIComponent(model)}`, { headers: bearer(t) });
  out["models/{id}"] = { status: r.status, type: r.headers.get("content-type"), body: await r.json() };
  return out;
}

// The answer with the requested name taken out, to compare two names' answers.
function shape(answer, model) {
  const msg = answer.body.error?.message ?? "";
  return { ...answer, body: { error: { ...answer.body.error, message: msg.split(model).join("X") } } };
}

test("a model the tenant may not use and one that does not exist get the same 404 everywhere", async () => {
  const disallowed = await modelAnswers("narrow", "powerful");
  const missing = await modelAnswers("narrow", "no-such-model");
  for (const ep of Object.keys(disallowed)) {
    assert.equal(disallowed[ep].status, 404, ep);
    assert.deepEqual(disallowed[ep].body.error, {
      message: "The model `powerful` does not exist or you do not have access to it.",
      type: "invalid_request_error", param: "model", code: "model_not_found",
    }, ep);
    assert.deepEqual(shape(disallowed[ep], "powerful"), shape(missing[ep], "no-such-model"), ep);
  }
});

test("a tenant is offered only names it may use as the closest match", async () => {
  // "powerfull" is one letter from "powerful", which narrow may not use.
  let a = await modelAnswers("narrow", "powerfull");
  for (const [ep, r] of Object.entries(a)) {
    assert.equal(r.status, 404, ep);
    assert.equal(r.body.error.message,
      "The model `powerfull` does not exist or you do not have access to it.", ep);
  }
  // "fats" is one transposition from "fast", which it may use.
  a = await modelAnswers("narrow", "fats");
  for (const [ep, r] of Object.entries(a))
    assert.match(r.body.error.message, /access to it\. Did you mean `fast`\?/, ep);
  // acme may use everything: "powerful" is offered to it.
  a = await modelAnswers("acme", "powerfull");
  for (const [ep, r] of Object.entries(a)) assert.match(r.body.error.message, /Did you mean `powerful`/, ep);
});

test("the tenant's rate limit refuses while the provider still has headroom", async () => {
  const c = client(keys.narrow.key);
  const before = (await mk.stats()).requests;
  await c.chat.completions.create({ model: "fast", messages: hello });
  await c.chat.completions.create({ model: "fast", messages: hello });
  const e = await apiError(c.chat.completions.create({ model: "fast", messages: hello }));
  assert.equal(e.status, 429);
  assert.equal(e.code, "RATE_LIMIT_EXCEEDED");
  assert.equal(e.error.message, "Rate limit exceeded for tenant 'narrow': requests_per_minute");
  const retry = Number(e.headers.get("retry-after"));
  assert.ok(retry >= 1 && retry <= 61, `Retry-After ${retry}`);
  assert.equal((await mk.stats()).requests, before + 2, "the provider saw only two");
  // Another tenant is not affected.
  await client(keys.acme.key).chat.completions.create({ model: "fast", messages: hello });
});

for (const [agent, tier] of [["classifier", "fast"], ["product", "powerful"],
  ["analyst", "powerful"], ["code-review", "deepseek"]]) {
  test(`agent '${agent}' answers in ARES's shape, plain and streamed (tier ${tier})`, async () => {
    let r = await post("/v1/chat", { message: "hi", agent_type: agent, max_tokens: 50 }, bearer("acme"));
    assert.equal(r.status, 200);
    const a = await r.json();
    assert.deepEqual(Object.keys(a).sort(),
      ["agent_type", "finish_reason", "id", "message", "model", "provider", "tier", "usage"]);
    assert.equal(a.agent_type, agent);
    assert.equal(a.tier, tier);
    assert.equal(a.model, "m");
    assert.equal(a.provider, "mk");
    assert.equal(a.message, expectedContent("mk", 3));
    assert.equal(a.finish_reason, "stop");
    assert.equal(a.usage.completion_tokens, 3);
    assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + 3);

    r = await post("/v1/chat", { message: "hi", agent_type: agent, stream: true,
      system: "be brief", history: [{ role: "user", content: "earlier" }] }, bearer("acme"));
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /^text\/event-stream/);
    const events = parseSSE(await r.text()).map((e) => JSON.parse(e.data));
    const deltas = events.filter((e) => e.type === "delta").map((e) => e.content);
    assert.equal(deltas.join(""), expectedContent("mk", 3));
    const done = events.at(-1);
    assert.equal(done.type, "done");
    assert.equal(done.tier, tier);
    assert.equal(done.model, "m");
    assert.equal(done.message, expectedContent("mk", 3));
    assert.equal(done.usage.completion_tokens, 3);
    assert.ok(done.usage.prompt_tokens > 0);
  });
}

test("the agent endpoint sent the system prompt and history to the provider", async () => {
  const log = await mk.requests();
  const last = JSON.parse(log.at(-1).body);
  assert.deepEqual(last.messages, [{ role: "system", content: "be brief" },
    { role: "user", content: "earlier" }, { role: "user", content: "hi" }]);
  assert.equal(last.model, "mk-id");
});

async function aresError(res, status, code) {
  assert.equal(res.status, status);
  const body = await res.json();
  assert.equal(body.code, code);
  assert.equal(typeof body.error, "string");
  return body;
}

test("ARES errors on /v1/chat: INVALID_API_KEY, UNKNOWN_AGENT_TYPE, INVALID_REQUEST, AGENT_NOT_ALLOWED", async () => {
  await aresError(await post("/v1/chat", { message: "hi", agent_type: "product" }), 401, "INVALID_API_KEY");
  await aresError(await post("/v1/chat", { message: "hi", agent_type: "product" },
    { authorization: "Bearer llmux-nope" }), 401, "INVALID_API_KEY");
  const u = await aresError(await post("/v1/chat", { message: "hi", agent_type: "poet" }, bearer("acme")),
    400, "UNKNOWN_AGENT_TYPE");
  assert.equal(u.error, "Unknown agent_type 'poet'.");
  await aresError(await post("/v1/chat", { agent_type: "product" }, bearer("acme")), 400, "INVALID_REQUEST");
  await aresError(await post("/v1/chat", { message: "hi", agent_type: "product", max_tokens: -1 },
    bearer("acme")), 400, "INVALID_REQUEST");
  await aresError(await post("/v1/chat", { message: "hi", agent_type: "analyst" }, bearer("narrow")),
    403, "AGENT_NOT_ALLOWED");
});

test("ARES errors on /v1/chat: RATE_LIMIT_EXCEEDED from a provider, UPSTREAM_UNAVAILABLE", async () => {
  assert.equal((await post("/v1/chat", { message: "hi", agent_type: "limited" }, bearer("acme"))).status, 200);
  const r = await post("/v1/chat", { message: "hi", agent_type: "limited" }, bearer("acme"));
  const body = await aresError(r, 429, "RATE_LIMIT_EXCEEDED");
  assert.equal(body.error, "Rate limit exceeded for provider 'mk'");
  assert.ok(body.retry_after >= 1 && body.retry_after <= 61);
  assert.equal(Number(r.headers.get("retry-after")), body.retry_after);
  assert.deepEqual(Object.keys(body).sort(), ["code", "error", "retry_after"]);
  await aresError(await post("/v1/chat", { message: "hi", agent_type: "broken" }, bearer("acme")),
    502, "UPSTREAM_UNAVAILABLE");
});

test("a spent monthly budget is 429 QUOTA_EXCEEDED, on both endpoints", async () => {
  const c = client(keys.broke.key);
  await c.chat.completions.create({ model: "m", messages: hello }); // 0 spent: allowed
  const e = await apiError(c.chat.completions.create({ model: "m", messages: hello }));
  assert.equal(e.status, 429);
  assert.equal(e.code, "QUOTA_EXCEEDED");
  assert.match(e.error.message, /tenant 'broke': budget_usd_per_month/);
  assert.ok(Number(e.headers.get("retry-after")) >= 1);
  const body = await aresError(await post("/v1/chat", { message: "hi", agent_type: "product" },
    bearer("broke")), 429, "QUOTA_EXCEEDED");
  assert.ok(body.retry_after >= 1);
});

test("GET /v1/usage returns the calling tenant's usage, today and this month", async () => {
  const r = await fetch(gw.url + "/v1/usage", { headers: bearer("narrow") });
  assert.equal(r.status, 200);
  const text = await r.text();
  const u = JSON.parse(text);
  const costs = [...text.matchAll(/"cost_usd":([^,}]+)/g)].map((m) => m[1]);
  assert.ok(costs.length >= 4, text);
  for (const c of costs) // rounded to the nano-dollar, no 0.30000000000000004
    assert.match(c, /^\d+(\.\d{1,9})?$|^\d(\.\d+)?e-0?\d$/, `cost_usd ${c}`);
  assert.equal(u.object, "usage");
  assert.equal(u.tenant, "narrow");
  assert.match(u.today.date, /^\d{4}-\d{2}-\d{2}$/);
  assert.equal(u.month.month, u.today.date.slice(0, 7));
  assert.equal(u.today.requests, 2);
  assert.deepEqual(u.today.models.map((m) => [m.model, m.requests, m.output_tokens]), [["m", 2, 6]]);
  assert.equal(u.today.input_tokens, u.today.models[0].input_tokens);
  assert.ok(u.month.requests >= 2);
  assert.equal(u.limits.requests_per_minute, 2);
  assert.equal(u.limits.tokens_per_day, null);
});

test("the start-up line and `llmux check` count the tenants and name the usage_db", () => {
  const db = path.join(path.dirname(config), "data/usage.db");
  assert.ok(gw.stderr().includes(`4 tenants, usage_db ${db})`), gw.stderr());
  const r = runLlmux(["check", "-c", config]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^OK: .*, 4 tenants, usage_db ${db.replace(/[.]/g, "\\.")}, `, "m"));
});

// Polls `llmux usage` until its output matches (the writer thread runs at
// least once a second; under load it may take longer). Returns the run.
async function untilUsage(re) {
  let r;
  for (let i = 0; i < 100; i++) {
    r = runLlmux(["usage", "-c", config]);
    if (r.status === 0 && re.test(r.stdout)) return r;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.fail(`usage never showed ${re}:\n${r.stdout}${r.stderr}`);
}

test("a daily quota holds after the gateway is killed with SIGKILL and restarted", async () => {
  const c = client(keys.daily.key);
  await c.chat.completions.create({ model: "m", messages: hello });
  let e = await apiError(c.chat.completions.create({ model: "m", messages: hello }));
  assert.equal(e.status, 429);
  assert.equal(e.error.message, "Rate limit exceeded for tenant 'daily': tokens_per_day");
  // The writer persists at least once a second: wait until the database
  // holds the request (read with `llmux usage`, as an operator would).
  await untilUsage(/^daily\s+m\s+\d{4}-\d{2}-\d{2}\s+1\s/m);
  live.splice(live.indexOf(gw), 1);
  const exited = new Promise((r) => gw.proc.once("exit", r));
  gw.proc.kill("SIGKILL");
  await exited;
  gw = await startGateway(config);
  live.push(gw);
  e = await apiError(client(keys.daily.key).chat.completions.create({ model: "m", messages: hello }));
  assert.equal(e.status, 429);
  assert.equal(e.error.message, "Rate limit exceeded for tenant 'daily': tokens_per_day");
  // Other tenants' counts came back too.
  const u = await (await fetch(gw.url + "/v1/usage", { headers: bearer("narrow") })).json();
  assert.equal(u.today.requests, 2);
});

test("`llmux usage` prints every tenant's usage from the database", async () => {
  const r = await untilUsage(/^narrow\s+m\s+\d{4}-\d{2}-\d{2}\s+2\s/m);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.stdout.includes(path.join(path.dirname(config), "data/usage.db")));
  const rows = r.stdout.split("\n").filter((l) => /^narrow\s+m\s/.test(l));
  assert.equal(rows.length, 2, r.stdout); // today and this month
  assert.match(rows[0], /^narrow\s+m\s+\d{4}-\d{2}-\d{2}\s+2\s+\d+\s+6\s/);
  for (const t of ["acme", "daily", "broke"]) assert.match(r.stdout, new RegExp(`^${t}\\s+m\\s`, "m"));
});

test("without tenants llmux runs open and says so once at start-up", async () => {
  const open = await startGateway(writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n[model m]\ntier = 3\n",
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n[route mk m]\n`,
  }));
  live.push(open);
  const r = await fetch(open.url + "/v1/chat/completions", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: hello }),
  });
  assert.equal(r.status, 200);
  // The warning follows the "listening" line in a write of its own.
  for (let i = 0; i < 100 && !/runs open/.test(open.stderr()); i++)
    await new Promise((res) => setTimeout(res, 20));
  assert.equal(open.stderr().match(/runs open/g)?.length, 1);
  assert.match(open.stderr(), /providers enabled, 0 tenants, usage_db none\)/);
});

test("a literal key in the config is refused, without echoing it", () => {
  const cfg = writeConfig({
    "llmux.ini": `[model m]\ntier = 3\n[tenant acme]\nkey_sha256 = ${keys.acme.key}\n`,
  });
  const r = runLlmux(["check", "-c", cfg]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:4: 'key_sha256' holds a key, not its SHA-256/);
  assert.ok(!r.stderr.includes(keys.acme.key) && !r.stdout.includes(keys.acme.key));
});
