// `llmux serve` under valgrind's memcheck through ten reloads (five by
// SIGHUP, five by POST /admin/reload, two configurations in turn), one
// invalid reload, plain and streamed requests to an HTTP and an HTTPS
// provider (a pooled TLS connection outlives the generation that opened
// it), a stream that spans a reload, then SIGTERM: any invalid access or
// leak makes valgrind exit 99. Slow, so it runs only with LLMUX_VALGRIND=1
// (scripts/valgrind.sh sets it, on a build without sanitizers).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startGateway, writeConfig } from "./lib/gateway.mjs";
import { httpRequest, makeCerts, parseSSE, startMock } from "./lib/mock.mjs";

const enabled = process.env.LLMUX_VALGRIND === "1";
const live = [];
after(async () => {
  for (const x of live.reverse()) await x.stop();
});

const VALGRIND = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                  "--errors-for-leak-kinds=definite,indirect", "--track-origins=yes"];

function waitExit(proc, ms) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve(proc.exitCode);
    const t = setTimeout(() => proc.kill("SIGKILL"), ms);
    proc.removeAllListeners("exit");
    proc.on("exit", (code, sig) => {
      clearTimeout(t);
      resolve(code ?? sig);
    });
  });
}

test("serve under valgrind: ten reloads with requests in flight, no error, no leak",
     { skip: !enabled && "set LLMUX_VALGRIND=1 (scripts/valgrind.sh)", timeout: 120000 },
     async () => {
  const certs = makeCerts(fs.mkdtempSync(path.join(tmpdir(), "llmux-vg-certs-")));
  const plain = await startMock({ args: ["--name", "plain", "--tokens", "4"] });
  const tls = await startMock({ args: ["--name", "tls", "--tokens", "4", "--tls-cert", certs.cert,
                                       "--tls-key", certs.key], ca: certs.caPem });
  live.push(plain, tls);
  const main = (alias) => "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n" +
    "[model m]\ntier = 3\n[model s]\ntier = 3\n" + (alias ? "[alias]\ngpt-4 = m\n" : "");
  const providers = (p) =>
    `[provider plain]\nplugin = openai\nbase_url = ${plain.baseURL}\npriority = ${p}\n` +
    "[route plain m]\nid = plain-m\n[route plain s]\nid = plain-s\n" +
    `[provider tls]\nplugin = openai\nbase_url = ${tls.baseURL}\nca_file = ${certs.caCert}\n` +
    `priority = ${3 - p}\n[route tls m]\nid = tls-m\n`;
  const config = writeConfig({ "llmux.ini": main(false), "providers/p.ini": providers(1) });
  const dir = path.dirname(config);
  const gw = await startGateway(config, {}, { wrapper: VALGRIND, startTimeoutMs: 60000 });
  live.push(gw);

  const chat = (model, extra = {}) => httpRequest(gw.url + "/v1/chat/completions", {
    body: { model, messages: [{ role: "user", content: "hi" }], ...extra }, timeoutMs: 30000,
  });
  const adminReload = () => httpRequest(gw.url + "/admin/reload", { method: "POST" });
  const generation = async () =>
    JSON.parse((await httpRequest(gw.url + "/admin/config")).body).generation;

  let gen = await generation();
  assert.equal(gen, 1);
  for (let i = 0; i < 10; i++) {
    // A stream on the route about to change, and plain answers from both
    // providers (the TLS one keeps its pooled connection across reloads).
    const stream = chat("s", { stream: true, mock: { tokens: 6, token_delay_ms: 50 } });
    for (const r of await Promise.all([chat("m"), chat("m"), chat("s")]))
      assert.equal(r.status, 200, r.body);
    fs.writeFileSync(config, main(i % 2 === 0));
    fs.writeFileSync(path.join(dir, "providers/p.ini"), providers(i % 2 === 0 ? 2 : 1));
    if (i % 2 === 0) {
      gw.proc.kill("SIGHUP");
      while ((await generation()) === gen) await new Promise((r) => setTimeout(r, 20));
    } else {
      const r = await adminReload();
      assert.equal(r.status, 200, r.body);
    }
    gen = await generation();
    const s = await stream;
    assert.equal(s.status, 200, s.body);
    assert.equal(parseSSE(s.body).at(-1).data, "[DONE]");
  }
  assert.equal(gen, 11);
  assert.equal((await chat("gpt-4")).status, 404, "the last configuration has no alias");

  fs.appendFileSync(config, "a malformed line\n");
  assert.equal((await adminReload()).status, 400);
  assert.equal(await generation(), 11);

  gw.proc.kill("SIGTERM");
  const code = await waitExit(gw.proc, 60000);
  assert.equal(code, 0, gw.stderr());
});
