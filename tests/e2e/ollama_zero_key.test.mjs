// The first hour with no API keys (issue 16): the shipped configuration,
// with Ollama's base_url pointed at the mock, answers `llmux chat hi` and
// the README's requests from the local Ollama (`fallback_local = local` on
// the default profile), and the Quick start's three-line provider file for
// an OpenAI-compatible server on localhost serves `local/MODEL` by
// passthrough, with no [model] section.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { LLMUX, SOURCE_DIR, runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, startMock } from "./lib/mock.mjs";

let ollama, lan, cfg, gw;

// config/ as shipped, Ollama moved to the mock, plus the README's file.
function shippedConfig() {
  const dir = path.join(SOURCE_DIR, "config");
  const files = { "llmux.ini": readFileSync(path.join(dir, "llmux.ini"), "utf8") };
  for (const f of readdirSync(path.join(dir, "providers"))) {
    if (!f.endsWith(".ini")) continue;
    let text = readFileSync(path.join(dir, "providers", f), "utf8");
    if (f === "ollama.ini") {
      text = text.replace(/^base_url = .*$/m, `base_url = ${ollama.url}`);
      assert.match(text, new RegExp(`base_url = ${ollama.url}`), "ollama.ini has a base_url line");
    }
    files[`providers/${f}`] = text;
  }
  files["providers/local.ini"] =
    `[provider local]\nplugin = openai\nbase_url = ${lan.baseURL}\npassthrough = true\n`;
  return writeConfig(files);
}

// `llmux chat` run asynchronously with no keys in its environment.
function chat(args) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    for (const k of Object.keys(env))
      if (/_API_KEY$/.test(k) || k.startsWith("LLMUX_")) delete env[k];
    const proc = spawn(LLMUX, ["chat", "-c", cfg, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    const timer = setTimeout(() => proc.kill("SIGKILL"), 15000);
    proc.stdout.on("data", (d) => { stdout += d; });
    proc.stderr.on("data", (d) => { stderr += d; });
    proc.on("error", reject);
    proc.on("close", (status) => { clearTimeout(timer); resolve({ status, stdout, stderr }); });
  });
}

const post = (body) => fetch(gw.url + "/v1/chat/completions", {
  method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
});
const hi = [{ role: "user", content: "hi" }];
const sseContent = (text) => text.split("\n").filter((l) => l.startsWith("data: {"))
  .map((l) => JSON.parse(l.slice(6)).choices?.[0]?.delta?.content ?? "").join("");

before(async () => {
  ollama = await startMock({ args: ["--name", "ol", "--tokens", "4"] });
  lan = await startMock({ args: ["--name", "lan", "--tokens", "3"] });
  cfg = shippedConfig();
  gw = await startGateway(cfg);
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await Promise.all([ollama.stop(), lan.stop()]);
});

test("with no keys the default profile resolves to the local Ollama", () => {
  const r = runLlmux(["resolve", "balanced", "-c", cfg]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^balanced \(profile\) -> local \(profile\)$/m);
  assert.match(r.stdout, /ollama +ministral-3:3b/);
  const keyed = runLlmux(["resolve", "balanced", "-c", cfg], { GROQ_API_KEY: "gsk_test" });
  assert.match(keyed.stdout, /^balanced \(profile\)$/m, "a key set: the profile as written");
});

test("llmux chat hi answers from the local Ollama with no keys set", async () => {
  await ollama.reset();
  const r = await chat(["hi"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, expectedContent("ol", 4) + "\n");
  const seen = (await ollama.requests()).at(-1);
  assert.equal(seen.path, "/api/chat");
  assert.equal(JSON.parse(seen.body).model, "ministral-3:3b");
});

test("the README's requests (balanced, and fast streamed) answer through the gateway", async () => {
  const r = await post({ model: "balanced", messages: hi });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-llmux-provider"), "ollama");
  assert.equal((await r.json()).choices[0].message.content, expectedContent("ol", 4));
  const s = await post({ model: "fast", messages: hi, stream: true });
  assert.equal(s.status, 200);
  assert.equal(s.headers.get("x-llmux-provider"), "ollama");
  assert.equal(sseContent(await s.text()), expectedContent("ol", 4));
});

test("a profile without fallback_local still names the key to set", async () => {
  const r = await post({ model: "llama-3.3-70b", messages: hi });
  assert.equal(r.status, 503);
  const { error } = await r.json();
  assert.equal(error.code, "no_provider_available");
  assert.match(error.message, /GROQ_API_KEY/);
});

test("the three-line provider file serves local/MODEL by passthrough", async () => {
  await lan.reset();
  const r = await post({ model: "local/qwen2.5-7b-instruct", messages: hi });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-llmux-provider"), "local");
  assert.equal(r.headers.get("x-llmux-passthrough"), "true");
  assert.equal((await r.json()).choices[0].message.content, expectedContent("lan", 3));
  const seen = (await lan.requests()).at(-1);
  assert.equal(JSON.parse(seen.body).model, "qwen2.5-7b-instruct", "the id goes as is");
  const c = await chat(["-m", "local/qwen2.5-7b-instruct", "hi"]);
  assert.equal(c.status, 0, c.stderr);
  assert.equal(c.stdout, expectedContent("lan", 3) + "\n");
});
