// The processes a benchmark run talks to: the mock upstream, llmux, nginx
// and the Portkey gateway, each started on 127.0.0.1 and owned by the
// harness (stopped by stopOwned). Every start resolves once the process
// listens; each returns { proc, port(s), ... }.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { spawnSync } from "node:child_process";
import { freePort, startOwned, waitForPort, childPids } from "./procs.mjs";

const BENCH_DIR = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
// Temporary directories (configs, nginx prefixes) to remove at the end.
export const tempDirs = [];

export const PORTKEY_ENTRY = path.join(BENCH_DIR, "node_modules", "@portkey-ai", "gateway", "build",
                                       "start-server.js");

// The mock with its answers shaped by flags (tokens, token delay); it prints
// {"port":N,...} once listening. Requests are not recorded (no per-request
// bookkeeping in the way of the measurement).
export async function startMock(bin, name, flags = []) {
  const proc = startOwned(bin, ["--no-record", "--name", name, ...flags], { stdout: true });
  const line = await new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    const t = setTimeout(() => reject(new Error(`mock ${name} did not start: ${proc.log()}`)), 10000);
    rl.once("line", (l) => { clearTimeout(t); rl.close(); resolve(l); });
    proc.once("exit", (c) => { clearTimeout(t); reject(new Error(`mock ${name} exited ${c}: ${proc.log()}`)); });
  });
  proc.stdout.resume(); // nothing more is printed, but never let a pipe fill
  const { port } = JSON.parse(line);
  return { name, proc, port, baseURL: `http://127.0.0.1:${port}/v1` };
}

// Writes the gateway config: one model per mock, each routed to a provider
// (the openai plugin) whose base_url is that mock. Returns the main file.
// `ratelimit_headers = anthropic`: the mock's x-ratelimit-* headers count a
// 14,400-request budget down per request (and advertise 200k tokens a
// minute); llmux learns those limits and, correctly, answers 429 itself
// once a run spends them. A benchmark measures the hop, not the budget, so
// llmux is told to read Anthropic's header names, which the mock never
// sends: it still scans every response's headers, but learns no limit.
export function writeLlmuxConfig(mocks) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-bench-"));
  tempDirs.push(dir);
  fs.mkdirSync(path.join(dir, "providers"));
  let main = "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nmax_body = 8m\n\n";
  let prov = "";
  for (const m of mocks) {
    main += `[model bench-${m.name}]\ntier = 2\n\n`;
    prov += `[provider ${m.name}]\nplugin = openai\nbase_url = ${m.baseURL}\n` +
            `api_key_env = BENCH_MOCK_KEY\ntimeout = 60s\nstream_timeout = 60s\n` +
            `ratelimit_headers = anthropic\n\n` +
            `[route ${m.name} bench-${m.name}]\nid = bench-${m.name}\n\n`;
  }
  fs.writeFileSync(path.join(dir, "llmux.ini"), main);
  fs.writeFileSync(path.join(dir, "providers", "bench.ini"), prov);
  return path.join(dir, "llmux.ini");
}

// llmux on a free port (LLMUX_LISTEN: with log_level = warn it does not
// print the port it listens on).
export async function startLlmux(bin, config) {
  const port = await freePort();
  const proc = startOwned(bin, ["serve", "-c", config], {
    env: { LLMUX_LISTEN: `127.0.0.1:${port}`, BENCH_MOCK_KEY: "bench-upstream-key" },
  });
  await waitForPort(port, { proc, name: "llmux" });
  return { proc, port, pid: proc.pid };
}

// nginx as the plain reverse proxy of reference: one server (own port) per
// mock, proxy_pass to an upstream block with keep-alive connections,
// HTTP/1.1 to the upstream with the Connection header cleared, no access
// log, no response buffering (SSE passes through as it comes), and one
// worker process, as llmux has one event loop. The idle pool per upstream
// is 32 connections, llmux's default (max_idle_per_key). The worker may open
// as many descriptors as the hard limit allows (worker_rlimit_nofile) and
// hold nearly as many connections: 8,000 open streams are 16,000
// connections in it (client side and upstream side).
function hardNofile() {
  const r = spawnSync("/bin/sh", ["-c", "ulimit -Hn"], { encoding: "utf8" });
  const n = Number((r.stdout || "").trim());
  return Number.isFinite(n) && n > 0 ? Math.min(n, 1 << 20) : 1 << 20; /* "unlimited" */
}
export async function startNginx(mocks) {
  const nofile = hardNofile();
  const prefix = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-bench-nginx-"));
  tempDirs.push(prefix);
  fs.chmodSync(prefix, 0o755); // the worker may run as an unprivileged user
  const ports = {};
  let servers = "";
  for (const m of mocks) {
    ports[m.name] = await freePort();
    servers += `  upstream mock_${m.name} {\n    server 127.0.0.1:${m.port};\n    keepalive 32;\n` +
               `    keepalive_requests 1000000;\n  }\n` +
               `  server {\n    listen 127.0.0.1:${ports[m.name]};\n    location / {\n` +
               `      proxy_pass http://mock_${m.name};\n      proxy_http_version 1.1;\n` +
               `      proxy_set_header Connection "";\n      proxy_buffering off;\n    }\n  }\n`;
  }
  const conf = `daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile ${nofile};\n` +
    `pid ${prefix}/nginx.pid;\nerror_log ${prefix}/error.log warn;\n` +
    `events {\n  worker_connections ${Math.max(1024, nofile - 64)};\n}\n` +
    `http {\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n` +
    `  client_max_body_size 8m;\n  client_body_buffer_size 128k;\n` +
    `  client_body_temp_path ${prefix}/client_body;\n  proxy_temp_path ${prefix}/proxy;\n` +
    `  fastcgi_temp_path ${prefix}/fastcgi;\n  uwsgi_temp_path ${prefix}/uwsgi;\n` +
    `  scgi_temp_path ${prefix}/scgi;\n  proxy_read_timeout 60s;\n${servers}}\n`;
  fs.writeFileSync(path.join(prefix, "nginx.conf"), conf);
  const proc = startOwned("nginx", ["-p", prefix, "-c", path.join(prefix, "nginx.conf"),
                                    "-e", path.join(prefix, "error.log")]);
  for (const p of Object.values(ports)) await waitForPort(p, { proc, name: "nginx" });
  const workers = childPids(proc.pid);
  return { proc, ports, prefix, workers, pid: workers[0] };
}

// The Portkey gateway, when bench/node_modules has it; else null with the
// reason in `why`.
export async function startPortkey(why) {
  if (!fs.existsSync(PORTKEY_ENTRY)) {
    why.reason = "not installed (npm ci in bench/ installs @portkey-ai/gateway)";
    return null;
  }
  const port = await freePort();
  const proc = startOwned(process.execPath, [path.join(BENCH_DIR, "lib", "portkey.mjs"), String(port)],
                          { env: { NODE_ENV: "production" } });
  try {
    await waitForPort(port, { proc, name: "portkey", timeoutMs: 30000 });
  } catch (e) {
    why.reason = `did not start: ${e.message.split("\n")[0]}`;
    proc.kill("SIGKILL");
    return null;
  }
  return { proc, port, pid: proc.pid };
}
