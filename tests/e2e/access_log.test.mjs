// [server] access_log: one JSON object per line per request, with every
// field the issue names and never a key or a message's content; SIGUSR1
// and a reload reopen the file, so a rotated log is let go.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { httpRequest, startMock } from "./lib/mock.mjs";

const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

const FIELDS = ["time", "request_id", "tenant", "endpoint", "model", "canonical_model", "provider",
  "provider_model", "status", "error_code", "attempts", "stream", "prompt_tokens",
  "completion_tokens", "cost_usd", "ttft_ms", "duration_ms", "overhead_us", "client_ip"];
const KEY = "llmux-access-log-e2e-tenant-key";
const SECRET = "the-words-nobody-may-read-7f3a";

async function gateway(accessLog = "access.log") {
  const m = await startMock({ args: ["--name", "b", "--tokens", "3"] });
  live.push(m);
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n" +
      `access_log = ${accessLog}\n[model m]\ntier = 3\nprice_in = 1\nprice_out = 2\n` +
      "[alias]\ngpt-4 = m\n" +
      `[tenant acme]\nkey_sha256 = ${crypto.createHash("sha256").update(KEY).digest("hex")}\n`,
    "providers/b.ini": `[provider b]\nplugin = openai\nbase_url = ${m.baseURL}\n[route b m]\nid = b-id\n`,
  });
  const gw = await startGateway(config);
  live.push(gw);
  gw.dir = path.dirname(config);
  return gw;
}

function chat(gw, id, body = {}) {
  return httpRequest(gw.url + "/v1/chat/completions", {
    headers: { authorization: `Bearer ${KEY}`, "x-request-id": id },
    body: { model: "gpt-4", messages: [{ role: "user", content: SECRET }], ...body },
  });
}

// The lines of `file`, once one has request id `id` (the log is written in
// batches off the loop: it lands within a moment). Bounded.
async function linesUntil(file, id) {
  for (let i = 0; i < 100; i++) {
    const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
    const lines = text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    if (lines.some((l) => l.request_id === id)) return { text, lines };
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`no line for ${id} in ${file}`);
}

test("each request is one JSON line with every field; no key, no content", async () => {
  const gw = await gateway();
  const file = path.join(gw.dir, "access.log");
  assert.equal((await chat(gw, "rid-plain")).status, 200);
  assert.equal((await chat(gw, "rid-stream", { stream: true })).status, 200);
  assert.equal((await chat(gw, "rid-unknown", { model: "no-such-model" })).status, 404);
  assert.equal((await httpRequest(gw.url + "/health", { headers: { "x-request-id": "rid-health" } })).status, 200);
  const { text, lines } = await linesUntil(file, "rid-health");
  assert.equal(lines.length, 4);
  for (const l of lines) assert.deepEqual(Object.keys(l), FIELDS);
  assert.ok(!text.includes(KEY), "the tenant's key is never written");
  assert.ok(!text.includes(SECRET), "a message's content is never written");

  const byId = Object.fromEntries(lines.map((l) => [l.request_id, l]));
  const plain = byId["rid-plain"];
  assert.match(plain.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(plain.tenant, "acme");
  assert.equal(plain.endpoint, "chat");
  assert.equal(plain.model, "gpt-4");
  assert.equal(plain.canonical_model, "m");
  assert.equal(plain.provider, "b");
  assert.equal(plain.provider_model, "b-id");
  assert.equal(plain.status, 200);
  assert.equal(plain.error_code, null);
  assert.equal(plain.attempts.length, 1);
  assert.deepEqual(Object.keys(plain.attempts[0]), ["provider", "model", "outcome", "ms"]);
  assert.equal(plain.attempts[0].outcome, "ok");
  assert.equal(plain.stream, false);
  assert.ok(plain.prompt_tokens > 0 && plain.completion_tokens === 3);
  assert.ok(plain.cost_usd > 0);
  assert.equal(plain.ttft_ms, null);
  assert.ok(plain.duration_ms > 0 && plain.overhead_us > 0);
  assert.equal(plain.client_ip, "127.0.0.1");

  const stream = byId["rid-stream"];
  assert.equal(stream.stream, true);
  assert.ok(stream.ttft_ms > 0 && stream.ttft_ms <= stream.duration_ms);

  const unknown = byId["rid-unknown"];
  assert.equal(unknown.status, 404);
  assert.equal(unknown.error_code, "model_not_found");
  assert.equal(unknown.canonical_model, null);
  assert.deepEqual(unknown.attempts, []);

  const health = byId["rid-health"];
  assert.equal(health.endpoint, "health");
  assert.equal(health.tenant, null);
  assert.equal(health.overhead_us, null);
});

test("SIGUSR1 reopens the file: after a rename, new lines go to a new file", async () => {
  const gw = await gateway();
  const file = path.join(gw.dir, "access.log");
  await chat(gw, "rid-before");
  await linesUntil(file, "rid-before");
  fs.renameSync(file, file + ".1");
  gw.proc.kill("SIGUSR1");
  // The reopen happens on the loop after the signal: ask until a line lands.
  // (The reopen creates the new file at once, maybe empty: at least one
  // request goes after the signal, until one lands in the new file.)
  let n = 0;
  do {
    await chat(gw, `rid-after-${n++}`);
    await new Promise((r) => setTimeout(r, 50));
  } while (n < 100 && !(fs.existsSync(file) && fs.readFileSync(file, "utf8").includes("rid-after-")));
  assert.ok(fs.existsSync(file), "no new file after SIGUSR1; the gateway said:\n" + gw.stderr());
  const { lines } = await linesUntil(file, `rid-after-${n - 1}`);
  assert.ok(lines.every((l) => l.request_id.startsWith("rid-after-")));
  const old = fs.readFileSync(file + ".1", "utf8");
  assert.match(old, /"rid-before"/);
  assert.ok(!old.includes(`rid-after-${n - 1}`));
});

test("a reload reopens the file too, and follows a new path", async () => {
  const gw = await gateway();
  const file = path.join(gw.dir, "access.log");
  await chat(gw, "rid-gen1");
  await linesUntil(file, "rid-gen1");
  fs.renameSync(file, file + ".1");
  let r = await httpRequest(gw.url + "/admin/reload", { method: "POST" });
  assert.equal(r.status, 200, r.body);
  await chat(gw, "rid-gen2");
  const { lines } = await linesUntil(file, "rid-gen2");
  assert.ok(!lines.some((l) => l.request_id === "rid-gen1"));
  // Another path: the old file is closed, the new one takes the lines.
  const main = path.join(gw.dir, "llmux.ini");
  fs.writeFileSync(main, fs.readFileSync(main, "utf8").replace("access_log = access.log",
                                                               "access_log = other.log"));
  r = await httpRequest(gw.url + "/admin/reload", { method: "POST" });
  assert.equal(r.status, 200, r.body);
  await chat(gw, "rid-gen3");
  await linesUntil(path.join(gw.dir, "other.log"), "rid-gen3");
  assert.ok(!fs.readFileSync(file, "utf8").includes("rid-gen3"));
});
