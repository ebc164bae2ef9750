// Turns a run's measurements into results.json, results.md (tables with
// ratios against direct, nginx and the peer from the same run, and the
// issues' targets) and latency.png (gnuplot: latency percentiles per
// path, one panel per concurrency and body size).
import fs from "node:fs";
import path from "node:path";
import { runTool } from "./procs.mjs";

const MIB = 1024;
const ms = (us) => (us / 1000).toFixed(3);
const ratio = (a, b) => (a && b ? (a / b).toFixed(2) + "×" : "–");
const kib = (n) => (n >= 1024 ? `${n / 1024} KiB` : `${n} B`);

function cell(results, p, conc, body) {
  return results.nonstream.find((r) => r.path === p && r.concurrency === conc && r.body_bytes === body);
}

// Adds added latency (path median - direct median) and throughput ratios.
function derive(results) {
  for (const r of results.nonstream) {
    const d = cell(results, "direct", r.concurrency, r.body_bytes);
    r.added_p50_us = d ? r.latency_us.p50 - d.latency_us.p50 : null;
    for (const ref of ["direct", "nginx", "portkey"]) {
      const c = cell(results, ref, r.concurrency, r.body_bytes);
      r[`rps_vs_${ref}`] = c && c.rps ? r.rps / c.rps : null;
    }
  }
  for (const s of results.streams) {
    const d = results.streams.find((x) => x.path === "direct" && x.scenario === s.scenario);
    s.added_ttfb_p50_us = d ? s.ttfb_us.p50 - d.ttfb_us.p50 : null;
    s.added_ttlb_p50_us = d ? s.ttlb_us.p50 - d.ttlb_us.p50 : null;
  }
  const cpu = {};
  for (const r of results.nonstream) {
    if (r.cpu_us === null) continue;
    cpu[r.path] ??= { requests: 0, cpu_us: 0 };
    cpu[r.path].requests += r.requests;
    cpu[r.path].cpu_us += r.cpu_us;
  }
  for (const c of Object.values(cpu)) c.cpu_us_per_req = c.requests ? c.cpu_us / c.requests : null;
  results.cpu = cpu;
  // CPU per streamed token and per SSE event, over every stream scenario.
  const sc = {};
  for (const s of results.streams) {
    if (s.cpu_us === null || s.cpu_us === undefined) continue;
    sc[s.path] ??= { streams: 0, tokens: 0, events: 0, cpu_us: 0 };
    sc[s.path].streams += s.ok;
    sc[s.path].tokens += s.streamed_tokens;
    sc[s.path].events += s.sse_events;
    sc[s.path].cpu_us += s.cpu_us;
  }
  for (const c of Object.values(sc)) {
    c.cpu_us_per_token = c.tokens ? c.cpu_us / c.tokens : null;
    c.cpu_us_per_event = c.events ? c.cpu_us / c.events : null;
  }
  results.stream_cpu = sc;
}

const errors = (r) => Object.values(r.errors).reduce((a, b) => a + b, 0);
const errNote = (r) => (errors(r) ? ` (${errors(r)} errors)` : "");

// The issue's targets, each checked at every body size measured; a cell
// where llmux had errors does not meet its target.
function targets(results) {
  const out = [];
  const bodies = [...new Set(results.nonstream.map((r) => r.body_bytes))];
  const concs = new Set(results.nonstream.map((r) => r.concurrency));
  const smoke = results.meta.mode === "smoke";
  const lc = smoke ? Math.min(...concs) : 1;
  const tc = smoke ? Math.max(...concs) : 32;
  for (const b of bodies) {
    const l = cell(results, "llmux", lc, b), n = cell(results, "nginx", lc, b);
    if (l && n) out.push({ target: `added median latency at c=${lc}, ${kib(b)} body: llmux <= nginx`,
      llmux: `${ms(l.added_p50_us)} ms${errNote(l)}`, nginx: `${ms(n.added_p50_us)} ms${errNote(n)}`,
      met: l.added_p50_us <= n.added_p50_us && !errors(l) });
  }
  for (const b of bodies) {
    const l = cell(results, "llmux", tc, b), n = cell(results, "nginx", tc, b);
    if (l && n) out.push({ target: `throughput at c=${tc}, ${kib(b)} body: llmux >= nginx`,
      llmux: `${l.rps.toFixed(0)} req/s${errNote(l)}`, nginx: `${n.rps.toFixed(0)} req/s${errNote(n)}`,
      met: l.rps >= n.rps && !errors(l) });
  }
  // Issue 17: the gateway's CPU per streamed token <= nginx's per SSE event.
  const sl = results.stream_cpu?.llmux, sn = results.stream_cpu?.nginx;
  if (sl?.cpu_us_per_token != null && sn?.cpu_us_per_event != null) {
    const errs = results.streams.filter((s) => s.path === "llmux").reduce((a, s) => a + s.failed, 0);
    out.push({ target: "CPU per streamed token: llmux <= nginx (per SSE event)",
      llmux: `${sl.cpu_us_per_token.toFixed(2)} µs/token${errs ? ` (${errs} failed streams)` : ""}`,
      nginx: `${sn.cpu_us_per_event.toFixed(2)} µs/event (${sn.cpu_us_per_token.toFixed(2)} µs/token)`,
      met: sl.cpu_us_per_token <= sn.cpu_us_per_event && !errs });
  }
  // Issue 17: peak RSS with 8,000 concurrent streams < 96 MiB; every stream
  // must complete, all of them streaming at the same moment.
  const o = results.open_streams.find((x) => x.path === "llmux");
  const on = results.open_streams.find((x) => x.path === "nginx");
  const open = (x) => `${x.ok}/${x.streams} ok, ${x.peak_streaming ?? x.peak_inflight} streaming at once`;
  if (o) out.push({ target: `peak RSS with ${o.streams} concurrent streams < 96 MiB`,
    llmux: `${(o.rss_peak_kib / MIB).toFixed(1)} MiB (${open(o)})`,
    nginx: on ? `${(on.rss_peak_kib / MIB).toFixed(1)} MiB (worker; ${open(on)})` : "–",
    met: o.ok === o.streams && (o.peak_streaming ?? o.streams) === o.streams && o.rss_peak_kib < 96 * MIB,
    ...(smoke ? {} : o.streams < 8000 ? { note: "fewer streams than the issue's 8,000" } : {}) });
  if (smoke) for (const t of out) t.note = "smoke run: tiny load, not a measurement";
  results.targets = out;
}

function table(head, rows) {
  return [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`,
          ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n") + "\n";
}

function markdown(results) {
  const m = results.meta;
  const has = (p) => results.nonstream.some((r) => r.path === p);
  let md = `# llmux benchmark (${m.mode})\n\n` +
    `${m.date} · ${m.host.cpus} CPUs (${m.host.cpu}) · Linux ${m.host.kernel} · ` +
    `${m.versions.llmux} · ${m.versions.nginx} · ${m.versions.wrk} · node ${m.versions.node}` +
    (m.versions.portkey ? ` · Portkey gateway ${m.versions.portkey}` : "") + "\n\n" +
    "Every process runs on this one machine, sharing its CPUs: compare the paths of one run " +
    "(ratios), not absolute times between machines.\n\n";
  for (const n of m.notes) md += `- ${n}\n`;
  if (m.notes.length) md += "\n";

  md += "## Targets\n\n" + table(["target", "llmux", "nginx", "met"],
    results.targets.map((t) => [t.target, t.llmux, t.nginx, (t.met ? "yes" : "**no**") + (t.note ? ` (${t.note})` : "")]));

  md += `\n## Non-streamed chat completions (wrk, ${m.duration_s} s per cell)\n\n` +
    "Added p50 = the path's median minus the direct median in the same cell. req/s counts 2xx " +
    "answers only; errors = non-2xx answers plus socket errors and timeouts.\n\n";
  const head = ["conc", "body", "path", "req/s", "p50 ms", "p90 ms", "p99 ms", "added p50 ms",
                "req/s ×direct", "×nginx", ...(has("portkey") ? ["×portkey"] : []), "CPU µs/req", "errors"];
  const rows = results.nonstream.map((r) => [r.concurrency, kib(r.body_bytes), r.path, r.rps.toFixed(0),
    ms(r.latency_us.p50), ms(r.latency_us.p90), ms(r.latency_us.p99),
    r.path === "direct" ? "–" : ms(r.added_p50_us), ratio(r.rps_vs_direct, 1), ratio(r.rps_vs_nginx, 1),
    ...(has("portkey") ? [ratio(r.rps_vs_portkey, 1)] : []),
    r.cpu_us_per_req === null ? "–" : r.cpu_us_per_req.toFixed(1),
    errors(r)]);
  md += table(head, rows);

  md += "\n## CPU time per request (user + system, whole non-stream run)\n\n" +
    table(["path", "requests", "CPU µs/req", "×nginx"], Object.entries(results.cpu).map(([p, c]) =>
      [p, c.requests, c.cpu_us_per_req.toFixed(1), ratio(c.cpu_us_per_req, results.cpu.nginx?.cpu_us_per_req)]));

  if (results.streams.length) {
    const f2 = (x) => (x === null || x === undefined ? "–" : x.toFixed(2));
    md += "\n## Streams: time to first and last byte (streamload)\n\n" +
      "Added = the path's median minus the direct median for the same scenario. SSE events = the data " +
      "events of one stream as received (the mock sends the role event, the tokens, the finish event and " +
      "`[DONE]`). CPU = user + system time of the proxying process around the cell, per streamed token " +
      "(ok streams × tokens) and per SSE event received.\n\n" +
      table(["scenario", "conc", "path", "ok", "SSE events", "TTFB p50 ms", "TTFB p99 ms", "TTLB p50 ms", "TTLB p99 ms",
             "added TTFB p50 ms", "added TTLB p50 ms", "CPU µs/token", "CPU µs/event"],
        results.streams.map((s) => [s.scenario, s.concurrency, s.path, `${s.ok}/${s.requests}`,
          s.ok ? (s.sse_events / s.ok).toFixed(0) : "–",
          ms(s.ttfb_us.p50), ms(s.ttfb_us.p99), ms(s.ttlb_us.p50), ms(s.ttlb_us.p99),
          s.path === "direct" ? "–" : ms(s.added_ttfb_p50_us), s.path === "direct" ? "–" : ms(s.added_ttlb_p50_us),
          f2(s.cpu_us_per_token), f2(s.cpu_us_per_event)]));
    const sc = results.stream_cpu || {};
    if (Object.keys(sc).length) {
      md += "\n## CPU time per streamed token (user + system, every stream scenario)\n\n" +
        table(["path", "streams", "tokens", "SSE events", "CPU µs/token", "CPU µs/event", "µs/token ×nginx µs/event"],
          Object.entries(sc).map(([p, c]) => [p, c.streams, c.tokens, c.events, f2(c.cpu_us_per_token),
            f2(c.cpu_us_per_event), ratio(c.cpu_us_per_token, sc.nginx?.cpu_us_per_event)]));
    }
  }
  if (results.open_streams.length) {
    md += "\n## Concurrent open streams (fresh gateway process; RSS from /proc)\n\n" +
      "Started = streams begun and not ended at one moment; streaming = of those, the streams that had " +
      "received their first body byte (open through the proxy to the mock).\n\n" +
      table(["path", "streams", "ok", "started at once", "streaming at once", "tokens × delay", "TTFB p99 ms",
             "RSS before MiB", "peak RSS MiB (VmHWM)"],
        results.open_streams.map((o) => [o.path, o.streams, o.ok, o.peak_inflight, o.peak_streaming ?? "–",
          `${o.tokens} × ${o.token_delay_ms} ms`, ms(o.ttfb_us.p99), (o.rss_before_kib / MIB).toFixed(1),
          (o.rss_peak_kib / MIB).toFixed(1)]));
  }
  md += "\nChart: latency.png (p50/p90/p99 per path; log scale).\n";
  return md;
}

// One panel per (body, concurrency): clusters = paths, bars = p50/p90/p99.
function gnuplotScript(results, png) {
  const bodies = [...new Set(results.nonstream.map((r) => r.body_bytes))];
  const concs = [...new Set(results.nonstream.map((r) => r.concurrency))];
  const paths = [...new Set(results.nonstream.map((r) => r.path))];
  let s = `set terminal pngcairo size ${420 * concs.length},${340 * bodies.length} font ",9"\n` +
    `set output '${png}'\nset multiplot layout ${bodies.length},${concs.length} ` +
    `title "chat completion latency per path (ms, log scale)"\n` +
    "set style data histogram\nset style histogram cluster gap 1\nset style fill solid 0.8 border -1\n" +
    "set logscale y\nset yrange [0.01:*]\nset grid ytics\nset key top left\n";
  for (const b of bodies) {
    for (const c of concs) {
      const name = `$c${c}b${b}`;
      s += `${name} << EOD\n`;
      for (const p of paths) {
        const r = cell(results, p, c, b);
        if (r) s += `${p} ${ms(r.latency_us.p50)} ${ms(r.latency_us.p90)} ${ms(r.latency_us.p99)}\n`;
      }
      s += `EOD\nset title "concurrency ${c}, ${kib(b)} body"\n` +
        `plot ${name} using 2:xtic(1) title "p50", '' using 3 title "p90", '' using 4 title "p99"\n`;
    }
  }
  return s + "unset multiplot\n";
}

// Writes the three outputs (and latency.gp beside them); returns their paths.
export async function writeReport(results, outDir) {
  derive(results);
  targets(results);
  const json = path.join(outDir, "results.json");
  const md = path.join(outDir, "results.md");
  const png = path.join(outDir, "latency.png");
  const gp = path.join(outDir, "latency.gp");
  fs.writeFileSync(json, JSON.stringify(results, null, 2) + "\n");
  fs.writeFileSync(md, markdown(results));
  fs.writeFileSync(gp, gnuplotScript(results, png));
  fs.rmSync(png, { force: true });
  const r = await runTool("gnuplot", [gp], { timeoutMs: 60000 });
  if (r.code !== 0 || !fs.existsSync(png)) throw new Error(`gnuplot failed: ${r.stderr}`);
  return [json, md, png];
}
