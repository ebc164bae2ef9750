// Traces: with [server] otlp_endpoint, each request is a SERVER span with a
// CLIENT span per upstream attempt, sent as OTLP/HTTP JSON to a collector
// (a stub here that keeps what it is sent); an incoming traceparent is the
// parent, and each attempt passes its own span upstream in traceparent.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { httpRequest, startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN = "00f067aa0ba902b7";
const TRACEPARENT = `00-${TRACE}-${CLIENT_SPAN}-01`;

// A collector: POST /v1/traces bodies, parsed, in arrival order.
async function collector() {
  const bodies = [];
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (d) => chunks.push(d));
    req.on("end", () => {
      requests.push({ method: req.method, url: req.url, type: req.headers["content-type"] });
      if (req.method === "POST" && req.url === "/v1/traces") {
        bodies.push(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const c = {
    url: `http://127.0.0.1:${server.address().port}`,
    bodies,
    requests,
    spans: () => bodies.flatMap((b) => b.resourceSpans.flatMap((rs) =>
      rs.scopeSpans.flatMap((ss) => ss.spans))),
    // Resolves the spans of `trace` once `n` have arrived (the exporter
    // sends every second): fails after a few seconds.
    async waitFor(trace, n) {
      for (let i = 0; i < 100; i++) {
        const got = c.spans().filter((s) => s.traceId === trace);
        if (got.length >= n) return got;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.fail(`the collector got ${c.spans().filter((s) => s.traceId === trace).length} ` +
                  `of ${n} spans of trace ${trace}`);
    },
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
  live.push(c);
  return c;
}

async function mock(name, args = []) {
  const m = await startMock({ args: ["--name", name, "--tokens", "3", ...args] });
  live.push(m);
  return m;
}

// providers: [{name, mock, priority, extra}], each with a route for model m.
async function gateway({ providers, server = "" }) {
  const files = {
    "llmux.ini": `[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n` +
      `${server}\n[model m]\ntier = 3\n`,
  };
  for (const p of providers) {
    files[`providers/${p.name}.ini`] =
      `[provider ${p.name}]\nplugin = openai\nbase_url = ${p.mock.baseURL}\n` +
      `priority = ${p.priority ?? 10}\ntimeout = 2s\n${p.extra ?? ""}\n` +
      `[route ${p.name} m]\nid = ${p.name}-id\n`;
  }
  const config = writeConfig(files);
  const gw = await startGateway(config);
  live.push(gw);
  return { gw, config };
}

async function chat(gw, headers = {}, body = {}) {
  const r = await httpRequest(gw.url + "/v1/chat/completions", {
    headers,
    body: { model: "m", messages: [{ role: "user", content: "hi" }], ...body },
  });
  return { status: r.status, provider: r.headers["x-llmux-provider"], body: r.body };
}

const attr = (span, key) => {
  const a = span.attributes.find((x) => x.key === key);
  if (!a) return undefined;
  const v = a.value;
  return v.stringValue ?? v.intValue ?? v.arrayValue?.values.map((x) => x.stringValue);
};

// A port nothing listens on.
async function closedPort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

test("a chat is a SERVER span under the client's, with a CLIENT span the provider is told of", async () => {
  const col = await collector();
  const a = await mock("a");
  const { gw } = await gateway({ providers: [{ name: "a", mock: a }],
                                 server: `otlp_endpoint = ${col.url}\n` });
  const r = await chat(gw, { traceparent: TRACEPARENT });
  assert.equal(r.status, 200, r.body);

  const spans = await col.waitFor(TRACE, 2);
  assert.equal(spans.length, 2);
  const server = spans.find((s) => s.kind === 2);
  const client = spans.find((s) => s.kind === 3);
  assert.ok(server && client, JSON.stringify(spans));
  assert.equal(server.name, "chat m");
  assert.equal(server.parentSpanId, CLIENT_SPAN);
  assert.match(server.spanId, /^[0-9a-f]{16}$/);
  assert.notEqual(server.spanId, CLIENT_SPAN);
  assert.equal(attr(server, "gen_ai.operation.name"), "chat");
  assert.equal(attr(server, "gen_ai.provider.name"), "a");
  assert.equal(attr(server, "gen_ai.request.model"), "m");
  assert.equal(attr(server, "gen_ai.response.model"), "a-id");
  assert.equal(attr(server, "gen_ai.usage.output_tokens"), "3");
  assert.match(attr(server, "gen_ai.usage.input_tokens"), /^[0-9]+$/);
  assert.equal(attr(server, "error.type"), undefined);
  assert.deepEqual(server.status, {});
  assert.ok(BigInt(server.endTimeUnixNano) >= BigInt(server.startTimeUnixNano));

  assert.equal(client.name, "chat a-id");
  assert.equal(client.parentSpanId, server.spanId);
  assert.equal(attr(client, "gen_ai.provider.name"), "a");
  assert.equal(attr(client, "gen_ai.request.model"), "a-id");
  assert.ok(BigInt(client.startTimeUnixNano) >= BigInt(server.startTimeUnixNano));
  assert.ok(BigInt(client.endTimeUnixNano) <= BigInt(server.endTimeUnixNano));

  // The provider heard of the CLIENT span, in the client's trace.
  const [seen] = await a.requests();
  assert.equal(seen.headers.traceparent, `00-${TRACE}-${client.spanId}-01`);

  // What the collector was sent: OTLP/HTTP JSON, llmux as the resource.
  assert.deepEqual(col.requests[0], { method: "POST", url: "/v1/traces", type: "application/json" });
  const resource = col.bodies[0].resourceSpans[0].resource.attributes;
  assert.deepEqual(resource.find((x) => x.key === "service.name").value, { stringValue: "llmux" });
});

test("a failover is two CLIENT spans, the first with its error; a fresh trace has no parent", async () => {
  const col = await collector();
  const a = await mock("a"), b = await mock("b");
  const { gw } = await gateway({ providers: [
    { name: "a", mock: a, priority: 1, extra: "header.x-mock-fault = 429\n" },
    { name: "b", mock: b, priority: 2 },
  ], server: `otlp_endpoint = ${col.url}\n` });
  const r = await chat(gw);
  assert.equal(r.status, 200, r.body);
  assert.equal(r.provider, "b");

  const [toA] = await a.requests(), [toB] = await b.requests();
  const tp = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/;
  const [, trace, spanA] = tp.exec(toA.headers.traceparent);
  const [, traceB, spanB] = tp.exec(toB.headers.traceparent);
  assert.equal(traceB, trace, "both attempts are in one trace");
  assert.notEqual(spanA, spanB, "each attempt is its own span");

  const spans = await col.waitFor(trace, 3);
  const server = spans.find((s) => s.kind === 2);
  assert.equal(server.parentSpanId, undefined, "no traceparent came in: the SERVER span is a root");
  assert.equal(attr(server, "gen_ai.provider.name"), "b");
  const first = spans.find((s) => s.spanId === spanA);
  const second = spans.find((s) => s.spanId === spanB);
  assert.equal(first.kind, 3);
  assert.equal(first.parentSpanId, server.spanId);
  assert.equal(first.name, "chat a-id");
  assert.equal(attr(first, "error.type"), "rate_limited");
  assert.equal(attr(first, "http.response.status_code"), "429");
  assert.equal(first.status.code, 2);
  assert.equal(second.parentSpanId, server.spanId);
  assert.equal(attr(second, "gen_ai.provider.name"), "b");
  assert.equal(attr(second, "error.type"), undefined);
});

test("a failed request's SERVER span says its error type", async () => {
  const col = await collector();
  const a = await mock("a");
  const { gw } = await gateway({ providers: [
    { name: "a", mock: a, extra: "header.x-mock-fault = 400\n" },
  ], server: `otlp_endpoint = ${col.url}\n` });
  const r = await chat(gw, { traceparent: TRACEPARENT });
  assert.equal(r.status, 400);
  const spans = await col.waitFor(TRACE, 2);
  const server = spans.find((s) => s.kind === 2);
  assert.equal(server.status.code, 2);
  assert.equal(attr(server, "error.type"), JSON.parse(r.body).error.code);
  assert.equal(attr(server, "http.response.status_code"), "400");
  assert.equal(attr(spans.find((s) => s.kind === 3), "error.type"), "client_error");
});

test("without otlp_endpoint nothing is sent, and the client's traceparent passes unchanged", async () => {
  const col = await collector();
  const a = await mock("a");
  const { gw } = await gateway({ providers: [{ name: "a", mock: a }] });
  assert.equal((await chat(gw, { traceparent: TRACEPARENT, tracestate: "congo=t61rcWkgMzE" })).status, 200);
  assert.equal((await chat(gw)).status, 200);
  const [withTp, without] = await a.requests();
  assert.equal(withTp.headers.traceparent, TRACEPARENT);
  assert.equal(withTp.headers.tracestate, "congo=t61rcWkgMzE");
  assert.equal(without.headers.traceparent, undefined);
  assert.equal(await gw.stop(), 0); // a stop sends what an exporter holds: there is none
  assert.equal(col.requests.length, 0);
});

test("an unsampled traceparent is passed on unchanged and not exported", async () => {
  const col = await collector();
  const a = await mock("a");
  const { gw } = await gateway({ providers: [{ name: "a", mock: a }],
                                 server: `otlp_endpoint = ${col.url}\n` });
  const unsampled = `00-${TRACE}-${CLIENT_SPAN}-00`;
  assert.equal((await chat(gw, { traceparent: unsampled })).status, 200);
  assert.equal((await a.requests())[0].headers.traceparent, unsampled);
  assert.equal(await gw.stop(), 0);
  assert.equal(col.spans().filter((s) => s.traceId === TRACE).length, 0);
});

test("the last spans go out when the gateway stops", async () => {
  const col = await collector();
  const a = await mock("a");
  const { gw } = await gateway({ providers: [{ name: "a", mock: a }],
                                 server: `otlp_endpoint = ${col.url}\n` });
  assert.equal((await chat(gw, { traceparent: TRACEPARENT })).status, 200);
  assert.equal(await gw.stop(), 0);
  assert.equal(col.spans().filter((s) => s.traceId === TRACE).length, 2);
});

test("a collector that is down or never answers changes nothing for requests, nor for a stop", async () => {
  const a = await mock("a");
  const down = await gateway({ providers: [{ name: "a", mock: a }],
                               server: `otlp_endpoint = http://127.0.0.1:${await closedPort()}\n` });
  for (let i = 0; i < 5; i++) {
    const r = await chat(down.gw, { traceparent: TRACEPARENT });
    assert.equal(r.status, 200, r.body);
  }
  assert.equal(await down.gw.stop(), 0);

  // Accepts connections, reads, never answers.
  const sockets = new Set();
  const silent = net.createServer((s) => { sockets.add(s); s.resume(); });
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  live.push({ stop: () => new Promise((r) => { for (const s of sockets) s.destroy(); silent.close(r); }) });
  const hung = await gateway({ providers: [{ name: "a", mock: a }],
                               server: `otlp_endpoint = http://127.0.0.1:${silent.address().port}\n` });
  assert.equal((await chat(hung.gw, { traceparent: TRACEPARENT })).status, 200);
  assert.equal(await hung.gw.stop(), 0, "stopped by itself, not killed");
});

test("a reload moves the spans to a new otlp_endpoint", async () => {
  const one = await collector(), two = await collector();
  const a = await mock("a");
  const { gw, config } = await gateway({ providers: [{ name: "a", mock: a }],
                                         server: `otlp_endpoint = ${one.url}\n` });
  assert.equal((await chat(gw, { traceparent: TRACEPARENT })).status, 200);
  await one.waitFor(TRACE, 2);
  fs.writeFileSync(config, fs.readFileSync(config, "utf8").replace(one.url, two.url));
  const r = await httpRequest(gw.url + "/admin/reload", { method: "POST" });
  assert.equal(r.status, 200, r.body);
  const other = "0af7651916cd43dd8448eb211c80319c";
  assert.equal((await chat(gw, { traceparent: `00-${other}-${CLIENT_SPAN}-01` })).status, 200);
  await two.waitFor(other, 2);
  assert.equal(one.spans().filter((s) => s.traceId === other).length, 0);
});

test("otlp_endpoint must be an http:// URL", async () => {
  for (const [value, says] of [
    ["https://collector:4318", /must be http:\/\//],
    ["collector:4318", /otlp_endpoint/],
    ["http://:4318", /otlp_endpoint/],
    ["http://collector:99999", /otlp_endpoint/],
    ["http://collector:4318?x=1", /otlp_endpoint/],
  ]) {
    const config = writeConfig({ "llmux.ini": `[server]\notlp_endpoint = ${value}\n[model m]\ntier = 3\n` });
    const r = runLlmux(["check", "-c", config]);
    assert.notEqual(r.status, 0, value);
    assert.match(r.stderr + r.stdout, says, value);
  }
  const ok = writeConfig({ "llmux.ini": "[server]\notlp_endpoint = http://[::1]:4318/otel/\n[model m]\ntier = 3\n" });
  const r = runLlmux(["check", "-c", ok]);
  assert.doesNotMatch(r.stderr + r.stdout, /otlp_endpoint/);
});
