// Instructions per proxied request, counted by callgrind: a number that noise
// on a shared machine cannot blur. The same small chat request (1 KiB body,
// the same headers), sent N times in sequence on one keep-alive connection,
// to the same mock upstream, through:
//
//   nginx               proxy_pass as in bench/run.mjs (upstream keep-alive,
//                       access_log off), one process (master_process off)
//   nginx + access log  the same with access_log on to a file (reference)
//   llmux bare          no tenant, no limits, access log off (metrics are
//                       always recorded)
//   llmux production    a tenant's key checked, the tenant's and the route's
//                       requests_per_minute counted, access log on to a file,
//                       metrics on
//
// Method: each server runs under callgrind with --instr-atstart=no, gets W
// warm-up requests, then `callgrind_control -i on`, N requests,
// `callgrind_control -i off`, `callgrind_control -d`: the dump holds only the
// N requests (start-up, warm-up and shutdown are never counted), and its
// total divided by N is the figure. The server is idle in its event loop
// each time instrumentation is switched, as every request has been answered.
//
//   node bench/instructions.mjs [--build-dir DIR] [--requests N] [--warmup W]
//                               [--body-bytes B] [--top K] [--out DIR] [--keep] [--json]
//
// Writes OUT/instructions.md and OUT/instructions.json (OUT defaults to
// bench/results) and prints the table; the .md also holds the top K
// functions of the production path by inclusive and by self instructions
// (callgrind_annotate), per request, and the functions whose self
// instructions grow most from the bare path to the production path. Three
// more llmux rows add one part of the production path at a time to the bare
// path (access log; tenant key; tenant key and both limits).
//
// Then the stream cell (issue 17: "the gateway's CPU per streamed token <=
// nginx's per SSE event"): the same request with "stream": true, sent S
// times in sequence on one keep-alive connection (after S/10 warm-up
// streams, counted the same way), to a second mock started with
// --tokens T --token-delay-ms 0 (one answer shape per mock process, as in
// bench/run.mjs), through nginx, llmux bare and llmux production. Every
// stream is read to its end and must carry T content tokens and end with
// "data: [DONE]" (the run fails otherwise). Reported: instructions per
// stream, per streamed token (/ T) and per SSE event (/ the data events the
// client got), and the target: llmux per streamed token <= nginx per SSE event.
//
//   [--stream-requests S] (default: --requests / 5) [--stream-tokens T] (default 100)
//   [--no-stream]
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const here = path.dirname(new URL(import.meta.url).pathname);
const o = { buildDir: process.env.LLMUX_BENCH_BUILD_DIR || path.join(here, "..", "build-bench"),
            requests: 3000, warmup: 300, bodyBytes: 1024, top: 15, out: path.join(here, "results"), keep: false, json: false,
            streamRequests: 0, streamTokens: 100, stream: true };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "--build-dir") o.buildDir = process.argv[++i];
  else if (a === "--requests") o.requests = Number(process.argv[++i]);
  else if (a === "--warmup") o.warmup = Number(process.argv[++i]);
  else if (a === "--body-bytes") o.bodyBytes = Number(process.argv[++i]);
  else if (a === "--top") o.top = Number(process.argv[++i]);
  else if (a === "--out") o.out = path.resolve(process.argv[++i]);
  else if (a === "--keep") o.keep = true;
  else if (a === "--json") o.json = true;
  else if (a === "--stream-requests") o.streamRequests = Number(process.argv[++i]);
  else if (a === "--stream-tokens") o.streamTokens = Number(process.argv[++i]);
  else if (a === "--no-stream") o.stream = false;
  else throw new Error(`unknown option ${a} (see bench/README.md)`);
}
o.buildDir = path.resolve(o.buildDir);
if (!o.streamRequests) o.streamRequests = Math.max(20, Math.ceil(o.requests / 5));
o.streamWarmup = Math.max(5, Math.ceil(o.streamRequests / 10));
const log = (m) => console.error(`instructions: ${m}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-instructions-"));
fs.chmodSync(tmp, 0o755);
const procs = [];
process.on("exit", () => { for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL"); });

const binOf = (name) => path.join(o.buildDir, name);
for (const b of ["llmux", "plugins/openai.so", "tests/mock/mock_upstream"])
  if (!fs.existsSync(binOf(b))) throw new Error(`${binOf(b)} not built (bench/run.sh builds it; or --build-dir)`);
for (const t of ["nginx", "valgrind", "callgrind_control", "callgrind_annotate"])
  if (spawnSync("sh", ["-c", `command -v ${t}`]).status !== 0) throw new Error(`${t} not found`);

function start(cmd, args, env = {}) {
  const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  procs.push(p);
  let out = "";
  p.log = () => out;
  for (const s of [p.stdout, p.stderr]) s.on("data", (d) => { if (out.length < 262144) out += d; });
  return p;
}
async function stop(p) {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.on("exit", r));
  p.kill("SIGTERM");
  const t = setTimeout(() => p.kill("SIGKILL"), 20000);
  await done;
  clearTimeout(t);
}
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.on("error", reject);
  s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
});
async function waitPort(port, p, name, ms = 120000) {
  const until = Date.now() + ms;
  for (;;) {
    if (p.exitCode !== null || p.signalCode !== null) throw new Error(`${name} exited:\n${p.log()}`);
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1");
      c.once("connect", () => { c.destroy(); resolve(true); });
      c.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`${name} did not listen on ${port}:\n${p.log()}`);
    await sleep(100);
  }
}

// The mocks, as bench/run.mjs starts them (nothing recorded): "fast" (the
// default answer) for the non-stream rows, "stream" (T tokens, no delay
// between them) for the stream rows. Each mock process raises its own
// descriptor limit.
async function startMock(name, flags) {
  const p = start(binOf("tests/mock/mock_upstream"), ["--no-record", "--name", name, ...flags]);
  const port = await new Promise((resolve, reject) => {
    let buf = "";
    const t = setTimeout(() => reject(new Error(`mock ${name} did not start: ${p.log()}`)), 10000);
    p.stdout.on("data", (d) => {
      buf += d;
      const l = buf.split("\n")[0];
      if (buf.includes("\n")) { clearTimeout(t); resolve(JSON.parse(l).port); }
    });
  });
  return { proc: p, port };
}
const mockFast = await startMock("fast", []);
const mockPort = mockFast.port, mock = mockFast.proc;
const mockStream = o.stream
  ? await startMock("stream", ["--tokens", String(o.streamTokens), "--token-delay-ms", "0"]) : null;

const tenantKey = "llmux-bench-" + crypto.randomBytes(12).toString("hex");
const tenantHash = crypto.createHash("sha256").update(tenantKey).digest("hex");
const RPM = 100000000; /* never reached: every request is counted and admitted */

function llmuxConfig(name, parts, upPort = mockPort) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(path.join(dir, "providers"), { recursive: true });
  const accessLog = parts.log ? path.join(dir, "access.log") : null;
  fs.writeFileSync(path.join(dir, "llmux.ini"),
    "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nmax_body = 8m\n" +
    (accessLog ? `access_log = ${accessLog}\n` : "") +
    "\n[model bench-fast]\ntier = 2\n\n" +
    (parts.tenant ? `[tenant bench]\nkey_sha256 = ${tenantHash}\n` +
                    (parts.rpm ? `requests_per_minute = ${RPM}\n` : "") + "\n" : ""));
  fs.writeFileSync(path.join(dir, "providers", "bench.ini"),
    `[provider fast]\nplugin = openai\nbase_url = http://127.0.0.1:${upPort}/v1\n` +
    "api_key_env = BENCH_MOCK_KEY\ntimeout = 60s\nstream_timeout = 60s\nratelimit_headers = anthropic\n\n" +
    "[route fast bench-fast]\nid = bench-fast\n" + (parts.rpm ? `requests_per_minute = ${RPM}\n` : ""));
  return { file: path.join(dir, "llmux.ini"), accessLog };
}

// nginx as bench/lib/services.mjs configures it, but in one process
// (master_process off), so that callgrind sees the process that proxies.
function nginxConfig(name, port, accessLog, upPort = mockPort) {
  const prefix = path.join(tmp, name);
  fs.mkdirSync(prefix, { recursive: true });
  fs.chmodSync(prefix, 0o755);
  const alog = accessLog ? path.join(prefix, "access.log") : null;
  fs.writeFileSync(path.join(prefix, "nginx.conf"),
    `daemon off;\nmaster_process off;\nworker_processes 1;\n` +
    `pid ${prefix}/nginx.pid;\nerror_log ${prefix}/error.log warn;\n` +
    `events {\n  worker_connections 1024;\n}\n` +
    `http {\n  access_log ${alog ?? "off"};\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n` +
    `  client_max_body_size 8m;\n  client_body_buffer_size 128k;\n` +
    `  client_body_temp_path ${prefix}/client_body;\n  proxy_temp_path ${prefix}/proxy;\n` +
    `  fastcgi_temp_path ${prefix}/fastcgi;\n  uwsgi_temp_path ${prefix}/uwsgi;\n` +
    `  scgi_temp_path ${prefix}/scgi;\n  proxy_read_timeout 60s;\n` +
    `  upstream mock {\n    server 127.0.0.1:${upPort};\n    keepalive 32;\n    keepalive_requests 1000000;\n  }\n` +
    `  server {\n    listen 127.0.0.1:${port};\n    location / {\n      proxy_pass http://mock;\n` +
    `      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n      proxy_buffering off;\n    }\n  }\n}\n`);
  return { args: ["-p", prefix, "-c", path.join(prefix, "nginx.conf"), "-e", path.join(prefix, "error.log")],
           accessLog: alog };
}

const variants = [
  { name: "nginx", kind: "nginx", accessLog: false,
    what: "proxy_pass, upstream keep-alive, access_log off (as in bench/run.mjs)" },
  { name: "nginx + access log", kind: "nginx", accessLog: true, what: "the same, access_log on to a file" },
  { name: "llmux bare", kind: "llmux", production: false, what: "no tenant, no limits, access log off; metrics on" },
  // One part of the production path at a time, on the bare path, to see what each costs.
  { name: "llmux + access log", kind: "llmux", parts: { log: true }, what: "bare + access log on to a file" },
  { name: "llmux + tenant key", kind: "llmux", parts: { tenant: true }, what: "bare + a tenant's key checked (no limit)" },
  { name: "llmux + limits", kind: "llmux", parts: { tenant: true, rpm: true },
    what: "bare + tenant key, tenant + route requests_per_minute counted (no access log)" },
  { name: "llmux production", kind: "llmux", production: true,
    what: "tenant key checked, tenant + route requests_per_minute counted, access log on to a file, metrics on" },
];
for (const v of variants)
  if (v.kind === "llmux" && !v.parts) v.parts = v.production ? { log: true, tenant: true, rpm: true } : {};
// The stream cell: the same three servers of reference, their upstream the
// stream mock.
const streamVariants = ["nginx", "llmux bare", "llmux production"]
  .map((name) => ({ ...variants.find((v) => v.name === name), stream: true }));

// The one request every variant gets: the same body and headers (the
// tenant's key is sent to all; without tenants llmux does not look at it).
const makeBody = (stream) => { /* --body-bytes (1 KiB), as bench/lib/post.lua builds it */
  const pre = `{"model":"bench-fast",${stream ? '"stream":true,' : ""}"messages":[{"role":"user","content":"`,
        post = '"}]}';
  return pre + "x".repeat(Math.max(1, o.bodyBytes - pre.length - post.length)) + post;
};
const body = makeBody(false), streamBody = makeBody(true);
// One streamed chat request read to its end: the SSE data events counted,
// the content tokens among them, and whether the last one is [DONE].
function streamPost(port, agent) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path: "/v1/chat/completions", method: "POST", agent,
                               headers: { "content-type": "application/json", accept: "text/event-stream",
                                          authorization: `Bearer ${tenantKey}` } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { text += d; });
      res.on("error", reject);
      res.on("end", () => {
        if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}: ${text.slice(0, 300)}`));
        const data = text.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim());
        let tokens = 0;
        for (const d of data) {
          if (d === "[DONE]") continue;
          let c;
          try { c = JSON.parse(d).choices?.[0]?.delta?.content; } catch { return reject(new Error(`bad SSE event: ${d.slice(0, 200)}`)); }
          if (typeof c === "string" && c.length) tokens++;
        }
        resolve({ events: data.length, tokens, done: data.at(-1) === "[DONE]", bytes: text.length });
      });
    });
    req.on("error", reject);
    req.end(streamBody);
  });
}
// A stream that is short (fewer tokens than the mock sends) or does not end
// with [DONE] fails the run.
function checkStream(name, s) {
  if (!s.done || s.tokens !== o.streamTokens)
    throw new Error(`${name}: short stream: ${s.tokens}/${o.streamTokens} tokens, ${s.events} events, ` +
                    `${s.done ? "" : "no "}[DONE]`);
  return s;
}
function post(port, agent) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path: "/v1/chat/completions", method: "POST", agent,
                               headers: { "content-type": "application/json",
                                          authorization: `Bearer ${tenantKey}` } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => { text += d; });
      res.on("end", () => (res.statusCode === 200 ? resolve(text)
                                                  : reject(new Error(`status ${res.statusCode}: ${text.slice(0, 300)}`))));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function dumpTotal(file) {
  const text = fs.readFileSync(file, "utf8");
  const m = /^totals: (\d+)/m.exec(text) || /^summary: (\d+)/m.exec(text);
  if (!m) throw new Error(`no totals in ${file}`);
  return Number(m[1]);
}
const lines = (f) => (f && fs.existsSync(f) ? fs.readFileSync(f, "utf8").split("\n").filter(Boolean).length : null);

async function measure(v) {
  const slug = (v.stream ? "stream-" : "") + v.name.replace(/[^a-z0-9]+/g, "-");
  const upPort = v.stream ? mockStream.port : mockPort;
  const n = v.stream ? o.streamRequests : o.requests, warm = v.stream ? o.streamWarmup : o.warmup;
  const out = path.join(tmp, `callgrind.${slug}.out`);
  const vg = ["--tool=callgrind", "--instr-atstart=no", `--callgrind-out-file=${out}`];
  let p, port, accessLog;
  if (v.kind === "nginx") {
    port = await freePort();
    const c = nginxConfig(slug, port, v.accessLog, upPort);
    accessLog = c.accessLog;
    p = start("valgrind", [...vg, "nginx", ...c.args]);
  } else {
    port = await freePort();
    const c = llmuxConfig(slug, v.parts, upPort);
    accessLog = c.accessLog;
    p = start("valgrind", [...vg, binOf("llmux"), "serve", "-c", c.file],
              { LLMUX_LISTEN: `127.0.0.1:${port}`, BENCH_MOCK_KEY: "bench-upstream-key" });
  }
  await waitPort(port, p, v.name);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const ctl = (...a) => {
    const r = spawnSync("callgrind_control", [...a, String(p.pid)], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`callgrind_control ${a.join(" ")}: ${r.stdout}${r.stderr}`);
  };
  let events = 0, minEvents = Infinity, maxEvents = 0;
  if (v.stream) {
    checkStream(v.name, await streamPost(port, agent));
    for (let i = 1; i < warm; i++) checkStream(v.name, await streamPost(port, agent));
    ctl("-i", "on");
    for (let i = 0; i < n; i++) {
      const s = checkStream(v.name, await streamPost(port, agent));
      events += s.events;
      minEvents = Math.min(minEvents, s.events);
      maxEvents = Math.max(maxEvents, s.events);
    }
    ctl("-i", "off");
  } else {
    const answer = await post(port, agent);
    if (!JSON.parse(answer).choices?.[0]?.message) throw new Error(`${v.name}: not a chat completion: ${answer}`);
    for (let i = 1; i < warm; i++) await post(port, agent);
    ctl("-i", "on");
    for (let i = 0; i < n; i++) await post(port, agent);
    ctl("-i", "off");
  }
  ctl("-d");
  agent.destroy();
  await stop(p);
  const logLines = lines(accessLog); /* every request's line, once the server has stopped */
  const dumps = fs.readdirSync(tmp).filter((f) => f.startsWith(`callgrind.${slug}.out.`));
  const dump = path.join(tmp, dumps.sort()[0]); /* OUT.1: the -d after the N requests */
  const total = dumpTotal(dump);
  const r = { name: v.name, what: v.what, requests: n, instructions: total,
              per_request: Math.round(total / n), dump,
              access_log_lines: logLines, access_log_expected: accessLog ? warm + n : null };
  if (v.stream) {
    Object.assign(r, { tokens_per_stream: o.streamTokens, sse_events_per_stream: events / n,
                       sse_events_min: minEvents, sse_events_max: maxEvents,
                       per_token: total / n / o.streamTokens, per_event: total / events });
    log(`stream ${v.name}: ${r.per_request} instructions per stream, ${r.per_token.toFixed(0)} per token, ` +
        `${r.per_event.toFixed(0)} per SSE event (${r.sse_events_per_stream} events a stream)` +
        (accessLog ? ` (access log: ${logLines} lines for ${warm + n} streams)` : ""));
  } else {
    log(`${v.name}: ${r.per_request} instructions per request` +
        (accessLog ? ` (access log: ${logLines} lines for ${warm + n} requests)` : ""));
  }
  return r;
}

// Every function of a dump with its instructions (inclusive or self), as
// callgrind_annotate lists them, merged by name: an inlined function shows up
// once per spelling of its file ("/work/main/core/x.c" and "core/x.c"), and
// the inclusive list counts it once (the larger), the self list sums them.
function annotate(dump, inclusive) {
  const r = spawnSync("callgrind_annotate", [`--inclusive=${inclusive ? "yes" : "no"}`, "--threshold=100", "--auto=no", dump],
                      { encoding: "utf8", maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`callgrind_annotate: ${r.stderr}`);
  const fns = new Map();
  let seenTotals = false;
  for (const l of r.stdout.split("\n")) {
    const m = /^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.*\S)\s*$/.exec(l);
    if (!m) continue;
    if (/PROGRAM TOTALS/.test(m[2])) { seenTotals = true; continue; }
    if (!seenTotals || !m[2].includes(":") || /^=>|\(\d+x\)$/.test(m[2])) continue;
    const ir = Number(m[1].replace(/,/g, ""));
    let fn = m[2].replace(/\s*\[[^\]]*\]$/, "");
    const i = fn.lastIndexOf(":");
    fn = `${path.basename(fn.slice(0, i))}:${fn.slice(i + 1)}`;
    fns.set(fn, inclusive ? Math.max(fns.get(fn) ?? 0, ir) : (fns.get(fn) ?? 0) + ir);
  }
  return fns;
}
const perReq = (ir) => Math.round(ir / o.requests);
function top(fns, n, skipAnon) {
  return [...fns].filter(([fn]) => !(skipAnon && /^\?\?\?:0x/.test(fn)))
    .sort((a, b) => b[1] - a[1]).slice(0, n).map(([fn, ir]) => ({ per_request: perReq(ir), fn }));
}
// Where the production path's instructions beyond the bare path's go: self
// instructions per function, production minus bare, largest first.
function diff(prod, bare, n) {
  const d = new Map(prod);
  for (const [fn, ir] of bare) d.set(fn, (d.get(fn) ?? 0) - ir);
  return [...d].sort((a, b) => b[1] - a[1]).slice(0, n).map(([fn, ir]) => ({ per_request: perReq(ir), fn }));
}

const results = { date: new Date().toISOString(), requests: o.requests, warmup: o.warmup,
                  host: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, kernel: os.release() },
                  versions: { nginx: `${spawnSync("nginx", ["-v"], { encoding: "utf8" }).stderr}`.trim(),
                              valgrind: spawnSync("valgrind", ["--version"], { encoding: "utf8" }).stdout.trim(),
                              llmux: spawnSync(binOf("llmux"), ["--version"], { encoding: "utf8" }).stdout.trim().split("\n")[0] },
                  variants: [] };
try {
  for (const v of variants) results.variants.push(await measure(v));
  const prod = results.variants.find((x) => x.name === "llmux production");
  const bare = results.variants.find((x) => x.name === "llmux bare");
  results.top_inclusive = top(annotate(prod.dump, true), o.top, true);
  const prodSelf = annotate(prod.dump, false);
  results.top_self = top(prodSelf, o.top, false);
  results.top_self_over_bare = diff(prodSelf, annotate(bare.dump, false), o.top);
  if (mockStream) {
    // What the mock sends a stream, straight from it (no proxy): the
    // reference count of SSE events for every server's stream.
    const agent = new http.Agent({ keepAlive: false });
    const direct = checkStream("mock (direct)", await streamPost(mockStream.port, agent));
    agent.destroy();
    results.stream = { tokens_per_stream: o.streamTokens, mock_sse_events_per_stream: direct.events,
                       mock_bytes_per_stream: direct.bytes, requests: o.streamRequests, warmup: o.streamWarmup,
                       variants: [] };
    for (const v of streamVariants) results.stream.variants.push(await measure(v));
  }
} finally {
  await stop(mock);
  if (mockStream) await stop(mockStream.proc);
}

const by = Object.fromEntries(results.variants.map((x) => [x.name, x]));
const ng = by.nginx.per_request;
let md = `# Instructions per request\n\n` +
  `${results.date}; ${results.host.cpus} CPUs (${results.host.cpu}); ${results.versions.llmux}; ` +
  `${results.versions.nginx}; ${results.versions.valgrind}.\n\n` +
  `User-space instructions (callgrind Ir) per proxied request: the same ${body.length}-byte chat request, ` +
  `${o.requests} times in sequence on one keep-alive connection after ${o.warmup} warm-up requests, ` +
  `counting switched on and off around them (callgrind_control -i on/off, then -d), so start-up, ` +
  `warm-up and shutdown are not counted. The same mock upstream behind every server.\n\n` +
  `| server | what | instructions / request | × nginx |\n|---|---|---:|---:|\n`;
for (const x of results.variants)
  md += `| ${x.name} | ${x.what} | ${x.per_request.toLocaleString("en-US")} | ${(x.per_request / ng).toFixed(2)} |\n`;
const target = by["llmux production"].per_request <= ng;
md += `\nTarget (issue 17): llmux production ≤ nginx: **${target ? "met" : "missed"}** ` +
      `(${by["llmux production"].per_request.toLocaleString("en-US")} vs ${ng.toLocaleString("en-US")}).\n`;
const table = (rows) => "| instructions / request | function |\n|---:|---|\n" +
  rows.map((r) => `| ${r.per_request.toLocaleString("en-US")} | \`${r.fn.replace(/\|/g, "\\|")}\` |`).join("\n") + "\n";
md += `\n## llmux production: top ${o.top} functions by inclusive instructions\n\n${table(results.top_inclusive)}` +
      `\n## llmux production: top ${o.top} functions by self instructions\n\n${table(results.top_self)}` +
      `\n## llmux production over llmux bare: top ${o.top} differences in self instructions\n\n` +
      `${table(results.top_self_over_bare)}`;
const int = (x) => Math.round(x).toLocaleString("en-US");
if (results.stream) {
  const st = results.stream;
  const sb = Object.fromEntries(st.variants.map((x) => [x.name, x]));
  const ngEv = sb.nginx.per_event, ngTok = sb.nginx.per_token;
  md += `\n## Streams: instructions per streamed token\n\n` +
    `The same ${streamBody.length}-byte chat request with \`"stream": true\`, ${st.requests} times in sequence on one ` +
    `keep-alive connection after ${st.warmup} warm-up streams, counted as above. The upstream is a mock started with ` +
    `\`--tokens ${st.tokens_per_stream} --token-delay-ms 0\`: each stream carries ${st.tokens_per_stream} content tokens in ` +
    `${st.mock_sse_events_per_stream} SSE events (the role event, the ${st.tokens_per_stream} tokens, the finish event and ` +
    `\`data: [DONE]\`, ${int(st.mock_bytes_per_stream)} bytes of SSE as the mock sends them). Every stream was read to its ` +
    `end and checked: ${st.tokens_per_stream} tokens and \`[DONE]\` last. Per streamed token = per stream / ` +
    `${st.tokens_per_stream}; per SSE event = per stream / the data events the client received through that server.\n\n` +
    `| server | instructions / stream | SSE events / stream | instructions / streamed token | instructions / SSE event | ` +
    `per token × nginx per token | per token × nginx per SSE event |\n|---|---:|---:|---:|---:|---:|---:|\n`;
  for (const x of st.variants)
    md += `| ${x.name} | ${int(x.per_request)} | ${x.sse_events_per_stream} | ${int(x.per_token)} | ${int(x.per_event)} | ` +
          `${(x.per_token / ngTok).toFixed(2)} | ${(x.per_token / ngEv).toFixed(2)} |\n`;
  const prodS = sb["llmux production"], bareS = sb["llmux bare"];
  st.target = { llmux_production_per_token: prodS.per_token, llmux_bare_per_token: bareS.per_token,
                nginx_per_event: ngEv, met: prodS.per_token <= ngEv, bare_met: bareS.per_token <= ngEv };
  md += `\nTarget (issue 17): llmux instructions per streamed token ≤ nginx per SSE event: ` +
        `**${st.target.met ? "met" : "missed"}** (llmux production ${int(prodS.per_token)} vs nginx ${int(ngEv)}; ` +
        `llmux bare ${int(bareS.per_token)}: ${st.target.bare_met ? "met" : "missed"}).\n`;
}
fs.mkdirSync(o.out, { recursive: true });
if (o.keep) {
  for (const x of [...results.variants, ...(results.stream?.variants ?? [])]) {
    const keep = path.join(o.out, path.basename(x.dump));
    fs.copyFileSync(x.dump, keep);
    x.dump = keep;
  }
} else {
  for (const x of [...results.variants, ...(results.stream?.variants ?? [])]) delete x.dump;
}
fs.writeFileSync(path.join(o.out, "instructions.json"), JSON.stringify(results, null, 2) + "\n");
fs.writeFileSync(path.join(o.out, "instructions.md"), md);
fs.rmSync(tmp, { recursive: true, force: true });
process.stdout.write(o.json ? JSON.stringify(results, null, 2) + "\n" : md);
