#!/usr/bin/env node
// The benchmark harness: what the llmux hop costs, against direct calls to
// the same mock upstream, nginx as a plain reverse proxy, and the Portkey
// gateway as a peer. bench/run.sh installs the tools and builds first; this
// script expects them (see bench/README.md).
//
//   node bench/run.mjs [--smoke] [--build-dir DIR] [--out DIR]
//                      [--duration S] [--no-portkey]
//
// Writes OUT/results.json, OUT/results.md and OUT/latency.png (OUT defaults
// to bench/results). Exit 0 when every path answered and every output was
// written; the targets met or missed are in the results, not the status.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { cpuUs, cpuUsFine, memKiB, haveTool, runTool, stopOwned } from "./lib/procs.mjs";
import { startMock, writeLlmuxConfig, startLlmux, startNginx, startPortkey, tempDirs } from "./lib/services.mjs";
import { writeReport } from "./lib/report.mjs";

const BENCH_DIR = path.dirname(new URL(import.meta.url).pathname);
const SOURCE_DIR = path.resolve(BENCH_DIR, "..");

function parseArgs(argv) {
  const o = { smoke: false, buildDir: process.env.LLMUX_BUILD_DIR || path.join(SOURCE_DIR, "build-bench"),
              out: path.join(BENCH_DIR, "results"), duration: 0, portkey: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--smoke") o.smoke = true;
    else if (a === "--no-portkey") o.portkey = false;
    else if (a === "--build-dir") o.buildDir = path.resolve(argv[++i]);
    else if (a === "--out") o.out = path.resolve(argv[++i]);
    else if (a === "--duration") o.duration = Number(argv[++i]);
    else if (a === "--rounds") o.rounds = Number(argv[++i]);
    else throw new Error(`unknown argument ${a} (see bench/README.md)`);
  }
  return o;
}

// What one run measures. Smoke: a few seconds, tiny load, same code paths.
function plan(o) {
  const full = {
    concurrency: [1, 32, 256], bodies: [1024, 65536], duration: o.duration || 6, warmup: 1,
    rounds: o.rounds || 3,
    streams: [ // many tokens per response: TTFB / TTLB
      { name: "200tok-0ms", tokens: 200, delayMs: 0, conc: 32, n: 640 },
      { name: "200tok-1ms", tokens: 200, delayMs: 1, conc: 32, n: 128 },
    ],
    // 8,000 streams open together (16,000 descriptors in a proxy): 20
    // tokens 500 ms apart, ~10 s each, longer than it takes to open them all.
    open: { streams: 8000, tokens: 20, delayMs: 500 },
  };
  const smoke = {
    concurrency: [4], bodies: [1024, 65536], duration: o.duration || 1, warmup: 0,
    rounds: o.rounds || 1,
    streams: [{ name: "20tok-1ms", tokens: 20, delayMs: 1, conc: 4, n: 8 }],
    open: { streams: 50, tokens: 10, delayMs: 20 },
  };
  return o.smoke ? smoke : full;
}

function binaries(o) {
  const b = {
    llmux: path.join(o.buildDir, "llmux"),
    mock: path.join(o.buildDir, "tests", "mock", "mock_upstream"),
    streamload: [path.join(o.buildDir, "bench", "streamload"), path.join(o.buildDir, "bench-tools", "streamload")]
      .find((p) => fs.existsSync(p)),
  };
  for (const k of ["llmux", "mock"]) {
    if (!fs.existsSync(b[k])) throw new Error(`${b[k]} not built (bench/run.sh builds it; or --build-dir)`);
  }
  for (const t of ["wrk", "nginx", "gnuplot"]) {
    if (!haveTool(t)) throw new Error(`${t} not found (bench/run.sh installs it; scripts/install-deps.sh --test too)`);
  }
  return b;
}

// The load tool for streams is bench's own: built alone when the main build
// does not include bench/.
async function ensureStreamload(o, b) {
  if (b.streamload) return b.streamload;
  const dir = path.join(o.buildDir, "bench-tools");
  for (const args of [["-S", BENCH_DIR, "-B", dir, "-DCMAKE_BUILD_TYPE=Release"], ["--build", dir]]) {
    const r = await runTool("cmake", args);
    if (r.code !== 0) throw new Error(`building streamload failed:\n${r.stdout}${r.stderr}`);
  }
  return path.join(dir, "streamload");
}

// ---- the paths: how a client reaches the mock named `mock` ----

function makePaths(svc) {
  const auth = "Authorization: Bearer bench-client-key";
  const chat = (port) => `http://127.0.0.1:${port}/v1/chat/completions`;
  const p = {
    direct: (m) => ({ url: chat(svc.mocks[m].port), model: `bench-${m}`, headers: [auth] }),
    llmux: (m) => ({ url: chat(svc.llmux.port), model: `bench-${m}`, headers: [auth] }),
    nginx: (m) => ({ url: chat(svc.nginx.ports[m]), model: `bench-${m}`, headers: [auth] }),
  };
  if (svc.portkey) {
    p.portkey = (m) => ({
      url: chat(svc.portkey.port), model: `bench-${m}`,
      headers: [auth, "x-portkey-provider: openai", `x-portkey-custom-host: ${svc.mocks[m].baseURL}`],
    });
  }
  return p;
}

// The process whose CPU time a path costs (none for direct).
function pathPid(svc, name) {
  if (name === "llmux") return svc.llmux.pid;
  if (name === "nginx") return svc.nginx.pid;
  if (name === "portkey") return svc.portkey.pid;
  return 0;
}

// One plain request: does the path answer a chat completion?
async function probe(target) {
  const headers = { "content-type": "application/json" };
  for (const h of target.headers) {
    const i = h.indexOf(":");
    headers[h.slice(0, i)] = h.slice(i + 1).trim();
  }
  try {
    const r = await fetch(target.url, {
      method: "POST", headers, signal: AbortSignal.timeout(10000),
      body: JSON.stringify({ model: target.model, messages: [{ role: "user", content: "hello" }] }),
    });
    const text = await r.text();
    let content = null;
    try { content = JSON.parse(text).choices[0].message.content; } catch { /* not JSON */ }
    return { answered: r.status === 200 && typeof content === "string", status: r.status,
             body: r.status === 200 ? undefined : text.slice(0, 200) };
  } catch (e) {
    return { answered: false, error: e.message };
  }
}

// ---- runners ----

async function wrk(target, conc, body, seconds) {
  const args = ["-t1", `-c${conc}`, `-d${seconds}s`, "--timeout", "10s", "--latency",
                "-s", path.join(BENCH_DIR, "lib", "post.lua"), target.url, "--",
                String(body), target.model, ...target.headers];
  const r = await runTool("wrk", args, { timeoutMs: (seconds + 30) * 1000 });
  const line = r.stdout.split("\n").find((l) => l.startsWith("BENCHJSON "));
  if (!line) throw new Error(`wrk printed no summary (exit ${r.code}):\n${r.stdout}${r.stderr}`);
  return JSON.parse(line.slice(10));
}

async function streamload(bin, target, conc, n, timeoutMs, tokens) {
  const args = ["--url", target.url, "-c", String(conc), "-n", String(n), "--model", target.model,
                "--timeout-ms", String(timeoutMs)];
  for (const h of target.headers) args.push("-H", h);
  const r = await runTool(bin, args, { timeoutMs: timeoutMs + 30000 });
  if (r.code !== 0) throw new Error(`streamload failed (${r.code}): ${r.stderr}`);
  const j = JSON.parse(r.stdout);
  // Each ok stream ended with [DONE]; it must also have carried every token
  // (the mock sends role, tokens, finish, [DONE]: tokens + 3 data events).
  if (tokens && j.ok && j.sse_events_min < tokens + 2)
    throw new Error(`short stream via ${target.url}: ${j.sse_events_min} SSE events, ${tokens} tokens sent`);
  return j;
}

function log(msg) {
  process.stderr.write(`bench: ${msg}\n`);
}

async function runNonStream(pl, svc, paths, results) {
  const names = Object.keys(paths);
  if (pl.warmup) {
    for (const p of names) await wrk(paths[p]("fast"), 8, 1024, pl.warmup);
  }
  // Each cell runs in rounds, the paths' order rotating from round to round,
  // so that drift on a shared machine hits every path alike; a path's cell
  // sums its rounds' requests and takes the median of their percentiles.
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const seconds = Math.max(1, Math.round(pl.duration / pl.rounds));
  for (const body of pl.bodies) {
    for (const conc of pl.concurrency) {
      const runs = Object.fromEntries(names.map((p) => [p, []]));
      for (let r = 0; r < pl.rounds; r++) {
        for (let i = 0; i < names.length; i++) {
          const p = names[(i + r) % names.length];
          const pid = pathPid(svc, p);
          const cpu0 = pid ? cpuUs(pid) : 0;
          const w = await wrk(paths[p]("fast"), conc, body, seconds);
          runs[p].push({ w, cpu: pid ? cpuUs(pid) - cpu0 : null });
        }
      }
      for (const p of names) {
        const rs = runs[p];
        const sum = (f) => rs.reduce((a, x) => a + f(x), 0);
        const errors = {};
        for (const k of Object.keys(rs[0].w.errors)) errors[k] = sum((x) => x.w.errors[k]);
        const requests = sum((x) => x.w.requests), durUs = sum((x) => x.w.duration_us);
        const ok = requests - errors.status; // wrk counts non-2xx answers as requests
        const lat = {};
        for (const k of Object.keys(rs[0].w.latency_us)) lat[k] = median(rs.map((x) => x.w.latency_us[k]));
        const cpu = rs[0].cpu === null ? null : sum((x) => x.cpu);
        const errs = Object.values(errors).reduce((a, b) => a + b, 0);
        results.nonstream.push({
          path: p, concurrency: conc, body_bytes: body, requests, ok, rounds: rs.length,
          rps: ok / (durUs / 1e6), latency_us: lat, errors,
          cpu_us: cpu, cpu_us_per_req: cpu !== null && requests ? cpu / requests : null,
        });
        log(`${p.padEnd(8)} c=${String(conc).padEnd(3)} body=${body}: ` +
            `${(ok / (durUs / 1e6)).toFixed(0)} req/s p50 ${(lat.p50 / 1000).toFixed(3)} ms` +
            ` (${rs.length} rounds)` + (errs ? ` errors ${JSON.stringify(errors)}` : ""));
      }
    }
  }
}

// Each stream cell also takes the CPU time (user + system) of the process
// that proxies it, as runNonStream does but from schedstat (cpuUsFine: a
// cell of 25,600 tokens is a few clock ticks): per streamed token it is the cell's
// CPU over (ok streams × tokens), per SSE event over the data events received.
async function runStreams(pl, svc, bins, paths, results, portkeyStreams) {
  for (const s of pl.streams) {
    for (const p of Object.keys(paths)) {
      if (p === "portkey" && !portkeyStreams) continue;
      const pid = pathPid(svc, p);
      const cpu0 = pid ? cpuUsFine(pid) : 0;
      const r = await streamload(bins.streamload, paths[p](s.name), s.conc, s.n, 60000, s.tokens);
      const cpu = pid ? cpuUsFine(pid) - cpu0 : null;
      const tokens = r.ok * s.tokens;
      results.streams.push({ scenario: s.name, tokens: s.tokens, token_delay_ms: s.delayMs,
                             concurrency: s.conc, path: p, ...r, streamed_tokens: tokens, cpu_us: cpu,
                             cpu_us_per_token: cpu !== null && tokens ? cpu / tokens : null,
                             cpu_us_per_event: cpu !== null && r.sse_events ? cpu / r.sse_events : null });
      log(`stream ${s.name} ${p.padEnd(8)}: ok ${r.ok}/${r.requests} TTFB p50 ` +
          `${(r.ttfb_us.p50 / 1000).toFixed(3)} ms TTLB p50 ${(r.ttlb_us.p50 / 1000).toFixed(3)} ms` +
          (cpu !== null && tokens ? `, CPU ${(cpu / tokens).toFixed(2)} µs/token` : ""));
    }
  }
}

// Many concurrent open streams through a freshly started gateway, sampling
// its resident set while they are open; VmHWM is the peak since start.
async function openStreams(pl, bins, name, target, pid, results) {
  const base = memKiB(pid);
  let sampledMax = base.rssKiB;
  const timer = setInterval(() => {
    try { sampledMax = Math.max(sampledMax, memKiB(pid).rssKiB); } catch { /* exiting */ }
  }, 50);
  const r = await streamload(bins.streamload, target, pl.open.streams, pl.open.streams, 180000, pl.open.tokens);
  clearInterval(timer);
  const end = memKiB(pid);
  results.open_streams.push({
    path: name, streams: pl.open.streams, tokens: pl.open.tokens, token_delay_ms: pl.open.delayMs,
    ok: r.ok, failed: r.failed, failures: r.failures, peak_inflight: r.peak_inflight,
    peak_streaming: r.peak_streaming, ttfb_us: r.ttfb_us, ttlb_us: r.ttlb_us, elapsed_s: r.elapsed_s,
    rss_before_kib: base.rssKiB, rss_sampled_max_kib: sampledMax, rss_peak_kib: end.hwmKiB,
  });
  log(`open streams via ${name}: ${r.ok}/${pl.open.streams} ok, peak in flight ${r.peak_inflight}, ` +
      `streaming at once ${r.peak_streaming}, RSS ${base.rssKiB} KiB before, peak ${end.hwmKiB} KiB` +
      (r.failed ? ` failures ${JSON.stringify(r.failures)}` : ""));
}

function versions(bins) {
  const v = (cmd, args) => { // some print their version on stderr, some exit 1 after it
    const r = spawnSync(cmd, args, { encoding: "utf8" });
    return `${r.stdout || ""}${r.stderr || ""}`;
  };
  let portkey = null;
  try {
    portkey = JSON.parse(fs.readFileSync(path.join(BENCH_DIR, "node_modules", "@portkey-ai", "gateway",
                                                   "package.json"), "utf8")).version;
  } catch { /* not installed */ }
  return {
    llmux: v(bins.llmux, ["--version"]).trim().split("\n")[0],
    nginx: v("nginx", ["-v"]).trim(),
    wrk: v("wrk", ["-v"]).trim().split("\n")[0].replace(/\s*Copyright.*$/, ""),
    node: process.version,
    portkey,
  };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const pl = plan(o);
  const bins = binaries(o);
  bins.streamload = await ensureStreamload(o, bins);
  fs.mkdirSync(o.out, { recursive: true });
  const results = {
    meta: { mode: o.smoke ? "smoke" : "full", date: new Date().toISOString(),
            host: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, kernel: os.release(),
                    mem_gib: +(os.totalmem() / 2 ** 30).toFixed(1) },
            versions: versions(bins), duration_s: pl.duration, notes: [] },
    paths: {}, nonstream: [], streams: [], open_streams: [],
  };
  const note = (m) => { results.meta.notes.push(m); log(m); };
  const svc = { mocks: {} };
  const stops = [];
  try {
    // One mock per answer shape, so every path reaches the same mock.
    const shapes = [["fast", []],
      ...pl.streams.map((s) => [s.name, ["--tokens", String(s.tokens), "--token-delay-ms", String(s.delayMs)]]),
      ["hold", ["--tokens", String(pl.open.tokens), "--token-delay-ms", String(pl.open.delayMs)]]];
    for (const [name, flags] of shapes) {
      svc.mocks[name] = await startMock(bins.mock, name, flags);
      stops.push(svc.mocks[name].proc);
    }
    const mocks = Object.values(svc.mocks);
    const config = writeLlmuxConfig(mocks);
    svc.llmux = await startLlmux(bins.llmux, config);
    stops.push(svc.llmux.proc);
    svc.nginx = await startNginx(mocks);
    stops.push(svc.nginx.proc);
    if (svc.nginx.workers.length !== 1) note(`nginx has ${svc.nginx.workers.length} workers, expected 1`);
    const why = {};
    svc.portkey = o.portkey ? await startPortkey(why) : null;
    if (!o.portkey) why.reason = "disabled with --no-portkey";
    if (svc.portkey) stops.push(svc.portkey.proc);
    else {
      results.paths.portkey = { skipped: why.reason };
      note(`portkey skipped: ${why.reason}`);
    }

    const paths = makePaths(svc);
    for (const p of Object.keys(paths)) {
      results.paths[p] = await probe(paths[p]("fast"));
      if (!results.paths[p].answered) {
        if (p !== "portkey") throw new Error(`${p} did not answer: ${JSON.stringify(results.paths[p])}`);
        note(`portkey skipped: it did not answer (${JSON.stringify(results.paths[p])})`);
        results.paths.portkey = { skipped: "did not answer a chat completion", probe: results.paths[p] };
        delete paths.portkey;
      }
    }
    log(`paths: ${Object.keys(paths).join(", ")}; ${pl.duration}s per cell`);
    await runNonStream(pl, svc, paths, results);

    // A peer whose streams fail is left out of the stream tables, saying why.
    let portkeyStreams = false;
    if (paths.portkey) {
      const r = await streamload(bins.streamload, paths.portkey(pl.streams[0].name), 1, 1, 10000);
      portkeyStreams = r.ok === 1;
      results.paths.portkey.streams = portkeyStreams;
      if (!portkeyStreams) note("portkey left out of the stream tests: its SSE stream through the openai " +
                                `provider failed here (${r.non_200 ? "non-200 answer" : "bad stream"})`);
    }
    await runStreams(pl, svc, bins, paths, results, portkeyStreams);

    // Memory with many open streams, on fresh processes so the peak is theirs.
    const fresh = await startLlmux(bins.llmux, config);
    stops.push(fresh.proc);
    await openStreams(pl, bins, "llmux", { ...paths.llmux("hold"), url: `http://127.0.0.1:${fresh.port}/v1/chat/completions` },
                      fresh.pid, results);
    await stopOwned(fresh.proc); // its connections and memory are not nginx's to share
    const ng = await startNginx([svc.mocks.hold]);
    stops.push(ng.proc);
    await openStreams(pl, bins, "nginx", { ...paths.nginx("hold"), url: `http://127.0.0.1:${ng.ports.hold}/v1/chat/completions` },
                      ng.pid, results);
    await stopOwned(ng.proc);
  } finally {
    for (const p of stops.reverse()) await stopOwned(p);
    for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  }
  const files = await writeReport(results, o.out);
  log(`wrote ${files.join(", ")}`);
  process.stdout.write(fs.readFileSync(path.join(o.out, "results.md"), "utf8"));
}

main().catch((e) => {
  process.stderr.write(`bench: ${e.stack || e.message}\n`);
  process.exit(1);
});
