// What metrics and the access log cost a request: instructions per request
// under callgrind, and wrk's latency and throughput, for llmux with the
// access log off and on (metrics are always recorded), and optionally for
// another build (an older commit, without either) as the baseline.
//
//   node bench/obs_cost.mjs --build-dir build-rel [--baseline DIR] [--requests N]
//                           [--seconds S] [--rounds R] [--no-callgrind] [--no-wrk] [--keep]
//
// DIR holds a build (its llmux, plugins/openai.so); the mock comes from
// --build-dir. Everything runs on 127.0.0.1 and is stopped at the end; the
// numbers compare the variants of one run on one machine, nothing more.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { startReady, stopWait } from "./lib/procs.mjs";

const o = { buildDir: "build-rel", baseline: null, requests: 2000, seconds: 5, rounds: 3,
            callgrind: true, wrk: true, keep: false };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "--build-dir") o.buildDir = process.argv[++i];
  else if (a === "--baseline") o.baseline = process.argv[++i];
  else if (a === "--requests") o.requests = Number(process.argv[++i]);
  else if (a === "--seconds") o.seconds = Number(process.argv[++i]);
  else if (a === "--rounds") o.rounds = Number(process.argv[++i]);
  else if (a === "--no-callgrind") o.callgrind = false;
  else if (a === "--no-wrk") o.wrk = false;
  else if (a === "--keep") o.keep = true; /* keep the callgrind files (their folder is printed) */
  else throw new Error(`unknown option ${a}`);
}
const here = path.dirname(new URL(import.meta.url).pathname);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-obs-cost-"));

// The processes of the run: started once a line says so, stopped and
// waited for (bench/lib/procs.mjs).
const start = (cmd, args, ready) =>
  startReady(cmd, args, ready, { env: { BENCH_MOCK_KEY: "k", LLMUX_LISTEN: "127.0.0.1:0" } });
const stop = stopWait;

const mockBin = path.resolve(o.buildDir, "tests", "mock", "mock_upstream");
const mock = await start(mockBin, ["--no-record", "--name", "m", "--tokens", "8"],
                         (l) => (l.startsWith("{") ? JSON.parse(l).port : undefined));

function config(name, accessLog) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(path.join(dir, "providers"), { recursive: true });
  fs.writeFileSync(path.join(dir, "llmux.ini"),
    "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n" +
    (accessLog ? `access_log = ${path.join(dir, "access.log")}\n` : "") +
    "[model bench-m]\ntier = 2\nprice_in = 1\nprice_out = 2\n");
  fs.writeFileSync(path.join(dir, "providers", "bench.ini"),
    `[provider m]\nplugin = openai\nbase_url = http://127.0.0.1:${mock.value}/v1\n` +
    "api_key_env = BENCH_MOCK_KEY\nratelimit_headers = anthropic\n[route m bench-m]\nid = bench-m\n");
  return path.join(dir, "llmux.ini");
}

const variants = [];
if (o.baseline) variants.push({ name: "baseline", dir: o.baseline, log: false });
variants.push({ name: "log off", dir: o.buildDir, log: false });
variants.push({ name: "log on", dir: o.buildDir, log: true });

const body = JSON.stringify({ model: "bench-m", messages: [{ role: "user", content: "x".repeat(960) }] });
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function post(port, p = "/v1/chat/completions", method = "POST") {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path: p, method, agent,
                               headers: { "content-type": "application/json" } }, (res) => {
      res.resume();
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`${p}: ${res.statusCode}`))));
    });
    req.on("error", reject);
    req.end(method === "POST" ? body : undefined);
  });
}

function llmuxArgs(v, wrapper) {
  return [...wrapper, path.resolve(v.dir, "llmux"), "serve", "-c", config(v.name.replace(/ /g, "-"), v.log)];
}
const listening = (l) => { const m = /listening on http:\/\/[^\s]*:(\d+)/.exec(l); return m ? Number(m[1]) : undefined; };

// Instructions per request: callgrind counts only while instrumentation is
// on, around `n` sequential keep-alive requests after a warm-up; each
// `callgrind_control -d` dumps (and zeroes) into OUT.1, OUT.2, ...
function dumpIr(file) {
  const m = /^totals: (\d+)/m.exec(fs.readFileSync(file, "utf8"));
  return m ? Number(m[1]) : NaN;
}

async function callgrind(v) {
  const out = path.join(tmp, `cg-${v.name.replace(/ /g, "-")}.out`);
  const [cmd, ...args] = llmuxArgs(v, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                       `--callgrind-out-file=${out}`]);
  const g = await start(cmd, args, listening);
  const ctl = (...a) => spawnSync("callgrind_control", [...a, String(g.proc.pid)]);
  for (let i = 0; i < 200; i++) await post(g.value);
  ctl("-i", "on");
  for (let i = 0; i < o.requests; i++) await post(g.value);
  ctl("-i", "off");
  ctl("-d");
  let scrapeIr = null;
  if (v.name !== "baseline") { /* one scrape of /metrics, on its own */
    ctl("-i", "on");
    await post(g.value, "/metrics", "GET");
    ctl("-i", "off");
    ctl("-d");
    scrapeIr = dumpIr(out + ".2");
  }
  await stop(g.proc);
  return { ir_per_request: Math.round(dumpIr(out + ".1") / o.requests), ir_scrape: scrapeIr };
}

function wrk(port, conc) {
  const r = spawnSync("wrk", ["-t1", `-c${conc}`, `-d${o.seconds}s`, "--latency", "-s",
                              path.join(here, "lib", "post.lua"),
                              `http://127.0.0.1:${port}/v1/chat/completions`, "--", "1024", "bench-m"],
                      { encoding: "utf8" });
  const line = r.stdout.split("\n").find((l) => l.startsWith("BENCHJSON "));
  if (!line) throw new Error(`wrk: ${r.stdout}${r.stderr}`);
  const j = JSON.parse(line.slice(10));
  return { rps: j.requests / (j.duration_us / 1e6), p50: j.latency_us.p50, p99: j.latency_us.p99 };
}

const results = {};
for (const v of variants) {
  results[v.name] = {};
  if (o.callgrind) {
    results[v.name].callgrind = await callgrind(v);
    console.error(`${v.name}: ${JSON.stringify(results[v.name].callgrind)}`);
  }
}
if (o.wrk) {
  const gws = [];
  for (const v of variants) {
    const [cmd, ...args] = llmuxArgs(v, []);
    gws.push({ v, g: await start(cmd, args, listening) });
  }
  for (const conc of [1, 32]) {
    for (let round = 0; round < o.rounds; round++) {
      for (let k = 0; k < gws.length; k++) { /* rotate the order each round */
        const { v, g } = gws[(k + round) % gws.length];
        const w = wrk(g.value, conc);
        ((results[v.name].wrk ??= {})[`c${conc}`] ??= []).push(w);
        console.error(`${v.name} c=${conc} round ${round + 1}: ${JSON.stringify(w)}`);
      }
    }
  }
  for (const { g } of gws) await stop(g.proc);
  const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const v of variants)
    for (const [k, rs] of Object.entries(results[v.name].wrk))
      results[v.name].wrk[k] = { rps: Math.round(median(rs.map((r) => r.rps))),
                                 p50_us: median(rs.map((r) => r.p50)),
                                 p99_us: median(rs.map((r) => r.p99)) };
}
await stop(mock.proc);
if (o.keep) console.error(`kept ${tmp}`);
else fs.rmSync(tmp, { recursive: true, force: true });
console.log(JSON.stringify(results, null, 2));
