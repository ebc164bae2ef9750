// The plugin SDK as a third party sees it: install the headers and the
// pkg-config file into a fresh prefix, copy examples/plugin/ out of the
// source tree, build it with its own CMakeLists.txt finding the SDK through
// PKG_CONFIG_PATH alone, and load the result into llmux: `check`, a
// streamed `chat`, a plain request from the openai client, and `models`
// listing the provider's own models.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { BUILD_DIR, SOURCE_DIR, runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { expectedContent, startMock } from "./lib/mock.mjs";

let work, prefix, pluginDir, mock, cfg, deadPort;

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Runs a build tool; its output is shown only when it fails.
function run(cmd, args, env = {}) {
  try {
    return execFileSync(cmd, args, {
      encoding: "utf8", env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"],
      timeout: 120000,
    });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${e.stdout}\n${e.stderr}`);
  }
}

before(async () => {
  work = mkdtempSync(path.join(tmpdir(), "llmux-sdk-"));
  prefix = path.join(work, "prefix");
  deadPort = await freePort();
  mock = await startMock({ args: ["--name", "shout", "--tokens", "5"] });
});

after(async () => {
  await mock.stop();
  rmSync(work, { recursive: true, force: true });
});

test("cmake --install puts the headers and llmux-plugin.pc under the prefix", () => {
  run("cmake", ["--install", BUILD_DIR, "--prefix", prefix, "--component", "sdk"]);
  for (const f of ["include/llmux/common.h", "include/llmux/provider.h",
                   "lib/pkgconfig/llmux-plugin.pc"])
    assert.ok(existsSync(path.join(prefix, f)), f);
  const pc = readFileSync(path.join(prefix, "lib/pkgconfig/llmux-plugin.pc"), "utf8");
  assert.match(pc, /^Cflags: -I\$\{includedir\}$/m);
  assert.match(pc, /^Libs:\s*$/m, "plugins never link the gateway");
  const header = readFileSync(path.join(SOURCE_DIR, "include/llmux/provider.h"), "utf8");
  const minor = /LLMUX_PROVIDER_ABI_MINOR (\d+)/.exec(header)[1];
  assert.match(pc, new RegExp(`^abi_minor=${minor}$`, "m"));
  const env = { PKG_CONFIG_PATH: path.join(prefix, "lib/pkgconfig") };
  const cflags = run("pkg-config", ["--cflags", "llmux-plugin"], env).trim();
  assert.equal(path.resolve(cflags.replace(/^-I/, "")), path.join(prefix, "include"),
               "the .pc finds its prefix wherever it was installed");
});

test("the example plugin builds out of tree against the installed SDK only", () => {
  const src = path.join(work, "uppercase-src");
  cpSync(path.join(SOURCE_DIR, "examples/plugin"), src, { recursive: true });
  const cmake = readFileSync(path.join(src, "CMakeLists.txt"), "utf8");
  assert.match(cmake, /pkg_check_modules\(LLMUX REQUIRED IMPORTED_TARGET llmux-plugin\)/);
  assert.doesNotMatch(cmake, /\.\.\/|SOURCE_DIR|llmux_app|include\/llmux/,
                      "nothing from the llmux tree");
  pluginDir = path.join(src, "build");
  const env = { PKG_CONFIG_PATH: path.join(prefix, "lib/pkgconfig") };
  run("cmake", ["-S", src, "-B", pluginDir, "-DCMAKE_BUILD_TYPE=Release"], env);
  run("cmake", ["--build", pluginDir], env);
  assert.ok(existsSync(path.join(pluginDir, "uppercase.so")));
  const syms = run("nm", ["-D", "--defined-only", path.join(pluginDir, "uppercase.so")]);
  assert.deepEqual(syms.split("\n").filter((l) => / T /.test(l)).map((l) => l.split(" ").at(-1)),
                   ["llmux_provider_init"], "only the entry point is exported");
  assert.doesNotMatch(run("ldd", [path.join(pluginDir, "uppercase.so")]), /llmux/);
});

function useConfig() {
  cfg = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\n\n[model shout-model]\ntier = 2\n\n" +
      "[model gone-model]\ntier = 2\n",
    "providers/upper.ini":
      `[provider upper]\nplugin = uppercase\nbase_url = ${mock.baseURL}\nchat_path = /chat/completions\n\n` +
      "[route upper shout-model]\nid = shout-id\n",
    "providers/gone.ini":
      `[provider gone]\nplugin = uppercase\nbase_url = http://127.0.0.1:${deadPort}/v1\n\n` +
      "[route gone gone-model]\nid = gone-id\n",
  });
  return { LLMUX_PLUGIN_DIR: pluginDir };
}

test("llmux check loads the example from LLMUX_PLUGIN_DIR and validates its keys", () => {
  const env = useConfig();
  const r = runLlmux(["check", "-c", cfg], env);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /upper\s+plugin uppercase/);
  const bad = writeConfig({
    "llmux.ini": "[server]\n[model m]\ntier = 1\n",
    "providers/x.ini": `[provider x]\nplugin = uppercase\nbase_url = ${mock.baseURL}\n` +
      "chat_pth = /x\n\n[route x m]\n",
  });
  const b = runLlmux(["check", "-c", bad], env);
  assert.equal(b.status, 1);
  assert.match(b.stderr, /x\.ini:4: unknown key 'chat_pth' .*plugin 'uppercase' declares: chat_path/);
});

test("llmux chat streams through the example plugin", () => {
  const env = useConfig();
  const r = runLlmux(["chat", "-c", cfg, "-m", "shout-model", "hello"], env);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, expectedContent("shout", 5).toUpperCase() + "\n");
});

test("the openai client gets a plain answer through the example plugin", async () => {
  const env = useConfig();
  const gw = await startGateway(cfg, env);
  try {
    const client = new OpenAI({ baseURL: gw.url + "/v1", apiKey: "x", maxRetries: 0 });
    const r = await client.chat.completions.create({
      model: "shout-model", messages: [{ role: "user", content: "hi" }],
    });
    assert.equal(r.choices[0].message.content, expectedContent("shout", 5).toUpperCase());
    assert.equal(r.model, "shout-id");
  } finally {
    assert.equal(await gw.stop(), 0);
  }
});

test("llmux models lists the provider's own models, or why it could not", () => {
  const env = useConfig();
  const r = runLlmux(["models", "-c", cfg], env);
  assert.equal(r.status, 0, r.stderr);
  const line = /^ {2}models at upper: (.+)$/m.exec(r.stdout);
  assert.ok(line, r.stdout);
  assert.ok(line[1].split(", ").length >= 2, line[1]);
  assert.match(r.stdout,
    new RegExp(`^ {2}gone unreachable: nothing answers at http://127\\.0\\.0\\.1:${deadPort}/v1 .*is the server running\\?$`, "m"));
});
