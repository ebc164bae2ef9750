// Route status: GET /admin/routes says, per route, its names, whether it is
// enabled, its breaker, the rate-limit headroom left, requests in flight,
// latency and last error; `llmux routes` prints the same as a table.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { httpRequest, startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

async function mock(name) {
  const m = await startMock({ args: ["--name", name, "--tokens", "3"] });
  live.push(m);
  return m;
}

const SERVER = "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n" +
  "cooldown_failures = 2\ncooldown_window = 60s\ncooldown = 60s\n";

function provider(name, url, { extra = "", route = "" } = {}) {
  return `[provider ${name}]\nplugin = openai\nbase_url = ${url}\ntimeout = 2s\n${extra}\n` +
    `[route ${name} m]\nid = ${name}-versatile\n${route}\n`;
}

async function gateway(providers, server = "") {
  const files = { "llmux.ini": SERVER + server + "[model m]\ntier = 3\n" };
  for (const [name, text] of Object.entries(providers)) files[`providers/${name}.ini`] = text;
  const gw = await startGateway(writeConfig(files));
  live.push(gw);
  return gw;
}

async function routes(gw, headers = {}) {
  const r = await httpRequest(gw.url + "/admin/routes", { headers });
  assert.equal(r.status, 200, r.body);
  assert.match(r.headers["content-type"], /application\/json/);
  return JSON.parse(r.body);
}

const route = (answer, name) => answer.routes.find((r) => r.provider === name);

async function chat(gw) {
  const r = await httpRequest(gw.url + "/v1/chat/completions", {
    body: { model: "m", messages: [{ role: "user", content: "hi" }] },
  });
  return r.status;
}

// A port nothing listens on: a mock's, once stopped.
async function closedPort() {
  const m = await startMock({ args: ["--name", "gone"] });
  await m.stop();
  return m.port;
}

test("every route is listed with its names, whether it is enabled, and what was observed", async () => {
  const a = await mock("a");
  const gw = await gateway({
    groq: provider("groq", a.baseURL, { route: "requests_per_minute = 30\n" }),
    off: provider("off", a.baseURL, { extra: "api_key_env = LLMUX_E2E_ROUTES_UNSET_KEY\n" }),
  });
  assert.equal(await chat(gw), 200);
  const answer = await routes(gw);
  assert.equal(answer.generation, 1);
  assert.ok(!Number.isNaN(Date.parse(answer.now)));
  assert.deepEqual(answer.routes.map((r) => [r.provider, r.model, r.provider_model, r.enabled]),
    [["groq", "m", "groq-versatile", true], ["off", "m", "off-versatile", false]]);
  const groq = route(answer, "groq"), off = route(answer, "off");
  assert.equal(groq.disabled_reason, null);
  assert.equal(off.disabled_reason, "LLMUX_E2E_ROUTES_UNSET_KEY is not set");
  assert.deepEqual(groq.breaker, { state: "closed", until: null, failures: 0 });
  // 30 a minute configured, one used (the mock reports far more left).
  assert.equal(groq.remaining.requests_minute.remaining, 29);
  assert.equal(groq.remaining.requests_minute.limit, 30);
  assert.ok(Date.parse(groq.remaining.requests_minute.reset) > Date.parse(answer.now));
  assert.equal(groq.in_flight, 0);
  assert.equal(typeof groq.latency_ms, "number");
  assert.equal(groq.last_error, null);
  assert.equal(groq.blocked, null);
  assert.deepEqual(off.remaining, { requests_minute: null, requests_day: null,
                                    tokens_minute: null, tokens_day: null });
  assert.equal(off.latency_ms, null);
  // Only GET (and HEAD).
  const post = await httpRequest(gw.url + "/admin/routes", { method: "POST", body: "{}" });
  assert.equal(post.status, 405);
});

test("500s open the breaker: open, until a time ahead, the last error without an address; `llmux routes` shows it", async () => {
  const a = await mock("a");
  const gw = await gateway({
    broken: provider("broken", a.baseURL, { extra: "header.x-mock-fault = 500\n" }),
  });
  let r;
  for (let i = 0; i < 3; i++) {
    assert.equal(await chat(gw), 502);
    r = route(await routes(gw), "broken");
    if (r.breaker.state === "open") break;
  }
  const answer = await routes(gw);
  r = route(answer, "broken");
  assert.equal(r.breaker.state, "open");
  assert.ok(Date.parse(r.breaker.until) > Date.parse(answer.now), r.breaker.until);
  assert.equal(r.last_error.message, "500 server error");
  assert.doesNotMatch(r.last_error.message, /127\.0\.0\.1|localhost|:\d{2,5}/);
  assert.ok(Date.parse(r.last_error.at) <= Date.parse(answer.now));

  const cli = runLlmux(["routes", "--url", gw.url]);
  assert.equal(cli.status, 0, cli.stderr);
  const lines = cli.stdout.trim().split("\n");
  assert.match(lines[0], /^PROVIDER\s+MODEL\s+STATE\s+RPM\s+RPD\s+TPM\s+TPD\s+IN FLIGHT\s+LATENCY\s+LAST ERROR$/);
  assert.equal(lines.length, 2);
  assert.match(lines[1], /^broken\s+m\s+open \S+\s/);
  assert.match(lines[1], /500 server error/);
  // Columns line up: each heading starts where its cells start.
  assert.equal(lines[1].indexOf("open"), lines[0].indexOf("STATE"));

  // Without --url it asks the listen address of the configuration.
  const cfg = writeConfig({ "llmux.ini": `[server]\nlisten = 127.0.0.1:${gw.port}\n[model m]\ntier = 3\n` });
  const dflt = runLlmux(["routes", "-c", cfg]);
  assert.equal(dflt.status, 0, dflt.stderr);
  assert.match(dflt.stdout, /^broken\s+m\s+open/m);
});

test("a 429 with rate-limit headers: remaining is what the provider said, and the route rests", async () => {
  const a = await mock("a");
  const gw = await gateway({
    limited: provider("limited", a.baseURL,
      { extra: "header.x-mock-fault = 429\nheader.x-mock-retry-after = 30\n" }),
  });
  assert.equal(await chat(gw), 429);
  const answer = await routes(gw);
  const r = route(answer, "limited");
  // The mock's x-ratelimit-*-requests (per minute to the openai dialect):
  // limit 14400, none left until retry-after.
  assert.equal(r.remaining.requests_minute.remaining, 0);
  assert.equal(r.remaining.requests_minute.limit, 14400);
  assert.ok(Date.parse(r.remaining.requests_minute.reset) > Date.parse(answer.now));
  assert.equal(r.remaining.tokens_minute.limit, 200000);
  assert.ok(r.remaining.tokens_minute.remaining <= 200000);
  assert.equal(r.remaining.requests_day, null);
  assert.equal(r.blocked.reason, "retry_after");
  assert.ok(Date.parse(r.blocked.until) > Date.parse(answer.now));
  assert.equal(r.last_error.message, "429 rate limited");
  assert.equal(r.breaker.state, "closed", "a 429 is not the route failing");

  const cli = runLlmux(["routes", "--url", gw.url]);
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stdout, /^limited\s+m\s+closed, wait \S+\s+0\/14400\s/m);
});

test("with an admin key, /admin/routes and `llmux routes` need it", async () => {
  const a = await mock("a");
  const key = "admin-key-for-routes-test";
  const sha = crypto.createHash("sha256").update(key).digest("hex");
  const gw = await gateway({ p: provider("p", a.baseURL) }, `admin_key_sha256 = ${sha}\n`);
  const denied = await httpRequest(gw.url + "/admin/routes");
  assert.equal(denied.status, 401);
  assert.equal(JSON.parse(denied.body).error.code, "invalid_admin_key");
  assert.equal(route(await routes(gw, { authorization: `Bearer ${key}` }), "p").enabled, true);

  let cli = runLlmux(["routes", "--url", gw.url]);
  assert.equal(cli.status, 1);
  assert.equal(cli.stdout, "");
  assert.match(cli.stderr, /^llmux routes: .*answered 401: .*LLMUX_ADMIN_KEY.*\n$/);
  cli = runLlmux(["routes", "--url", gw.url], { LLMUX_ADMIN_KEY: "wrong" });
  assert.equal(cli.status, 1);
  assert.match(cli.stderr, /answered 401/);
  cli = runLlmux(["routes", "--url", gw.url], { LLMUX_ADMIN_KEY: key });
  assert.equal(cli.status, 0, cli.stderr);
  assert.match(cli.stdout, /^p\s+m\s+closed\s/m);
});

test("`llmux routes` against a closed port exits 1 with one clear line", async () => {
  const port = await closedPort();
  const cli = runLlmux(["routes", "--url", `http://127.0.0.1:${port}`]);
  assert.equal(cli.status, 1);
  assert.equal(cli.stdout, "");
  assert.equal(cli.stderr,
    `llmux routes: cannot reach the gateway at http://127.0.0.1:${port}: connection refused\n`);
});
