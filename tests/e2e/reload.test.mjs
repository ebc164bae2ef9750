// Reloading the configuration without a restart: SIGHUP and POST
// /admin/reload make a new generation current at once; GET /admin/config
// says which (with each file's SHA-256); an invalid configuration changes
// nothing and is answered with its file:line lines; a stream keeps the
// provider it started with after a reload removed it; rate limits,
// breakers and tenant counters survive a reload; the admin key; and a
// reload storm under streaming load fails no request.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { BUILD_DIR, startGateway, writeConfig } from "./lib/gateway.mjs";
import { RawClient } from "./lib/http_raw.mjs";
import { expectedContent, httpRequest, parseSSE, startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

async function mock(name, args = []) {
  const m = await startMock({ args: ["--name", name, "--tokens", "3", ...args] });
  live.push(m);
  return m;
}

const SERVER = "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n";

function provider(name, m, { model = "m", priority = 10, extra = "", route = "" } = {}) {
  return `[provider ${name}]\nplugin = openai\nbase_url = ${m.baseURL}\npriority = ${priority}\n` +
    `timeout = 2s\n${extra}\n[route ${name} ${model}]\nid = ${name}-id\n${route}\n`;
}

async function gateway(files) {
  const config = writeConfig(files);
  const gw = await startGateway(config);
  live.push(gw);
  return { gw, config, dir: path.dirname(config) };
}

const sha256 = (file) => crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");

async function adminConfig(gw, headers = {}) {
  const r = await httpRequest(gw.url + "/admin/config", { headers });
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body);
}

async function reload(gw, headers = {}) {
  const r = await httpRequest(gw.url + "/admin/reload", { method: "POST", headers });
  return { status: r.status, body: JSON.parse(r.body) };
}

// SIGHUP returns before the reload is done: wait until the generation moves.
async function sighup(gw, from) {
  gw.proc.kill("SIGHUP");
  for (let i = 0; i < 200; i++) {
    const c = await adminConfig(gw);
    if (c.generation > from) return c;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`the generation stayed ${from} after SIGHUP:\n${gw.stderr()}`);
}

async function chat(gw, model, { headers = {}, body = {} } = {}) {
  const r = await httpRequest(gw.url + "/v1/chat/completions", {
    headers,
    body: { model, messages: [{ role: "user", content: "hi" }], ...body },
  });
  return { status: r.status, provider: r.headers["x-llmux-provider"],
           attempts: Number(r.headers["x-llmux-attempts"]), body: r.body };
}

test("SIGHUP and POST /admin/reload take effect; /admin/config numbers them and hashes the files", async () => {
  const a = await mock("a"), b = await mock("b");
  const { gw, config, dir } = await gateway({
    "llmux.ini": SERVER + "[model m]\ntier = 3\n",
    "providers/a.ini": provider("a", a),
  });
  let c = await adminConfig(gw);
  assert.equal(c.generation, 1);
  assert.ok(!Number.isNaN(Date.parse(c.loaded_at)) && c.loaded_at.endsWith("Z"), c.loaded_at);
  assert.deepEqual(c.files.map((f) => f.path), [config, path.join(dir, "providers/a.ini")]);
  for (const f of c.files) assert.equal(f.sha256, sha256(f.path), f.path);
  assert.equal((await chat(gw, "gpt-4")).status, 404);

  // A new alias, by SIGHUP.
  fs.appendFileSync(config, "[alias]\ngpt-4 = m\n");
  c = await sighup(gw, 1);
  assert.equal(c.generation, 2);
  assert.equal(c.files[0].sha256, sha256(config));
  let r = await chat(gw, "gpt-4");
  assert.equal(r.status, 200, r.body);
  assert.equal(r.provider, "a");

  // A new provider, preferred, by the admin endpoint.
  fs.writeFileSync(path.join(dir, "providers/b.ini"), provider("b", b, { priority: 1 }));
  const rl = await reload(gw);
  assert.equal(rl.status, 200, JSON.stringify(rl.body));
  assert.equal(rl.body.generation, 3);
  assert.deepEqual(rl.body.warnings, []);
  assert.equal(rl.body.files.length, 3);
  for (const f of rl.body.files) assert.equal(f.sha256, sha256(f.path), f.path);
  r = await chat(gw, "m");
  assert.equal(r.provider, "b");
  assert.equal((await adminConfig(gw)).generation, 3);
});

test("an invalid reload is a 400 with file:line lines, and the old configuration serves on", async () => {
  const a = await mock("a");
  const { gw, config, dir } = await gateway({
    "llmux.ini": SERVER + "[model m]\ntier = 3\n",
    "providers/a.ini": provider("a", a),
  });
  const before = await adminConfig(gw);
  const bad = path.join(dir, "providers/a.ini");
  fs.appendFileSync(bad, "this line is wrong\n");
  fs.appendFileSync(config, "[model n]\ntier = 9\n");

  const r = await reload(gw);
  assert.equal(r.status, 400);
  assert.equal(r.body.error.code, "invalid_config");
  assert.equal(r.body.error.type, "invalid_request_error");
  const lines = r.body.errors;
  assert.ok(lines.some((l) => l.startsWith(`${bad}:`) && /malformed line/.test(l)), lines.join("\n"));
  assert.ok(lines.some((l) => l.startsWith(`${config}:`) && /tier/.test(l)), lines.join("\n"));
  for (const l of lines) assert.match(l, /^[^:]+:\d+: /);
  // The same lines are in the log, at error level. The log pipe and the
  // socket are read independently, so the log may arrive a little later.
  for (let i = 0; i < 100 && !lines.every((l) => gw.stderr().includes(l)); i++)
    await new Promise((res) => setTimeout(res, 50));
  for (const l of lines) assert.ok(gw.stderr().includes(l), `logged: ${l}`);

  gw.proc.kill("SIGHUP"); // an invalid SIGHUP changes nothing either
  await new Promise((res) => setTimeout(res, 200));
  const after = await adminConfig(gw);
  assert.equal(after.generation, before.generation);
  assert.deepEqual(after.files, before.files);
  assert.equal((await chat(gw, "m")).status, 200);
  assert.equal((await chat(gw, "n")).status, 404);
});

test("a stream outlives the removal of its provider; new requests get what the new config says", async () => {
  const a = await mock("a"), b = await mock("b");
  const { gw, dir } = await gateway({
    "llmux.ini": SERVER + "[model m]\ntier = 3\n[model k]\ntier = 2\n",
    "providers/a.ini": provider("a", a),
    "providers/b.ini": provider("b", b, { model: "k" }),
  });
  const tokens = 12;
  let streamDone = false;
  const stream = httpRequest(gw.url + "/v1/chat/completions", {
    body: { model: "m", stream: true, messages: [{ role: "user", content: "hi" }],
            mock: { tokens, token_delay_ms: 100 } },
  }).finally(() => { streamDone = true; });
  // Once the mock is streaming, remove provider a and reload.
  for (let i = 0; i < 200 && (await a.stats()).requests === 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  fs.rmSync(path.join(dir, "providers/a.ini"));
  const rl = await reload(gw);
  assert.equal(rl.status, 200, JSON.stringify(rl.body));
  assert.equal(rl.body.files.length, 2);

  // New requests for m: no route is configured now.
  const now = await chat(gw, "m");
  assert.equal(now.status, 503, now.body);
  assert.equal(JSON.parse(now.body).error.code, "no_provider_available");
  assert.equal((await chat(gw, "k")).status, 200);
  assert.equal(streamDone, false, "the stream (1.2 s of tokens) outlived the reload");

  const r = await stream;
  assert.equal(r.status, 200);
  assert.equal(r.headers["x-llmux-provider"], "a");
  const events = parseSSE(r.body);
  assert.equal(events.at(-1).data, "[DONE]");
  const text = events.slice(0, -1).map((e) => JSON.parse(e.data))
    .map((c) => c.choices?.[0]?.delta?.content ?? "").join("");
  assert.equal(text, expectedContent("a", tokens), "every token arrived");
  assert.equal((await a.stats()).aborted ?? 0, 0);
  // The old generation was freed with its last request: a clean exit (and,
  // under ASan, no leak).
  assert.equal(await gw.stop(), 0, gw.stderr());
});

test("rate limits, breakers and tenant counters are kept across a reload", async () => {
  const a = await mock("a"), b = await mock("b"), c = await mock("c"), d = await mock("d");
  const key = "tenant-key-for-reload-test", opsKey = "another-tenant-key-for-reload-test";
  const h = (k) => crypto.createHash("sha256").update(k).digest("hex");
  const main = (extra) => SERVER + "cooldown_failures = 2\ncooldown = 60s\n" +
    "[model m]\ntier = 3\n[model n]\ntier = 3\n[model t]\ntier = 3\n" +
    `[tenant acme]\nkey_sha256 = ${h(key)}\nrequests_per_minute = 2\nmodels = t\n` +
    `[tenant ops]\nkey_sha256 = ${h(opsKey)}\n` + extra;
  const { gw, config } = await gateway({
    "llmux.ini": main(""),
    "providers/a.ini": provider("a", a, { priority: 1, route: "requests_per_minute = 2" }) +
      "[route a t]\nid = a-t\n",
    "providers/b.ini": provider("b", b, { priority: 2 }),
    "providers/c.ini": provider("c", c, { model: "n", priority: 1, extra: "header.x-mock-fault = 500" }),
    "providers/d.ini": provider("d", d, { model: "n", priority: 2 }),
  });
  const auth = { authorization: `Bearer ${key}` };
  const ops = { headers: { authorization: `Bearer ${opsKey}` } };
  // a's route has room for two requests a minute; then b serves.
  assert.equal((await chat(gw, "m", { headers: auth })).status, 404, "acme may use t only");
  for (const want of ["a", "a", "b"]) assert.equal((await chat(gw, "m", ops)).provider, want);
  // c fails twice: its breaker opens, d serves.
  for (let i = 0; i < 2; i++) {
    const r = await chat(gw, "n", ops);
    assert.equal(r.provider, "d");
    assert.equal(r.attempts, 2);
  }
  // The tenant uses one of its two requests a minute.
  assert.equal((await chat(gw, "t", { headers: auth })).status, 200);

  fs.writeFileSync(config, main("[alias]\nunrelated = m\n"));
  const rl = await reload(gw);
  assert.equal(rl.status, 200, JSON.stringify(rl.body));
  assert.equal(rl.body.generation, 2);

  let r = await chat(gw, "m", ops);
  assert.equal(r.provider, "b", "a is still out of headroom");
  assert.equal(r.attempts, 1);
  const seenByC = (await c.stats()).requests;
  r = await chat(gw, "n", ops);
  assert.equal(r.provider, "d");
  assert.equal(r.attempts, 1, "c still cools down: not tried");
  assert.equal((await c.stats()).requests, seenByC);
  assert.equal((await chat(gw, "t", { headers: auth })).status, 200);
  r = await chat(gw, "t", { headers: auth });
  assert.equal(r.status, 429, "the tenant's third request in the minute");
  assert.match(JSON.parse(r.body).error.message, /tenant 'acme': requests_per_minute/);
});

// A key is checked at the head; a reload may come before the body. The
// request is then judged by the tenants of the configuration current when
// its body is in: a tenant the reload kept is served, one it removed is not.
test("a request whose head came before a reload is judged by the new tenants", async () => {
  const a = await mock("a");
  const h = (k) => crypto.createHash("sha256").update(k).digest("hex");
  const tenants = (names) => names.map((n) => `[tenant ${n}]\nkey_sha256 = ${h(n + "-key")}\n`).join("");
  const { gw, config } = await gateway({
    "llmux.ini": SERVER + "[model m]\ntier = 3\n" + tenants(["kept", "gone"]),
    "providers/a.ini": provider("a", a),
  });
  const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] });
  const heads = {};
  for (const t of ["kept", "gone"]) {
    const c = await RawClient.connect(gw.port);
    c.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n` +
            `Authorization: Bearer ${t}-key\r\nContent-Length: ${body.length}\r\n` +
            "Expect: 100-continue\r\n\r\n");
    assert.equal((await c.response()).status, 100, "the head passed the key check");
    heads[t] = c;
  }
  fs.writeFileSync(config, SERVER + "[model m]\ntier = 3\n" + tenants(["kept"]));
  assert.equal((await reload(gw)).status, 200);
  for (const [t, want] of [["kept", 200], ["gone", 401]]) {
    heads[t].write(body);
    const r = await heads[t].response();
    assert.equal(r.status, want, `${t}: ${r.body}`);
    heads[t].destroy();
  }
});

test("with admin_key_sha256 the admin endpoints need that key; tenant keys do not open them", async () => {
  const a = await mock("a");
  const adminKey = "admin-key-for-reload-test";
  const tenantKey = "tenant-key-for-admin-test";
  const h = (k) => crypto.createHash("sha256").update(k).digest("hex");
  const { gw } = await gateway({
    "llmux.ini": SERVER + `admin_key_sha256 = ${h(adminKey)}\n[model m]\ntier = 3\n` +
      `[tenant acme]\nkey_sha256 = ${h(tenantKey)}\n`,
    "providers/a.ini": provider("a", a),
  });
  const get = (headers) => httpRequest(gw.url + "/admin/config", { headers });
  let r = await get({});
  assert.equal(r.status, 401);
  assert.equal(JSON.parse(r.body).error.code, "invalid_admin_key");
  assert.equal(r.headers["www-authenticate"], "Bearer");
  assert.equal((await get({ authorization: "Bearer wrong" })).status, 401);
  assert.equal((await get({ authorization: `Bearer ${tenantKey}` })).status, 401);
  assert.equal((await get({ "x-api-key": adminKey })).status, 401, "a Bearer key only");
  r = await get({ authorization: `Bearer ${adminKey}` });
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).generation, 1);
  assert.equal((await reload(gw, {})).status, 401);
  const rl = await reload(gw, { authorization: `Bearer ${adminKey}` });
  assert.equal(rl.status, 200);
  assert.equal(rl.body.generation, 2);
  // The tenant key still works where it belongs, and the admin key does not.
  assert.equal((await chat(gw, "m", { headers: { authorization: `Bearer ${tenantKey}` } })).status, 200);
  assert.equal((await chat(gw, "m", { headers: { authorization: `Bearer ${adminKey}` } })).status, 401);
  // Wrong methods and paths, once authorised.
  const auth = { authorization: `Bearer ${adminKey}` };
  assert.equal((await httpRequest(gw.url + "/admin/reload", { headers: auth })).status, 405);
  assert.equal((await httpRequest(gw.url + "/admin/nope", { headers: auth })).status, 404);
});

test("without an admin key, a loopback client may use the admin endpoints", async () => {
  const a = await mock("a");
  const { gw } = await gateway({
    "llmux.ini": SERVER + "[model m]\ntier = 3\n",
    "providers/a.ini": provider("a", a),
  });
  assert.equal((await adminConfig(gw)).generation, 1);
  assert.equal((await reload(gw)).status, 200);
});

// The bench's stream load and plain requests run while the configuration
// changes ten times (two valid configurations in turn, by SIGHUP and by
// the admin endpoint): every request must succeed.
test("ten reloads under streaming and plain load fail no request", async () => {
  const STREAMLOAD = path.join(BUILD_DIR, "bench", "streamload");
  if (!fs.existsSync(STREAMLOAD)) assert.fail(`${STREAMLOAD} is not built`);
  const a = await mock("a", ["--tokens", "20", "--no-record"]);
  const b = await mock("b", ["--tokens", "20", "--no-record"]);
  const slow = "header.x-mock-token-delay-ms = 5\n";
  const configs = [
    { "providers/a.ini": provider("a", a, { priority: 1, extra: slow }),
      "providers/b.ini": provider("b", b, { priority: 2, extra: slow }) },
    { "providers/a.ini": provider("a", a, { priority: 2, extra: slow }) + "[route a k]\nid = a-k\n",
      "providers/b.ini": provider("b", b, { priority: 1, extra: slow }) },
  ];
  const { gw, dir } = await gateway({ "llmux.ini": SERVER + "[model m]\ntier = 3\n[model k]\ntier = 2\n",
                                      ...configs[0] });
  const load = spawn(STREAMLOAD, ["--url", `${gw.url}/v1/chat/completions`, "--model", "m",
                                  "-c", "8", "-n", "240", "--timeout-ms", "60000"],
                     { stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "";
  load.stdout.on("data", (d) => { out += d; });
  load.stderr.on("data", (d) => { err += d; });
  const loaded = new Promise((res) => load.on("exit", (code) => res(code)));

  let plainDone = false, plainOk = 0;
  const plainFailures = [];
  const plain = (async () => {
    while (!plainDone) {
      const r = await chat(gw, "m");
      if (r.status === 200) plainOk++;
      else plainFailures.push(`${r.status} ${r.body}`);
    }
  })();

  let generation = 1;
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 100));
    for (const [name, text] of Object.entries(configs[(i + 1) % 2]))
      fs.writeFileSync(path.join(dir, name), text);
    if (i % 2 === 0) {
      generation = (await sighup(gw, generation)).generation;
    } else {
      const r = await reload(gw);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      generation = r.body.generation;
    }
  }
  assert.equal(generation, 11);
  const code = await loaded;
  plainDone = true;
  await plain;
  assert.equal(code, 0, err);
  const res = JSON.parse(out);
  assert.equal(res.failed, 0, out);
  assert.equal(res.ok, 240, out);
  assert.deepEqual(plainFailures, []);
  assert.ok(plainOk > 0);
  assert.equal(await gw.stop(), 0, gw.stderr());
});
