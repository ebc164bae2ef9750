// GET /metrics: after real traffic (a 429 failover, a stream, a 404, a 401)
// the series say what happened, `promtool check metrics` accepts the body,
// the admin key guards it, and a real Prometheus scrapes it and answers a
// query with the counter's value.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { httpRequest, startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

const sha256 = (s) => crypto.createHash("sha256").update(s).digest("hex");
const TENANT_KEY = "llmux-metrics-e2e-tenant-key";
const ADMIN_KEY = "llmux-metrics-e2e-admin-key";

async function mock(name, args = []) {
  const m = await startMock({ args: ["--name", name, "--tokens", "4", ...args] });
  live.push(m);
  return m;
}

// Provider a answers 429 (retry-after 30 s), b serves; model m is priced;
// tenant acme has a budget. `server`: more [server] lines.
async function gateway(server = "") {
  const a = await mock("a"), b = await mock("b");
  const files = {
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n" +
      server + "\n[model m]\ntier = 3\nprice_in = 1\nprice_out = 2\n" +
      `[tenant acme]\nkey_sha256 = ${sha256(TENANT_KEY)}\nbudget_usd_per_month = 10\n`,
    "providers/a.ini": `[provider a]\nplugin = openai\nbase_url = ${a.baseURL}\npriority = 1\n` +
      "header.x-mock-fault = 429\nheader.x-mock-retry-after = 30\n[route a m]\nid = a-id\n",
    "providers/b.ini": `[provider b]\nplugin = openai\nbase_url = ${b.baseURL}\npriority = 2\n` +
      "requests_per_minute = 100\n[route b m]\nid = b-id\n",
  };
  const config = writeConfig(files);
  const gw = await startGateway(config);
  gw.dir = path.dirname(config);
  live.push(gw);
  return gw;
}

const auth = { authorization: `Bearer ${TENANT_KEY}` };

function chat(gw, body = {}, headers = auth) {
  return httpRequest(gw.url + "/v1/chat/completions", {
    headers,
    body: { model: "m", messages: [{ role: "user", content: "hello there" }], ...body },
  });
}

// The traffic every test here starts with: a chat that fails over from a's
// 429 to b, a stream (b only: a now rests), a 404 and a 401.
async function traffic(gw) {
  let r = await chat(gw);
  assert.equal(r.status, 200, r.body);
  assert.equal(r.headers["x-llmux-attempts"], "2");
  r = await chat(gw, { stream: true, stream_options: { include_usage: true } });
  assert.equal(r.status, 200, r.body);
  r = await httpRequest(gw.url + "/v1/nothing-here", { headers: auth });
  assert.equal(r.status, 404);
  r = await chat(gw, {}, {});
  assert.equal(r.status, 401);
}

// Text format 0.0.4 into [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

// The one sample of `name` whose labels include `labels`; its value.
function value(samples, name, labels = {}) {
  const hits = samples.filter((s) => s.name === name &&
    Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.equal(hits.length, 1,
    `${name}${JSON.stringify(labels)}: ${hits.length} samples\n` +
    samples.filter((s) => s.name === name).map((s) => JSON.stringify(s)).join("\n"));
  return hits[0].value;
}

async function scrape(gw, headers = {}) {
  const r = await httpRequest(gw.url + "/metrics", { headers });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  return r.body;
}

test("after a failover, a stream, a 404 and a 401, /metrics says so, and promtool agrees", async () => {
  const gw = await gateway();
  await traffic(gw);
  const body = await scrape(gw);
  const s = parseMetrics(body);
  // every request, by endpoint, status and tenant
  assert.equal(value(s, "llmux_requests_total", { endpoint: "chat", status: "200", tenant: "acme" }), 2);
  assert.equal(value(s, "llmux_requests_total", { endpoint: "unknown", status: "404", tenant: "acme" }), 1);
  assert.equal(value(s, "llmux_requests_total", { endpoint: "chat", status: "401", tenant: "" }), 1);
  assert.equal(value(s, "llmux_requests_in_flight"), 1, "the scrape itself");
  // attempts and the failover
  assert.equal(value(s, "llmux_upstream_attempts_total", { provider: "a", model: "a-id", outcome: "rate_limited" }), 1);
  assert.equal(value(s, "llmux_upstream_attempts_total", { provider: "b", model: "b-id", outcome: "ok" }), 2);
  assert.equal(value(s, "llmux_failovers_total"), 1);
  assert.equal(value(s, "llmux_retries_total"), 0);
  assert.equal(value(s, "llmux_overhead_seconds_count"), 2);
  // the GenAI histograms
  const genai = { gen_ai_operation_name: "chat", gen_ai_provider_name: "b",
                  gen_ai_request_model: "m", gen_ai_response_model: "b-id" };
  assert.equal(value(s, "gen_ai_client_token_usage_count", { ...genai, gen_ai_token_type: "input" }), 2);
  assert.equal(value(s, "gen_ai_client_token_usage_count", { ...genai, gen_ai_token_type: "output" }), 2);
  assert.equal(value(s, "gen_ai_client_token_usage_sum", { ...genai, gen_ai_token_type: "output" }), 8);
  assert.equal(value(s, "gen_ai_client_operation_duration_seconds_count", { ...genai, error_type: "" }), 2);
  assert.equal(value(s, "gen_ai_server_time_to_first_token_seconds_count", genai), 1);
  assert.equal(value(s, "gen_ai_server_time_per_output_token_seconds_count", genai), 1);
  // routes: breakers closed (a 429 is not the route's fault), what is left
  assert.equal(value(s, "llmux_route_state", { provider: "a", model: "a-id" }), 0);
  assert.equal(value(s, "llmux_route_state", { provider: "b", model: "b-id" }), 0);
  assert.equal(value(s, "llmux_route_remaining", { provider: "b", model: "b-id", dimension: "requests_minute" }), 98);
  assert.ok(s.some((x) => x.name === "llmux_route_latency_seconds" && x.labels.provider === "b"));
  // the tenant
  assert.ok(value(s, "llmux_tenant_tokens_total", { tenant: "acme", token_type: "input" }) > 0);
  assert.equal(value(s, "llmux_tenant_tokens_total", { tenant: "acme", token_type: "output" }), 8);
  const cost = value(s, "llmux_tenant_cost_usd_total", { tenant: "acme" });
  assert.ok(cost > 0);
  assert.ok(Math.abs(value(s, "llmux_tenant_budget_remaining_usd", { tenant: "acme" }) - (10 - cost)) < 1e-9);
  // the process
  assert.equal(value(s, "llmux_build_info", { abi: "1.4" }), 1);
  assert.match(s.find((x) => x.name === "llmux_build_info").labels.version, /^\d+\.\d+\.\d+$/);
  assert.equal(value(s, "llmux_config_generation"), 1);
  assert.equal(value(s, "llmux_config_reload_total", { result: "success" }), 0);
  assert.equal(value(s, "llmux_connections", { state: "active" }), 1);
  assert.ok(value(s, "process_resident_memory_bytes") > 0);
  assert.ok(value(s, "process_open_fds") > 0);
  // no free text in labels: not the path asked, not the request ids
  assert.ok(!body.includes("nothing-here"));
  assert.ok(!/req_[0-9a-f]{16}/.test(body));

  const check = spawnSync("promtool", ["check", "metrics"], { input: body, encoding: "utf8" });
  assert.equal(check.status, 0, `promtool check metrics:\n${check.stdout}${check.stderr}`);
});

test("reloads are counted and the generation shown; a removed route leaves the gauges", async () => {
  const gw = await gateway();
  await traffic(gw);
  fs.writeFileSync(path.join(gw.dir, "providers", "broken.ini"), "[provider broken\n");
  let r = await httpRequest(gw.url + "/admin/reload", { method: "POST" });
  assert.equal(r.status, 400, r.body);
  fs.rmSync(path.join(gw.dir, "providers", "broken.ini"));
  fs.rmSync(path.join(gw.dir, "providers", "a.ini"));
  r = await httpRequest(gw.url + "/admin/reload", { method: "POST" });
  assert.equal(r.status, 200, r.body);
  const s = parseMetrics(await scrape(gw));
  assert.equal(value(s, "llmux_config_reload_total", { result: "success" }), 1);
  assert.equal(value(s, "llmux_config_reload_total", { result: "failure" }), 1);
  assert.equal(value(s, "llmux_config_generation"), 2);
  assert.equal(value(s, "llmux_route_state", { provider: "b", model: "b-id" }), 0);
  assert.ok(!s.some((x) => x.name.startsWith("llmux_route_") && x.labels.provider === "a"),
            "route a is gone from the route gauges");
  // a counter keeps what happened
  assert.equal(value(s, "llmux_upstream_attempts_total", { provider: "a", model: "a-id", outcome: "rate_limited" }), 1);
});

test("with an admin key, /metrics needs it: 401 without, nor does a tenant's key do", async () => {
  const gw = await gateway(`admin_key_sha256 = ${sha256(ADMIN_KEY)}\n`);
  let r = await httpRequest(gw.url + "/metrics");
  assert.equal(r.status, 401);
  assert.equal(JSON.parse(r.body).error.code, "invalid_admin_key");
  r = await httpRequest(gw.url + "/metrics", { headers: auth });
  assert.equal(r.status, 401);
  const body = await scrape(gw, { authorization: `Bearer ${ADMIN_KEY}` });
  assert.match(body, /^llmux_build_info\{/m);
  // the refused scrapes are counted too
  assert.equal(value(parseMetrics(body), "llmux_requests_total",
                     { endpoint: "metrics", status: "401", tenant: "" }), 2);
});

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Starts Prometheus scraping `target` every second with the admin key;
// resolves { url, stop() }.
async function startPrometheus(target, key) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-prom-"));
  const port = await freePort();
  fs.writeFileSync(path.join(dir, "prometheus.yml"),
    "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" +
    "scrape_configs:\n  - job_name: llmux\n    scrape_interval: 1s\n    scrape_timeout: 1s\n" +
    `    authorization:\n      credentials: ${key}\n` +
    `    static_configs:\n      - targets: ["${target}"]\n`);
  const proc = spawn("prometheus", [
    `--config.file=${path.join(dir, "prometheus.yml")}`,
    `--storage.tsdb.path=${path.join(dir, "data")}`,
    `--web.listen-address=127.0.0.1:${port}`,
  ], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (d) => { log += d; });
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  const p = {
    url: `http://127.0.0.1:${port}`,
    log: () => log,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  live.push(p);
  return p;
}

test("a real Prometheus scrapes /metrics and answers a query with the counter's value", async () => {
  const gw = await gateway(`admin_key_sha256 = ${sha256(ADMIN_KEY)}\n`);
  await traffic(gw);
  const prom = await startPrometheus(`127.0.0.1:${gw.port}`, ADMIN_KEY);
  const query = encodeURIComponent('llmux_requests_total{endpoint="chat",status="200",tenant="acme"}');
  let last = "";
  // Bounded: Prometheus starts, then scrapes within a second or two.
  for (let i = 0; i < 120; i++) {
    await new Promise((r) => setTimeout(r, 250));
    let r;
    try {
      r = await httpRequest(`${prom.url}/api/v1/query?query=${query}`);
    } catch {
      continue; /* not listening yet */
    }
    last = r.body;
    if (r.status !== 200) continue;
    const res = JSON.parse(r.body).data.result;
    if (res.length === 0) continue;
    assert.equal(res.length, 1, r.body);
    assert.equal(res[0].metric.job, "llmux");
    assert.equal(res[0].value[1], "2");
    const up = JSON.parse((await httpRequest(`${prom.url}/api/v1/query?query=up`)).body);
    assert.equal(up.data.result[0].value[1], "1");
    return;
  }
  assert.fail(`Prometheus never had the sample; last answer: ${last}\n${prom.log().slice(-3000)}`);
});
