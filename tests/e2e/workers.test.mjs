// Worker processes (issue 14): `[server] workers = 2` makes `llmux serve` a
// master that holds the port and runs two gateway processes on it
// (SO_REUSEPORT). A worker killed by SIGKILL is replaced while the other
// keeps serving; SIGHUP and POST /admin/reload reload every worker once; a
// reload with errors is refused by the master; SIGTERM drains them all and
// everything exits 0; the workers never outlive their master; a bad
// configuration or a busy port stops the master before any worker starts.
//
// Workers write to the master's stderr, so one log holds them all.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { once } from "node:events";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { httpRequest, startMock } from "./lib/mock.mjs";

const KEY = "test-key-for-the-mock-0123456789";
let mock;
const live = [];

before(async () => {
  mock = await startMock({ args: ["--name", "m", "--tokens", "3"] });
});

after(async () => {
  for (const gw of live) if (gw.proc.exitCode === null && gw.proc.signalCode === null) await gw.stop();
  await mock.stop();
});

function config({ workers = "2", server = "", provider = "" } = {}) {
  return writeConfig({
    "llmux.ini": `[server]\nlisten = 127.0.0.1:0\nworkers = ${workers}\n${server}\n` +
      `[model chat-model]\ntier = 2\n`,
    "providers/m.ini":
      `[provider m]\nplugin = openai\nbase_url = ${mock.baseURL}\napi_key_env = MOCK_KEY\n` +
      `${provider}\n[route m chat-model]\nid = m-chat\n`,
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls until pred() holds; the bound only turns a hang into a failure.
async function until(pred, what, boundMs = 15000) {
  const t0 = Date.now();
  while (!(await pred())) {
    if (Date.now() - t0 > boundMs) throw new Error(`never saw ${what}`);
    await sleep(20);
  }
}

const count = (text, re) => (text.match(new RegExp(re.source, "g")) ?? []).length;
const LISTENING = /llmux listening on http:\/\//;

// The master's children, from the kernel (every thread's list).
function children(pid) {
  const dir = `/proc/${pid}/task`;
  return fs.readdirSync(dir)
    .flatMap((t) => fs.readFileSync(`${dir}/${t}/children`, "utf8").trim().split(/\s+/))
    .filter((s) => s !== "").map(Number).sort((a, b) => a - b);
}

// A process that exists and is not a zombie.
function alive(pid) {
  try {
    return !/^\d+ \(.*\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

// The pid the master last started for each worker index, from its log.
function workerPids(gw) {
  const pids = {};
  for (const m of gw.stderr().matchAll(/worker (\d+) started: pid (\d+)/g)) pids[m[1]] = Number(m[2]);
  return pids;
}

// A master with `workers` workers, each of them listening.
async function fleet(opts = {}, workers = 2) {
  const gw = await startGateway(config(opts), { MOCK_KEY: KEY });
  live.push(gw);
  // "close": the master has exited and every line on its stderr (the
  // workers' too: they share it) has been read.
  gw.exited = once(gw.proc, "close").then(([code, signal]) => code ?? signal);
  await until(() => count(gw.stderr(), LISTENING) >= workers, `${workers} workers listening`);
  // The master's "started" lines and the workers' "listening" lines are
  // written by different processes: either may reach the pipe first.
  await until(() => Object.keys(workerPids(gw)).length >= workers, `${workers} workers' pids logged`);
  return gw;
}

// On a fresh connection each: the kernel spreads connections over the workers.
function chat(gw) {
  return httpRequest(gw.url + "/v1/chat/completions", {
    agent: false,
    timeoutMs: 10000,
    body: { model: "chat-model", messages: [{ role: "user", content: "hi" }] },
  });
}

async function statuses(gw, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    try {
      out.push((await chat(gw)).status);
    } catch (e) {
      out.push(e.code ?? e.message);
    }
  }
  return out;
}

test("a master runs two workers on one port; one killed by SIGKILL is replaced while " +
     "requests keep succeeding", async () => {
  const gw = await fleet();
  const master = gw.proc.pid;
  assert.match(gw.stderr(), new RegExp(`master pid ${master}: starting 2 workers on 127\\.0\\.0\\.1:${gw.port}`));
  const pids = workerPids(gw);
  assert.deepEqual(children(master), [pids[0], pids[1]].sort((a, b) => a - b));
  assert.deepEqual(await statuses(gw, 10), Array(10).fill(200));

  process.kill(pids[0], "SIGKILL");
  await until(() => new RegExp(`worker 0 \\(pid ${pids[0]}\\) was killed by signal 9`)
    .test(gw.stderr()), "the master seeing worker 0 die");
  // Worker 0 is gone and not yet back: worker 1 alone takes these.
  assert.deepEqual(await statuses(gw, 50), Array(50).fill(200));

  await until(() => workerPids(gw)[0] !== pids[0], "a new worker 0");
  const replacement = workerPids(gw)[0];
  assert.ok(!alive(pids[0]), "the killed worker is gone");
  await until(() => children(master).includes(replacement), "the new worker among the master's children");
  assert.deepEqual(children(master), [replacement, pids[1]].sort((a, b) => a - b));
  await until(() => count(gw.stderr(), LISTENING) === 3, "the new worker listening");
  assert.deepEqual(await statuses(gw, 10), Array(10).fill(200));
  assert.equal(await gw.stop(), 0);
});

test("SIGHUP and POST /admin/reload reload every worker once; SIGUSR1 reaches them all; " +
     "a configuration with errors is refused by the master", async () => {
  const accessLog = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "llmux-e2e-")), "access.log");
  const gw = await fleet({ server: `access_log = ${accessLog}\n` });
  const master = gw.proc.pid;
  const configPath = gw.proc.spawnargs.at(-1);

  gw.proc.kill("SIGHUP");
  await until(() => count(gw.stderr(), /reloaded \S+: generation 2 /) === 2, "both workers at generation 2");
  // Each worker's lines say which worker wrote them, whole lines each.
  assert.equal(count(gw.stderr(), /Z llmux worker [01] info: reloaded \S+: generation 2 /), 2);
  // The master writes its own lines: they may come after the workers'.
  await until(() => /master: the configuration is valid: 2 workers reload it/.test(gw.stderr()),
              "the master's line for SIGHUP");

  const r = await httpRequest(gw.url + "/admin/reload", { method: "POST", agent: false });
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).generation, 3);
  await until(() => count(gw.stderr(), /reloaded \S+: generation 3 /) === 2, "both workers at generation 3");
  await until(() => /master: worker [01] reloaded \(POST \/admin\/reload\): 1 other workers reload/
    .test(gw.stderr()), "the master's line for POST /admin/reload");
  // Asked on many connections, so both workers answer: all at 3, none reloaded twice.
  for (let i = 0; i < 20; i++) {
    const c = await httpRequest(gw.url + "/admin/config", { agent: false });
    assert.equal(JSON.parse(c.body).generation, 3);
  }
  assert.equal(count(gw.stderr(), /generation 4/), 0);

  gw.proc.kill("SIGUSR1");
  await until(() => count(gw.stderr(), /received SIGUSR1: reopening the access log/) === 2,
              "both workers reopening their access log");

  const good = fs.readFileSync(configPath, "utf8");
  fs.writeFileSync(configPath, good + "bogus_key = 1\n");
  const reloadsBefore = count(gw.stderr(), /received SIGHUP: reloading/);
  gw.proc.kill("SIGHUP");
  await until(() => /reload of \S+ refused: the configuration has errors/.test(gw.stderr()),
              "the master refusing the reload");
  assert.match(gw.stderr(), /llmux\.ini:\d+: unknown key 'bogus_key'/);
  assert.deepEqual(await statuses(gw, 5), Array(5).fill(200));
  assert.equal(count(gw.stderr(), /received SIGHUP: reloading/), reloadsBefore,
               "no worker was sent SIGHUP");
  assert.equal(children(master).length, 2);
  assert.equal(await gw.stop(), 0);
});

test("SIGTERM drains every worker; workers and master exit 0", async () => {
  const gw = await fleet();
  const pids = workerPids(gw);
  assert.deepEqual(await statuses(gw, 30), Array(30).fill(200));
  gw.proc.kill("SIGTERM");
  assert.equal(await gw.exited, 0);
  const log = gw.stderr();
  assert.match(log, /master: received SIGTERM: draining 2 workers/);
  assert.match(log, new RegExp(`worker 0 \\(pid ${pids[0]}\\) exited with status 0`));
  assert.match(log, new RegExp(`worker 1 \\(pid ${pids[1]}\\) exited with status 0`));
  assert.equal(count(log, /drained: every connection is closed/), 2);
  // Both took requests: the kernel spread the connections over the two.
  const served = [...log.matchAll(/stopped after (\d+) requests/g)].map((m) => Number(m[1]));
  assert.equal(served.length, 2);
  assert.ok(served.every((n) => n > 0), `requests per worker: ${served}`);
  assert.equal(served[0] + served[1], 30);
  assert.ok(!alive(pids[0]) && !alive(pids[1]), "no worker left behind");
});

test("workers drain and exit when their master is killed", async () => {
  const gw = await fleet();
  const pids = workerPids(gw);
  gw.proc.kill("SIGKILL");
  await gw.exited;
  await until(() => !alive(pids[0]) && !alive(pids[1]), "the workers gone");
  await until(() => count(gw.stderr(), /stopped after \d+ requests/) === 2,
              "both workers logging their drained stop");
  assert.equal(count(gw.stderr(), /received SIGTERM: draining/), 2);
});

test("a configuration with errors stops the master before any worker starts", () => {
  const r = runLlmux(["serve", "-c", config({ provider: "bogus_knob = 3\n" })],
                     { MOCK_KEY: KEY, LLMUX_LISTEN: "127.0.0.1:0" });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /providers\/m\.ini:\d+: unknown key 'bogus_knob'/);
  assert.match(r.stderr, /1 error in the configuration/);
  assert.doesNotMatch(r.stderr, /worker \d+ started/);
});

test("a busy port stops the master with one clear line, whoever holds it", async () => {
  const plain = net.createServer();
  plain.listen(0, "127.0.0.1");
  await once(plain, "listening");
  const port = plain.address().port;
  let r = runLlmux(["serve", "-c", config()], { MOCK_KEY: KEY, LLMUX_LISTEN: `127.0.0.1:${port}` });
  plain.close();
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`));
  assert.doesNotMatch(r.stderr, /worker \d+ started/);

  // Another master's workers listen with SO_REUSEPORT: a second master
  // must not join them.
  const gw = await fleet();
  r = runLlmux(["serve", "-c", config()], { MOCK_KEY: KEY, LLMUX_LISTEN: `127.0.0.1:${gw.port}` });
  assert.equal(r.status, 1);
  assert.match(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${gw.port}: address already in use`));
  assert.doesNotMatch(r.stderr, /worker \d+ started/);
  assert.equal(await gw.stop(), 0);
});
