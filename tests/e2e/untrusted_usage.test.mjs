// Usage numbers from a provider are untrusted: an answer whose
// prompt_tokens does not fit in 64 bits still reaches the client (byte for
// byte), the gateway logs it once, and the tenant's usage row counts the
// gateway's own estimate instead of a corrupted number. The gateway does
// not rely on plugins for that: a plugin that reports absurd usage (built
// here from a few lines of C) cannot corrupt the row either.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { SOURCE_DIR, runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { parseSSE, startMock } from "./lib/mock.mjs";

const live = [];
let gw, key, hash;
const BAD_USAGE_LOG = /not a count of 0 to 1000000000 tokens/g;

// A third-party plugin with a bug: answers locally (ABI 1.2, no base_url)
// and reports 2^62 prompt tokens and -5 completion tokens.
const LIAR_C = `
#include <stdint.h>
#include "llmux/provider.h"
static const llmux_host_api_t *host;
static int instance;
static int create(const llmux_provider_config_t *c, void **i, char *e, size_t n) {
  (void)c; (void)e; (void)n; *i = &instance; return 0;
}
static int translate(void *i, llmux_txn_t *t) { (void)i; (void)t; return LLMUX_EINVAL; }
static int parse(void *i, llmux_txn_t *t, const char *d, size_t n, int eof) {
  (void)i; (void)t; (void)d; (void)n; (void)eof; return LLMUX_EUPSTREAM;
}
static int classify(void *i, llmux_txn_t *t, const char *b, size_t n, llmux_error_info_t *o) {
  (void)i; (void)t; (void)b; (void)n; (void)o; return 0;
}
static int respond(void *i, llmux_txn_t *t) {
  static const char body[] = "{\\"id\\":\\"liar\\",\\"object\\":\\"chat.completion\\",\\"choices\\":[]}";
  (void)i;
  t->usage.prompt_tokens = INT64_C(1) << 62;
  t->usage.completion_tokens = -5;
  return host->emit(t, body, sizeof body - 1);
}
static const llmux_provider_t vt = {
  .abi_major = LLMUX_PROVIDER_ABI_MAJOR, .abi_minor = LLMUX_PROVIDER_ABI_MINOR,
  .size = sizeof(llmux_provider_t), .name = "liar", .description = "reports absurd usage",
  .create = create, .translate_request = translate, .parse_response = parse,
  .classify_error = classify, .respond_local = respond,
};
LLMUX_PROVIDER_ENTRY(host, vt)
`;

before(async () => {
  const mk = await startMock({ args: ["--name", "mk", "--tokens", "3", "--fault", "huge-usage"] });
  live.push(mk);
  const r = runLlmux(["key", "new", "acme"]);
  assert.equal(r.status, 0, r.stderr);
  key = r.stdout.split("\n")[0];
  hash = /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1];
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n[model m]\ntier = 3\n" +
      `[tenant acme]\nkey_sha256 = ${hash}\n`,
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
      "[route mk m]\nid = mk-id\n",
  });
  gw = await startGateway(config);
  live.push(gw);
});

after(async () => {
  for (const x of live.reverse()) await x.stop();
});

function chat(body, g = gw) {
  return fetch(g.url + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], ...body }),
  });
}

async function today(g = gw) {
  const r = await fetch(g.url + "/v1/usage", { headers: { authorization: `Bearer ${key}` } });
  assert.equal(r.status, 200);
  return (await r.json()).today;
}

test("a plain answer with a 23-digit prompt_tokens is served and counted by estimate", async () => {
  const before = await today();
  const r = await chat({});
  assert.equal(r.status, 200);
  const text = await r.text();
  assert.match(text, /"prompt_tokens":99999999999999999999999/); // passed through untouched
  const after = await today();
  assert.equal(after.requests, before.requests + 1);
  assert.equal(after.output_tokens - before.output_tokens, 3);
  const input = after.input_tokens - before.input_tokens;
  assert.ok(input > 0 && input < 1000, `input tokens counted: ${input}`);
  assert.equal(gw.stderr().match(BAD_USAGE_LOG)?.length, 1, gw.stderr());
});

test("a stream whose usage chunk has a 23-digit prompt_tokens ends normally", async () => {
  const before = await today();
  const r = await chat({ stream: true, stream_options: { include_usage: true } });
  assert.equal(r.status, 200);
  const events = parseSSE(await r.text());
  assert.equal(events.at(-1).data, "[DONE]");
  const after = await today();
  assert.equal(after.output_tokens - before.output_tokens, 3);
  const input = after.input_tokens - before.input_tokens;
  assert.ok(input > 0 && input < 1000, `input tokens counted: ${input}`);
  assert.equal(gw.stderr().match(BAD_USAGE_LOG)?.length, 2, gw.stderr());
});

test("usage a plugin reports beyond 10^9 tokens is not believed by the gateway", async () => {
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n[model m]\ntier = 3\n" +
      `[tenant acme]\nkey_sha256 = ${hash}\n`,
    "providers/liar.ini": "[provider liar]\nplugin = liar\n[route liar m]\nid = liar-m\n",
    "plugins/liar.c": LIAR_C,
  });
  const dir = path.dirname(config);
  const cc = spawnSync(process.env.CC ?? "cc", ["-shared", "-fPIC", "-I",
    path.join(SOURCE_DIR, "include"), "-o", path.join(dir, "plugins", "liar.so"),
    path.join(dir, "plugins", "liar.c")], { encoding: "utf8" });
  assert.equal(cc.status, 0, cc.stderr);
  const g = await startGateway(config, { LLMUX_PLUGIN_DIR: path.join(dir, "plugins") });
  live.push(g);
  const r = await chat({}, g);
  const text = await r.text();
  assert.equal(r.status, 200, text);
  const u = await today(g);
  assert.equal(u.requests, 1);
  assert.equal(u.output_tokens, 0); // unknown: nothing counted
  assert.ok(u.input_tokens > 0 && u.input_tokens < 1000, `input tokens counted: ${u.input_tokens}`);
  const said = /reported usage of 4611686018427387904 prompt and -5 completion tokens: not believed/g;
  assert.equal(g.stderr().match(said)?.length, 1, g.stderr());
});
