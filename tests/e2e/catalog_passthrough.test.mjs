// Models that are not in the catalog (issue 16): `passthrough = true` on a
// provider sends PROVIDER/ANY-ID to it as is, under the provider's default
// limits and with no capability filter; a disabled provider gives the usual
// no-provider answer, a provider without passthrough and a typo the 404.
// Also display_name in /v1/models and the route limits in /v1/models/{id},
// and bare ids found in the providers' own model lists (Ollama's /api/tags,
// OpenAI's /models), read at start and on reload.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { startMock } from "./lib/mock.mjs";

let mock, gw;

function config() {
  const prov = (name, extra) =>
    `[provider ${name}]\nplugin = openai\nbase_url = ${mock.baseURL}\ntimeout = 2s\n${extra}\n`;
  return {
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n\n" +
      "[model m]\ntier = 3\ndisplay_name = Model M\ncapabilities = tools\n\n" +
      "[model plain-m]\ntier = 2\n",
    "providers/or.ini": prov("or", "passthrough = true\nrequests_per_minute = 7\n") +
      "[route or m]\nid = or-m\n",
    "providers/plain.ini": prov("plain", "") + "[route plain plain-m]\nid = p-m\n",
    "providers/nokey.ini": prov("nokey", "api_key_env = LLMUX_TEST_NO_SUCH_KEY\npassthrough = true\n"),
    "providers/tight.ini": prov("tight", "passthrough = true\nrequests_per_minute = 1\n"),
  };
}

before(async () => {
  mock = await startMock({ args: ["--name", "or", "--tokens", "3"] });
  gw = await startGateway(writeConfig(config()));
});

after(async () => {
  assert.equal(await gw.stop(), 0, "llmux shuts down cleanly");
  await mock.stop();
});

function post(path, body) {
  return fetch(gw.url + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

const chat = (model) => post("/v1/chat/completions", { model, messages: [{ role: "user", content: "hi" }] });

async function lastUpstreamModel() {
  const log = await mock.requests();
  return JSON.parse(log[log.length - 1].body).model;
}

test("display_name is shown in /v1/models, route limits in /v1/models/{id}", async () => {
  const list = await (await fetch(gw.url + "/v1/models")).json();
  const m = list.data.find((x) => x.id === "m");
  assert.equal(m.llmux.display_name, "Model M");
  assert.equal(list.data.find((x) => x.id === "plain-m").llmux.display_name, undefined);
  const one = await (await fetch(gw.url + "/v1/models/m")).json();
  assert.equal(one.llmux.display_name, "Model M");
  assert.deepEqual(one.llmux.routes[0].limits, { requests_per_minute: 7 });
  /* Passthrough routes are not catalog entries: they are not listed. */
  assert.ok(!list.data.some((x) => x.id.startsWith("or/")));
});

test("PROVIDER/ANY-ID is sent to a passthrough provider as ANY-ID", async () => {
  const r = await chat("or/anthropic/claude-3-opus");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-llmux-provider"), "or");
  assert.equal(r.headers.get("x-llmux-model"), "or/anthropic/claude-3-opus");
  assert.equal(r.headers.get("x-llmux-passthrough"), "true");
  const body = await r.json();
  assert.equal(body.choices[0].message.content, "or tok1 tok2");
  assert.equal(await lastUpstreamModel(), "anthropic/claude-3-opus");
});

test("a catalog model is not marked as passed through", async () => {
  const r = await chat("m");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-llmux-model"), "m");
  assert.equal(r.headers.get("x-llmux-passthrough"), null);
  assert.equal(await lastUpstreamModel(), "or-m");
});

test("a passthrough model has no capability filter: embeddings go too", async () => {
  const r = await post("/v1/embeddings", { model: "or/text-embedding-3-small", input: "hi" });
  assert.equal(r.status, 200, await r.clone().text());
  assert.equal(await lastUpstreamModel(), "text-embedding-3-small");
});

test("/v1/models/PROVIDER/ANY-ID describes the passthrough route", async () => {
  const r = await fetch(gw.url + "/v1/models/or%2Fgoogle%2Fgemini-pro");
  assert.equal(r.status, 200);
  const one = await r.json();
  assert.equal(one.llmux.kind, "passthrough");
  assert.equal(one.llmux.routes[0].provider_model, "google/gemini-pro");
  assert.deepEqual(one.llmux.routes[0].limits, { requests_per_minute: 7 });
});

test("without passthrough on the provider, or with a typo, the 404 stays", async () => {
  let r = await chat("plain/whatever");
  assert.equal(r.status, 404);
  assert.equal((await r.json()).error.code, "model_not_found");
  r = await chat("n");
  assert.equal(r.status, 404);
  assert.match((await r.json()).error.message, /Did you mean 'm'\?/);
});

test("a passthrough provider without its key gives the usual no-provider answer", async () => {
  const r = await chat("nokey/some-model");
  assert.equal(r.status, 503);
  const e = (await r.json()).error;
  assert.equal(e.code, "no_provider_available");
  assert.match(e.message, /LLMUX_TEST_NO_SUCH_KEY is not set/);
});

test("metrics label passthrough models \"*\": a client's ids are no labels", async () => {
  const text = await (await fetch(gw.url + "/metrics")).text();
  assert.match(text, /gen_ai_provider_name="or",gen_ai_request_model="\*",gen_ai_response_model="\*"/);
  assert.ok(!text.includes("claude-3-opus"), "no passthrough id in /metrics");
});

test("every passthrough model of a provider shares its default limits", async () => {
  assert.equal((await chat("tight/model-a")).status, 200);
  const r = await chat("tight/model-b");
  assert.equal(r.status, 429, "requests_per_minute = 1 covers all its passthrough models");
});

// ---- model lists -------------------------------------------------------------

function listsConfig(latePassthrough) {
  return {
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n\n[model local]\ntier = 1\n",
    "providers/ollama.ini": `[provider ollama]\nplugin = ollama\nbase_url = ${mock.url}\n` +
      "passthrough = true\npriority = 50\n\n[route ollama local]\nid = llama3.1\n",
    "providers/or.ini": `[provider or]\nplugin = openai\nbase_url = ${mock.baseURL}\n` +
      "passthrough = true\npriority = 5\n",
    "providers/late.ini": `[provider late]\nplugin = openai\nbase_url = ${mock.baseURL}\n` +
      `priority = 1\n${latePassthrough ? "passthrough = true\n" : ""}`,
  };
}

// The lists arrive after the gateway listens: wait for a name to resolve.
async function waitForModel(url, name) {
  for (let i = 0; i < 100; i++) {
    const r = await fetch(`${url}/v1/models/${encodeURIComponent(name)}`);
    if (r.status === 200) return r.json();
    await new Promise((res) => setTimeout(res, 50));
  }
  assert.fail(`${name} never resolved`);
}

test("bare ids in a passthrough provider's model list route to it; typos stay 404", async () => {
  const cfg = writeConfig(listsConfig(false));
  const g = await startGateway(cfg);
  try {
    const post1 = (model) => fetch(g.url + "/v1/chat/completions", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
    });
    await waitForModel(g.url, "qwen2.5");
    let r = await post1("qwen2.5"); /* pulled as qwen2.5:latest */
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal(r.headers.get("x-llmux-provider"), "ollama");
    assert.equal(r.headers.get("x-llmux-model"), "ollama/qwen2.5");
    assert.equal(r.headers.get("x-llmux-passthrough"), "true");
    assert.equal(await lastUpstreamModel(), "qwen2.5");
    r = await post1("llama3.2:1b");
    assert.equal(r.status, 200);
    assert.equal(await lastUpstreamModel(), "llama3.2:1b");

    await waitForModel(g.url, "anthropic/claude-3-opus");
    r = await post1("anthropic/claude-3-opus");
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("x-llmux-provider"), "or");
    assert.equal(r.headers.get("x-llmux-model"), "or/anthropic/claude-3-opus");
    assert.equal(await lastUpstreamModel(), "anthropic/claude-3-opus");

    r = await post1("qwen2.6");
    assert.equal(r.status, 404);
    assert.equal((await r.json()).error.code, "model_not_found");
    /* late is no passthrough provider: its list is not read. */
    r = await post1("mock-large");
    assert.equal(r.status, 200, "or lists mock-large");
    assert.equal(r.headers.get("x-llmux-provider"), "or");

    /* A reload reads the lists again: late (priority 1) now serves mock-large. */
    writeFileSync(path.join(path.dirname(cfg), "providers/late.ini"), listsConfig(true)["providers/late.ini"]);
    const rl = await fetch(g.url + "/admin/reload", { method: "POST" });
    assert.equal(rl.status, 200, await rl.clone().text());
    for (let i = 0; i < 100; i++) {
      r = await post1("mock-large");
      if (r.headers.get("x-llmux-provider") === "late") break;
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(r.headers.get("x-llmux-provider"), "late");
  } finally {
    assert.equal(await g.stop(), 0, "llmux shuts down cleanly");
  }
});

test("llmux models lists a passthrough provider's models as routable", () => {
  const cfg = writeConfig(listsConfig(false));
  const r = runLlmux(["models", "-c", cfg]);
  assert.equal(r.status, 0, r.stderr);
  const line = /^ {2}models at ollama \(routable: ollama\/ID, or the bare ID\): (.+)$/m.exec(r.stdout);
  assert.ok(line, r.stdout);
  assert.ok(line[1].split(", ").includes("qwen2.5:latest"), line[1]);
  assert.match(r.stdout, /^ {2}models at late: /m);
});

test("a gateway stopped while a model list is on its way exits cleanly", async () => {
  const held = [];
  const silent = net.createServer((sock) => held.push(sock)); /* accepts, never answers */
  await new Promise((res) => silent.listen(0, "127.0.0.1", res));
  const url = `http://127.0.0.1:${silent.address().port}`;
  const cfg = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n\n[model local]\ntier = 1\n",
    "providers/ollama.ini": `[provider ollama]\nplugin = ollama\nbase_url = ${url}\n` +
      "passthrough = true\n\n[route ollama local]\nid = llama3.1\n",
  });
  const g = await startGateway(cfg);
  try {
    for (let i = 0; i < 100 && held.length === 0; i++) await new Promise((res) => setTimeout(res, 20));
    assert.equal(held.length, 1, "the list was asked for at start");
    const r = await fetch(g.url + "/v1/models/qwen2.5");
    assert.equal(r.status, 404, "no list yet: a bare id is unknown");
  } finally {
    assert.equal(await g.stop(), 0, "the fetch in flight is cancelled, nothing leaks");
    for (const s of held) s.destroy();
    silent.close();
  }
});
