// What shared state costs a request: llmux with the in-memory limit store
// against llmux with `[server] shared_state = redis://...` on a local
// redis-server, both with a rate limit on the route (every request reserves
// and commits, the path shared state changes) and, as a second pair, with a
// tenant key that has its own requests_per_minute as well. For each variant:
// instructions per request in llmux under callgrind, wrk's latency at
// concurrency 1 and throughput at 32, the CPU time per request of llmux and
// of the Redis server (/proc/PID/stat around each wrk run), the scripts
// (EVALSHA) Redis ran per request, and the shared store's outages.
//
//   node bench/shared_cost.mjs --build-dir build-rel [--requests N] [--seconds S] [--rounds R]
//                              [--fill S] [--no-callgrind] [--no-wrk] [--no-tenant]
//                              [--fail-closed] [--keep] [--json] [--out DIR]
//
// Writes OUT/shared_cost.md (OUT defaults to bench/results) and prints it
// (or, with --json, every measurement as one JSON object). Everything runs
// on 127.0.0.1 and is stopped at the end; the numbers compare the variants of
// one run on one machine, nothing more.
//
// --fill S (default 61): before measuring, every gateway gets a trickle of
// two requests a second for S seconds, kept up while the others are measured,
// so that each key's minute window has all its 60 one-second slots, as under
// steady traffic (a Redis script reads and publishes the whole window: its
// cost grows with the slots in use). --fill 0 measures fresh windows.
// --fail-closed sets shared_state_fail = closed on the Redis variants, so
// that an outage of the shared store shows as 503s instead of local decisions.
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { cpuUs, freePort, startReady, stopWait } from "./lib/procs.mjs";

const here = path.dirname(new URL(import.meta.url).pathname);
const o = { buildDir: "build-rel", requests: 2000, seconds: 5, rounds: 3, fill: 61, callgrind: true,
            wrk: true, tenant: true, failClosed: false, keep: false, json: false,
            out: path.join(here, "results") };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "--build-dir") o.buildDir = process.argv[++i];
  else if (a === "--requests") o.requests = Number(process.argv[++i]);
  else if (a === "--seconds") o.seconds = Number(process.argv[++i]);
  else if (a === "--rounds") o.rounds = Number(process.argv[++i]);
  else if (a === "--fill") o.fill = Number(process.argv[++i]);
  else if (a === "--no-callgrind") o.callgrind = false;
  else if (a === "--no-wrk") o.wrk = false;
  else if (a === "--no-tenant") o.tenant = false; /* only the route-limit pair */
  else if (a === "--fail-closed") o.failClosed = true;
  else if (a === "--keep") o.keep = true; /* keep the configs and callgrind files */
  else if (a === "--json") o.json = true;
  else if (a === "--out") o.out = path.resolve(process.argv[++i]);
  else throw new Error(`unknown option ${a}`);
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-shared-cost-"));
const log = (m) => console.error(m);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The processes of the run: started once a line says so, stopped and
// waited for (bench/lib/procs.mjs).
const start = (cmd, args, ready) =>
  startReady(cmd, args, ready, { env: { BENCH_MOCK_KEY: "k", LLMUX_LISTEN: "127.0.0.1:0" } });
const stop = stopWait;



// One command to Redis in RESP; resolves to the reply (bulk string, status
// or integer) as text.
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    c.on("error", reject);
    c.on("connect", () => {
      let msg = `*${args.length}\r\n`;
      for (const a of args) msg += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
      c.write(msg);
    });
    c.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      const eol = buf.indexOf("\r\n");
      if (eol < 0) return;
      const head = buf.subarray(0, eol).toString();
      if (head[0] === "$") {
        const n = Number(head.slice(1));
        if (n >= 0 && buf.length < eol + 2 + n + 2) return;
        c.end();
        resolve(n < 0 ? null : buf.subarray(eol + 2, eol + 2 + n).toString());
      } else {
        c.end();
        if (head[0] === "-") reject(new Error(`redis: ${head.slice(1)}`));
        else resolve(head.slice(1));
      }
    });
  });
}

// What Redis ran so far (INFO commandstats): client scripts (EVALSHA, one
// round trip each) and every command, the ones the scripts call included.
async function redisStats(port) {
  const r = { scripts: 0, calls: 0 };
  for (const l of (await redisCommand(port, "INFO", "commandstats")).split("\r\n")) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(l);
    if (!m || m[1] === "info") continue;
    r.calls += Number(m[2]);
    if (m[1] === "evalsha" || m[1] === "eval") r.scripts += Number(m[2]);
  }
  return r;
}

const binOf = (name) => path.resolve(o.buildDir, name);
for (const b of ["llmux", "plugins/openai.so", "tests/mock/mock_upstream"])
  if (!fs.existsSync(binOf(b))) throw new Error(`${binOf(b)} not built (--build-dir)`);
for (const t of ["redis-server", "wrk", ...(o.callgrind ? ["valgrind", "callgrind_control"] : [])])
  if (spawnSync("sh", ["-c", `command -v ${t}`]).status !== 0) throw new Error(`${t} not found`);

const mock = await start(binOf("tests/mock/mock_upstream"), ["--no-record", "--name", "m", "--tokens", "8"],
                         (l) => (l.startsWith("{") ? JSON.parse(l).port : undefined));

// A redis-server of our own on a free port, without persistence.
const redisPort = await freePort();
const redis = await start("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no"],
                          (l) => (/Ready to accept connections/.test(l) ? true : undefined));
const redisVersion = (await redisCommand(redisPort, "INFO", "server")).match(/redis_version:([^\r\n]+)/)?.[1] ?? "?";

const RPM = 100000000; /* a limit never reached: every request reserves and commits */
const tenantKey = "llmux-bench-" + crypto.randomBytes(12).toString("hex");
const tenantHash = crypto.createHash("sha256").update(tenantKey).digest("hex");

// keys: rate-limited keys a request goes through (route, tenant); with
// shared state each costs two scripts (reserve, then commit).
const variants = [
  { name: "memory", shared: false, tenant: false, keys: 1 },
  { name: "redis", shared: true, tenant: false, keys: 1 },
];
if (o.tenant) variants.push({ name: "memory+tenant", shared: false, tenant: true, keys: 2 },
                            { name: "redis+tenant", shared: true, tenant: true, keys: 2 });
const pairs = [["redis", "memory"]];
if (o.tenant) pairs.push(["redis+tenant", "memory+tenant"]);
const slug = (s) => s.replace(/\+/g, "-");

// One configuration per variant and phase: each gateway has a prefix of its
// own on the one Redis, so none sees another's keys or publishes.
function config(v, phase) {
  const dir = path.join(tmp, `${slug(v.name)}-${phase}`);
  fs.mkdirSync(path.join(dir, "providers"), { recursive: true });
  fs.writeFileSync(path.join(dir, "llmux.ini"),
    "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n" +
    (v.shared ? `shared_state = redis://127.0.0.1:${redisPort}\n` +
                `shared_state_prefix = bench-${slug(v.name)}-${phase}:\n` +
                (o.failClosed ? "shared_state_fail = closed\n" : "") : "") +
    "[model bench-m]\ntier = 2\nprice_in = 1\nprice_out = 2\n" +
    (v.tenant ? `[tenant bench]\nkey_sha256 = ${tenantHash}\nrequests_per_minute = ${RPM}\n` : ""));
  fs.writeFileSync(path.join(dir, "providers", "bench.ini"),
    `[provider m]\nplugin = openai\nbase_url = http://127.0.0.1:${mock.value}/v1\n` +
    "api_key_env = BENCH_MOCK_KEY\nratelimit_headers = anthropic\n" +
    `[route m bench-m]\nid = bench-m\nrequests_per_minute = ${RPM}\n`);
  return path.join(dir, "llmux.ini");
}
const listening = (l) => { const m = /listening on http:\/\/[^\s]*:(\d+)/.exec(l); return m ? Number(m[1]) : undefined; };

// A started gateway: { v, proc, port, agent, busy }.
async function startGateway(v, phase, wrapper = []) {
  const [cmd, ...args] = [...wrapper, binOf("llmux"), "serve", "-c", config(v, phase)];
  const g = await start(cmd, args, listening);
  const gw = { v, proc: g.proc, port: g.value, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }),
               trickleAgent: new http.Agent({ keepAlive: true, maxSockets: 1 }), busy: false };
  await waitUp(gw);
  return gw;
}

const body = JSON.stringify({ model: "bench-m", messages: [{ role: "user", content: "x".repeat(960) }] });
// Resolves to { status, text } (the body kept only when not 200, or for /metrics).
function request(gw, p = "/v1/chat/completions", method = "POST", agent = gw.agent) {
  return new Promise((resolve, reject) => {
    const headers = { "content-type": "application/json" };
    if (gw.v.tenant && p.startsWith("/v1/")) headers.authorization = `Bearer ${tenantKey}`;
    const req = http.request({ host: "127.0.0.1", port: gw.port, path: p, method, agent, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { if (res.statusCode !== 200 || p === "/metrics") text += d; });
      res.on("end", () => resolve({ status: res.statusCode, text }));
    });
    req.on("error", reject);
    req.end(method === "POST" ? body : undefined);
  });
}

// The gateway's own view, from GET /metrics: chat requests answered by
// status, upstream attempts, and the shared store's errors and health.
async function gatewayState(gw) {
  const r = await request(gw, "/metrics", "GET");
  const s = { statuses: {}, attempts: 0, shared_errors: null, shared_up: null };
  for (const l of r.text.split("\n")) {
    let m = /^llmux_requests_total\{([^}]*)\} ([0-9.e+]+)/.exec(l);
    if (m && /endpoint="chat"/.test(m[1])) {
      const st = /status="(\d+)"/.exec(m[1])?.[1] ?? "?";
      s.statuses[st] = (s.statuses[st] ?? 0) + Number(m[2]);
    }
    if ((m = /^llmux_upstream_attempts_total\{[^}]*\} ([0-9.e+]+)/.exec(l))) s.attempts += Number(m[1]);
    if ((m = /^llmux_shared_state_errors_total\{[^}]*\} ([0-9.e+]+)/.exec(l))) s.shared_errors = (s.shared_errors ?? 0) + Number(m[1]);
    if ((m = /^llmux_shared_state_up\{[^}]*\} ([0-9.e+]+)/.exec(l))) s.shared_up = Number(m[1]);
  }
  return s;
}
function stateDiff(a, b) {
  const statuses = {};
  for (const [k, n] of Object.entries(b.statuses)) if (n - (a.statuses[k] ?? 0) > 0) statuses[k] = n - (a.statuses[k] ?? 0);
  return { statuses, attempts: b.attempts - a.attempts,
           outages: b.shared_errors === null ? null : b.shared_errors - a.shared_errors, up_after: b.shared_up };
}
// 499: the client went away first (wrk stopping with requests in flight).
const non200 = (statuses) => Object.entries(statuses ?? {}).filter(([k]) => k !== "200" && k !== "499")
  .reduce((a, [, n]) => a + n, 0);

// A shared gateway decides on its own counts until its store is up; wait
// for llmux_shared_state_up 1 before measuring. Resolves to the ms waited.
async function waitUp(gw, limitMs = 30000) {
  const t0 = Date.now();
  if (!gw.v.shared) return 0;
  while (Date.now() - t0 < limitMs) {
    if ((await gatewayState(gw)).shared_up === 1) return Date.now() - t0;
    await sleep(50);
  }
  throw new Error(`${gw.v.name}: llmux_shared_state_up did not come back to 1 within ${limitMs} ms`);
}

// The trickle: two requests a second to each gateway in `trickled`, one at a
// time each, on a connection of its own.
const trickled = new Set();
const trickleBad = {};
const trickleTimer = setInterval(() => {
  for (const gw of trickled) {
    if (gw.busy) continue;
    gw.busy = true;
    request(gw, "/v1/chat/completions", "POST", gw.trickleAgent)
      .then((r) => { if (r.status !== 200) trickleBad[gw.v.name] = (trickleBad[gw.v.name] ?? 0) + 1; })
      .catch(() => { trickleBad[gw.v.name] = (trickleBad[gw.v.name] ?? 0) + 1; })
      .finally(() => { gw.busy = false; });
  }
}, 500);
async function untrickle(gw) {
  trickled.delete(gw);
  while (gw.busy) await sleep(10);
}
async function fill(gws) {
  if (!o.fill) return;
  for (const gw of gws) trickled.add(gw);
  log(`filling the minute windows: ${o.fill} s`);
  await sleep(o.fill * 1000);
}

// Instructions per request: the whole process runs under callgrind;
// `callgrind_control -z` zeroes the counters after the warm-up and `-d`
// dumps what `n` sequential keep-alive requests cost into OUT.1. (Turning
// instrumentation on mid-run instead pauses the process long enough for the
// shared store's 50 ms deadline to pass, which would count a reconnect; and
// before -z and -d the gateway is left idle until Redis has answered.)
function dumpIr(file) {
  const m = /^totals: (\d+)/m.exec(fs.readFileSync(file, "utf8"));
  return m ? Number(m[1]) : NaN;
}

async function callgrind(gw) {
  const ctl = (...a) => spawnSync("callgrind_control", [...a, String(gw.proc.pid)]);
  await untrickle(gw);
  for (let i = 0; i < 200; i++) await request(gw);
  await sleep(300); /* the last replies in, so no deadline runs across the pause of -z */
  const before = await gatewayState(gw);
  await sleep(300);
  let sample = null;
  ctl("-z");
  for (let i = 0; i < o.requests; i++) {
    const r = await request(gw);
    if (r.status !== 200 && sample === null) sample = `${r.status} ${r.text.slice(0, 300)}`;
  }
  await sleep(300); /* likewise before the pause of -d (a few idle timer ticks get counted) */
  ctl("-d");
  const st = stateDiff(before, await gatewayState(gw));
  await stop(gw.proc);
  return { ir_per_request: Math.round(dumpIr(gw.out + ".1") / o.requests), statuses: st.statuses,
           outages: st.outages, first_non200: sample };
}

function wrk(gw, conc) {
  const extra = gw.v.tenant ? [`Authorization: Bearer ${tenantKey}`] : [];
  return new Promise((resolve, reject) => {
    const p = spawn("wrk", ["-t1", `-c${conc}`, `-d${o.seconds}s`, "--latency", "-s",
                            path.join(here, "lib", "post.lua"),
                            `http://127.0.0.1:${gw.port}/v1/chat/completions`, "--", "1024", "bench-m", ...extra],
                    { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("close", () => {
      const line = out.split("\n").find((l) => l.startsWith("BENCHJSON "));
      if (!line) reject(new Error(`wrk: ${out}`));
      else resolve(JSON.parse(line.slice(10)));
    });
  });
}

const results = { meta: {}, variants: {}, ratios: {}, findings: [] };
for (const v of variants) results.variants[v.name] = {};
const exits = [];
const watchExit = (gw, phase) => gw.proc.on("exit", (code, sig) => {
  if (!gw.stopping) exits.push(`${gw.v.name} (${phase}): llmux exited (${code ?? sig}):\n${gw.proc.log().slice(-2000)}`);
});
const stopGw = async (gw) => { gw.stopping = true; trickled.delete(gw); await stop(gw.proc); };

if (o.callgrind) {
  const gws = [];
  for (const v of variants) {
    const out = path.join(tmp, `cg-${slug(v.name)}.out`);
    const gw = await startGateway(v, "cg", ["valgrind", "--tool=callgrind", `--callgrind-out-file=${out}`]);
    gw.out = out;
    watchExit(gw, "callgrind");
    gws.push(gw);
  }
  await fill(gws);
  for (const gw of gws) {
    gw.stopping = true;
    results.variants[gw.v.name].callgrind = await callgrind(gw);
    log(`${gw.v.name}: ${JSON.stringify(results.variants[gw.v.name].callgrind)}`);
  }
}

const median = (xs) => { const s = xs.filter((x) => x !== null && x !== undefined && !Number.isNaN(x)).sort((a, b) => a - b);
                         return s.length ? s[Math.floor(s.length / 2)] : null; };
if (o.wrk) {
  const gws = [];
  for (const v of variants) {
    const gw = await startGateway(v, "wrk");
    watchExit(gw, "wrk");
    for (let i = 0; i < 200; i++) await request(gw); /* warm-up, as for callgrind */
    gws.push(gw);
  }
  await fill(gws);
  for (const conc of [1, 32]) {
    for (let round = 0; round < o.rounds; round++) {
      for (let k = 0; k < gws.length; k++) { /* rotate the order each round */
        const gw = gws[(k + round) % gws.length];
        await untrickle(gw);
        const st0 = await gatewayState(gw);
        const rs0 = await redisStats(redisPort);
        const load1 = os.loadavg()[0];
        const cpu0 = cpuUs(gw.proc.pid), rcpu0 = cpuUs(redis.proc.pid);
        const j = await wrk(gw, conc);
        const cpu1 = cpuUs(gw.proc.pid), rcpu1 = cpuUs(redis.proc.pid);
        const rs1 = await redisStats(redisPort);
        const st = stateDiff(st0, await gatewayState(gw));
        const w = { rps: (j.requests - j.errors.status) / (j.duration_us / 1e6), p50_us: j.latency_us.p50,
                    p99_us: j.latency_us.p99, requests: j.requests, non2xx: j.errors.status,
                    socket_errors: j.errors.connect + j.errors.read + j.errors.write + j.errors.timeout,
                    statuses: st.statuses, llmux_cpu_us: (cpu1 - cpu0) / j.requests,
                    redis_cpu_us: gw.v.shared ? (rcpu1 - rcpu0) / j.requests : null,
                    scripts_per_request: gw.v.shared ? (rs1.scripts - rs0.scripts) / j.requests : null,
                    redis_calls_per_request: gw.v.shared ? (rs1.calls - rs0.calls) / j.requests : null,
                    outages: st.outages, up_after: st.up_after, back_up_ms: null, load1 };
        if (gw.v.shared) w.back_up_ms = await waitUp(gw);
        if (o.fill) trickled.add(gw);
        (((results.variants[gw.v.name].rounds ??= {})[`c${conc}`]) ??= []).push(w);
        log(`${gw.v.name} c=${conc} round ${round + 1}: ${JSON.stringify(w)}`);
      }
    }
  }
  for (const gw of gws) {
    const warn = gw.proc.log().trim();
    if (warn) results.variants[gw.v.name].log_tail = warn.split("\n").slice(-10);
    results.variants[gw.v.name].log_lines = warn ? warn.split("\n").length : 0;
    await stopGw(gw);
  }
  for (const v of variants) {
    const r = results.variants[v.name];
    r.wrk = {};
    for (const [k, rs] of Object.entries(r.rounds)) {
      const m = {};
      for (const f of ["rps", "p50_us", "p99_us", "llmux_cpu_us", "redis_cpu_us", "scripts_per_request",
                       "redis_calls_per_request"])
        m[f] = median(rs.map((x) => x[f]));
      for (const f of ["non2xx", "socket_errors", "outages"]) m[f] = rs.reduce((a, x) => a + (x[f] ?? 0), 0);
      r.wrk[k] = m;
    }
  }
}
clearInterval(trickleTimer);
await stop(mock.proc);
await stop(redis.proc);

// (b)/(a) for each pair.
const ratio = (b, a) => (a && b !== null && b !== undefined ? b / a : null);
for (const [b, a] of pairs) {
  const B = results.variants[b], A = results.variants[a];
  results.ratios[`${b} / ${a}`] = {
    ir_per_request: ratio(B.callgrind?.ir_per_request, A.callgrind?.ir_per_request),
    c1_p50: ratio(B.wrk?.c1?.p50_us, A.wrk?.c1?.p50_us),
    c1_p99: ratio(B.wrk?.c1?.p99_us, A.wrk?.c1?.p99_us),
    c32_rps: ratio(B.wrk?.c32?.rps, A.wrk?.c32?.rps),
    c32_llmux_cpu: ratio(B.wrk?.c32?.llmux_cpu_us, A.wrk?.c32?.llmux_cpu_us),
    c32_fleet_cpu: ratio((B.wrk?.c32?.llmux_cpu_us ?? NaN) + (B.wrk?.c32?.redis_cpu_us ?? NaN), A.wrk?.c32?.llmux_cpu_us),
  };
}

// What went wrong, if anything: answers other than 200, socket errors,
// outages of the shared store, requests decided without Redis, exits.
const F = results.findings;
F.push(...exits);
for (const v of variants) {
  const r = results.variants[v.name];
  if (r.callgrind && (non200(r.callgrind.statuses) || r.callgrind.outages))
    F.push(`${v.name}, callgrind (${o.requests} sequential requests): answers ${JSON.stringify(r.callgrind.statuses)}, ` +
           `shared-store outages ${r.callgrind.outages}` + (r.callgrind.first_non200 ? `; first non-200: ${r.callgrind.first_non200}` : ""));
  for (const [k, rs] of Object.entries(r.rounds ?? {}))
    rs.forEach((w, i) => {
      const expect = 2 * v.keys;
      const local = v.shared && w.scripts_per_request !== null && w.scripts_per_request < expect * 0.98;
      if (non200(w.statuses) || w.socket_errors || w.outages || local)
        F.push(`${v.name} ${k.replace("c", "c=")} round ${i + 1}: answers ${JSON.stringify(w.statuses)}` +
               (w.socket_errors ? `, wrk socket errors ${w.socket_errors}` : "") +
               (v.shared ? `, shared-store outages ${w.outages} (up at the end: ${w.up_after}, back up after ` +
                           `${w.back_up_ms} ms), ${w.scripts_per_request.toFixed(2)} scripts per request of ${expect}` +
                           (local ? ` (about ${Math.round(100 * (1 - w.scripts_per_request / expect))}% of requests ` +
                                    (o.failClosed ? "refused or answered without Redis)" : "decided without Redis)") : "")
                         : ""));
    });
}
for (const [name, n] of Object.entries(trickleBad)) F.push(`${name}: ${n} trickle requests failed or were not 200`);

const git = (...a) => spawnSync("git", ["-C", path.resolve(here, ".."), ...a], { encoding: "utf8" }).stdout.trim();
results.meta = {
  date: new Date().toISOString(), build_dir: path.resolve(o.buildDir), commit: git("rev-parse", "--short", "HEAD"),
  tree_dirty: git("status", "--porcelain", "--untracked-files=no") !== "",
  llmux_mtime: fs.statSync(binOf("llmux")).mtime.toISOString(),
  redis: redisVersion, cpus: os.cpus().length, requests: o.requests, seconds: o.seconds, rounds: o.rounds,
  fill_s: o.fill, fail_closed: o.failClosed, route_rpm: RPM,
};

// ---- the report ----------------------------------------------------------
const fmt = (x, d = 0) => (x === null || x === undefined || Number.isNaN(x) ? "–"
  : x.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }));
const fx = (x) => (x === null || x === undefined || Number.isNaN(x) ? "–" : `${x.toFixed(2)}x`);
const m = results.meta;
const md = ["# What shared state costs a request", ""];
md.push(`llmux from ${m.build_dir} (binary of ${m.llmux_mtime}; repository at ${m.commit}` +
        `${m.tree_dirty ? ", with uncommitted changes" : ""}), redis-server ${m.redis} on 127.0.0.1 ` +
        `(\`--save "" --appendonly no\`), mock provider, ${m.cpus} CPUs shared by all of them, ${m.date}. ` +
        `Every variant has \`requests_per_minute = ${RPM}\` on its route (every request reserves and commits); ` +
        "the +tenant variants also have a tenant key with the same `requests_per_minute`. The redis variants set " +
        `\`shared_state = redis://127.0.0.1:PORT\`${o.failClosed ? " and `shared_state_fail = closed`" : ""}, ` +
        "a prefix of their own each. 1 KiB chat bodies.", "");
md.push(`Callgrind: instructions in the llmux process (user space) per request, over ${o.requests} sequential ` +
        `keep-alive requests after 200 of warm-up. wrk: ${o.seconds} s per run, ${o.rounds} rounds rotating the ` +
        "order of the variants, medians. CPU per request: utime + stime from /proc/PID/stat around each wrk " +
        "run, over its requests; Redis's too, a cost the fleet pays. Scripts per request: EVALSHA calls " +
        "(INFO commandstats) over the c=1 runs' requests; 2 per rate-limited key when every change reaches " +
        "Redis. Outages: llmux_shared_state_errors_total over all rounds (each one a time the store went down " +
        "and decided on local counts until it reconnected). " +
        (o.fill ? `Minute windows full: ${o.fill} s of two requests a second to every gateway first.` : "Fresh windows (--fill 0)."), "");
md.push("| variant | Ir / request | scripts / request | c=1 p50 µs | c=1 p99 µs | c=32 req/s | c=32 p99 µs | " +
        "llmux CPU µs/req c=1 / c=32 | Redis CPU µs/req c=1 / c=32 | outages c=1 / c=32 | non-2xx |");
md.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const v of variants) {
  const r = results.variants[v.name], c1 = r.wrk?.c1 ?? {}, c32 = r.wrk?.c32 ?? {};
  md.push(`| ${v.name} | ${fmt(r.callgrind?.ir_per_request)} | ${v.shared ? fmt(c1.scripts_per_request, 2) : "–"} | ` +
          `${fmt(c1.p50_us)} | ${fmt(c1.p99_us)} | ${fmt(c32.rps)} | ${fmt(c32.p99_us)} | ` +
          `${fmt(c1.llmux_cpu_us, 1)} / ${fmt(c32.llmux_cpu_us, 1)} | ` +
          `${v.shared ? `${fmt(c1.redis_cpu_us, 1)} / ${fmt(c32.redis_cpu_us, 1)}` : "–"} | ` +
          `${v.shared ? `${fmt(c1.outages)} / ${fmt(c32.outages)}` : "–"} | ` +
          `${fmt((c1.non2xx ?? 0) + (c32.non2xx ?? 0) + non200(r.callgrind?.statuses))} |`);
}
// Redis's own cost per script, whatever share of the requests reached it,
// and what one Redis core would carry if every change reached it.
md.push("", "| Redis, per variant | scripts / req c=1 | Redis CPU µs / script c=1 / c=32 | commands / script | " +
        "requests/s one Redis core carries at that cost |", "|---|---:|---:|---:|---:|");
for (const v of variants.filter((x) => x.shared)) {
  const rs = results.variants[v.name].rounds ?? {};
  const per = (k) => median((rs[k] ?? []).map((w) => (w.scripts_per_request ? w.redis_cpu_us / w.scripts_per_request : null)));
  const cmds = median((rs.c1 ?? []).map((w) => (w.scripts_per_request ? w.redis_calls_per_request / w.scripts_per_request : null)));
  const p1 = per("c1"), p32 = per("c32");
  results.variants[v.name].redis = { cpu_us_per_script_c1: p1, cpu_us_per_script_c32: p32, commands_per_script: cmds,
                                     scripts_expected: 2 * v.keys, ceiling_rps: p1 ? 1e6 / (p1 * 2 * v.keys) : null };
  md.push(`| ${v.name} | ${fmt(results.variants[v.name].wrk?.c1?.scripts_per_request, 2)} (${2 * v.keys} expected) | ` +
          `${fmt(p1, 1)} / ${fmt(p32, 1)} | ${fmt(cmds, 1)} | ${fmt(results.variants[v.name].redis.ceiling_rps)} |`);
}
md.push("", "| ratio | Ir / request | c=1 p50 | c=1 p99 | c=32 req/s | llmux CPU/req c=32 | llmux + Redis CPU/req c=32 |",
        "|---|---:|---:|---:|---:|---:|---:|");
for (const [k, r] of Object.entries(results.ratios))
  md.push(`| ${k} | ${fx(r.ir_per_request)} | ${fx(r.c1_p50)} | ${fx(r.c1_p99)} | ${fx(r.c32_rps)} | ` +
          `${fx(r.c32_llmux_cpu)} | ${fx(r.c32_fleet_cpu)} |`);
if (o.wrk) {
  md.push("", "Every wrk run (load: the machine's 1-minute load average as the run started):", "",
          "| variant | c | round | req/s | p50 µs | p99 µs | llmux CPU µs/req | Redis CPU µs/req | scripts / req | outages | non-2xx | load |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const v of variants)
    for (const [k, rs] of Object.entries(results.variants[v.name].rounds))
      rs.forEach((w, i) => md.push(`| ${v.name} | ${k.slice(1)} | ${i + 1} | ${fmt(w.rps)} | ${fmt(w.p50_us)} | ` +
        `${fmt(w.p99_us)} | ${fmt(w.llmux_cpu_us, 1)} | ${fmt(w.redis_cpu_us, 1)} | ${fmt(w.scripts_per_request, 2)} | ` +
        `${fmt(w.outages)} | ${w.non2xx} | ${w.load1.toFixed(2)} |`));
}
md.push("", F.length ? "Findings:" : "No answer other than 200, no socket error and no outage of the shared store in any run.");
for (const f of F) md.push(`- ${f.replace(/\n/g, " ")}`);
md.push("");
fs.mkdirSync(o.out, { recursive: true });
fs.writeFileSync(path.join(o.out, "shared_cost.md"), md.join("\n"));
log(`wrote ${path.join(o.out, "shared_cost.md")}`);
if (o.keep) log(`kept ${tmp}`);
else fs.rmSync(tmp, { recursive: true, force: true });
process.stdout.write(o.json ? JSON.stringify(results, null, 2) + "\n" : md.join("\n"));
