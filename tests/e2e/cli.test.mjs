// The command line: check, models, resolve, help, and configuration
// mistakes reported as file:line.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { BUILD_DIR, SOURCE_DIR, runLlmux, writeConfig } from "./lib/gateway.mjs";

const shipped = path.join(SOURCE_DIR, "config/llmux.ini");

const MODEL = `[model llama-3.3-70b]
tier = 3
aliases = llama-3.3-70b-versatile, meta-llama/llama-3.3-70b
`;
const PROVIDER = `[provider p1]
plugin = openai
base_url = http://127.0.0.1:9/v1

[route p1 llama-3.3-70b]
id = llama-3.3-70b-versatile
`;

function check(main, provider = PROVIDER, env = {}) {
  const cfg = writeConfig({ "llmux.ini": main, "providers/p1.ini": provider });
  return { cfg, dir: path.dirname(cfg), ...runLlmux(["check", "-c", cfg], env) };
}

test("check accepts the shipped configuration with no API keys set", () => {
  const r = runLlmux(["check", "-c", shipped]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^OK: /m);
  assert.match(r.stderr, /GROQ_API_KEY/, "disabled providers are warned about");
  assert.doesNotMatch(r.stderr, /error/i);
});

test("check prints the routing table", () => {
  const r = runLlmux(["check", "-c", shipped]);
  assert.match(r.stdout, /llama-3\.3-70b-versatile/);
  assert.match(r.stdout, /best-large/);
});

test("models lists models, aliases, generics, profiles and agents", () => {
  const r = runLlmux(["models", "-c", shipped]);
  assert.equal(r.status, 0, r.stderr);
  for (const name of ["llama-3.1-405b", "meta-llama/llama-3.3-70b", "best-xl", "powerful", "code-review"])
    assert.ok(r.stdout.includes(name), name);
});

test("resolve follows a user alias to its routes in priority order", () => {
  const r = runLlmux(["resolve", "gpt-4", "-c", shipped]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /gpt-4 \(user_alias\) -> llama-3\.3-70b \(canonical\)/);
  const groq = r.stdout.indexOf("groq");
  assert.ok(groq > 0, "groq serves it");
});

test("resolve of an unknown name exits 1 and suggests close names", () => {
  const r = runLlmux(["resolve", "best-larg", "-c", shipped]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /unknown model 'best-larg'.*best-large/);
});

test("--help explains the commands; an unknown command exits 2", () => {
  const h = runLlmux(["--help"]);
  assert.equal(h.status, 0);
  for (const w of ["serve", "check", "models", "resolve", "--config", "LLMUX_LISTEN"])
    assert.ok(h.stdout.includes(w), w);
  assert.equal(runLlmux(["frobnicate"]).status, 2);
});

test("a malformed line is reported with file and line", () => {
  const r = check(`[server]\nlisten = 127.0.0.1:0\nthis line is wrong\n${MODEL}`);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:3: /);
});

test("an unknown key is reported with file and line", () => {
  const r = check(`${MODEL}tierr = 2\n`);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:4: .*tierr/);
});

test("a duplicate alias names both definitions", () => {
  const r = check(`${MODEL}\n[model llama-3.1-8b]\ntier = 1\naliases = meta-llama/llama-3.3-70b\n`);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:7: .*meta-llama\/llama-3\.3-70b.*llmux\.ini:3/);
});

test("an alias cycle is an error", () => {
  const r = check(`${MODEL}\n[alias]\na = b\nb = a\n`);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:\d+: .*cycle/);
});

test("a profile naming an unknown model is an error at its line", () => {
  const r = check(`${MODEL}\n[profile fast]\nmodels = llama-3.3-70b, no-such-model\n`);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:6: .*no-such-model/);
});

test("a literal API key in a file is refused", () => {
  const r = check(MODEL, PROVIDER.replace("plugin = openai", "plugin = openai\napi_key = sk-live-123"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /p1\.ini:3: .*api_key_env/);
  assert.doesNotMatch(r.stderr + r.stdout, /sk-live-123/, "the key is never echoed");
});

test("a provider without base_url is an error for a plugin that needs the network", () => {
  const r = check(MODEL, PROVIDER.replace(/base_url = .*\n/, ""));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /p1\.ini:1: .*no base_url/);
});

test("a provider with an unknown plugin is reported with the file it looked for", () => {
  const r = check(MODEL, PROVIDER.replace("plugin = openai", "plugin = nosuch"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /p1\.ini:1: .*nosuch.*nosuch\.so/);
});

test("a plugin's own keys are validated from its declaration", () => {
  let r = check(MODEL, PROVIDER.replace("plugin = openai", "plugin = openai\nauth_header = api-key"));
  assert.equal(r.status, 0, r.stderr);
  r = check(MODEL, PROVIDER.replace("plugin = openai", "plugin = openai\nauth_headr = api-key"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /p1\.ini:3: .*auth_headr.*auth_header/);
});

const testPlugins = path.join(BUILD_DIR, "tests/plugins");
for (const [plugin, reason] of [
  ["bad_abi", /bad_abi\.so: plugin built for ABI 99/],
  ["no_symbol", /no_symbol\.so: not an llmux plugin: no symbol llmux_provider_init/],
  ["init_fails", /init_fails\.so: llmux_provider_init\(\) failed/],
]) {
  test(`a plugin that cannot load (${plugin}) is reported with file and reason`, () => {
    const r = check(MODEL, PROVIDER.replace("plugin = openai", `plugin = ${plugin}`),
                    { LLMUX_PLUGIN_DIR: testPlugins });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /p1\.ini:1: /);
    assert.match(r.stderr, reason);
  });
}

test("serve refuses to start on a broken configuration, with file:line", () => {
  const cfg = writeConfig({ "llmux.ini": `${MODEL}tier = 9\n` });
  const r = runLlmux(["serve", "-c", cfg], { LLMUX_LISTEN: "127.0.0.1:0" });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:4: /);
});

// libuv's error numbers overlap llmux's (UV_ENOENT is LLMUX_ENOMEM): the front
// door translates them, so a taken port reads as such, never "out of memory".
test("serve on a port already taken says the address is in use and exits 1", async () => {
  const taken = net.createServer();
  await new Promise((resolve) => taken.listen(0, "127.0.0.1", resolve));
  const port = taken.address().port;
  const cfg = writeConfig({ "llmux.ini": `[server]\nlisten = 127.0.0.1:0\n\n${MODEL}` });
  try {
    const r = runLlmux(["serve", "-c", cfg], { LLMUX_LISTEN: `127.0.0.1:${port}` });
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`));
    assert.doesNotMatch(r.stderr, /out of memory/);
  } finally {
    taken.close();
  }
});

// Issue 16: the global options go before or after the command.
test("options before the command: `llmux -c FILE check` checks, it does not serve", () => {
  const r = runLlmux(["-c", shipped, "check"], { LLMUX_LISTEN: "127.0.0.1:0" });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^OK: /m);
  const v = runLlmux(["--config", shipped, "-v", "resolve", "gpt-4"]);
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /gpt-4 \(user_alias\)/);
});

test("options after the command's words: `llmux key new acme -c FILE` prints a key", () => {
  for (const args of [["key", "new", "acme", "-c", shipped], ["-c", shipped, "key", "new", "acme"]]) {
    const r = runLlmux(args);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\[tenant acme\]\nkey_sha256 = [0-9a-f]{64}/);
  }
  assert.equal(runLlmux(["key", "new", "-c", shipped]).status, 2, "the tenant is still required");
});

test("check reports five different mistakes in one run, each with file:line", () => {
  const cfg = writeConfig({
    "llmux.ini": "[model llama-3.3-70b]\ntier = 9\ntierr = 2\n",
    "providers/p1.ini": `${PROVIDER.replace("plugin = openai",
                                            "plugin = openai\nauth_headr = api-key\npriorty = 2")}`,
    "providers/p2.ini": "[provider p2]\nplugin = openaj\nbase_url = http://127.0.0.1:9/v1\n",
  });
  const r = runLlmux(["check", "-c", cfg]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /llmux\.ini:2: .*'tier'/, "a bad value");
  assert.match(r.stderr, /llmux\.ini:3: .*'tierr'.*did you mean 'tier'/, "an unknown core key");
  assert.match(r.stderr, /p1\.ini:3: .*'auth_headr'.*did you mean 'auth_header'/,
               "a plugin key, checked although the core has errors");
  assert.match(r.stderr, /p1\.ini:4: .*'priorty'.*did you mean 'priority'.*provider key: plugin, base_url/,
               "a misspelt provider key, with the host's keys listed");
  assert.match(r.stderr, /p2\.ini:1: .*unknown plugin 'openaj'.*did you mean 'openai'.*plugins found: .*openai/,
               "an unknown plugin, with the plugins found");
  assert.match(r.stderr, /6 errors in the configuration/);
});

test("resolve of a generic lists the models it expands to, even those no provider serves", () => {
  const cfg = writeConfig({
    "llmux.ini": `${MODEL}\n[model unserved-8b]\ntier = 1\n\n[generic best-small]\ntier = 1\n`,
    "providers/p1.ini": PROVIDER,
  });
  const r = runLlmux(["resolve", "best-small", "-c", cfg]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /best-small \(generic\)\nmodels, in order:\n +1\. unserved-8b +tier 1 +no route/);
  assert.match(r.stdout, /\(none: no provider serves it\)/);
  const big = runLlmux(["resolve", "best-large", "-c", shipped]);
  assert.match(big.stdout, /models, in order:\n +1\. \S+ +tier \d +\d+ routes?\n/);
});

test("models --markdown writes the catalog as Markdown tables, from the config alone", () => {
  const cfg = writeConfig({
    "llmux.ini": `${MODEL}family = llama\ncontext_window = 131072\n\n[model unserved-8b]\ntier = 1\n\n` +
                 "[generic best-large]\ntier = 3\n",
    "providers/p1.ini": PROVIDER,
  });
  const r = runLlmux(["models", "--markdown", "-c", cfg]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^# Models\n/);
  assert.match(r.stdout, /\| Model \| Tier \| Family \| Aliases \| Capabilities \| Context \| Price \| Providers \|\n\|---/);
  assert.match(r.stdout, /\| `llama-3\.3-70b` \| 3 \| llama \| `llama-3\.3-70b-versatile`, `meta-llama\/llama-3\.3-70b` \|.*\| 131072 \|.*\| p1 \(`llama-3\.3-70b-versatile`\) \|\n/);
  assert.match(r.stdout, /\| `unserved-8b` \| 1 \|.*\| none yet \|\n/);
  assert.match(r.stdout, /## Generic names[\s\S]*\| `best-large` \| 3 \| `llama-3\.3-70b` \|/);
});

test("docs/models.md is the output of `llmux models --markdown` on the shipped config", async () => {
  const { readFileSync } = await import("node:fs");
  const doc = readFileSync(path.join(SOURCE_DIR, "docs/models.md"), "utf8");
  assert.match(doc, /^# Models\n\nGenerated from `config\/llmux\.ini` by `llmux models --markdown`/);
});

test("the shipped catalog has the models seeds 000 and 001 name, on the providers they name", () => {
  for (const [name, route] of [
    ["openai/gpt-4", /openrouter +openai\/gpt-4 /], ["openai/gpt-4-turbo", /openrouter +openai\/gpt-4-turbo /],
    ["openai/gpt-3.5-turbo", /openrouter +openai\/gpt-3\.5-turbo /],
    ["anthropic/claude-3-opus", /openrouter +anthropic\/claude-3-opus /],
    ["anthropic/claude-3-sonnet", /openrouter +anthropic\/claude-3-sonnet /],
    ["anthropic/claude-3-haiku", /openrouter +anthropic\/claude-3-haiku /],
    ["mistralai/mistral-large", /openrouter +mistralai\/mistral-large /],
    ["google/gemini-pro", /openrouter +google\/gemini-pro /],
    ["meta-llama/llama-3.1-405b", /openrouter +meta-llama\/llama-3\.1-405b-instruct /],
    ["llama3.1", /ollama +llama3\.1 /], ["llama3.2", /ollama +llama3\.2 /],
    ["codellama", /ollama +codellama /], ["mistral", /ollama +mistral /],
    ["phi3", /ollama +phi3 /], ["qwen2.5", /ollama +qwen2\.5 /],
    ["mixtral-8x7b", /groq +mixtral-8x7b-32768 /],
  ]) {
    const r = runLlmux(["resolve", name, "-c", shipped]);
    assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    assert.match(r.stdout, route, name);
  }
  const c = runLlmux(["check", "-c", shipped]);
  assert.match(c.stdout, /-> groq llama-3\.3-70b-versatile .* rpd=6000 tpm=6000/, "balanced on Groq: 6,000 a day");
});

test("a bad -l is blamed on --listen, where it came from, not on LLMUX_LISTEN", () => {
  for (const args of [["check", "-l", "nonsense", "-c", shipped], ["--listen", "1.2.3.4:99999", "check", "-c", shipped]]) {
    const r = runLlmux(args);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^llmux: --listen: bad listen address '[^']+' \(expected host:port/);
    assert.doesNotMatch(r.stderr, /LLMUX_LISTEN/);
  }
  const env = runLlmux(["check", "-c", shipped], { LLMUX_LISTEN: "nonsense" });
  assert.match(env.stderr, /LLMUX_LISTEN: bad listen address 'nonsense'/, "the variable is still blamed for its own");
});

test("after errors in the files a provider's plugin keys are checked, without knock-on errors", () => {
  const r = check(MODEL, PROVIDER.replace(/base_url = .*/, "base_url = ftp://x"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /p1\.ini:3: bad value for 'base_url'/);
  assert.doesNotMatch(r.stderr, /no base_url/, "the missing value is not reported a second time");
  assert.match(r.stderr, /1 error in the configuration/);
});
