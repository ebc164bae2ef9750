// What the response cache (issue 17) costs and saves: instructions per
// request under callgrind, in one gateway with `cache = memory`, for
//   proxied     temperature 0.7, not cacheable: the normal path
//   miss        temperature 0, a new body each time: key, proxy, store
//   hit         temperature 0, the same body: answered from the cache
//   stream hit  the same, with stream: true (replayed as SSE)
//
//   node bench/cache_cost.mjs --build-dir build-rel [--requests N] [--keep]
//
// Everything runs on 127.0.0.1 and is stopped at the end; the numbers
// compare the kinds of request of one run on one machine, nothing more.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { startReady, stopWait } from "./lib/procs.mjs";

const o = { buildDir: "build-rel", requests: 1000, keep: false };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "--build-dir") o.buildDir = process.argv[++i];
  else if (a === "--requests") o.requests = Number(process.argv[++i]);
  else if (a === "--keep") o.keep = true;
  else throw new Error(`unknown option ${a}`);
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-cache-cost-"));

// The processes of the run: started once a line says so, stopped and
// waited for (bench/lib/procs.mjs).
const start = (cmd, args, ready) =>
  startReady(cmd, args, ready, { env: { BENCH_MOCK_KEY: "k", LLMUX_LISTEN: "127.0.0.1:0" } });
const stop = stopWait;

const mock = await start(path.resolve(o.buildDir, "tests", "mock", "mock_upstream"),
                         ["--no-record", "--name", "m", "--tokens", "8"],
                         (l) => (l.startsWith("{") ? JSON.parse(l).port : undefined));
fs.mkdirSync(path.join(tmp, "providers"), { recursive: true });
fs.writeFileSync(path.join(tmp, "llmux.ini"),
  "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\ncache = memory\n" +
  "[model bench-m]\ntier = 2\nprice_in = 1\nprice_out = 2\n");
fs.writeFileSync(path.join(tmp, "providers", "bench.ini"),
  `[provider m]\nplugin = openai\nbase_url = http://127.0.0.1:${mock.value}/v1\n` +
  "api_key_env = BENCH_MOCK_KEY\n[route m bench-m]\nid = bench-m\n");

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function post(port, body, expect) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path: "/v1/chat/completions", method: "POST",
                               agent, headers: { "content-type": "application/json" } }, (res) => {
      res.resume();
      res.on("end", () => {
        if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
        if (expect !== undefined && res.headers["x-llmux-cache"] !== expect)
          return reject(new Error(`x-llmux-cache: ${res.headers["x-llmux-cache"]}, not ${expect}`));
        resolve();
      });
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

const text = "x".repeat(960);
let unique = 0;
const kinds = {
  proxied: () => [{ model: "bench-m", temperature: 0.7, messages: [{ role: "user", content: text }] }, undefined],
  miss: () => [{ model: "bench-m", temperature: 0, messages: [{ role: "user", content: `${unique++}${text}` }] }, "miss"],
  hit: () => [{ model: "bench-m", temperature: 0, messages: [{ role: "user", content: text }] }, "hit"],
  "stream hit": () => [{ model: "bench-m", temperature: 0, stream: true,
                         messages: [{ role: "user", content: text }] }, "hit"],
};

const out = path.join(tmp, "cg.out");
const g = await start("valgrind", ["--tool=callgrind", "--instr-atstart=no", `--callgrind-out-file=${out}`,
                                   path.resolve(o.buildDir, "llmux"), "serve", "-c", path.join(tmp, "llmux.ini")],
                      (l) => { const m = /listening on http:\/\/[^\s]*:(\d+)/.exec(l); return m ? Number(m[1]) : undefined; });
const ctl = (...a) => spawnSync("callgrind_control", [...a, String(g.proc.pid)]);
const dumpIr = (file) => Number(/^totals: (\d+)/m.exec(fs.readFileSync(file, "utf8"))?.[1]);
await post(g.value, kinds.hit()[0], undefined); /* the answer the hits read */
const results = {};
let dump = 0;
for (const [name, make] of Object.entries(kinds)) {
  for (let i = 0; i < 100; i++) await post(g.value, ...make());
  ctl("-i", "on");
  for (let i = 0; i < o.requests; i++) await post(g.value, ...make());
  ctl("-i", "off");
  ctl("-d");
  results[name] = { ir_per_request: Math.round(dumpIr(`${out}.${++dump}`) / o.requests) };
  console.error(`${name}: ${JSON.stringify(results[name])}`);
}
await stop(g.proc);
await stop(mock.proc);
results.hit.vs_proxied = +(results.hit.ir_per_request / results.proxied.ir_per_request).toFixed(3);
if (o.keep) console.error(`kept ${tmp}`);
else fs.rmSync(tmp, { recursive: true, force: true });
console.log(JSON.stringify(results, null, 2));
